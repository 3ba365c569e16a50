"""How loop lag is measured.

What lag means
--------------
Loop lag is how long a callback that was ready to run (a due timer, a ready I/O event,
a ``call_soon``) waited before the loop ran it: the quantity Node.js's
``monitorEventLoopDelay`` reports. The loop can only notice new work when it goes back to
its I/O wait, so the lag any ready callback can suffer is the length of the *busy
stretch* between two I/O waits. One callback that holds the loop for 200 ms makes a
200 ms stretch; so does a burst of 200,000 tiny callbacks scheduled at once. The budget
is checked against the longest stretch of the test.

How, on stock asyncio (exact)
-----------------------------
A selector loop calls ``self._selector.select(timeout)`` once per iteration. While a loop
is running during a test phase, the probe puts a thin wrapper on that one selector
*instance* (an instance attribute shadowing the method; the class is untouched). The
wrapper reads the clock when the loop enters its wait (the stretch ends) and when it
leaves it (the next stretch begins), and records a stretch only when it is at least the
recording floor (1 ms, or less for smaller budgets). A busy loop polls with timeout 0
(callbacks are ready); then the next stretch is taken to start when the poll starts, a
few microseconds early, and one clock read does. Per iteration that is one or two clock
reads and a comparison; nothing else runs in Python per callback. The wrapper is removed
when the loop stops and again, unconditionally, when the phase ends.

The wrapper is a closure in :class:`_SelectorTicks`. Where the optional C extension is
built, its compiled twin ``_speedups.SelectTimer`` is used instead: the same steps
without a Python frame (about 0.11 instead of 0.20 us per iteration), once a check at
first use has shown that its clock is ``time.perf_counter``'s. The closure stays the
reference (``tests/test_speedups.py`` compares the two call for call) and the fallback
(no compiler, or ``ASYNCBUDGET_PURE_PYTHON=1``).

How, on uvloop and other loops (within about a millisecond)
------------------------------------------------------------
uvloop's iteration is compiled code with no Python-visible seam, so the probe runs a
heartbeat: a ``call_later`` callback every ``HEARTBEAT`` (1 ms) that reads the clock. A
block of length D that starts somewhere inside one heartbeat interval delays the next
beat, so the gap between two beats is D plus an unknown 0..1 interval. The probe reports
``gap - HEARTBEAT/2``, which is within half an interval of D, instead of the plain timer
delay, which would under-read by up to a whole interval. The heartbeat handle is
cancelled when the loop stops.

Garbage collection is not lag
-----------------------------
CPython's collector holds the GIL for its whole run, in whichever thread triggered it,
so the loop stalls while it runs. A full collection walks every object in the process
(pytest's, every earlier test's, the plugin's) and takes 100-300 ms in a large suite, in
whatever test happens to allocate the object that triggers it. That pause says nothing
about the test, and counting it would fail random tests of a big suite with no culprit
(found by running anyio's 3,600-test suite under the plugin). So while a loop is
measured, a ``gc.callbacks`` hook (two calls per collection, in :class:`_Collections`)
times the *automatic* collections of at least ``GC_MIN``, and each busy stretch has the
collection time inside it taken out; what was taken out is kept (``LagEvent.gc``,
``LagMeasurement.gc_excluded``) and shown. An explicit ``gc.collect()`` is code on the
loop thread like any other call and still counts. The two are told apart when the
collection starts: an automatic one runs because the youngest generation's count went
past its threshold, which an explicit call does not need (checked on CPython 3.10 to
3.14).

Naming the culprit
------------------
Nothing is captured on the hot path. The session's
:class:`~pytest_asyncbudget.sampler.StackSampler` watches the tick source's
``busy_since``; when a stretch passes the sampling threshold (half the budget) it samples
the loop thread's stack, and the probe pins the sample to the stretch it falls in. The
culprit is the innermost frame of that stack in the user's code.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from ..accel import speedups
from ..core import loop_name
from ..culprit import Culprit, RawFrame, culprit_from
from .base import Probe, ProbeContext

__all__ = ["HEARTBEAT", "LagEvent", "LagMeasurement", "LagProbe"]

_clock = time.perf_counter

#: Heartbeat interval on loops without a selector seam (uvloop).
HEARTBEAT = 0.001
#: Stretches shorter than this are counted but not recorded one by one.
DEFAULT_FLOOR = 0.001
#: Sampling threshold when the test has no lag budget (measured for the summary only).
DEFAULT_SAMPLE_THRESHOLD = 0.020
#: How many of the longest stretches keep their details per phase.
KEEP_EVENTS = 8
#: Automatic garbage collections shorter than this are not taken out of stretches: young
#: ones take 0.01-0.5 ms, inside the lag precision.
GC_MIN = 0.0005

OnBlocked = Callable[[float, float, "int | None"], None]


@dataclass
class LagEvent:
    """One busy stretch at least as long as the recording floor."""

    duration: float
    phase: str
    #: ``perf_counter()`` when the stretch began.
    start: float
    #: How many callbacks were queued when it began (stock asyncio only).
    ready: int | None = None
    frames: list[RawFrame] | None = field(default=None, repr=False)
    culprit: Culprit | None = None
    #: Automatic garbage collection inside the stretch, not counted in ``duration``.
    gc: float = 0.0

    def __lt__(self, other: LagEvent) -> bool:  # for heapq: shortest first
        return self.duration < other.duration


@dataclass
class LagMeasurement:
    """What the lag probe measured in one phase."""

    phase: str
    loop: str | None
    iterations: int
    max_lag: float
    #: 99th percentile over all iterations; iterations under the floor count as 0.
    p99: float
    total_blocked: float
    #: Stretches at or over the budget (0 when there is no budget).
    over_budget: int
    #: The longest stretches, longest first, culprits resolved.
    events: list[LagEvent]
    precision: str  # "exact" (selector) or "heartbeat"
    #: Automatic garbage collection taken out of the recorded stretches, in seconds.
    gc_excluded: float = 0.0


#: The compiled SelectTimer, once checked (False: not built, switched off, or its clock
#: is not perf_counter's).
_TIMER: Any = None


def _compiled_timer() -> Any:
    """``_speedups.SelectTimer`` when it is built and usable here, else None.

    It is used only when its clock agrees with ``time.perf_counter`` (stretch starts are
    compared with the sampler's clock), and never with ``ASYNCBUDGET_PURE_PYTHON`` set.
    """
    global _TIMER
    if _TIMER is None:
        _TIMER = False
        compiled = speedups()
        if compiled is not None:
            before, reading, after = _clock(), compiled.clock(), _clock()
            if before - 1e-4 <= reading <= after + 1e-4:
                _TIMER = compiled.SelectTimer
    return _TIMER or None


class _SelectorTicks:
    """Stretches of a selector loop, timed exactly around ``selector.select``."""

    precision = "exact"

    def __init__(self, loop: Any, floor: float, on_blocked: OnBlocked) -> None:
        self._selector = selector = loop._selector
        ready_queue = loop._ready
        self._original = original = selector.select
        self._on_blocked = on_blocked
        self._floor = floor
        timer = _compiled_timer()
        if timer is not None:  # the compiled twin of the closure below (_speedups.c)
            wrapper = timer(original, ready_queue, on_blocked, floor)
            self._state = wrapper.state
            self._stop = wrapper.stop
            self._wrapper = wrapper
            selector.select = wrapper  # undone in detach()
        else:
            self._python_wrapper(selector, ready_queue, original, floor, on_blocked)

    def _python_wrapper(
        self, selector: Any, ready_queue: deque[Any], original: Callable[..., Any], floor: float, on_blocked: OnBlocked
    ) -> None:
        # The wrapper's state lives in closure cells, the cheapest variables Python has:
        # this runs once per loop iteration.
        # When the loop last left its I/O wait (the current stretch began), or None while
        # it waits in it.
        left: float | None = _clock()
        iterations = 0
        ready = len(ready_queue)  # callbacks queued when the current stretch began

        def select(timeout: float | None = None) -> Any:
            nonlocal left, iterations, ready
            now = _clock()
            since = left
            if since is None:  # stopped (a wrapper someone put over ours still calls it)
                return original(timeout)
            iterations += 1
            if now - since >= floor:
                on_blocked(now - since, since, ready)
            if timeout == 0:
                # A poll (callbacks are ready, so the loop does not wait): the next stretch
                # starts now, give or take the few microseconds of the poll itself. One
                # clock read per iteration on a busy loop instead of two.
                ready = len(ready_queue)
                left = now
                return original(0)
            # A wait: the loop waits only when nothing is ready, so the stretch after it
            # starts with no queued callbacks.
            ready = 0
            left = None
            try:
                return original(timeout)
            finally:
                left = _clock()

        def state() -> tuple[float | None, int, int]:
            return left, iterations, ready

        def stop() -> None:
            nonlocal left
            left = None

        self._state = state
        self._stop = stop
        self._wrapper = select
        selector.select = select  # undone in detach()

    @property
    def busy_since(self) -> float | None:
        return self._state()[0]

    @property
    def iterations(self) -> int:
        return self._state()[1]

    @staticmethod
    def fits(loop: Any) -> bool:
        selector = getattr(loop, "_selector", None)
        return (
            isinstance(loop, asyncio.BaseEventLoop)
            and selector is not None
            and callable(getattr(selector, "select", None))
            and isinstance(getattr(loop, "_ready", None), deque)
        )

    def detach(self) -> None:
        since, _, ready = self._state()
        self._stop()
        selector = self._selector
        if selector.__dict__.get("select") is self._wrapper:
            del selector.select
            # Deleting is not always undoing: the selector may have had a select of its
            # own, and a unittest.mock selector remembers the deletion (AttributeError
            # from then on). Then the original goes back as it was.
            if getattr(selector, "select", None) != self._original:
                selector.select = self._original
        if since is not None:
            now = _clock()
            if now - since >= self._floor:
                self._on_blocked(now - since, since, ready)


class _HeartbeatTicks:
    """Stretches of any other loop, estimated from a 1 ms heartbeat's gaps."""

    precision = "heartbeat"

    def __init__(self, loop: asyncio.AbstractEventLoop, floor: float, on_blocked: OnBlocked) -> None:
        self.busy_since: float | None = _clock()
        self.iterations = 0
        self._loop = loop
        self._floor = floor
        self._on_blocked = on_blocked
        self._handle: asyncio.TimerHandle | None = loop.call_later(HEARTBEAT, self._beat)

    def _beat(self) -> None:
        now = _clock()
        since = self.busy_since
        self.busy_since = now
        self.iterations += 1
        if since is not None:
            lag = now - since - HEARTBEAT / 2
            if lag >= self._floor:
                self._on_blocked(lag, since, None)
        self._handle = self._loop.call_later(HEARTBEAT, self._beat)

    def detach(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()
        since, self.busy_since = self.busy_since, None
        if since is not None:
            lag = _clock() - since - HEARTBEAT / 2
            if lag >= self._floor:
                self._on_blocked(lag, since, None)


class _Collections:
    """The automatic garbage collections of one phase, as ``(start, end)`` clock times.

    A ``gc.callbacks`` hook, put in place by ``start`` when a phase begins and taken off
    by ``stop``, which the probe calls from ``phase_stopped``. It runs twice per
    collection; only collections of at least ``GC_MIN`` are kept, so the list stays short.
    """

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float]] = []
        self._hooked = False
        pauses = self.pauses
        started = 0.0
        isenabled, get_count, get_threshold = gc.isenabled, gc.get_count, gc.get_threshold

        def callback(phase: str, info: dict[str, Any]) -> None:
            nonlocal started
            if phase == "start":
                # Automatic: triggered because the youngest generation's count passed its
                # threshold. An explicit gc.collect() does not need that, and counts.
                started = _clock() if isenabled() and get_count()[0] > get_threshold()[0] else 0.0
            elif started:
                end = _clock()
                if end - started >= GC_MIN:
                    pauses.append((started, end))
                started = 0.0

        self._callback = callback

    def start(self) -> None:
        self.pauses.clear()
        if not self._hooked:
            self._hooked = True
            gc.callbacks.append(self._callback)  # taken off in stop()

    def stop(self) -> None:
        if self._hooked:
            self._hooked = False
            try:
                gc.callbacks.remove(self._callback)
            except ValueError:  # someone cleared gc.callbacks
                pass

    def within(self, start: float, end: float) -> float:
        """Seconds of automatic collection between *start* and *end*.

        Stretches are reported in time order, so collections that ended before *start*
        are dropped: no later stretch can contain them.
        """
        pauses = self.pauses
        while pauses and pauses[0][1] <= start:
            del pauses[0]
        total = 0.0
        for begin, finish in pauses:
            if begin >= end:
                break
            total += min(finish, end) - max(begin, start)
        return total


