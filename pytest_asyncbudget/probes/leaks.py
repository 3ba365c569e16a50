"""How leaked tasks, lost exceptions, never-awaited coroutines and cancel-proof tasks are found.

What is watched, and how
------------------------
The per-loop patches (task factory, exception handler) are installed for one test
phase at a time and undone when the phase ends (:meth:`LeakProbe.phase_stopped`, always
called by the core, even when the test crashes). The module-level ones (``gather``, the
unawaited-coroutine hook, the runners' shutdown seam, a ``gc.callbacks`` entry) are put
in place when setup starts and undone when teardown ends, or by
:meth:`LeakProbe.test_finished` for a test that never got there; between phases, while
pytest reports, they let everything through as if they were not there. Each patch is
undone only if it is still ours, so a user's own task factory or exception handler set
during the test is never clobbered.

* **Task creation** - a task factory on every loop that starts running during the phase
  (``loop.set_task_factory``, chained to the loop's previous factory, so eager factories
  and user factories keep working). Per task it records, in one flat tuple keyed by
  ``id(task)``: who owns it (see below), the phase, its coroutine's code object, and the
  ``(code, f_lasti)`` of the innermost frame of user code on the creating stack plus its
  caller. Line numbers are computed from ``f_lasti`` only for tasks that end up in a
  report. The tuple holds no reference to the task (so nothing lives longer than it
  would have) and only objects the garbage collector does not track (so a test that keeps
  100,000 tasks alive costs it no collection work); an entry is matched to a task by its
  address *and* its coroutine's code. No frame object is kept (that would keep the
  creator's locals alive) and no coroutine origin tracking is switched on (that slows
  every coroutine call, not only task creation). Entries of finished tasks are pruned
  against ``asyncio.all_tasks()`` whenever the table has grown fourfold. Tasks that a
  runner creates to start a coroutine on a loop that is not running yet (pytest-asyncio's
  and anyio's ``run``) are not recorded at all.
* **gather()** - ``asyncio.gather`` is wrapped for the test (``_patch_gather``). With a
  budget it finds its caller's line once per call, and the factory gives that site to
  every task the caller's task makes until gather returns, instead of looking at the
  stack once per task. A large gather (8 awaitables or more) is recorded as a whole: its
  tasks are kept in a list with gather's future until the future is done; only tasks
  still pending then (gather failed fast or was cancelled), or when a record is needed
  earlier, get an entry each. When the probe's factory is the loop's only one and gather
  is the standard library's, the factory is even taken off the loop while gather runs
  (no code but gather's own runs then), so the tasks are made at the loop's own speed,
  and are read from gather's future (``_children``, one per awaitable, in order). See
  benchmarks/README.md for the cost.
* **Exceptions never retrieved, tasks destroyed while pending** - asyncio reports both
  from ``Task.__del__`` through ``loop.call_exception_handler``. An exception handler is
  put on each loop for the phase; it notes the contexts that concern tasks of this test and
  always passes every context on to the previous handler (or the default one), so logs,
  anyio's own handler and user handlers see exactly what they saw before. A task that
  was still pending at the check and fails during the grace period is checked directly
  (its ``_log_traceback`` flag). Like asyncio itself, the probe cannot know about a failed
  task that something keeps alive beyond the test: its exception may yet be retrieved.
* **Coroutines never awaited** - CPython calls ``warnings._warn_unawaited_coroutine(coro)``
  when a coroutine that never ran is destroyed. For the test that function is replaced
  by one that notes the coroutine and the stack at that moment, then issues the very same
  ``RuntimeWarning`` with the same ``stacklevel`` (so the warning still points at the
  user's line and warning filters behave as before). Refcounting destroys a dropped
  coroutine on the line that dropped it: for ``fetch()`` written without ``await`` that is
  the line that created it. Coroutines destroyed by the cyclic garbage collector (a
  ``gc.callbacks`` entry tells when a collection runs) may come from any earlier test, so
  they are left to Python's own warning and never fail this test. When the user enabled
  coroutine origin tracking (``sys.set_coroutine_origin_tracking_depth``, asyncio debug
  mode), ``cr_origin`` gives the exact creating line and is used instead.
* **The leak check and the bounded cancel** - a loop that closes at the end of the test
  is closed by ``asyncio.Runner.close()`` (pytest-asyncio's function-scoped runner fixture,
  anyio's test runner), which calls ``asyncio.runners._cancel_all_tasks(loop)``: cancel
  everything, then wait *without a bound* for all of it. For the test, that module
  function is replaced by :meth:`LeakProbe._runner_closing`: check this test's tasks first
  (after every function-scoped fixture's teardown, since the runner fixture is torn down
  last), then cancel what is left and wait at most ``cancel_timeout``, reporting
  exceptions exactly as asyncio does. A loop that outlives the test (``loop_scope`` module,
  class, package or session) is checked the same way when the teardown phase ends, by
  running it briefly.

Who owns a task
---------------
A task created inside another task inherits its parent's owner. Otherwise the creating
stack is walked up to its root once per parent task and loop run, and matched against
the code objects of the test function and of its fixtures (snapshotted when setup starts,
before pytest-asyncio or anyio swap fixture functions for their wrappers): the test body,
fixture ``name`` (with its scope), or nothing. Tasks of fixtures wider than function
scope, of the runners' own machinery (anyio's runner task) and of tasks this test did not
start are never blamed on the test. A task created from a plain callback is blamed on the
phase it was created in.

Cancel-proof tasks
------------------
A task still pending ``cancel_timeout`` after its cancel would hang any later loop run
or close, so after reporting it the probe closes its coroutine (``GeneratorExit`` at its
``await``; ``except CancelledError`` does not catch it) and marks it so asyncio does not
log it when it is garbage-collected. If its coroutine ignores ``GeneratorExit`` too, that
is reported and it is left as it is.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import gc
import inspect
import sys
import threading
import traceback
import types
import warnings
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..culprit import _PLUGIN_DIR, RawFrame, _user_file_cache, absolute_path, is_user_file, module_dirs
from .base import Probe, ProbeContext

if TYPE_CHECKING:
    import pytest

__all__ = [
    "LeakMeasurement",
    "LeakProbe",
    "LeakSettings",
    "LostException",
    "Owner",
    "TaskSnapshot",
    "UnawaitedCoroutine",
]

_getframe = sys._getframe
_get_ident = threading.get_ident
_get_running_loop = asyncio._get_running_loop
# asyncio.current_task is a Python function on 3.11 and a C function from 3.12 on; on
# 3.11 the dict it reads is used directly (half the cost of a task's recording).
_current_tasks = getattr(asyncio.tasks, "_current_tasks", None)
if isinstance(asyncio.current_task, types.BuiltinFunctionType) or not isinstance(_current_tasks, dict):
    _current_task = asyncio.current_task
else:
    _current_task = _current_tasks.get
_Task = asyncio.tasks.Task
#: The standard library's gather, and whether its future keeps the children it made in
#: order (``_GatheringFuture._children``, 3.7 on): then a large gather's tasks can be made
#: with no task factory at all and read from there (see _make_gather).
_STDLIB_GATHER = asyncio.tasks.gather
def _gather_keeps_children() -> bool:
    init = getattr(getattr(asyncio.tasks, "_GatheringFuture", None), "__init__", None)
    return "_children" in getattr(getattr(init, "__code__", None), "co_names", ())


_GATHER_KEEPS_CHILDREN = _gather_keeps_children()
_ref = weakref.ref
_all_tasks = asyncio.all_tasks

#: The stdlib's own reporter of never-awaited coroutines (see the module docstring).
_STDLIB_WARN_UNAWAITED: Callable[[Any], None] | None = getattr(warnings, "_warn_unawaited_coroutine", None)

#: When a loop closes, tasks that are not this test's (a wider-scoped fixture's, ignored
#: ones) get this many times ``cancel_timeout`` to finish after their cancel: asyncio would
#: wait forever, and a slow but finite shutdown must keep working; only a stuck one fails.
REST_TIMEOUT_FACTOR = 10
#: The manager's per-test state key (pytest_asyncbudget.record.STATE), imported late.
_STATE_KEY: Any = None
#: How far up a stack the owner walk looks for the test or a fixture.
_OWNER_DEPTH = 200
#: The origins table is pruned of finished tasks when it grows past this, then past four
#: times what the last pruning kept (amortized O(1) per task). Pruning asks
#: ``asyncio.all_tasks()``, which costs about 0.3 us per live task on 3.11, so it is kept
#: rare: most tests never create this many tasks, and an entry is only ~150 bytes.
_PRUNE_AT = 16384
#: The gather wrapper's "no gather in progress" (never a task, nor None).
_NO_BURST: Any = object()
#: A gather() of at least this many awaitables records its tasks in one go (see
#: _make_gather); a smaller one costs less task by task.
_BURST_MIN = 8
#: The task factory's memo of a walk through library frames, when there is none.
_NO_WALK: tuple[Any, ...] = (0, 0, None, -1)


@dataclass(frozen=True)
class LeakSettings:
    """The resolved options of one test's ``no_leaked_tasks`` budget."""

    #: How long pending tasks get to finish on their own before they count as leaked.
    grace: float = 0.1
    #: How long a cancelled leaked task gets to finish before it is reported as ignoring it.
    cancel_timeout: float = 1.0
    #: Glob patterns (``fnmatch``) on a task's name or its coroutine's qualified name.
    ignore: tuple[str, ...] = ()

    def ignores(self, name: str, coroutine: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(coroutine, p) for p in self.ignore)


