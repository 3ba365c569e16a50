"""The "asyncbudget" section of the terminal summary: worst offenders, plugin errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..units import format_duration

if TYPE_CHECKING:
    from ..manager import Manager


def _lag_rows(manager: Manager) -> list[tuple[float, str, str, str, str]]:
    rows = []
    for record in manager.records:
        per_phase = record.measurements.get("max_loop_lag")
        if not per_phase:
            continue
        worst = max(per_phase.values(), key=lambda m: m.max_lag)
        budget = record.budgets.get("max_loop_lag")
        culprit = next((e.culprit for e in worst.events if e.culprit is not None), None)
        rows.append(
            (
                worst.max_lag,
                record.nodeid,
                record.loop or "-",
                f"{format_duration(worst.max_lag)}" + (f" / {format_duration(budget)}" if budget else ""),
                culprit.location if culprit else "",
            )
        )
    rows.sort(key=lambda row: row[0], reverse=True)
    return rows


def write_summary(tr: Any, manager: Manager) -> None:
    rows = _lag_rows(manager)
    errors = manager.errors.reported
    if manager.sampler.error:
        errors = [*errors, ("stack sampler", manager.sampler.error)]
    if not rows and not errors:
        return
    tr.write_sep("=", "asyncbudget")
    if rows:
        tr.write_line("max_loop_lag: worst offenders")
        for _, nodeid, loop, value, culprit in rows[:10]:
            tr.write_line(f"  {value:>22}  {loop:<8} {nodeid}  {culprit}")
    for where, text in errors:
        tr.write_line(f"pytest-asyncbudget internal error in {where} (budget skipped, test result untouched):", red=True)
        tr.write_line(text.rstrip())
