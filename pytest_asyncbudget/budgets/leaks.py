"""Judgment for ``no_leaked_tasks``: options, defaults, and the verdict at the end of a test.

The check can only be complete once the test and its function-scoped fixtures are done,
so the whole budget is judged once, at the end of teardown, with every finding of the
test in one verdict. ``TEARDOWN_FAILS_TEST`` asks the manager to report that teardown
failure as the test FAILED (not "ERROR at teardown"): a leak is a fault of the test.
A test that already failed, errored or was skipped is not judged: its leftover tasks are
still cancelled with the bound (so the suite goes on), but not reported twice.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..culprit import Culprit, RawFrame, culprit_from
from ..probes.leaks import REST_TIMEOUT_FACTOR, LeakMeasurement, LeakProbe, LeakSettings, TaskSnapshot
from ..units import UnitError, format_duration, parse_duration
from .base import Finding, Verdict

import pytest

if TYPE_CHECKING:
    from ..probes.base import ProbeContext

NAME = "no_leaked_tasks"
INI = "asyncbudget_no_leaked_tasks"
INI_GRACE = "asyncbudget_leak_grace"
INI_CANCEL_TIMEOUT = "asyncbudget_leak_cancel_timeout"
INI_IGNORE = "asyncbudget_leak_ignore"
#: A leak found at teardown is reported as the test FAILED (see the module docstring).
TEARDOWN_FAILS_TEST = True

DEFAULTS = LeakSettings()
#: The session's resolved ini options, computed once at startup.
_SETTINGS = pytest.StashKey[LeakSettings]()
#: Each budget's settings for this session (None: measured only), resolved once: most
#: tests share one budget object (the session default) or an equal one (markers).
_RESOLVED = pytest.StashKey["dict[LeakBudget | None, LeakSettings]"]()


@dataclass(frozen=True)
class LeakBudget:
    """A parsed ``no_leaked_tasks`` marker: options left as None take the session default."""

    grace: float | None = None
    cancel_timeout: float | None = None
    ignore: tuple[str, ...] | None = None

    def resolve(self, session: LeakSettings) -> LeakSettings:
        return LeakSettings(
            grace=session.grace if self.grace is None else self.grace,
            cancel_timeout=session.cancel_timeout if self.cancel_timeout is None else self.cancel_timeout,
            ignore=session.ignore if self.ignore is None else self.ignore,
        )


def marker(
    enabled: bool = True,
    *,
    grace: float | str | datetime.timedelta | None = None,
    ignore: str | Iterable[str] | None = None,
    cancel_timeout: float | str | datetime.timedelta | None = None,
) -> LeakBudget | None:
    """no_leaked_tasks(enabled=True, *, grace="100ms", ignore=(), cancel_timeout="1s"): fail if the test leaves a task pending, loses a task's exception, never awaits a coroutine, or has a task that ignores cancel; ignore takes task-name glob patterns; no_leaked_tasks(False) turns a default off."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {type(enabled).__name__} {enabled!r}")
    if not enabled:
        if grace is not None or ignore is not None or cancel_timeout is not None:
            raise ValueError("no_leaked_tasks(False) turns the budget off; it takes no other argument")
        return None
    return LeakBudget(
        grace=None if grace is None else _duration("grace", grace),
        cancel_timeout=None if cancel_timeout is None else _cancel_timeout(cancel_timeout),
        ignore=None if ignore is None else _patterns(ignore),
    )


def _duration(what: str, value: object) -> float:
    try:
        return parse_duration(value)
    except UnitError as exc:
        raise UnitError(f"{what}: {exc}") from None


def _cancel_timeout(value: object) -> float:
    seconds = _duration("cancel_timeout", value)
    if seconds <= 0:
        raise UnitError(f"cancel_timeout must be more than 0, got {value!r}")
    return seconds