# -- owners --------------------------------------------------------------------------
TEST = "test"
FIXTURE = "fixture"
CALLBACK = "callback"
PHASE = "phase"  # code running in a phase, when no test or fixture frame is on the stack
RUNNER = "runner"  # pytest-asyncio's, anyio's, pytest's or this plugin's own machinery
FOREIGN = "foreign"  # a task this test did not start (a wider-scoped service, a library)


@dataclass(frozen=True)
class Owner:
    """Who created a task, as far as the test is concerned."""

    kind: str
    name: str = ""
    scope: str = "function"
    phase: str = ""

    @property
    def is_the_tests(self) -> bool:
        """True when a task of this owner still pending at the end is this test's leak."""
        return self.kind in (TEST, CALLBACK, PHASE) or (self.kind == FIXTURE and self.scope == "function")

    @property
    def inheritable(self) -> bool:
        """Children of a task with this owner have the same owner."""
        return self.kind != RUNNER

    def describe(self) -> str:
        if self.kind == TEST:
            return "the test body"
        if self.kind == FIXTURE:
            scope = "" if self.scope == "function" else f" ({self.scope}-scoped)"
            return f"fixture '{self.name}'{scope}"
        where = {"call": "the test body", "setup": "fixture setup", "teardown": "fixture teardown"}
        if self.kind == CALLBACK:
            return f"a callback during {where.get(self.phase, self.phase)}"
        if self.kind == PHASE:
            return f"code running during {where.get(self.phase, self.phase)}"
        if self.kind == RUNNER:
            return "the test runner"
        return "something outside this test (a wider-scoped fixture, an earlier test, or a task they started)"


_TEST_OWNER = Owner(TEST)
_CALLBACK_OWNERS = {phase: Owner(CALLBACK, phase=phase) for phase in ("setup", "call", "teardown")}
_RUNNER_OWNER = Owner(RUNNER)
_FOREIGN_OWNER = Owner(FOREIGN)
#: The first entries of every probe's owner list (entries store an owner's index).
_FIXED_OWNERS = (_TEST_OWNER, _RUNNER_OWNER, _FOREIGN_OWNER, *_CALLBACK_OWNERS.values())
_RUNNER_INDEX = _FIXED_OWNERS.index(_RUNNER_OWNER)
_FIXED_OWNER_IDS = {owner: i for i, owner in enumerate(_FIXED_OWNERS)}


#: Tasks a library starts on purpose to live exactly as long as their event loop, and that
#: end when the runner cancels what is left at shutdown: never a test's leak, whoever
#: called the library. (module of the coroutine, its qualified name.)
_LOOP_LIFETIME_TASKS = frozenset(
    {
        # anyio.to_process: kills the loop's worker processes when the loop shuts down.
        ("anyio._backends._asyncio", "_shutdown_process_pool_on_exit"),
        # sse-starlette (EventSourceResponse): one shutdown watcher per thread's loop,
        # polling every half second until the server exits. Found on the MCP SDK's
        # suite, where 596 tests were reported as leaking it.
        ("sse_starlette.sse", "_shutdown_watcher"),
    }
)


def _lives_with_its_loop(task: Any) -> bool:
    coro = task.get_coro()
    frame = getattr(coro, "cr_frame", None)
    if frame is None:
        return False
    return (frame.f_globals.get("__name__"), _coro_qualname(coro)) in _LOOP_LIFETIME_TASKS


def _infra_prefixes() -> tuple[str, ...]:
    """The runners' and the plugin's directories (made on the loop thread, mid-test)."""
    return tuple(sorted({_PLUGIN_DIR} | module_dirs(("pytest_asyncio", "anyio", "_pytest", "pytest", "pluggy"))))


def _code_of(obj: object) -> Any:
    obj = getattr(obj, "__func__", obj)
    try:
        obj = inspect.unwrap(obj)  # type: ignore[arg-type]
    except ValueError:  # a __wrapped__ cycle
        pass
    obj = getattr(obj, "__func__", obj)
    return getattr(obj, "__code__", None)


# -- what a report holds --------------------------------------------------------------
@dataclass
class TaskSnapshot:
    """A task of the test as found by the check (data only; culprits are built later)."""

    name: str
    coroutine: str
    owner: Owner
    #: The phase the task was created in.
    phase: str
    #: The creating stack from its first user frame, innermost first (or library frames).
    created: list[RawFrame]
    #: Where its coroutine function is defined.
    defined: RawFrame | None
    #: Where it was suspended when found, innermost first, and what it was awaiting.
    suspended: list[RawFrame] = field(default_factory=list)
    awaiting: str | None = None
    #: What happened when it was cancelled: "cancelled", "finished", "raised ...",
    #: "ignored", "destroyed" (garbage-collected while pending) or "" (not cancelled).
    outcome: str = ""
    #: For a task that ignored its cancel: where it was still suspended after the wait.
    stuck_at: list[RawFrame] = field(default_factory=list)
    stuck_awaiting: str | None = None
    #: Set when even closing its coroutine failed.
    close_error: str = ""


@dataclass
class LostException:
    """A task of the test that failed and whose exception nobody retrieved."""

    task: TaskSnapshot
    type_name: str
    message: str
    #: Where the exception was raised (its traceback), innermost first.
    raised: list[RawFrame]


@dataclass
class UnawaitedCoroutine:
    """A coroutine created and destroyed without ever being awaited."""

    name: str
    #: The stack when it was destroyed, innermost first.
    dropped: list[RawFrame]
    #: The exact creating stack when origin tracking was on (innermost first), else None.
    origin: list[RawFrame] | None
    defined: RawFrame | None
    owner: Owner
    phase: str


