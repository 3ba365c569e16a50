"""The "asyncbudget" section of the terminal summary.

What it shows, top to bottom:

* one line of totals: how many tests were measured, on which loops, how many broke a
  budget and what the gating did with them;
* one table per budget, worst offenders first: violations, then the tests that used the
  largest share of their budget, then (for tests measured without a budget) the largest
  values. Columns: status, test id, loop, measured value, budget, % of budget used,
  culprit ``path:line``. ``--asyncbudget-summary=N`` sets the rows per table (10 by
  default; 0 hides the whole section except plugin errors);
* with ``--asyncbudget-baseline``, the new, grown, unchanged and fixed violations;
* where the report was written, and any plugin error (shown even with N=0).

Verbosity: ``-v`` never shortens a test id or a culprit and names the culprit's
function; the default fits each table to the terminal width by shortening the test id
and the culprit from the left; ``-q`` lists only the violations; ``-qq`` prints only the
totals line.

Everything is read from the plain-data test entries of :mod:`.report`, so the section is
the same with and without pytest-xdist.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pytest

from ..gating import BASELINE_STATUSES
from .report import describe

if TYPE_CHECKING:
    from ..manager import Manager

__all__ = ["DEFAULT_ROWS", "add_options", "rows_for", "summary_lines", "summary_size", "write_summary"]

#: Rows per table when ``--asyncbudget-summary`` is not given.
DEFAULT_ROWS = 10
_ELLIPSIS = "..."
_STATUS = {"enforced": "FAILED", "observed": "observed", "allowed": "baseline"}


def add_options(group: pytest.OptionGroup, parser: pytest.Parser) -> None:
    group.addoption(
        "--asyncbudget-summary",
        dest="asyncbudget_summary",
        metavar="N",
        default=None,
        help=f"rows per budget in the worst-offenders summary (default {DEFAULT_ROWS}; 0 hides it)",
    )


def summary_size(config: pytest.Config) -> int:
    """``--asyncbudget-summary`` as a row count; a bad value is a :class:`pytest.UsageError`."""
    raw = config.getoption("asyncbudget_summary", None)
    if raw is None:
        return DEFAULT_ROWS
    try:
        size = int(str(raw).strip())
    except ValueError:
        size = -1
    if size < 0:
        raise pytest.UsageError(f"--asyncbudget-summary={raw}: expected a whole number of rows, 0 or more")
    return size


# -- rows --------------------------------------------------------------------------------
def _used(entry: dict[str, Any]) -> float | None:
    measured, limit = entry["measured"], entry["limit"]
    if measured is None or limit is None:
        return None
    if limit == 0:
        return 0.0 if measured <= 0 else math.inf
    return measured / limit


def _order(test: dict[str, Any], entry: dict[str, Any]) -> tuple[int, float, str]:
    used = _used(entry)
    if entry["verdict"] == "failed":
        group = 0
    elif used is not None:
        group = 1
    else:
        group = 2
    value = used if used is not None else (entry["measured"] or 0.0)
    return (group, -value, test["id"])


def rows_for(budget: str, tests: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``(test, budget entry)`` pairs for one budget's table, worst first.

    Violations first, then the largest share of the budget used, then (no budget) the
    largest value. Zero values are left out unless they broke the budget.
    """
    rows = []
    for test in tests:
        entry = test["budgets"].get(budget)
        if entry is None or entry["measured"] is None:
            continue
        if entry["verdict"] != "failed" and entry["measured"] <= 0:
            continue
        rows.append((test, entry))
    rows.sort(key=lambda row: _order(*row))
    return rows


def _percent(entry: dict[str, Any]) -> str:
    used = _used(entry)
    if used is None:
        return "-"
    if math.isinf(used):
        return ">100%"
    return f"{used * 100:.0f}%"