def _patterns(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, Iterable):
        raise TypeError(f"ignore takes a task-name pattern or a list of them, got {type(value).__name__} {value!r}")
    patterns = tuple(value)
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern.strip():
            raise TypeError(f"ignore patterns must be non-empty strings, got {pattern!r}")
    return patterns


def add_options(group: pytest.OptionGroup, parser: pytest.Parser) -> None:
    group.addoption(
        "--asyncbudget-no-leaked-tasks",
        dest="asyncbudget_no_leaked_tasks",
        action="store_true",
        default=False,
        help="check every async test for leaked tasks, lost task exceptions, never-awaited "
        "coroutines and tasks that ignore cancel (same as the ini option)",
    )
    parser.addini(INI, "check every async test with no_leaked_tasks (true/false)", type="bool", default=False)
    parser.addini(INI_GRACE, "no_leaked_tasks: time pending tasks get to finish after the test (default 100ms)", default="")
    parser.addini(
        INI_CANCEL_TIMEOUT,
        "no_leaked_tasks: how long a cancelled leaked task gets to finish before it is reported "
        "as ignoring cancel (default 1s)",
        default="",
    )
    parser.addini(INI_IGNORE, "no_leaked_tasks: task-name glob patterns that are never leaks", type="linelist", default=[])


def session_settings(config: pytest.Config) -> LeakSettings:
    """The ini options that every test's budget starts from (validated at startup)."""
    grace, cancel, ignore = DEFAULTS.grace, DEFAULTS.cancel_timeout, DEFAULTS.ignore
    try:
        value = str(config.getini(INI_GRACE) or "").strip()
        if value:
            grace = _duration("grace", value)
    except (UnitError, TypeError) as exc:
        raise pytest.UsageError(f"{INI_GRACE}={value!r}: {exc}") from None
    try:
        value = str(config.getini(INI_CANCEL_TIMEOUT) or "").strip()
        if value:
            cancel = _cancel_timeout(value)
    except (UnitError, TypeError) as exc:
        raise pytest.UsageError(f"{INI_CANCEL_TIMEOUT}={value!r}: {exc}") from None
    lines = [line.strip() for line in config.getini(INI_IGNORE) or [] if line.strip()]
    if lines:
        ignore = tuple(lines)
    return LeakSettings(grace=grace, cancel_timeout=cancel, ignore=ignore)


def default(config: pytest.Config) -> LeakBudget | None:
    """On for every async test when the CLI flag or the ini option says so, else None."""
    settings = session_settings(config)  # bad option values fail at startup, on or off
    config.stash[_SETTINGS] = settings
    if config.getoption("asyncbudget_no_leaked_tasks", False):
        return LeakBudget()
    try:
        enabled = config.getini(INI)
    except (ValueError, pytest.UsageError) as exc:  # pytest 9 raises UsageError itself
        raise pytest.UsageError(f"{INI}: {exc} (write true or false)") from None
    return LeakBudget() if enabled else None


def make_probe(budget: LeakBudget | None, context: ProbeContext) -> LeakProbe:
    stash = context.config.stash
    resolved = stash.get(_RESOLVED, None)
    if resolved is None:
        resolved = stash[_RESOLVED] = {}
    settings = resolved.get(budget)
    if settings is None:
        session = stash.get(_SETTINGS, None)
        if session is None:
            session = stash[_SETTINGS] = session_settings(context.config)
        if budget is None:
            # Measured for the summary and report only: no grace period (the test's
            # timing stays as it was) and no creation sites (the frame walk is most of
            # the cost).
            settings = replace(LeakBudget().resolve(session), grace=0.0)
        else:
            settings = budget.resolve(session)
        if len(resolved) < 256:  # markers with many distinct options: stop caching
            resolved[budget] = settings
    return LeakProbe(settings, context, record_sites=budget is not None)


