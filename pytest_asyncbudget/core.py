"""The instrumented loop core: which event loop runs during a test phase, and when.

Probes need to know when an event loop starts and stops running on the test's thread,
whatever the loop is (stock asyncio, uvloop, a custom loop) and whoever runs it
(pytest-asyncio's ``asyncio.Runner``, anyio's test runner, a module-scoped loop reused
across tests).

How
---
Every asyncio-compatible loop must install the async-generator hooks of PEP 525 when it
starts running and restore the previous ones when it stops: stock asyncio does it in
``run_forever`` (``_run_forever_setup``/``_run_forever_cleanup`` on 3.13+) and uvloop in
its ``Loop.run_forever``. Both look ``sys.set_asyncgen_hooks`` up on the ``sys`` module at
call time. So, for the duration of one test phase only, :class:`LoopCore` replaces
``sys.set_asyncgen_hooks`` with a thin wrapper that first calls the real function and
then tells the probes:

* a call whose ``firstiter`` is a method bound to a loop that is not yet attached, made
  on the test's thread, is that loop starting to run (:meth:`Probe.loop_started`);
* the call that hands the hooks back while the attached loop is no longer running is
  that loop stopping (:meth:`Probe.loop_stopped`).

Why it is safe: the wrapper calls the real function first with the caller's own
arguments, so the hooks always end up exactly as the loop asked; calls from other
threads and from user code are passed through untouched. How it is undone:
:meth:`LoopCore.end_phase` puts the real function back in a ``finally`` block, after
detaching any loop still attached, so nothing remains in place between phases, even when
the test fails, errors or is interrupted. A probe that raises is reported once as a
plugin error (see :mod:`pytest_asyncbudget.errors`), never as the test's own failure.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import PluginErrors

if TYPE_CHECKING:
    from .probes.base import Probe

__all__ = ["LoopCore", "loop_name"]

_real_set_asyncgen_hooks = sys.set_asyncgen_hooks


def loop_name(loop: object) -> str:
    """A short name for *loop*'s kind: ``asyncio``, ``uvloop``, or its module's top package."""
    module = type(loop).__module__ or ""
    root = module.split(".", 1)[0]
    return root or type(loop).__qualname__


class LoopCore:
    """Tells probes when an event loop starts and stops running during one test phase."""

    def __init__(self, errors: PluginErrors) -> None:
        self._errors = errors
        self._probes: Sequence[Probe] = ()
        self._thread_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Names of the loops that ran during the current phase, in order of first run.
        self.phase_loops: list[str] = []

    # -- phase lifecycle ------------------------------------------------------------
    def begin_phase(self, probes: Sequence[Probe], phase: str) -> None:
        """Start watching for loops on this thread, and tell *probes* the phase began."""
        self._probes = probes
        self._thread_id = threading.get_ident()
        self._loop = None
        self.phase_loops = []
        for probe in probes:  # errors.guard, inlined: these events run at every phase
            try:
                probe.phase_started(phase)
            except Exception:  # noqa: BLE001 - reported once; the budget is skipped
                self._errors.failed(probe, "phase_started")
        sys.set_asyncgen_hooks = self._set_asyncgen_hooks  # undone in end_phase

    def end_phase(self, phase: str) -> None:
        """Detach any loop still attached, restore ``sys``, tell probes the phase ended."""
        try:
            if self._loop is not None:
                self._stopped(self._loop)
        finally:
            sys.set_asyncgen_hooks = _real_set_asyncgen_hooks
            probes, self._probes = self._probes, ()
            for probe in probes:
                try:
                    probe.phase_stopped(phase)
                except Exception:  # noqa: BLE001
                    self._errors.failed(probe, "phase_stopped")

    # -- the patched function ---------------------------------------------------------
    def _set_asyncgen_hooks(self, *args: Any, **kwargs: Any) -> None:
        _real_set_asyncgen_hooks(*args, **kwargs)
        if threading.get_ident() != self._thread_id:
            return
        firstiter = kwargs["firstiter"] if "firstiter" in kwargs else (args[0] if args else None)
        owner = getattr(firstiter, "__self__", None)
        current = self._loop
        if isinstance(owner, asyncio.AbstractEventLoop) and owner is not current:
            if current is not None:  # a stop we did not see; never leave one attached
                self._stopped(current)
            self._started(owner)
        elif current is not None and owner is not current and not current.is_running():
            self._stopped(current)

    def _started(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        name = loop_name(loop)
        if name not in self.phase_loops:
            self.phase_loops.append(name)
        for probe in self._probes:
            try:
                probe.loop_started(loop)
            except Exception:  # noqa: BLE001
                self._errors.failed(probe, "loop_started")

    def _stopped(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = None
        for probe in self._probes:
            try:
                probe.loop_stopped(loop)
            except Exception:  # noqa: BLE001
                self._errors.failed(probe, "loop_stopped")
