"""How blocking calls on the event loop are caught (the ``no_blocking`` budget).

The patching itself lives in :mod:`pytest_asyncbudget.patches`; this probe installs it
for each phase (``phase_started``/``phase_stopped``), tells it which loop runs on the
test's thread (``loop_started``/``loop_stopped``), and judges each call the patches
hand it, on the loop thread, as it happens:

1. **Whose call is it?** Walk out from the caller to the innermost frame of the user's
   code (:func:`~pytest_asyncbudget.culprit.is_user_file`). If a frame of tooling comes
   first (pytest, pluggy, pytest-asyncio, anyio, coverage, logging, linecache/traceback/
   warnings/inspect, pdb, the plugin), or of the loop itself (asyncio, uvloop), or of the
   import system, the call is theirs, not the user's: it is not counted. No user frame
   at all: not counted either. Two stdlib internals are named specifically:
   ``threading.Thread.start`` waiting for its new thread to start (every executor
   submit does it) and ``subprocess.Popen._execute_child`` waiting for ``exec``.
2. **Allowed?** The allowlist names functions (``time.sleep``, or a prefix such as
   ``socket.socket``) and callers (``module`` or ``module:function``, anywhere on the
   stack). Each entry that matches is marked used.
3. **Record it.** Calls are grouped by (function, culprit line); each group keeps a count,
   the total time, and the raw stack of its first call (plain tuples, cheap). Culprits are
   resolved, and the stack trimmed, only in :meth:`BlockingProbe.measurement`.

A call made while a first import runs (any import-system frame on the stack) is not
counted: importing reads files, once.

Nothing here raises into the user's code. An internal error is kept and reported once,
through :meth:`measurement`, as the plugin's error (the budget is then skipped for that
test); the only exception a user can see is :class:`~pytest_asyncbudget.patches.BlockingCallError`
under ``--asyncbudget-blocking-raise``.
"""

from __future__ import annotations

import asyncio
import threading
import traceback
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from .. import patches
from ..core import loop_name
from ..culprit import Culprit, RawFrame, culprit_from, frames_from, is_user_file
from .base import Probe

if TYPE_CHECKING:
    from .base import ProbeContext

__all__ = ["AllowEntry", "BlockingCall", "BlockingMeasurement", "BlockingProbe", "is_excluded"]

#: Packages whose own calls are never the user's blocking calls (first module name part).
EXCLUDED_PACKAGES = frozenset(
    {
        # the test tooling and the plugin
        "_pytest",
        "pytest",
        "pluggy",
        "pytest_asyncio",
        "pytest_asyncbudget",
        "xdist",
        "execnet",
        "coverage",
        "pytest_cov",
        "pdb",
        "bdb",
        # the event loop itself
        "asyncio",
        "uvloop",
        "anyio",
        # output, and reading source for tracebacks and warnings
        "logging",
        "linecache",
        "traceback",
        "warnings",
        "inspect",
        "tokenize",
        # the import system (first imports read files)
        "_frozen_importlib",
        "_frozen_importlib_external",
        "zipimport",
    }
)
#: Whole module names that are excluded (``importlib`` but not ``importlib.resources``).
EXCLUDED_MODULES = frozenset({"importlib", "importlib._bootstrap", "importlib._bootstrap_external", "importlib.util"})
#: (module, function) pairs whose waits are part of starting something, not blocking.
EXCLUDED_FUNCTIONS = frozenset({("threading", "start"), ("subprocess", "_execute_child")})
#: Frames that mean "an import is running".
IMPORT_MODULES = frozenset(
    {"importlib._bootstrap", "importlib._bootstrap_external", "_frozen_importlib", "_frozen_importlib_external", "zipimport"}
)


def is_excluded(module: str, function: str) -> bool:
    """True when a frame of *module* running *function* is tooling or the loop's own code."""
    return (
        module.partition(".")[0] in EXCLUDED_PACKAGES
        or module in EXCLUDED_MODULES
        or (module, function) in EXCLUDED_FUNCTIONS
    )