def _cells(test: dict[str, Any], entry: dict[str, Any], budget: str, verbose: bool) -> list[str]:
    info = describe(budget)
    culprit = entry["culprit"]
    where = ""
    if culprit is not None:
        where = culprit["location"] + (f" in {culprit['function']}" if verbose else "")
    return [
        _STATUS.get(entry["gate"] or "", ""),
        test["id"],
        test["loop"] or "-",
        info.format(entry["measured"]),
        info.format(entry["limit"]) if entry["limit"] is not None else "-",
        _percent(entry),
        where,
    ]


_HEADERS = ["", "test", "loop", "", "budget", "used", "culprit"]
_RIGHT = {3, 4, 5}
_TEST, _CULPRIT = 1, 6


def _shorten(text: str, width: int) -> str:
    """*text* in *width* characters, cut from the left (the end of an id or path matters most).

    Whole leading directories go first (``.../test_api.py::test_x``); only when that is
    not enough is the text cut mid-word.
    """
    if len(text) <= width:
        return text
    if width <= len(_ELLIPSIS):
        return text[-width:] if width > 0 else ""
    path_end = text.find("::")
    slash = text.find("/", 0, path_end if path_end >= 0 else len(text))
    while slash >= 0:
        candidate = _ELLIPSIS + text[slash:]
        if len(candidate) <= width:
            return candidate
        slash = text.find("/", slash + 1, path_end if path_end >= 0 else len(text))
    return _ELLIPSIS + text[-(width - len(_ELLIPSIS)) :]


def _culprit_floor(cells: list[str]) -> int:
    """Width that still shows every culprit's file name and line (``.../name.py:12``)."""
    floor = 0
    for cell in cells:
        head, sep, tail = cell.rpartition("/")
        floor = max(floor, len(cell) if not sep else len(tail) + len(_ELLIPSIS))
    return min(floor, 30)


def _table(
    header: list[str],
    rows: list[list[str]],
    width: int | None,
    right: set[int] = _RIGHT,
    stages: list[tuple[int, int]] | None = None,
) -> list[str]:
    """Aligned lines; with *width*, columns shrink (from the left) to fit it.

    *stages* are ``(column, floor)`` steps taken in order until the table fits. By
    default: the test id down to 32 characters, then the culprit down to its file name
    and line, then the test id down to 12, then the culprit down to 6.
    """
    columns = list(zip(header, *rows))
    # drop columns with nothing to say (no culprit, no budget anywhere)
    keep = [i for i, column in enumerate(columns) if any(cell not in ("", "-") for cell in column[1:])]
    widths = {i: max(len(cell) for cell in columns[i]) for i in keep}
    if width is not None:
        excess = sum(widths.values()) + 2 * (len(keep) - 1) - width
        if stages is None:
            culprit = _culprit_floor([r[_CULPRIT] for r in rows])
            stages = [(_TEST, 32), (_CULPRIT, culprit), (_TEST, 12), (_CULPRIT, 6)]
        for column, floor in stages:
            if excess <= 0:
                break
            if column not in widths:
                continue
            cut = min(excess, max(0, widths[column] - floor))
            widths[column] -= cut
            excess -= cut
    lines = []
    for cells in [header, *rows]:
        parts = []
        for i in keep:
            cell = _shorten(cells[i], widths[i])
            parts.append(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]))
        lines.append("  ".join(parts).rstrip())
    return lines


# -- the section ---------------------------------------------------------------------------
def _totals_line(tests: Sequence[dict[str, Any]], mode: str) -> str:
    loops: list[str] = []
    for test in tests:
        if test["loop"] and test["loop"] not in loops:
            loops.append(test["loop"])
    entries = [(t, e) for t in tests for e in t["budgets"].values()]
    failed = [(t, e) for t, e in entries if e["verdict"] == "failed"]
    n_tests = len(tests)
    text = f"{n_tests} test{'s' if n_tests != 1 else ''} measured"
    if loops:
        text += f" on {', '.join(loops)}"
    if not failed:
        return text + ": no budget violations"
    n_failed_tests = len({t["id"] for t, _ in failed})
    text += f": {len(failed)} budget violation{'s' if len(failed) != 1 else ''} in {n_failed_tests} test{'s' if n_failed_tests != 1 else ''}"
    gates = [e["gate"] for _, e in failed]
    parts = []
    for gate, word in (("enforced", "failed"), ("observed", "observed, not enforced"), ("allowed", "allowed by the baseline")):
        count = gates.count(gate)
        if count:
            parts.append(f"{count} {word}")
    if mode == "observe":
        return text + " (observe mode: none enforced)"
    return text + f" ({', '.join(parts)})"