# -- the verdict ------------------------------------------------------------------------
def judge(budget: LeakBudget | None, m: LeakMeasurement) -> Verdict:
    findings: list[Finding] = []
    stuck = [t for t in m.leaked if t.outcome == "ignored"]
    for task in stuck:
        findings.append(_stuck_finding(task, m))
    for task in m.foreign_stuck:
        findings.append(_stuck_finding(task, m, foreign=True))
    for task in m.leaked:
        if task.outcome != "ignored":
            findings.append(_leak_finding(task))
    for lost in m.lost:
        findings.append(_lost_finding(lost))
    for coro in m.unawaited:
        findings.append(_unawaited_finding(coro))

    counts = []
    plain = len(m.leaked) - len(stuck)
    if plain:
        counts.append(_plural(plain, "task leaked", "tasks leaked"))
    if stuck or m.foreign_stuck:
        counts.append(_plural(len(stuck) + len(m.foreign_stuck), "task ignored cancel", "tasks ignored cancel"))
    if m.lost:
        counts.append(_plural(len(m.lost), "exception never retrieved", "exceptions never retrieved"))
    if m.unawaited:
        counts.append(_plural(len(m.unawaited), "coroutine never awaited", "coroutines never awaited"))
    problems = m.problems
    if budget is None:
        passed = True
        headline = f"no_leaked_tasks: {', '.join(counts) or 'nothing found'} (measured only, no budget)"
    elif not m.judged:
        passed = True
        headline = f"no_leaked_tasks: not judged, the test did not pass ({', '.join(counts) or 'nothing found'})"
    elif problems:
        passed = False
        headline = f"no_leaked_tasks failed: {', '.join(counts)}"
    else:
        passed = True
        headline = "no_leaked_tasks ok: no task left pending, no exception lost, no coroutine left unawaited"
    return Verdict(
        budget=NAME,
        phase=m.phase,
        passed=passed,
        headline=headline,
        measured=float(problems),
        limit=None if budget is None else 0.0,
        findings=findings,
    )


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _where(frames: list[RawFrame]) -> str:
    culprit = culprit_from(frames)
    if culprit is not None:
        return culprit.describe()
    if frames:
        filename, line, function = frames[0]
        return f"{filename}:{line} in {function}"
    return "unknown"


#: Functions that only pass a coroutine on to the loop: never "where" a task was created.
_PLUMBING = frozenset({"create_task", "ensure_future", "_ensure_future", "run_coroutine_threadsafe"})


def _creation(task: TaskSnapshot) -> tuple[Culprit | None, list[str], bool]:
    """The culprit for a task's creation, notes when that is not user code, and whether
    the culprit is the creating line (True) or only where its coroutine is defined."""
    culprit = culprit_from(task.created)
    if culprit is not None:
        return culprit, [], True
    notes = []
    library = [f for f in task.created if f[2] not in _PLUMBING] or task.created
    if library:
        filename, line, function = library[0]
        notes.append(f"created in library code ({filename}:{line} in {function}), no frame of your code on the stack")
    if task.defined is not None:
        defined = culprit_from([task.defined])
        if defined is not None:
            notes.append("culprit: where its coroutine function is defined")
            return defined, notes, False
    return None, notes, False


def _created_by(task: TaskSnapshot, at_culprit: bool) -> str:
    return f"created by {task.owner.describe()}" + (" (culprit line)" if at_culprit else "")


def _suspended(frames: list[RawFrame], awaiting: str | None) -> str:
    if not frames:
        return "not started"
    text = _where(frames)
    return f"{text} (awaiting {awaiting})" if awaiting else text


def _task_data(task: TaskSnapshot, culprit: Culprit | None) -> dict[str, object]:
    return {
        "task": task.name,
        "coroutine": task.coroutine,
        "created_by": task.owner.describe(),
        "created_in_phase": task.phase,
        "created_at": culprit.as_dict() if culprit else None,
        "suspended_at": _where(task.suspended) if task.suspended else None,
        "outcome": task.outcome,
    }


