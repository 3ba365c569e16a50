"""Judgment for ``max_loop_lag``: parsing the budget and judging measured lag."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..probes.lag import LagMeasurement, LagProbe
from ..units import format_duration, parse_duration
from .base import Finding, Verdict, value_default

if TYPE_CHECKING:
    from collections.abc import Callable

    import pytest

    from ..probes.base import ProbeContext

NAME = "max_loop_lag"
INI = "asyncbudget_max_loop_lag"
#: How many other long stretches a failure lists after the worst one.
OTHERS_SHOWN = 3


def marker(budget: float | str | object | None) -> float | None:
    """max_loop_lag(budget): fail if the event loop is blocked longer than budget (e.g. "50ms", 0.05, a timedelta; None turns a default off)."""
    if budget is None:
        return None
    return parse_duration(budget)


def add_options(group: pytest.OptionGroup, parser: pytest.Parser) -> None:
    group.addoption(
        "--asyncbudget-max-loop-lag",
        dest="asyncbudget_max_loop_lag",
        metavar="DURATION",
        default=None,
        help="default max_loop_lag budget for every async test, e.g. 50ms (overrides the ini option)",
    )
    parser.addini(INI, "default max_loop_lag budget for every async test, e.g. 50ms", default="")


def default(config: pytest.Config) -> float | None:
    """The session-wide default budget from the CLI or the ini file, or None."""
    return value_default(config, "asyncbudget_max_loop_lag", "--asyncbudget-max-loop-lag", INI, marker)


def make_probe(budget: float | None, context: ProbeContext) -> LagProbe:
    return LagProbe(budget, context)


def judge(budget: float | None, m: LagMeasurement) -> Verdict:
    passed = budget is None or m.max_lag <= budget
    worst = m.events[0] if m.events else None
    headline: str | Callable[[], str]
    if budget is None:  # written when read (most phases pass and their line is never shown)
        headline = lambda: f"max_loop_lag: loop blocked at most {format_duration(m.max_lag)} ({m.phase})"  # noqa: E731
    elif passed:
        headline = lambda: (  # noqa: E731
            f"max_loop_lag ok: loop blocked at most {format_duration(m.max_lag)} "
            f"<= budget {format_duration(budget)} ({m.phase})"
        )
    else:
        headline = (
            f"max_loop_lag exceeded: loop blocked {format_duration(m.max_lag)} "
            f"> budget {format_duration(budget)} ({m.phase})"
        )
    findings = []
    for event in m.events[: 1 + OTHERS_SHOWN] if worst else []:
        if budget is not None and not passed and event is not worst and event.duration <= budget / 4:
            continue  # "other worst events" that are tiny are noise in a failure
        title = f"loop blocked {format_duration(event.duration)} ({event.phase})"
        if event.ready and event.ready >= 1000:
            title += f" running a burst of {event.ready:,} callbacks"
        details = []
        if event.culprit is None:
            details.append("culprit unknown: no stack sample fell inside this stretch")
        if event.gc:
            details.append(f"not counted: {format_duration(event.gc)} of automatic garbage collection in this stretch")
        findings.append(
            Finding(
                title=title,
                culprit=event.culprit,
                details=details,
                data={
                    "duration_s": event.duration,
                    "phase": event.phase,
                    "ready_callbacks": event.ready,
                    "gc_s": event.gc,
                },
            )
        )
    return Verdict(
        budget=NAME,
        phase=m.phase,
        passed=passed,
        headline=headline,
        measured=m.max_lag,
        limit=budget,
        findings=findings,
    )