@dataclass
class LeakMeasurement:
    """What the leak probe found over the whole test, handed over at the end of teardown."""

    phase: str
    #: False when the test had already failed, errored or been skipped: findings are
    #: kept for the record but not judged.
    judged: bool
    settings: LeakSettings
    leaked: list[TaskSnapshot]
    lost: list[LostException]
    unawaited: list[UnawaitedCoroutine]
    #: Tasks this test did not create that ignored their cancel when their loop closed.
    foreign_stuck: list[TaskSnapshot]

    @property
    def problems(self) -> int:
        return len(self.leaked) + len(self.lost) + len(self.unawaited) + len(self.foreign_stuck)


# -- helpers that turn live objects into data ----------------------------------------
def _line_of(code: Any, lasti: int) -> int:
    for start, end, line in code.co_lines():
        if start <= lasti < end and line is not None:
            return line
    return code.co_firstlineno


def _site_frames(site: tuple[Any, ...]) -> list[RawFrame]:
    out: list[RawFrame] = []
    for i in range(0, len(site), 2):
        code = site[i]
        out.append((code.co_filename, _line_of(code, site[i + 1]), code.co_name))
    return out


def _coro_qualname(coro: Any) -> str:
    return getattr(coro, "__qualname__", None) or getattr(coro, "__name__", None) or repr(coro)


def _coro_name(coro: Any) -> str:
    name = getattr(coro, "__qualname__", None) or getattr(coro, "__name__", None)
    return f"{name}()" if name else repr(coro)


def _coro_defined(coro: Any) -> RawFrame | None:
    code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None) or getattr(coro, "ag_code", None)
    if code is None:
        return None
    return (code.co_filename, code.co_firstlineno, code.co_name)


def _await_chain(coro: Any) -> tuple[list[RawFrame], str | None]:
    """Where *coro* is suspended, innermost first, and the call its innermost user frame is in."""
    frames: list[RawFrame] = []
    calls: list[str] = []
    obj = coro
    for _ in range(64):
        frame = _first_attr(obj, ("cr_frame", "gi_frame", "ag_frame"))
        if frame is None:
            break
        code = frame.f_code
        frames.append((code.co_filename, frame.f_lineno, code.co_name))
        calls.append(_public_name(frame.f_globals.get("__name__", ""), code))
        obj = _first_attr(obj, ("cr_await", "gi_yieldfrom", "ag_await"))
        if obj is None:
            break
    frames.reverse()
    calls.reverse()
    for i, (filename, _, _) in enumerate(frames):
        if is_user_file(filename):
            return frames, (calls[i - 1] if i > 0 else None)
    return frames, None


def _public_name(module: str, code: Any) -> str:
    """``asyncio.sleep`` rather than ``asyncio.tasks.sleep`` when the package exports it."""
    name = code.co_name
    if not module:
        return name
    package = sys.modules.get(module.split(".", 1)[0])
    exported = getattr(package, name, None)
    if getattr(exported, "__code__", None) is code:
        return f"{package.__name__}.{name}"  # type: ignore[union-attr]
    return f"{module}.{getattr(code, 'co_qualname', name)}"


def _first_attr(obj: Any, names: tuple[str, ...]) -> Any:
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


def _frames_of_traceback(tb: Any) -> list[RawFrame]:
    out: list[RawFrame] = []
    while tb is not None and len(out) < 100:
        code = tb.tb_frame.f_code
        out.append((code.co_filename, tb.tb_lineno, code.co_name))
        tb = tb.tb_next
    out.reverse()
    return out