@dataclass(frozen=True)
class AllowEntry:
    """One allowlist entry, parsed and checked (see :mod:`pytest_asyncbudget.budgets.blocking`)."""

    #: As the user wrote it, e.g. ``"time.sleep"`` or ``"myapp.cache:load"``.
    text: str
    #: Where it came from: ``"marker"`` or ``"ini"``.
    origin: str
    #: The blocking function names it allows (exact name, or every name under a prefix).
    functions: frozenset[str] = frozenset()
    #: ``(module, function or None)`` when it names a caller allowed to block.
    caller: tuple[str, str | None] | None = None


@dataclass
class BlockingCall:
    """One distinct blocking call: a function called from one line, in one phase."""

    function: str
    phase: str
    count: int
    #: Seconds spent in all the calls together.
    total: float
    culprit: Culprit | None
    #: Raw stack of the first call, innermost first (not shown in reports).
    frames: list[RawFrame] = field(default_factory=list, repr=False)


@dataclass
class BlockingMeasurement:
    """What the no_blocking probe saw in one phase."""

    phase: str
    loop: str | None
    #: Distinct blocking calls in the order they first happened.
    calls: list[BlockingCall]
    #: Allowlist entry -> how many calls it let through in this phase.
    allowed: dict[str, int]
    #: At teardown only: the marker's allowlist entries that matched nothing in the whole
    #: test (None in other phases).
    unused_allow: list[str] | None = None

    @property
    def total(self) -> float:
        return sum(call.total for call in self.calls)

    @property
    def count(self) -> int:
        return sum(call.count for call in self.calls)


class _Site:
    __slots__ = ("name", "frames", "count", "total", "ignored")

    def __init__(self, name: str, frames: list[RawFrame], ignored: bool) -> None:
        self.name = name
        self.frames = frames
        self.count = 0
        self.total = 0.0
        self.ignored = ignored


