"""Judgment for ``max_rss``: parsing the memory budget and judging peak RSS.

By default the limit applies to the test's own growth: its peak RSS during setup, call
and teardown minus its RSS when setup started. With ``absolute=True`` it applies to the
process's peak RSS during the test. The verdict fails in the phase where the figure first
went over the limit; later phases of the same test only note that it stayed over.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..probes.rss import RssMeasurement, RssProbe
from ..units import format_size, parse_size
from .base import Finding, Verdict, value_default

if TYPE_CHECKING:
    import pytest

    from ..probes.base import ProbeContext
    from ..record import TestRecord

NAME = "max_rss"
INI = "asyncbudget_max_rss"
#: Sync tests can hold memory too: this budget applies to every test.
ASYNC_ONLY = False


@dataclass(frozen=True)
class RssBudget:
    """A parsed ``max_rss`` budget."""

    #: The limit in bytes.
    limit: int
    #: True: the limit is on the process's peak RSS; False: on the test's growth.
    absolute: bool = False
    #: The limit as the user wrote it, e.g. ``"100 MB"`` ("" for an int).
    spelled: str = ""

    def describe(self) -> str:
        """The limit for people: as written, plus in MiB unless written in binary units."""
        human = format_size(self.limit)
        if not self.spelled:
            return human
        if self.spelled.lower().endswith("ib"):  # KiB, MiB, GiB, TiB: already our unit
            return self.spelled
        return f"{self.spelled} ({human})"


def marker(limit: int | str | None, *, absolute: bool = False) -> RssBudget | None:
    """max_rss(limit, *, absolute=False): fail if the test's peak RSS grows more than limit over its RSS at setup (e.g. "100 MB" = 10**6-based, "100 MiB" = 2**20-based, or bytes as an int); absolute=True limits the process's peak RSS instead; None turns a default off."""
    if not isinstance(absolute, bool):
        raise TypeError(f"absolute must be True or False, got {type(absolute).__name__} {absolute!r}")
    if limit is None:
        return None
    size = parse_size(limit)
    spelled = " ".join(limit.split()) if isinstance(limit, str) else ""
    return RssBudget(limit=size, absolute=absolute, spelled=spelled)


def add_options(group: pytest.OptionGroup, parser: pytest.Parser) -> None:
    group.addoption(
        "--asyncbudget-max-rss",
        dest="asyncbudget_max_rss",
        metavar="SIZE",
        default=None,
        help="default max_rss budget (RSS growth per test) for every test, e.g. '100 MB' or 256MiB "
        "(overrides the ini option; None turns it off)",
    )
    parser.addini(INI, "default max_rss budget (RSS growth per test) for every test, e.g. 100 MB", default="")


def default(config: pytest.Config) -> RssBudget | None:
    """The session-wide default budget from the CLI or the ini file, or None."""
    return value_default(config, "asyncbudget_max_rss", "--asyncbudget-max-rss", INI, marker)


def make_probe(budget: RssBudget | None, context: ProbeContext) -> RssProbe:
    return RssProbe(budgeted=budget is not None, context=context)


def judge(budget: RssBudget | None, m: RssMeasurement) -> Verdict:
    absolute = budget is not None and budget.absolute
    value = m.peak if absolute else m.growth
    if budget is None:
        return Verdict(budget=NAME, phase=m.phase, passed=True, headline=lambda: _headline(None, m, ""), measured=value)
    limit = budget.limit
    earlier = None if m.earlier_peak is None else (m.earlier_peak if absolute else m.earlier_peak - m.baseline)
    if value <= limit:
        passed, word = True, "ok"
    elif earlier is not None and earlier > limit:
        passed, word = True, "still"  # already failed in an earlier phase: said once, not again
    else:
        passed, word = False, "exceeded"
    return Verdict(
        budget=NAME,
        phase=m.phase,
        passed=passed,
        # Written when read: most phases pass and their line is never shown.
        headline=(lambda: _headline(budget, m, word)) if passed else _headline(budget, m, word),
        measured=value,
        limit=limit,
        findings=[] if passed else [_finding(budget, m)],
    )


def _headline(budget: RssBudget | None, m: RssMeasurement, word: str) -> str:
    absolute = budget is not None and budget.absolute
    at_least = "" if m.exact else "at least "
    what = f"peak RSS {at_least}{format_size(m.peak)}" if absolute else f"RSS grew {at_least}{format_size(m.growth)}"
    where = f"({m.phase})"
    if budget is None:
        return f"max_rss: {what}, peak {format_size(m.peak)} {where}"
    kind = " absolute" if absolute else ""
    if word == "ok":
        return f"max_rss ok: {what} <= budget{kind} {budget.describe()} {where}"
    if word == "still":
        return f"max_rss: still over budget{kind} {budget.describe()}, reported in an earlier phase {where}"
    return f"max_rss exceeded: {what} > budget{kind} {budget.describe()} {where}"


def _finding(budget: RssBudget, m: RssMeasurement) -> Finding:
    at_least = "" if m.exact else "at least "
    title = (
        f"peak {at_least}{format_size(m.peak)} during {m.peak_phase} = baseline {format_size(m.baseline)} "
        f"(RSS when setup started) + growth {at_least}{format_size(m.growth)}"
    )
    held = m.end - m.baseline
    if held * 2 >= m.growth:
        details = [f"still held at the end of {m.phase}: RSS {format_size(m.end)}, {format_size(held)} over baseline"]
    else:
        details = [f"a spike: freed again by the end of {m.phase} (RSS back to {format_size(m.end)})"]
    if budget.absolute and m.baseline > budget.limit:
        details.append("the process was already over this absolute budget when the test's setup started")
    if m.exact:
        details.append(f"exact: {m.method}")
    else:
        details.append(f"lower bound: {m.method}; a shorter spike can be missed")
    details.append("no culprit line: RSS is counted by the OS, not per allocation; to see what allocates, run this test alone under tracemalloc or pytest-memray")
    return Finding(
        title=title,
        details=details,
        data={
            "phase": m.phase,
            "peak_phase": m.peak_phase,
            "baseline_bytes": m.baseline,
            "peak_bytes": m.peak,
            "growth_bytes": m.growth,
            "end_bytes": m.end,
            "limit_bytes": budget.limit,
            "absolute": budget.absolute,
            "exact": m.exact,
            "method": m.method,
        },
    )


# -- summary -----------------------------------------------------------------------------
def summary_digest(record: TestRecord) -> tuple[bool, str] | None:
    """What :func:`summary_lines` needs of one finished test: (exact, method) of its last
    peak, or None when it was not measured."""
    per_phase = record.measurements.get(NAME)
    if not per_phase:
        return None
    last = list(per_phase.values())[-1]
    return (bool(last.exact), str(last.method))


def summary_lines(config: pytest.Config, digests: Iterable[tuple[bool, str]]) -> list[str]:
    """One line when some peaks are only lower bounds (no resettable high-water mark here)."""
    measured = inexact = 0
    method = ""
    for exact, last_method in digests:
        measured += 1
        if not exact:
            inexact += 1
            method = last_method
    if not inexact:
        return []
    return [f"max_rss: {inexact} of {measured} peaks are lower bounds ({method}); a shorter spike can be missed"]
