"""What every budget module provides, and the verdict it hands to presentation.

A budget module (``budgets/<name>.py``) is the judgment half of one budget:

* ``NAME`` - the marker's name, e.g. ``"max_loop_lag"``;
* ``marker(...)`` - a plain typed function whose signature *is* the marker's API and
  whose docstring's first line is its help text. It returns the parsed budget, or None
  when the test opts out;
* ``add_options(group, parser)`` and ``default(config)`` - the ini/CLI default;
* ``make_probe(budget, context)`` - the probe that measures it (``probes/<name>.py``);
* ``judge(budget, measurement) -> Verdict`` - the verdict for one phase;
* optionally ``summary_digest(record)`` and ``summary_lines(config, digests)`` - lines
  of its own for the terminal summary. The digest is taken when the test ends (the
  test's record is not kept: thousands of records would slow every garbage collection
  of the session down) and holds only atomic values and tuples; ``summary_lines`` gets
  the digests of this process's tests, in order, leaving out None.

Verdicts hold data and short, plain sentences; laying them out (failure text, summary,
report) is :mod:`pytest_asyncbudget.present`'s job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from ..culprit import Culprit

__all__ = ["Finding", "Verdict", "value_default"]

B = TypeVar("B")


def value_default(config: pytest.Config, dest: str, flag: str, ini: str, parse: Callable[[Any], B]) -> B | None:
    """A valued budget's session default: the CLI option, else the ini option.

    An empty value or ``none`` means no default. A value *parse* rejects is a usage error
    naming the option it came from.
    """
    value, where = config.getoption(dest), flag
    if value is None:
        value, where = config.getini(ini), ini
    if value in ("", None) or str(value).strip().lower() == "none":
        return None
    try:
        return parse(value)
    except ValueError as exc:
        raise pytest.UsageError(f"{where}={value!r}: {exc}") from None


@dataclass
class Finding:
    """One thing behind a verdict: a blocked stretch, a blocking call, a leaked task."""

    #: One line, e.g. ``"loop blocked 203.4 ms (call)"``.
    title: str
    culprit: Culprit | None = None
    #: Further lines shown under the title, indented.
    details: list[str] = field(default_factory=list)
    #: The same facts as data, for the JSON report.
    data: dict[str, object] = field(default_factory=dict)


@dataclass
class Verdict:
    """The outcome of one budget in one phase of one test."""

    budget: str
    phase: str
    passed: bool
    #: One line, e.g. ``"max_loop_lag exceeded: loop blocked 203.4 ms > budget 50 ms (call)"``.
    #: A judge may pass a function of no arguments instead: the line is then written on
    #: first read. Most verdicts pass and nobody reads them (no report asked for), so
    #: formatting their numbers at every phase of every test would be wasted.
    headline: str
    #: The measured value in the budget's unit (seconds, bytes, count).
    measured: float | None = None
    limit: float | None = None
    findings: list[Finding] = field(default_factory=list)


def _get_headline(verdict: Verdict) -> str:
    text = verdict.__dict__["_headline"]
    if not isinstance(text, str):
        text = verdict.__dict__["_headline"] = text()
    return text


def _set_headline(verdict: Verdict, text: str | Callable[[], str]) -> None:
    verdict.__dict__["_headline"] = text


# Set after the dataclass is made, so ``Verdict(headline=...)`` stays a plain field of
# __init__, __repr__ and __eq__ while reads and writes go through the property.
Verdict.headline = property(_get_headline, _set_headline)  # type: ignore[assignment]