def _raw_frames(frame: Any, limit: int = 60) -> list[RawFrame]:
    out: list[RawFrame] = []
    while frame is not None and len(out) < limit:
        code = frame.f_code
        out.append((code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back
    return out


_RENAMES_TASKS: bool | None = None


def _factory_renames_tasks(loop: Any) -> bool:
    """True on Pythons whose ``BaseEventLoop.create_task`` renames a task made by a task
    factory to ``"None"`` when no name was given (CPython 3.13.0). Checked once, on a
    throwaway loop, by trying it; only stock asyncio loops are concerned."""
    global _RENAMES_TASKS
    if getattr(type(loop), "create_task", None) is not asyncio.BaseEventLoop.create_task:
        return False
    if _RENAMES_TASKS is None:
        probe_loop = asyncio.new_event_loop()
        coro = _nothing()
        try:
            probe_loop.set_task_factory(lambda loop, coro, **kwargs: _Task(coro, loop=loop, **kwargs))
            task = probe_loop.create_task(coro)
            _RENAMES_TASKS = task.get_name() == "None"
            task._log_destroy_pending = False  # never run: its loop is closed right away
        finally:
            coro.close()
            probe_loop.close()
    return _RENAMES_TASKS


async def _nothing() -> None:
    pass


def _create_task_calling(factory: Callable[..., Any], loop: Any, previous: Any) -> Callable[..., Any]:
    """``loop.create_task`` that makes the task with *factory* and names it correctly.

    A task factory that the test sets after this was installed wins, as it would over
    a task factory of ours: then the class's create_task runs, unrecorded."""

    def create_task(coro: Any, **kwargs: Any) -> Any:
        if loop.get_task_factory() is not previous:
            return type(loop).create_task(loop, coro, **kwargs)
        name = kwargs.pop("name", None)
        loop._check_closed()
        task = factory(loop, coro, **kwargs)
        if name is not None:
            task.set_name(name)
        return task

    return create_task


def _made_by(outer: Any, awaitables: tuple[Any, ...], loop: Any) -> list[Any]:
    """The tasks the standard gather made for *awaitables* (returning *outer*).

    gather's future keeps one child per awaitable, in order: the awaitable itself when it
    was a future already, else the task made for it. Without that (it raised half-way),
    the loop's pending tasks running one of the coroutines given."""
    children = getattr(outer, "_children", None)
    if type(children) is list and len(children) == len(awaitables):
        return [child for child, given in zip(children, awaitables) if child is not given]
    given_ids = {id(a) for a in awaitables}
    return [t for t in _all_tasks(loop) if id(t.get_coro()) in given_ids]


def _user_frame(frame: Any) -> tuple[Any, int]:
    """The innermost frame of user code from *frame* up (at most 40 frames up), and how
    many frames up it is; (None, ...) when there is none."""
    depth = 0
    while frame is not None and depth <= 40:
        filename = frame.f_code.co_filename
        user = _user_file_cache.get(filename)
        if user is None:
            user = is_user_file(filename)
        if user:
            return frame, depth
        frame = frame.f_back
        depth += 1
    return None, depth


def _dead_ref() -> None:
    """Stands for a weak reference to nothing."""
    return None


def _retrieve_quietly(task: asyncio.Task[Any]) -> None:
    """Done callback of a neutralized task: its last error is ours to discard."""
    if not task.cancelled():
        task.exception()


class LeakProbe(Probe):
    """Tracks the tasks and coroutines one test creates, and checks them at the end."""

    budget = "no_leaked_tasks"

    def __init__(self, settings: LeakSettings, context: ProbeContext, *, record_sites: bool = True) -> None:
        self.settings = settings
        #: False when the test is only measured (no budget): tasks are still tracked with
        #: their owner, but where each was created is not recorded (see _make_factory).
        self.record_sites = record_sites
        self._item = context.item
        self._thread = threading.get_ident()
        #: id(task) -> (owner index, phase, coroutine code, (code, f_lasti) pairs of the
        #: creation site); see _make_factory.
        self._origins: dict[int, tuple[Any, ...]] = {}
        self._prune_at = _PRUNE_AT
        self._owner_list: list[Owner] = list(_FIXED_OWNERS)
        self._owner_ids: dict[Owner, int] = dict(_FIXED_OWNER_IDS)
        self._phase = ""
        #: id(parent task) -> (weakref, owner index), for the current loop run.
        self._owner_cache: dict[int, tuple[Any, int]] = {}
        #: [weakref to the parent that created the last task, its owner index].
        self._last_parent: list[Any] = [_dead_ref, 0]
        #: Fixture and test functions, snapshotted before any fixture is set up.
        self._functions = self._snapshot_functions(context.item)
        self._owners_by_code: dict[int, Owner] | None = None
        self._codes_alive: list[Any] = []
        self._infra: tuple[str, ...] | None = None
        # patches of the current phase
        self._loop_patches: dict[Any, tuple[Any, Any, Any, Any]] = {}
        # patches of the whole test (see the module docstring), and whether they are in place
        self._test_patched = False
        #: True while a phase runs: the test-wide patches act only then.
        self._in_phase = False
        self._warn_patch: Any = None
        self._warn_original: Any = None
        #: len(sys.modules) when the runners' modules were last looked for (a runner's
        #: module, anyio's say, may be imported by the test's own setup).
        self._runner_modules_seen = -1
        self._runner_patches: list[tuple[Any, Any, Any]] = []
        #: (module, original, wrapper) of asyncio.gather, for the test (see _patch_gather).
        self._gather_patches: list[tuple[Any, Any, Any]] = []
        #: [parent task, creation site, list of the tasks made, loop] while a gather() of
        #: the test's thread makes its tasks, else [_NO_BURST, None, None, None]; shared by
        #: the gather wrapper and the factories (the list only for a large gather).
        self._burst: list[Any] = [_NO_BURST, None, None, None]
        #: id(gather's future) -> (the future, owner index, phase, site, tasks it made):
        #: large gathers whose tasks are not in _origins yet (see _make_gather).
        self._bursts: dict[int, tuple[Any, int, str, Any, list[Any]]] = {}
        self._in_gc = False
        # state across the test
        self._loops: dict[Any, None] = {}
        self._checked: set[int] = set()
        self._leaked: list[TaskSnapshot] = []
        self._lost: list[LostException] = []
        self._unawaited: list[UnawaitedCoroutine] = []
        self._foreign_stuck: list[TaskSnapshot] = []
        #: Tasks whose coroutine the probe closed; strong references, so ids stay theirs.
        self._neutralized_tasks: list[Any] = []
        self._neutralized: set[int] = set()
        self._error: str | None = None

    # -- probe events ---------------------------------------------------------------
    def phase_started(self, phase: str) -> None:
        self._phase = phase
        self._in_phase = True
        if not self._test_patched:
            self._test_patched = True
            self._patch_warnings()
            gc.callbacks.append(self._gc_event)
            self._patch_gather()
        self._patch_runners()  # a runner's module may have been imported since
        for loop in self._loops:  # loops of earlier phases: a fixture's finalizer may drop
            if not loop.is_closed():  # a failed task before the loop runs again
                self._patch_loop(loop)

    def loop_started(self, loop: asyncio.AbstractEventLoop) -> None:
        self._owner_cache.clear()
        self._last_parent[0] = _dead_ref
        self._loops[loop] = None
        if loop not in self._loop_patches:
            self._patch_loop(loop)

    def phase_stopped(self, phase: str) -> None:
        try:
            if phase == "teardown":
                self._check_remaining_loops()
        finally:
            self._in_phase = False
            self._record_bursts()
            self._burst[:] = [_NO_BURST, None, None, None]
            self._unpatch_loops()
            if phase == "teardown":
                self.test_finished()
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"no_leaked_tasks probe failed earlier in this test:\n{error}")

    def test_finished(self) -> None:
        self._in_phase = False
        if not self._test_patched:
            return
        self._test_patched = False
        self._unpatch_loops()
        self._unpatch_runners()
        self._unpatch_gather()
        self._unpatch_warnings()
        try:
            gc.callbacks.remove(self._gc_event)
        except ValueError:
            pass
        self._in_gc = False
        self._release()

    def _release(self) -> None:
        """The test is over: drop what only the check needed (the manager keeps probes
        until the session ends), and let the tasks the probe closed be collected."""
        self._origins = {}
        self._bursts.clear()
        self._owner_cache.clear()
        self._last_parent[0] = _dead_ref
        self._loops.clear()
        self._neutralized_tasks.clear()
        self._neutralized.clear()
        self._owners_by_code = None
        self._codes_alive.clear()

    def measurement(self, phase: str) -> LeakMeasurement | None:
        if phase != "teardown":
            return None  # everything is judged together once the test is over
        return LeakMeasurement(
            phase=phase,
            judged=self._test_passed(),
            settings=self.settings,
            leaked=self._leaked,
            lost=self._lost,
            unawaited=self._unawaited,
            foreign_stuck=self._foreign_stuck,
        )

    def _test_passed(self) -> bool:
        global _STATE_KEY
        if _STATE_KEY is None:
            from ..record import STATE  # late: record imports the budget registry

            _STATE_KEY = STATE
        state = self._item.stash.get(_STATE_KEY, None)
        return state is None or state.record.outcome == "passed"

    def _note_error(self) -> None:
        """An error in code that runs outside the core's guard: report it at phase end."""
        if self._error is None:
            self._error = traceback.format_exc()

    # -- per-loop patches: the task factory and the exception handler ---------------
    def _patch_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        previous_factory = loop.get_task_factory()
        previous_handler = loop.get_exception_handler()
        factory = self._make_factory(previous_factory, loop)
        handler = self._make_handler(previous_handler)
        hook: Any = factory
        if _factory_renames_tasks(loop):
            # CPython 3.13.0's create_task names every task "None" when a task factory is
            # set: go in front of create_task instead, as an instance attribute (undone in
            # _unpatch_loops), and leave the loop's task factory alone.
            hook = _create_task_calling(factory, loop, previous_factory)
            loop.create_task = hook  # type: ignore[method-assign]
        else:
            loop.set_task_factory(factory)  # undone in _unpatch_loops
        loop.set_exception_handler(handler)  # undone in _unpatch_loops
        self._loop_patches[loop] = (previous_factory, hook, previous_handler, handler)

    def _unpatch_loops(self) -> None:
        patches, self._loop_patches = self._loop_patches, {}
        for loop, (previous_factory, hook, previous_handler, handler) in patches.items():
            if getattr(loop, "__dict__", {}).get("create_task") is hook:
                del loop.create_task  # type: ignore[method-assign]
            elif loop.get_task_factory() is hook:
                loop.set_task_factory(previous_factory)
            if loop.get_exception_handler() is handler:
                loop.set_exception_handler(previous_handler)

    def _make_factory(self, previous: Any, loop: Any) -> Callable[..., Any]:
        """The task factory for one loop and one phase (see the module docstring).

        Written for speed: an entry is a flat tuple of ints, strings and code objects,
        which the garbage collector stops tracking after its first pass, so recording adds
        no GC work however many tasks a test keeps alive. Nothing here allocates per task
        besides that tuple (and the frame objects Python makes for the frames we look at,
        freed when create_task returns).
        """
        origins = self._origins
        phase = self._phase
        callback_owner = self._owner_ids.get(_CALLBACK_OWNERS.get(phase))  # type: ignore[arg-type]
        if callback_owner is None:
            callback_owner = self._owner_index(Owner(CALLBACK, phase=phase))
        probe = self
        make_task = _Task if previous is None else None
        # Stock asyncio's create_task is a Python frame between the caller and us: skip it
        # unlooked (uvloop's is compiled, so there the caller is the first frame).
        skip = 2 if getattr(type(loop), "create_task", None) is asyncio.BaseEventLoop.create_task else 1
        # the parent seen last and its owner (most tasks come in bursts from one parent);
        # reset by loop_started, as a runner's task may run another fixture in each run
        last = self._last_parent
        # The entry made last: tasks come in bursts from one line (gather, loops), and
        # then share that one tuple (see below).
        last_entry: tuple[Any, ...] = (-1, phase, None)
        prune_at = self._prune_at
        record_sites = self.record_sites
        #: (frames from the first to the user's frame, id, code and f_lasti of that frame)
        last_walk: tuple[Any, ...] = _NO_WALK
        burst = self._burst
        #: The gather site last_entry was made from (None: made another way).
        last_burst_site: Any = None

        #: [coroutine, the task creating it] while a task that may start eagerly is made
        #: (a previous factory such as eager_task_factory, or eager_start=): tasks made
        #: during its first step come from it before it is recorded (see below).
        starting: list[Any] = [None, None]

        def task_factory(loop: Any, coro: Any, **kwargs: Any) -> Any:
            nonlocal last_entry, last_walk, prune_at, last_burst_site
            if make_task is not None and not ("eager_start" in kwargs and kwargs["eager_start"]):
                # (uvloop passes context=None to every factory call)
                task = make_task(coro, loop=loop, **kwargs) if kwargs else make_task(coro, loop=loop)
                made = burst[2]
                if made is not None and burst[3] is loop:
                    # A large gather of the current task: its wrapper records the lot
                    # once gather returns (no task can start eagerly on this path).
                    made.append(task)
                    return task
            else:
                saved = starting[0], starting[1]
                starting[0], starting[1] = coro, _current_task(loop)
                try:
                    task = previous(loop, coro, **kwargs) if make_task is None else make_task(coro, loop=loop, **kwargs)
                finally:
                    starting[0], starting[1] = saved
            try:
                parent = _current_task(loop)
                if parent is None:
                    if not loop.is_running():
                        return task  # a runner starting its coroutine: not the test's task
                    owner = callback_owner
                elif last[0]() is parent:
                    owner = last[1]
                else:
                    owner = probe._owner_of_creator(parent, _getframe(1), starting)
                    last[0], last[1] = _ref(parent), owner
                try:
                    code = coro.cr_code
                except AttributeError:  # not a native coroutine (a generator-based one, say)
                    code = getattr(coro, "gi_code", None)
                if not record_sites:
                    entry = last_entry
                    if code is not entry[2] or owner != entry[0]:  # else a burst: share it
                        entry = last_entry = (owner, phase, code)
                    origins[id(task)] = entry
                    if len(origins) > prune_at:
                        prune_at = probe._prune()
                    return task
                if burst[0] is parent:
                    # Made by a gather() that this task's parent called: its site was
                    # found once, when gather was called (see _patch_gather).
                    site = burst[1]
                    entry = last_entry
                    if not (last_burst_site is site and code is entry[2] and owner == entry[0]):
                        entry = last_entry = (owner, phase, code, *site)
                        last_burst_site = site
                    origins[id(task)] = entry
                    if len(origins) > prune_at:
                        prune_at = probe._prune()
                    return task
                last_burst_site = None
                # the creation site: the innermost frame of user code, and its caller
                frame = None
                if last_walk[0]:
                    # A burst through library code (gather -> ensure_future -> create_task)
                    # has the user's frame as many frames up as last time: the same frame
                    # object (same code, same instruction) there means the same site, and
                    # looking only there saves making a frame object per library frame.
                    try:
                        found = _getframe(skip + last_walk[0])
                    except ValueError:  # a shallower stack than last time
                        found = None
                    if (
                        found is not None
                        and id(found) == last_walk[1]
                        and found.f_code is last_walk[2]
                        and found.f_lasti == last_walk[3]
                    ):
                        frame = found
                if frame is None:
                    first = _getframe(skip)
                    frame, depth = _user_frame(first)
                    if frame is not None and depth:
                        last_walk = (depth, id(frame), frame.f_code, frame.f_lasti)
                    elif last_walk[0]:
                        last_walk = _NO_WALK
                if frame is not None:
                    # Tasks come in bursts from one line (gather, loops): they then share
                    # the tuple made for the first, so a burst of 10,000 tasks leaves one
                    # object behind, not 10,000 (compared part by part: cheaper than
                    # making a tuple to compare).
                    f_code, f_lasti, back = frame.f_code, frame.f_lasti, frame.f_back
                    entry = last_entry
                    if back is None:
                        if not (
                            len(entry) == 5
                            and f_lasti == entry[4]
                            and f_code is entry[3]
                            and code is entry[2]
                            and owner == entry[0]
                        ):
                            entry = last_entry = (owner, phase, code, f_code, f_lasti)
                    else:
                        b_code, b_lasti = back.f_code, back.f_lasti
                        if not (
                            len(entry) == 7
                            and f_lasti == entry[4]
                            and b_lasti == entry[6]
                            and f_code is entry[3]
                            and b_code is entry[5]
                            and code is entry[2]
                            and owner == entry[0]
                        ):
                            entry = last_entry = (owner, phase, code, f_code, f_lasti, b_code, b_lasti)
                else:  # library code only: keep a few frames to name it
                    entry = (owner, phase, code, first.f_code, first.f_lasti)
                    back = first.f_back
                    for _ in range(2):
                        if back is None:
                            break
                        entry += (back.f_code, back.f_lasti)
                        back = back.f_back
                origins[id(task)] = entry
                if len(origins) > prune_at:
                    prune_at = probe._prune()
            except Exception:  # noqa: BLE001 - never break the user's create_task
                probe._note_error()
            return task

        return task_factory

    def _owner_index(self, owner: Owner) -> int:
        index = self._owner_ids.get(owner)
        if index is None:
            index = self._owner_ids[owner] = len(self._owner_list)
            self._owner_list.append(owner)
        return index

    def _owner_of_creator(self, parent: Any, frame: Any, starting: list[Any] | None = None) -> int:
        """Owner of a task the task *parent* is creating (*frame*: the creating call)."""
        entry = self._origins.get(id(parent))
        if (
            entry is not None
            and entry[0] != _RUNNER_INDEX  # runner tasks run many things
            and entry[2] is getattr(parent.get_coro(), "cr_code", None)
        ):
            return entry[0]  # a task of ours: its children are its owner's
        cached = self._owner_cache.get(id(parent))
        if cached is not None and cached[0]() is parent:
            return cached[1]
        if starting is not None and starting[1] is not None and parent.get_coro() is starting[0]:
            # made during the eager first step of a task that is still being made (not
            # recorded yet): its owner is its creator's
            return self._owner_of_parent(starting[1], frame)
        return self._owner_of_parent(parent, frame)

    def _owner_of_parent(self, parent: Any, frame: Any) -> int:
        """Owner of the tasks *parent* creates during this loop run (cached per parent)."""
        entry = self._entry(parent)
        owner = None
        if entry is not None:
            inherited = self._owner_list[entry[0]]
            if inherited.inheritable:
                owner = entry[0]
        if owner is None:
            owner = self._owner_index(self._owner_from_stack(frame, parent))
        self._owner_cache[id(parent)] = (_ref(parent), owner)
        return owner

    def _prune(self) -> int:
        """Forget tasks that are done (the table holds no references, so ask asyncio);
        return the table size at which to prune next."""
        live = {id(t) for loop in self._loops for t in _all_tasks(loop)}
        origins = self._origins
        for key in [k for k in origins if k not in live]:
            del origins[key]
        self._prune_at = max(_PRUNE_AT, 4 * len(origins))
        cache = self._owner_cache
        for key in [k for k, (ref, _) in cache.items() if ref() is None]:
            del cache[key]
        return self._prune_at

    def _entry(self, task: Any) -> tuple[Any, ...] | None:
        """The entry recorded for *task*, if it is one of ours.

        Entries are keyed by ``id(task)`` and hold no reference to the task (see
        _make_factory), so an entry is taken as *task*'s only when its coroutine's code
        matches too: an address reused by a task this probe did not record is not enough.
        """
        entry = self._origins.get(id(task))
        if entry is None:
            if not self._bursts:
                return None
            self._record_bursts()
            entry = self._origins.get(id(task))
            if entry is None:
                return None
        code = getattr(task.get_coro(), "cr_code", None)
        return entry if entry[2] is code else None

    def _make_handler(self, previous: Any) -> Callable[[Any, dict[str, Any]], None]:
        probe = self

        def exception_handler(loop: Any, context: dict[str, Any]) -> None:
            try:
                probe._on_loop_exception(context)
            except Exception:  # noqa: BLE001 - the context is still passed on below
                probe._note_error()
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        return exception_handler

    def _on_loop_exception(self, context: dict[str, Any]) -> None:
        task = context.get("future") if "future" in context else context.get("task")
        if not isinstance(task, asyncio.Task):
            return
        entry = self._entry(task)
        if entry is None or not self._owner_list[entry[0]].is_the_tests or self._is_ignored(task):
            return
        message = str(context.get("message", ""))
        if "never retrieved" in message:
            exc = context.get("exception")
            if isinstance(exc, BaseException):
                self._lost.append(self._lost_exception(task, entry, exc))
        elif "destroyed but it is pending" in message:
            snapshot = self._snapshot(task, entry)
            snapshot.outcome = "destroyed"
            self._leaked.append(snapshot)

    # -- never-awaited coroutines ---------------------------------------------------
    def _gc_event(self, phase: str, info: dict[str, Any]) -> None:
        self._in_gc = phase == "start"

    def _patch_warnings(self) -> None:
        original = getattr(warnings, "_warn_unawaited_coroutine", None)
        if original is None:
            return
        self._warn_original = original
        self._warn_patch = self._make_warn(original)
        warnings._warn_unawaited_coroutine = self._warn_patch  # type: ignore[attr-defined]  # undone in _unpatch_warnings

    def _make_warn(self, original: Callable[[Any], None]) -> Callable[[Any], None]:
        probe = self

        if original is _STDLIB_WARN_UNAWAITED:

            def warn_unawaited_coroutine(coro: Any) -> None:
                probe._on_unawaited(coro, _getframe(1))
                # The stdlib's warning, issued from here so that stacklevel=2 names the
                # same frame as it would have (the one that dropped the coroutine).
                msg_lines = [f"coroutine '{coro.__qualname__}' was never awaited\n"]
                origin = getattr(coro, "cr_origin", None)
                if origin is not None:
                    import linecache

                    msg_lines.append("Coroutine created at (most recent call last)\n")
                    msg_lines += traceback.format_list(
                        [(f, n, fn, linecache.getline(f, n)) for f, n, fn in reversed(origin)]
                    )
                msg = "".join(msg_lines).rstrip("\n")
                warnings.warn(msg, category=RuntimeWarning, stacklevel=2, source=coro)

        else:  # someone else wraps it already: call theirs

            def warn_unawaited_coroutine(coro: Any) -> None:
                probe._on_unawaited(coro, _getframe(1))
                original(coro)

        return warn_unawaited_coroutine

    def _unpatch_warnings(self) -> None:
        patch, self._warn_patch = self._warn_patch, None
        if patch is not None and getattr(warnings, "_warn_unawaited_coroutine", None) is patch:
            warnings._warn_unawaited_coroutine = self._warn_original  # type: ignore[attr-defined]

    def _on_unawaited(self, coro: Any, frame: Any) -> None:
        try:
            if self._in_gc or not self._in_phase or threading.get_ident() != self._thread:
                return  # may come from any earlier test, or another thread: not judged here
            dropped = _raw_frames(frame)
            origin = getattr(coro, "cr_origin", None)
            origin_frames = [tuple(f) for f in reversed(origin)] if origin else None
            owner = self._owner_from_frames(origin_frames or dropped) or self._phase_owner()
            if not owner.is_the_tests:
                return
            name = getattr(coro, "__qualname__", None) or repr(coro)
            self._unawaited.append(
                UnawaitedCoroutine(name, dropped, origin_frames, _coro_defined(coro), owner, self._phase)  # type: ignore[arg-type]
            )
        except Exception:  # noqa: BLE001 - the warning is still issued by the caller
            self._note_error()

    def _phase_owner(self) -> Owner:
        return _TEST_OWNER if self._phase == "call" else Owner(PHASE, phase=self._phase)

    # -- who owns what --------------------------------------------------------------
    @staticmethod
    def _snapshot_functions(item: pytest.Item) -> list[tuple[Owner, Any]]:
        info = getattr(item, "_fixtureinfo", None)
        defs_by_name = getattr(info, "name2fixturedefs", {})
        # The tests of one parametrized function share their fixture info: its part of
        # the snapshot is made once per session (again if the info has grown since).
        cache = _fixture_snapshots(item)
        known = cache.get(id(info)) if cache is not None else None
        if known is not None and known[0] is info and known[1] == len(defs_by_name):
            functions = list(known[2])
        else:
            functions = []
            for argname, defs in defs_by_name.items():
                for fixturedef in defs:
                    scope = getattr(fixturedef, "scope", "function")
                    functions.append((Owner(FIXTURE, argname, str(scope)), fixturedef.func))
            if cache is not None and info is not None:
                if len(cache) >= 512:
                    cache.clear()
                cache[id(info)] = (info, len(defs_by_name), tuple(functions))
        obj = getattr(item, "obj", None)
        functions.append((_TEST_OWNER, obj))
        inner = getattr(getattr(obj, "hypothesis", None), "inner_test", None)
        if inner is not None:
            functions.append((_TEST_OWNER, inner))
        return functions

    def _owners(self) -> dict[int, Owner]:
        owners = self._owners_by_code
        if owners is None:
            owners = {}
            for owner, function in self._functions:
                code = _code_of(function)
                if code is not None:
                    owners[id(code)] = owner
                    self._codes_alive.append(code)
            self._owners_by_code = owners
        return owners

    def _owner_from_stack(self, frame: Any, parent: Any) -> Owner:
        """The owner of tasks *parent* creates now: the outermost test/fixture frame.

        The walk stops at *parent*'s outermost coroutine frame: above it are the event
        loop's frames, not the task's.
        """
        owners = self._owners()
        root = getattr(parent.get_coro(), "cr_frame", None)
        found = None
        top = None
        depth = 0
        while frame is not None and depth < _OWNER_DEPTH:
            hit = owners.get(id(frame.f_code))
            if hit is not None:
                found = hit
            top = frame
            if frame is root:
                break
            frame = frame.f_back
            depth += 1
        if found is not None:
            return found
        if top is not None and self._is_infra(top.f_code.co_filename):
            return _RUNNER_OWNER
        return _FOREIGN_OWNER

    def _owner_from_frames(self, frames: list[RawFrame]) -> Owner | None:
        """Like _owner_from_stack, from plain frames (matched by file and function name)."""
        owners = self._owners()
        by_place = {(c.co_filename, c.co_name): owners[id(c)] for c in self._codes_alive if id(c) in owners}
        found = None
        for filename, _, function in frames:
            hit = by_place.get((filename, function))
            if hit is not None:
                found = hit
        return found

    def _is_infra(self, filename: str) -> bool:
        if self._infra is None:
            self._infra = _infra_prefixes()
        return absolute_path(filename).startswith(self._infra)

    def _is_ignored(self, task: Any) -> bool:
        if _lives_with_its_loop(task):
            return True
        if not self.settings.ignore:
            return False
        return self.settings.ignores(task.get_name(), _coro_qualname(task.get_coro()))

    # -- the runners' shutdown seam ---------------------------------------------------
    def _patch_runners(self) -> None:
        if self._runner_modules_seen == len(sys.modules):
            return  # nothing imported since the last look: those found are patched
        self._runner_modules_seen = len(sys.modules)
        patched = [module for module, _, _ in self._runner_patches]
        for module in _runner_modules():
            original = getattr(module, "_cancel_all_tasks", None)
            if not callable(original) or module in patched:
                continue
            patch = self._make_runner_patch(original)
            module._cancel_all_tasks = patch  # undone in _unpatch_runners
            self._runner_patches.append((module, original, patch))

    def _patch_gather(self) -> None:
        """Put a wrapper on ``asyncio.gather`` for the test (it acts only while a phase runs).

        gather() makes one task per awaitable it is given, all from the same line and the
        same parent task, with nothing in between that could run other code. The
        wrapper finds what the tasks share once per call instead of once per task:

        * in full mode, the creation site: the factory gives it to every task the
          caller's task makes until gather returns, instead of looking at the stack;
        * for a large gather (``_BURST_MIN`` awaitables or more, either mode), the whole
          record: the factory only collects the new tasks in a list (or, when it is the
          loop's only factory, is taken off the loop while the standard gather runs, and
          the new tasks are read from gather's future), and the wrapper keeps that list
          with gather's future until the future is done. By then every
          task is done too (nothing to record), unless gather failed fast or was
          cancelled: then the ones still running are recorded one by one. Anything that
          needs a record before that (the leak check, an exception handler, a task made
          by one of them) records all pending gathers first (``_record_bursts``).

        Code that imported gather by name calls the original, and its tasks are recorded
        one by one, with the same result.
        """
        original = getattr(asyncio, "gather", None)
        if not callable(original) or getattr(asyncio.tasks, "gather", None) is not original:
            return  # replaced by someone else: leave it to them
        wrapper = self._make_gather(original)
        for module in (asyncio, asyncio.tasks):
            module.gather = wrapper  # type: ignore[attr-defined]  # undone in _unpatch_gather
            self._gather_patches.append((module, original, wrapper))

    def _unpatch_gather(self) -> None:
        patches, self._gather_patches = self._gather_patches, []
        for module, original, wrapper in patches:
            if getattr(module, "gather", None) is wrapper:
                module.gather = original

    def _make_gather(self, original: Callable[..., Any]) -> Callable[..., Any]:
        burst = self._burst
        thread = self._thread
        record_sites = self.record_sites
        probe = self

        def gather(*coros_or_futures: Any, **kwargs: Any) -> Any:
            if _get_ident() != thread or not probe._in_phase:
                return original(*coros_or_futures, **kwargs)
            loop = _get_running_loop()
            parent = _current_task(loop) if loop is not None else None
            if parent is None:
                return original(*coros_or_futures, **kwargs)
            patch = probe._loop_patches.get(loop)  # (previous factory, our hook, ...) if ours
            large = patch is not None and len(coros_or_futures) >= _BURST_MIN
            site = None
            if record_sites:
                try:  # the innermost frame of user code, as the task factory finds it
                    frame = _user_frame(_getframe(1))[0]
                    if frame is not None:
                        back = frame.f_back
                        site = (frame.f_code, frame.f_lasti)
                        if back is not None:
                            site += (back.f_code, back.f_lasti)
                    del frame
                except Exception:  # noqa: BLE001 - the factory looks at each task instead
                    site = None
                if site is None:
                    return original(*coros_or_futures, **kwargs)
            elif not large:
                return original(*coros_or_futures, **kwargs)
            made: list[Any] | None = [] if large else None
            # Our factory alone on this loop (nothing chained, so no task can start
            # eagerly) and the standard gather: make the tasks with no factory at all,
            # at the loop's own speed, and take them from gather's future.
            hook = None
            if large and original is _STDLIB_GATHER and _GATHER_KEEPS_CHILDREN:
                if patch[0] is None and loop.get_task_factory() is patch[1]:  # type: ignore[index]
                    hook = patch[1]  # type: ignore[index]
            saved = burst[0], burst[1], burst[2], burst[3]
            burst[0], burst[1], burst[2], burst[3] = parent, site, made, loop
            outer = None
            try:
                if hook is None:
                    outer = original(*coros_or_futures, **kwargs)
                    return outer
                loop.set_task_factory(None)
                try:
                    outer = original(*coros_or_futures, **kwargs)
                finally:
                    loop.set_task_factory(hook)
                probe._take_made(made, outer, coros_or_futures, loop)  # type: ignore[arg-type]
                return outer
            except BaseException:
                if hook is not None and outer is None:  # failed half-way: what it made is loose
                    probe._take_made(made, None, coros_or_futures, loop)  # type: ignore[arg-type]
                raise
            finally:
                burst[0], burst[1], burst[2], burst[3] = saved
                if made:
                    probe._add_burst(outer, parent, site, made, _getframe(1))

        functools.update_wrapper(gather, original)
        return gather

    def _take_made(self, made: list[Any], outer: Any, awaitables: tuple[Any, ...], loop: Any) -> None:
        """Add the tasks gather made (see _made_by) to *made*; never raises into gather."""
        try:
            made.extend(_made_by(outer, awaitables, loop))
        except Exception:  # noqa: BLE001 - reported at phase end; gather's result stands
            self._note_error()

    def _add_burst(self, outer: Any, parent: Any, site: Any, made: list[Any], frame: Any) -> None:
        """Keep the tasks a large gather made (*outer*: its future, None if it raised)."""
        try:
            last = self._last_parent
            if last[0]() is parent:
                owner = last[1]
            else:
                owner = self._owner_of_creator(parent, frame)
                last[0], last[1] = _ref(parent), owner
            record = (outer, owner, self._phase, site, made)
            if outer is None or not isinstance(outer, asyncio.Future):
                self._record_burst(record)
                return
            self._bursts[id(outer)] = record
            outer.add_done_callback(self._burst_done)
        except Exception:  # noqa: BLE001 - reported at phase end; gather's result stands
            self._note_error()

    def _burst_done(self, outer: Any) -> None:
        """Done callback of a large gather's future (removed again by _record_bursts)."""
        try:
            record = self._bursts.pop(id(outer), None)
            if record is not None and (outer.cancelled() or getattr(outer, "_exception", True) is not None):
                self._record_burst(record)  # failed fast or cancelled: some may still run
        except Exception:  # noqa: BLE001 - reported at phase end
            self._note_error()

    def _record_bursts(self) -> None:
        """Record the tasks of every large gather still in progress."""
        bursts, self._bursts = self._bursts, {}
        for record in bursts.values():
            try:
                record[0].remove_done_callback(self._burst_done)
                self._record_burst(record)
            except Exception:  # noqa: BLE001 - reported at phase end; the rest still recorded
                self._note_error()

    def _record_burst(self, record: tuple[Any, int, str, Any, list[Any]]) -> None:
        """The entries the task factory would have made, for the tasks still pending."""
        _, owner, phase, site, made = record
        origins = self._origins
        entry: tuple[Any, ...] = (None, None, _NO_BURST)
        for task in made:
            if task.done():
                continue
            coro = task.get_coro()
            try:
                code = coro.cr_code
            except AttributeError:  # not a native coroutine
                code = getattr(coro, "gi_code", None)
            if code is not entry[2]:
                entry = (owner, phase, code) if site is None else (owner, phase, code, *site)
            origins[id(task)] = entry
        if len(origins) > self._prune_at:
            self._prune()

    def _unpatch_runners(self) -> None:
        patches, self._runner_patches = self._runner_patches, []
        for module, original, patch in patches:
            if getattr(module, "_cancel_all_tasks", None) is patch:
                module._cancel_all_tasks = original

    def _make_runner_patch(self, original: Callable[[Any], None]) -> Callable[[Any], None]:
        probe = self

        def _cancel_all_tasks(loop: Any) -> None:
            probe._runner_closing(loop, original)

        return _cancel_all_tasks

    def _runner_closing(self, loop: asyncio.AbstractEventLoop, original: Callable[[Any], None]) -> None:
        """A runner is about to close *loop*: check it, then cancel the rest with a bound."""
        if not self._in_phase or threading.get_ident() != self._thread:
            original(loop)  # asyncio.run() in a worker thread, or between phases: not ours
            return
        try:
            self._check(loop)
        except Exception:  # noqa: BLE001 - reported at phase end; the loop still closes
            self._note_error()
        try:
            self._cancel_rest(loop)
        except Exception:  # noqa: BLE001 - fall back to asyncio's own shutdown
            self._note_error()
            original(loop)

    def _cancel_rest(self, loop: asyncio.AbstractEventLoop) -> None:
        """asyncio's shutdown cancel, with the wait bounded (see REST_TIMEOUT_FACTOR)."""
        rest = [t for t in _all_tasks(loop) if not t.done() and id(t) not in self._neutralized]
        if not rest:
            return
        for task in rest:
            task.cancel()
        self._wait(loop, rest, self.settings.cancel_timeout * REST_TIMEOUT_FACTOR)
        for task in rest:
            if not task.done():
                snapshot = self._snapshot(task, self._entry(task))
                snapshot.outcome = "ignored"
                self._neutralize(task, snapshot)
                self._foreign_stuck.append(snapshot)
            elif not task.cancelled() and task.exception() is not None:
                loop.call_exception_handler(
                    {
                        "message": "unhandled exception during asyncio.run() shutdown",
                        "exception": task.exception(),
                        "task": task,
                    }
                )

    # -- the check ------------------------------------------------------------------
    def _check_remaining_loops(self) -> None:
        """End of teardown: loops that did not close during the test (wider loop scopes)."""
        for loop in list(self._loops):
            if id(loop) in self._checked or loop.is_running():
                continue
            self._check(loop)

    def _wait(self, loop: asyncio.AbstractEventLoop, tasks: list[Any], timeout: float) -> None:
        if not tasks or loop.is_closed() or loop.is_running():
            return
        loop.run_until_complete(asyncio.wait(tasks, timeout=timeout))

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        """Find this test's pending tasks and lost exceptions on *loop*, then cancel them."""
        if id(loop) in self._checked:
            return
        self._checked.add(id(loop))
        pending = []
        for task in _all_tasks(loop):  # pending tasks only
            entry = self._entry(task)
            if entry is None or not self._owner_list[entry[0]].is_the_tests or self._is_ignored(task):
                continue
            pending.append(task)
        if pending and self.settings.grace > 0 and self._test_passed():
            self._wait(loop, pending, self.settings.grace)  # returns as soon as all are done
        for task in pending:  # finished during the grace period, with nobody to look
            if task.done() and not task.cancelled() and task._log_traceback:
                exc = task.exception()  # retrieves it: reported here, not logged again later
                self._lost.append(self._lost_exception(task, self._entry(task), exc))
        leaked = [(t, self._snapshot(t, self._entry(t))) for t in pending if not t.done()]
        if not leaked:
            return
        if loop.is_closed():  # closed by someone else: these can never run again
            for task, snapshot in leaked:
                snapshot.outcome = "loop closed"
                self._neutralize(task, snapshot)
                self._leaked.append(snapshot)
            return
        for task, _ in leaked:
            task.cancel()
        self._wait(loop, [t for t, _ in leaked], self.settings.cancel_timeout)
        for task, snapshot in leaked:
            if not task.done():
                snapshot.outcome = "ignored"
                snapshot.stuck_at, snapshot.stuck_awaiting = _await_chain(task.get_coro())
                self._neutralize(task, snapshot)
            elif task.cancelled():
                snapshot.outcome = "cancelled"
            elif task.exception() is not None:
                exc = task.exception()
                snapshot.outcome = f"raised {type(exc).__name__}: {exc}"
            else:
                snapshot.outcome = "finished"
            self._leaked.append(snapshot)

    def _neutralize(self, task: Any, snapshot: TaskSnapshot) -> None:
        """Stop a task that ignored its cancel from ever running again (module docstring)."""
        self._neutralized_tasks.append(task)
        self._neutralized.add(id(task))
        try:
            task._log_destroy_pending = False
        except AttributeError:
            pass
        task.add_done_callback(_retrieve_quietly)
        coro = task.get_coro()
        close = getattr(coro, "close", None)
        if close is None:
            return
        try:
            close()
        except BaseException as exc:  # noqa: BLE001 - its own problem, reported with it
            snapshot.close_error = f"{type(exc).__name__}: {exc}"

    def _snapshot(self, task: Any, entry: tuple[Any, ...] | None) -> TaskSnapshot:
        coro = task.get_coro()
        suspended, awaiting = _await_chain(coro)
        if entry is None:
            owner, phase, created = _FOREIGN_OWNER, "", []
        else:
            owner, phase, created = self._owner_list[entry[0]], entry[1], _site_frames(entry[3:])
        return TaskSnapshot(
            name=task.get_name(),
            coroutine=_coro_name(coro),
            owner=owner,
            phase=phase,
            created=created,
            defined=_coro_defined(coro),
            suspended=suspended,
            awaiting=awaiting,
        )

    def _lost_exception(self, task: Any, entry: tuple[Any, ...] | None, exc: BaseException) -> LostException:
        snapshot = self._snapshot(task, entry)
        return LostException(
            task=snapshot,
            type_name=type(exc).__qualname__,
            message=str(exc),
            raised=_frames_of_traceback(exc.__traceback__),
        )


_SNAPSHOTS_KEY: Any = None


def _fixture_snapshots(item: Any) -> dict[int, tuple[Any, int, tuple[tuple[Owner, Any], ...]]] | None:
    """The session's snapshots of fixture functions, by ``id`` of the fixture info."""
    global _SNAPSHOTS_KEY
    stash = getattr(getattr(item, "config", None), "stash", None)
    if stash is None:
        return None
    if _SNAPSHOTS_KEY is None:
        import pytest

        _SNAPSHOTS_KEY = pytest.StashKey[dict]()
    return stash.setdefault(_SNAPSHOTS_KEY, {})  # type: ignore[no-any-return]


def _runner_modules() -> list[Any]:
    """Modules whose ``_cancel_all_tasks`` a loop runner calls when it closes its loop."""
    names = ["asyncio.runners"]
    for module_name in ("pytest_asyncio.plugin", "anyio._backends._asyncio"):
        module = sys.modules.get(module_name)
        runner = getattr(module, "Runner", None)
        if runner is not None:
            names.append(runner.__module__)
    seen: list[Any] = []
    for name in names:
        module = sys.modules.get(name)
        if module is not None and module not in seen:
            seen.append(module)
    return seen