def _budget_names(tests: Sequence[dict[str, Any]]) -> list[str]:
    from .. import budgets

    names = [module.NAME for module in budgets.MODULES]
    for test in tests:
        for name in test["budgets"]:
            if name not in names:
                names.append(name)
    return [n for n in names if any(n in t["budgets"] for t in tests)]


def summary_lines(
    tests: Sequence[dict[str, Any]],
    *,
    size: int,
    verbosity: int,
    width: int,
    mode: str = "enforce",
    comparison: dict[str, list[dict[str, Any]]] | None = None,
    baseline: str | None = None,
    tolerance: float = 0.0,
) -> list[tuple[str, str | None]]:
    """The section's lines, each with a colour name or None (no terminal needed: testable)."""
    out: list[tuple[str, str | None]] = [(_totals_line(tests, mode), None)]
    if verbosity <= -2:
        return out
    verbose = verbosity >= 1
    for budget in _budget_names(tests):
        info = describe(budget)
        rows = rows_for(budget, tests)
        measured = sum(1 for t in tests if budget in t["budgets"])
        if verbosity < 0:
            rows = [row for row in rows if row[1]["verdict"] == "failed"]
            if not rows:
                continue
        out.append(("", None))
        shown = rows[:size]
        violations = sum(1 for _, e in rows if e["verdict"] == "failed")
        title = f"{budget}: {info.title}"
        if not rows:
            out.append((f"{title}: nothing above zero in {measured} test{'s' if measured != 1 else ''}", None))
            continue
        if verbosity < 0:
            title += f" ({violations} over budget of {measured} measured)"
        else:
            title += f" (worst {len(shown)} of {measured}"
            title += f", {violations} over budget)" if violations else ")"
        out.append((title, None))
        header = list(_HEADERS)
        header[3] = info.measured
        cells = [_cells(test, entry, budget, verbose) for test, entry in shown]
        lines = _table(header, cells, None if verbose else width)
        out.append((lines[0], None))
        for line, (_, entry) in zip(lines[1:], shown):
            colour = {"enforced": "red", "observed": "yellow", "allowed": "yellow"}.get(entry["gate"] or "")
            out.append((line, colour))
        hidden = len(rows) - len(shown)
        if hidden > 0 and verbosity >= 0:
            more = sum(1 for _, e in rows[size:] if e["verdict"] == "failed")
            extra = f" ({more} over budget)" if more else ""
            out.append((f"... {hidden} more{extra}; --asyncbudget-summary=N shows more rows", None))
    if comparison is not None:
        out.extend(_baseline_lines(comparison, baseline, tolerance, size, verbosity, None if verbose else width))
    return out