class BlockingProbe(Probe):
    """Installs the patches for each phase and records the user's blocking calls."""

    budget = "no_blocking"

    def __init__(self, allow: tuple[AllowEntry, ...], context: ProbeContext | None, raise_at_call: bool = False) -> None:
        # read by the wrappers in patches.py on every call: keep them plain attributes
        self.loop: Any = patches.NO_LOOP
        self.depth = 0
        self.thread = threading.get_ident()
        self.raise_at_call = raise_at_call
        self.allow = allow
        self._function_allow: dict[str, AllowEntry] = {}
        for entry in allow:
            for name in entry.functions:
                self._function_allow.setdefault(name, entry)
        self._caller_allow = [entry for entry in allow if entry.caller is not None]
        self._used: set[str] = set()
        self._loop_name: str | None = None
        self._ran_loop_any = False
        self._error: str | None = None
        self._phase = ""
        self._installed = False
        self._reset()

    def _reset(self) -> None:
        self._sites: dict[tuple[Any, ...], _Site] = {}
        self._allowed: dict[str, int] = {}
        self._ran_loop = False

    # -- probe events ---------------------------------------------------------------
    def phase_started(self, phase: str) -> None:
        self._phase = phase
        self._reset()
        self.loop = patches.NO_LOOP
        self.depth = 0
        self.thread = threading.get_ident()
        if not self._installed:
            # Once per test, not per phase (it is ~120 setattr each way); between phases
            # pytest's own code runs with no loop running, which the patches let through.
            patches.install(self)
            self._installed = True

    def loop_started(self, loop: asyncio.AbstractEventLoop) -> None:
        self._ran_loop = self._ran_loop_any = True
        self._loop_name = loop_name(loop)
        self.loop = loop

    def loop_stopped(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = patches.NO_LOOP

    def phase_stopped(self, phase: str) -> None:
        self.loop = patches.NO_LOOP
        if phase == "teardown":
            self.test_finished()

    def test_finished(self) -> None:
        if self._installed:
            self._installed = False
            patches.uninstall(self)

    # -- called by the patches, on the loop thread ------------------------------------
    def enter(self, name: str, caller: FrameType) -> _Site | None:
        __tracebackhide__ = True
        try:
            site = self._judge_call(name, caller)
        except Exception:  # noqa: BLE001 - never into the user's code; reported at measurement
            self._keep_error()
            return None
        if site is not None and self.raise_at_call:
            raise patches.BlockingCallError(self._raise_message(name, site))
        return site

    def leave(self, token: _Site, elapsed: float) -> None:
        token.total += elapsed

    def watchable(self, caller: FrameType) -> bool:
        try:
            return self._user_frame(caller) is not None
        except Exception:  # noqa: BLE001
            self._keep_error()
            return False

    def check_failed(self, name: str) -> None:
        self._keep_error()

    def _keep_error(self) -> None:
        if self._error is None:
            self._error = traceback.format_exc()

    @staticmethod
    def _user_frame(frame: FrameType | None) -> FrameType | None:
        """The innermost user frame above *frame*, or None if tooling or the loop comes first."""
        while frame is not None:
            code = frame.f_code
            module = frame.f_globals.get("__name__")
            if type(module) is str and is_excluded(module, code.co_name):
                return None
            if is_user_file(code.co_filename):
                return frame
            frame = frame.f_back
        return None

    def _judge_call(self, name: str, caller: FrameType) -> _Site | None:
        user = self._user_frame(caller)
        if user is None:
            return None
        entry = self._function_allow.get(name)
        if entry is not None:
            self._allow_by(entry)
            return None
        key = (name, user.f_code, user.f_lineno)
        site = self._sites.get(key)
        if site is not None and site.ignored:
            return None
        if site is None or self._caller_allow:
            importing, entry = self._outer_frames(user, caller)
            if entry is not None:
                self._allow_by(entry)
                return None
            if site is None:
                site = self._sites[key] = _Site(name, frames_from(caller), ignored=importing)
                if importing:
                    return None
        site.count += 1
        return site

    def _outer_frames(self, user: FrameType, caller: FrameType) -> tuple[bool, AllowEntry | None]:
        """(is an import running?, the caller allowlist entry that matches, if any)."""
        callers = self._caller_allow
        importing = False
        frame: FrameType | None = caller
        while frame is not None:
            module = frame.f_globals.get("__name__")
            if type(module) is str:
                if module in IMPORT_MODULES:
                    importing = True
                for entry in callers:
                    allowed_module, function = entry.caller  # type: ignore[misc]
                    if module == allowed_module or module.startswith(allowed_module + "."):
                        code = frame.f_code
                        qualname = getattr(code, "co_qualname", None)  # 3.11+
                        if (
                            function is None
                            or function == code.co_name
                            or function == qualname
                            # 3.10 has no co_qualname: "Class.method" matches by its last part
                            or (qualname is None and function.rpartition(".")[2] == code.co_name)
                        ):
                            return importing, entry
            frame = frame.f_back
        return importing, None

    def _allow_by(self, entry: AllowEntry) -> None:
        self._used.add(entry.text)
        self._allowed[entry.text] = self._allowed.get(entry.text, 0) + 1

    def _raise_message(self, name: str, site: _Site) -> str:
        culprit = culprit_from(site.frames, calling=name)
        where = culprit.describe() if culprit is not None else "an unknown line"
        return (
            f"{name} called on the event loop thread at {where} "
            "(no_blocking budget; raised at the call because of --asyncbudget-blocking-raise)"
        )

    # -- result ---------------------------------------------------------------------
    def measurement(self, phase: str) -> BlockingMeasurement | None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"no_blocking probe failed inside a patched call:\n{error}")
        last = phase == "teardown"
        if not self._ran_loop and not (last and self._ran_loop_any):
            return None  # no loop ran: nothing could block it
        calls = [
            BlockingCall(
                function=site.name,
                phase=phase,
                count=site.count,
                total=site.total,
                culprit=culprit_from(site.frames, calling=site.name),
                frames=site.frames,
            )
            for site in self._sites.values()
            if site.count and not site.ignored
        ]
        unused = None
        if last:
            unused = [e.text for e in self.allow if e.origin == "marker" and e.text not in self._used]
        return BlockingMeasurement(
            phase=phase,
            loop=self._loop_name,
            calls=calls,
            allowed=dict(self._allowed),
            unused_allow=unused,
        )