def _leak_finding(task: TaskSnapshot) -> Finding:
    culprit, notes, at_culprit = _creation(task)
    if task.outcome == "destroyed":
        title = f"task {task.name!r} running {task.coroutine} was garbage-collected while still pending"
    else:
        title = f"task {task.name!r} running {task.coroutine} was still pending after the test"
    details = [_created_by(task, at_culprit), *notes, f"suspended at: {_suspended(task.suspended, task.awaiting)}"]
    if task.outcome.startswith("raised"):
        details.append(f"when cancelled by the plugin it {task.outcome}")
    details.append("fix: await it, cancel and await it, or run it in a TaskGroup before the test ends")
    return Finding(title=title, culprit=culprit, details=details, data={"kind": "leaked_task", **_task_data(task, culprit)})


def _stuck_finding(task: TaskSnapshot, m: LeakMeasurement, foreign: bool = False) -> Finding:
    culprit, notes, at_culprit = _creation(task)
    wait = m.settings.cancel_timeout * (REST_TIMEOUT_FACTOR if foreign else 1)
    when = " when its loop closed at the end of this test" if foreign else ""
    title = (
        f"task {task.name!r} running {task.coroutine} ignored its cancellation{when}: "
        f"still running {format_duration(wait)} after cancel()"
    )
    details = [_created_by(task, at_culprit), *notes]
    if task.suspended:
        details.append(f"suspended at: {_suspended(task.suspended, task.awaiting)}")
    if task.stuck_at and task.stuck_at != task.suspended:
        details.append(f"still running at: {_suspended(task.stuck_at, task.stuck_awaiting)}")
    if task.close_error:
        details.append(f"closing its coroutine failed too ({task.close_error}); it was left as it is")
    else:
        details.append("the plugin closed its coroutine so the suite can go on")
    details.append("fix: re-raise CancelledError (or use 'except Exception'), and keep cleanup short")
    return Finding(title=title, culprit=culprit, details=details, data={"kind": "ignored_cancel", **_task_data(task, culprit)})


def _lost_finding(lost: Any) -> Finding:
    task = lost.task
    culprit, notes, at_culprit = _creation(task)
    message = f": {lost.message}" if lost.message else ""
    title = f"task {task.name!r} running {task.coroutine} raised {lost.type_name}{message}, and nobody retrieved it"
    details = [_created_by(task, at_culprit), *notes]
    if lost.raised:
        details.append(f"raised at: {_where(lost.raised)}")
    details.append("fix: await the task (or call .result()/.exception()), or use a TaskGroup")
    data = {"kind": "exception_never_retrieved", "exception": lost.type_name, "message": lost.message, **_task_data(task, culprit)}
    return Finding(title=title, culprit=culprit, details=details, data=data)


def _unawaited_finding(coro: Any) -> Finding:
    details: list[str] = []
    if coro.origin is not None:
        culprit = culprit_from(coro.origin)
        details.append("created at the culprit line (coroutine origin tracking)")
    else:
        culprit = culprit_from(coro.dropped)
        if culprit is not None:
            details.append("dropped at the culprit line: for a call missing its 'await' this is where it was created")
    if culprit is None:
        if coro.dropped:
            filename, line, function = coro.dropped[0]
            details.append(f"dropped in library code ({filename}:{line} in {function}), no frame of your code on the stack")
        defined = culprit_from([coro.defined]) if coro.defined is not None else None
        if defined is not None:
            culprit = defined
            details.append("culprit: where the coroutine function is defined")
    details.append(f"during {coro.owner.describe()}")
    details.append("fix: await it, or pass it to asyncio.create_task() and keep the task")
    data = {
        "kind": "coroutine_never_awaited",
        "coroutine": coro.name,
        "created_by": coro.owner.describe(),
        "created_at": culprit.as_dict() if culprit else None,
    }
    return Finding(title=f"coroutine '{coro.name}' was never awaited", culprit=culprit, details=details, data=data)