def _baseline_lines(
    comparison: dict[str, list[dict[str, Any]]],
    path: str | None,
    tolerance: float,
    size: int,
    verbosity: int,
    width: int | None,
) -> list[tuple[str, str | None]]:
    """The comparison with the baseline: counts, then new, grown, unchanged, fixed (each up to *size*)."""
    counts = ", ".join(f"{len(comparison[s])} {s}" for s in BASELINE_STATUSES)
    out: list[tuple[str, str | None]] = [("", None), (f"baseline {path} (tolerance {tolerance * 100:g}%): {counts}", None)]
    colours = {"new": "red", "grown": "red", "unchanged": None, "fixed": "green"}
    rows: list[list[str]] = []
    statuses: list[str] = []
    hidden: list[str] = []
    for status in BASELINE_STATUSES:
        if verbosity < 0 and status in ("unchanged", "fixed"):
            continue
        items = sorted(comparison[status], key=lambda i: (i["id"], i["budget"]))
        for item in items[:size]:
            info = describe(item["budget"])
            now = info.format(item["measured"]) if item["measured"] is not None else "-"
            before = item["baseline_measured"]
            was = "-" if status == "new" else (info.format(before) if before is not None else "?")
            rows.append([status, item["id"], item["budget"], now, was])
            statuses.append(status)
        if len(items) > size:
            hidden.append(f"... {len(items) - size} more {status}")
    if rows:
        lines = _table(["", "test", "budget", "now", "baseline"], rows, width, right={3, 4}, stages=[(1, 32), (1, 12)])
        out.append((lines[0], None))
        out.extend((line, colours[status]) for line, status in zip(lines[1:], statuses))
    out.extend((line, None) for line in hidden)
    return out


def _width(tr: Any) -> int:
    tw = getattr(tr, "_tw", None)
    width = getattr(tw, "fullwidth", None)
    if not isinstance(width, int) or width <= 0:
        import shutil

        width = shutil.get_terminal_size().columns
    return width


def _module_lines(config: pytest.Config, manager: Manager) -> list[str]:
    """Lines a budget module adds itself: its optional ``summary_lines(config, digests)``.

    They read the digests of this process's tests, so under xdist (where the tests run
    on the workers) they are empty.
    """
    from .. import budgets

    out: list[str] = []
    for module in budgets.MODULES:
        extra = getattr(module, "summary_lines", None)
        if extra is None:
            continue
        try:
            lines = list(extra(config, manager.digests.get(module.NAME, [])))
        except Exception:  # noqa: BLE001 - shown once with the other plugin errors
            import traceback

            manager.errors.record(f"{module.NAME}.summary_lines", traceback.format_exc())
            continue
        if lines:
            out.append("")
            out.extend(lines)
    return out


def write_summary(tr: Any, manager: Manager) -> None:
    """The section at the end of the session (not on xdist workers)."""
    results = manager.results
    if results.is_worker:
        return
    gate = manager.gate
    size = manager.summary_size
    lines: list[tuple[str, str | None]] = []
    tests = results.tests() if size > 0 else []
    if size > 0 and (tests or gate.baseline_path is not None or results.written):
        verbosity = tr.config.get_verbosity() if hasattr(tr.config, "get_verbosity") else tr.config.option.verbose
        lines = summary_lines(
            tests,
            size=size,
            verbosity=verbosity,
            width=_width(tr),
            mode=gate.mode,
            comparison=gate.compare(tests) if gate.baseline_path is not None else None,
            baseline=gate.baseline_path,
            tolerance=gate.tolerance,
        )
        lines.extend((text, None) for text in _module_lines(tr.config, manager))
        if results.written:
            lines.extend([("", None), (f"report written to {results.written}", None)])
    for backend, count in sorted(manager.other_backends.items()):
        tests = "test" if count == 1 else "tests"
        lines.append(
            (f"note: {count} {tests} on anyio's {backend} backend: loop budgets do not apply there "
             f"(no asyncio event loop); max_rss still does", None)
        )
    if results.write_error:
        lines.append((f"asyncbudget report: {results.write_error}", "red"))
    errors = list(manager.errors.reported)  # read last: the lines above may have added some
    if manager.sampler.error:
        errors.append(("stack sampler", manager.sampler.error))
    for where, text in errors:
        lines.append((f"pytest-asyncbudget internal error in {where} (budget skipped, test result untouched):", "red"))
        lines.append((text.rstrip(), None))
    if not lines:
        return
    tr.write_sep("=", "asyncbudget")
    for text, colour in lines:
        tr.write_line(text, **({colour: True} if colour else {}))