class LagProbe(Probe):
    """Measures busy stretches of whatever loop runs, and pins stack samples to them."""

    budget = "max_loop_lag"

    def __init__(self, limit: float | None, context: ProbeContext) -> None:
        self.limit = limit
        self._sampler = context.sampler
        if limit is not None:
            self.floor = min(DEFAULT_FLOOR, limit)
            self.threshold = max(limit / 2, 0.0005)
        else:
            self.floor = DEFAULT_FLOOR
            self.threshold = DEFAULT_SAMPLE_THRESHOLD
        self._shortest_nap = min(self.threshold, 0.001)
        self._phase = ""
        self._watching = False
        self._collections = _Collections()
        self._samples: deque[tuple[float, list[RawFrame]]] = deque(maxlen=256)
        self._reset()

    def _reset(self) -> None:
        self._ticks: _SelectorTicks | _HeartbeatTicks | None = None
        self._loop_name: str | None = None
        self._precision = "exact"
        self._iterations = 0
        self._durations: list[float] = []
        self._kept: list[LagEvent] = []  # min-heap of the longest stretches
        self._gc_excluded = 0.0

    # -- probe events ---------------------------------------------------------------
    # The sampler watches this probe for the whole test, not per loop run: pytest-asyncio
    # runs the loop several times per test (fixtures, the test, the runner's shutdown).
    @property
    def busy_since(self) -> float | None:
        """When the running loop last left its I/O wait (None while it waits or no loop runs)."""
        ticks = self._ticks
        return ticks.busy_since if ticks is not None else None

    def on_sample(self, when: float, frames: list[RawFrame]) -> None:
        self._samples.append((when, frames))

    def phase_started(self, phase: str) -> None:
        self._phase = phase
        self._reset()
        self._collections.start()
        if not self._watching:
            self._watching = True
            self._sampler.watch(self, self.threshold, self._shortest_nap)

    def loop_started(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop_name = loop_name(loop)
        if _SelectorTicks.fits(loop):
            self._ticks = _SelectorTicks(loop, self.floor, self._on_blocked)
        else:
            self._ticks = _HeartbeatTicks(loop, self.floor, self._on_blocked)
            self._precision = "heartbeat"

    def loop_stopped(self, loop: asyncio.AbstractEventLoop) -> None:
        self._detach()

    def phase_stopped(self, phase: str) -> None:
        try:
            self._detach()
        finally:
            self._collections.stop()
        if phase == "teardown" and self._watching:
            self._watching = False
            self._sampler.release()

    def _detach(self) -> None:
        ticks, self._ticks = self._ticks, None
        if ticks is not None:
            ticks.detach()
            self._iterations += ticks.iterations

    # -- called from the tick source (loop thread) and the sampler (watchdog) -------
    def _on_blocked(self, duration: float, start: float, ready: int | None) -> None:
        collected = 0.0
        if self._collections.pauses:
            collected = self._collections.within(start, start + duration)
            if collected:
                self._gc_excluded += collected
                duration -= collected
                if duration < self.floor:
                    return
        self._durations.append(duration)
        kept = self._kept
        if len(kept) < KEEP_EVENTS or duration > kept[0].duration:
            event = LagEvent(duration, self._phase, start, ready, gc=collected)
            self._attach_sample(event)
            if len(kept) < KEEP_EVENTS:
                heapq.heappush(kept, event)
            else:
                heapq.heapreplace(kept, event)

    def _attach_sample(self, event: LagEvent) -> None:
        """Pin the first sample that fell inside the stretch to it."""
        end = event.start + event.duration + event.gc + 0.002
        for when, frames in self._samples:
            if event.start <= when <= end:
                event.frames = frames
                return

    # -- result ---------------------------------------------------------------------
    def measurement(self, phase: str) -> LagMeasurement | None:
        if self._loop_name is None:
            return None  # no loop ran in this phase
        events = sorted(self._kept, key=lambda e: e.duration, reverse=True)
        for event in events:  # heavy work only now, and only for the few kept
            if event.frames is None:
                self._attach_sample(event)  # a sample may have come in since
            if event.frames is not None:
                event.culprit = culprit_from(event.frames)
        durations = self._durations
        iterations = max(self._iterations, len(durations))
        return LagMeasurement(
            phase=phase,
            loop=self._loop_name,
            iterations=iterations,
            max_lag=max(durations, default=0.0),
            p99=_percentile(durations, iterations, 0.99),
            total_blocked=sum(durations),
            over_budget=sum(1 for d in durations if self.limit is not None and d > self.limit),
            events=events,
            precision=self._precision,
            gc_excluded=self._gc_excluded,
        )


def _percentile(recorded: list[float], total: int, q: float) -> float:
    """The q-quantile over *total* values of which only *recorded* exceed the floor."""
    if total <= 0 or not recorded:
        return 0.0
    rank = int(q * total)  # how many values lie below the quantile
    below_floor = total - len(recorded)
    if rank < below_floor:
        return 0.0
    ordered = sorted(recorded)
    return ordered[min(rank - below_floor, len(ordered) - 1)]
