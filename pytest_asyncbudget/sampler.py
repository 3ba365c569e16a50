"""Catching the loop thread's stack while the loop is blocked.

A blocked loop cannot report what blocks it, so another thread looks. The
:class:`StackSampler` runs one watchdog thread per session. It is started on first use
with ``_thread.start_new_thread``, so it never shows in ``threading.enumerate()`` and a
test that counts threads is not disturbed; between watched phases it waits on an event
and costs nothing.

While a loop is watched, the watchdog wakes every ``interval`` seconds and reads the
target's ``busy_since`` (when the loop last left its I/O wait, or None while it waits).
Once the loop has been busy for ``threshold`` seconds it takes one sample of the loop
thread's stack with ``sys._current_frames()``. That works whenever the loop thread lets
go of the GIL, as ``time.sleep`` or blocking I/O do.

C code that holds the GIL for the whole block (``sum(range(10**8))``, ``json.dumps`` of
a huge object) starves the watchdog: it cannot run a line of Python until the call
returns, and by then the stack has moved on (a sample taken after such a starved nap is
thrown away rather than blamed on the wrong line). For that case the watchdog keeps
``faulthandler.dump_traceback_later`` armed with a deadline, re-arming it every half
deadline. If the watchdog is starved past the deadline, faulthandler's own C thread,
which needs no GIL, dumps every thread's stack to a private temporary file; the
watchdog parses the loop thread's part once it runs again. The dump names the very line
that called into C. Each re-arm starts (and joins) faulthandler's thread, so the
deadline follows the budget rather than the sampling interval.
This is skipped when pytest's ``faulthandler_timeout`` is set, since both would share
faulthandler's single timer.

Samples are delivered to the target as ``on_sample(when, frames)``; the lag probe matches
them to the blocked stretch they fall in.
"""

from __future__ import annotations

import _thread
import faulthandler
import os
import re
import sys
import tempfile
import threading
import time
from collections import deque
from typing import Protocol

from .culprit import RawFrame, frames_from

__all__ = ["SampleTarget", "StackSampler", "parse_faulthandler_dump"]

_clock = time.perf_counter


class SampleTarget(Protocol):
    """What the sampler watches (implemented by the lag probe's tick sources)."""

    #: ``perf_counter()`` time the loop last left its I/O wait, or None while it waits.
    busy_since: float | None

    def on_sample(self, when: float, frames: list[RawFrame], late: bool = False) -> None:
        """A stack of the loop thread, innermost first, taken at ``perf_counter()`` *when*.

        *late*: the watchdog woke well after it meant to. If the GIL was what kept it,
        the loop has moved past the blocking call, so such a sample is only a fallback.
        """


_THREAD_HEADER = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-fA-F]+)")
_FRAME_LINE = re.compile(r'^\s+File "(?P<file>.*)", line (?P<line>\d+|\?\?\?) in (?P<func>.*)$')


def parse_faulthandler_dump(text: str, thread_id: int) -> list[RawFrame]:
    """The frames of *thread_id* in the newest dump in *text*, innermost first ([] if absent).

    *text* may hold several dumps (one per deadline the watchdog missed); only the last
    one matches the deadline the caller knows about.
    """
    newest: list[RawFrame] = []
    current: list[RawFrame] | None = None
    for line in text.splitlines():
        header = _THREAD_HEADER.match(line)
        if header:
            current = [] if int(header.group(1), 16) == thread_id else None
            if current is not None:
                newest = current
            continue
        if current is not None:
            frame = _FRAME_LINE.match(line)
            if frame:
                lineno = frame["line"]
                current.append((frame["file"], int(lineno) if lineno.isdigit() else 0, frame["func"]))
            elif current:
                current = None
    return newest


#: A watchdog nap that overruns by this much was starved of the GIL (2x the default
#: switch interval: a busy pure-Python loop hands the GIL over within one interval).
_STARVED = 0.010


class StackSampler:
    """One watchdog thread per session, sampling the loop thread's stack when it blocks.

    Lifecycle: :meth:`watch` a target at the start of a test, :meth:`release` it at the
    end, and :meth:`park` the watchdog when the next test is not measured (or at the end
    of the session). Between consecutive measured tests the watchdog keeps cycling, so
    switching targets costs nothing: faulthandler is armed on the test's thread only by
    the first :meth:`watch` after a park.
    """

    def __init__(self, use_faulthandler: bool = True) -> None:
        self._use_faulthandler = use_faulthandler
        self._wake = threading.Event()
        self._target: SampleTarget | None = None
        #: (loop thread id, sampling threshold, wake-up interval, faulthandler deadline)
        self._settings = (0, 0.0, 0.0, 0.0)
        self._active = False
        self._started = False
        self._dump_file = None
        self._dump_seen = 0
        self._dump_lock = threading.Lock()
        #: When faulthandler was last armed.
        self._armed_at = 0.0
        #: The last few (armed at, deadline): a dump is stamped with the newest deadline
        #: that has passed, whoever reads it and however late.
        self._arms: deque[tuple[float, float]] = deque(maxlen=8)
        #: An error raised inside the watchdog, reported by the plugin (None if all is well).
        self.error: str | None = None

    def watch(self, target: SampleTarget, threshold: float, interval: float, deadline: float) -> None:
        """Sample *target*'s loop, which runs on this thread, until :meth:`release`.

        *threshold*: how long a stretch must last before its stack is sampled.
        *interval*: how often the watchdog wakes. *deadline*: how long the watchdog may
        be starved of the GIL before faulthandler dumps the stacks (re-armed every
        ``deadline / 2``, so C calls longer than *deadline* are always named).
        """
        if self._dump_file is not None:  # a dump left from before this target is stale
            with self._dump_lock:
                self._dump_seen = os.fstat(self._dump_file.fileno()).st_size
        self._settings = (threading.get_ident(), threshold, interval, deadline)
        self._target = target
        if self._active:
            return
        if not self._started:
            self._started = True
            if self._use_faulthandler:
                self._dump_file = tempfile.TemporaryFile(prefix="asyncbudget-")
            _thread.start_new_thread(self._run, ())
        if self._dump_file is not None:
            # Armed here, on the loop thread: if the loop goes straight into a long C
            # call, the watchdog cannot even wake up to arm it itself.
            self._arm(deadline)
        self._active = True
        self._wake.set()

    def flush(self) -> None:
        """Deliver, on this thread, a dump the watchdog has not read yet (cheap: one fstat)."""
        if self._target is not None and self._dump_file is not None:
            self._deliver_dump()

    def release(self) -> None:
        """Stop sampling the current target; the watchdog keeps cycling until :meth:`park`."""
        if self._target is not None:
            self.flush()
            self._target = None

    def park(self) -> None:
        """Let the watchdog sleep until the next :meth:`watch`.

        faulthandler is not cancelled here: the watchdog does that when it next wakes,
        so the test's thread never waits for faulthandler's thread to be joined.
        """
        self.release()
        if self._active:
            self._active = False
            self._wake.clear()

    # -- the watchdog thread --------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                self._wake.wait()
                self._cycle_until_parked()
        except BaseException as exc:  # noqa: BLE001 - a dying watchdog must say why, once
            self.error = f"{type(exc).__name__}: {exc}"

    def _cycle_until_parked(self) -> None:
        use_dump = self._dump_file is not None
        if use_dump:
            self._cancel()
            self._arm(self._settings[3])
        last_target: SampleTarget | None = None
        last_stretch: float | None = None
        try:
            while self._active:
                thread_id, threshold, interval, deadline = self._settings
                slept_at = _clock()
                time.sleep(interval)
                woke = _clock()
                if use_dump and woke - self._armed_at >= deadline / 2:
                    # Cancel and re-arm back to back: neither call lets go of the GIL,
                    # so the loop thread cannot slip into a long C call while nothing
                    # is armed. Only then do anything that may release the GIL.
                    self._cancel()
                    self._arm(deadline)
                    if self._deliver_dump():
                        target = self._target
                        last_stretch = target.busy_since if target is not None else None
                        continue
                target = self._target
                if target is None:
                    continue
                if target is not last_target:
                    last_target, last_stretch = target, None
                since = target.busy_since
                if since is None or since == last_stretch:
                    continue
                if woke - since < threshold:
                    continue
                frame = sys._current_frames().get(thread_id)
                if frame is not None and self._target is target:
                    last_stretch = since
                    # Late: the OS or the GIL kept the watchdog. If it was the GIL, what
                    # runs now came after the blocking call, so the sample is a fallback.
                    target.on_sample(woke, frames_from(frame), woke - slept_at > interval + _STARVED)
                del frame
        finally:
            if use_dump:
                self._cancel()

    def _cancel(self) -> None:
        faulthandler.cancel_dump_traceback_later()
        if self._arms:
            at, deadline = self._arms[-1]
            if _clock() < at + deadline:  # cancelled in time: it never fired
                self._arms.pop()

    def _arm(self, deadline: float) -> None:
        self._armed_at = now = _clock()
        self._arms.append((now, deadline))
        faulthandler.dump_traceback_later(deadline, file=self._dump_file)

    def _deliver_dump(self) -> bool:
        """Hand a new faulthandler dump of the loop thread to the target, if there is one."""
        with self._dump_lock:
            frames = self._read_dump(self._settings[0])
            target = self._target
            if frames and target is not None:
                now = _clock()
                fired = [at + deadline for at, deadline in list(self._arms) if at + deadline <= now]
                if fired:
                    target.on_sample(max(fired), frames)
            return bool(frames)

    def _read_dump(self, thread_id: int) -> list[RawFrame]:
        """Frames of *thread_id* from a dump written since the last look, else []."""
        fd = self._dump_file.fileno()  # type: ignore[union-attr]
        size = os.fstat(fd).st_size
        if size == self._dump_seen:
            return []
        os.lseek(fd, self._dump_seen, os.SEEK_SET)
        text = os.read(fd, size - self._dump_seen).decode("utf-8", "replace")
        self._dump_seen = size
        if size > 1 << 20:  # keep the private file small over a long session
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            self._dump_seen = 0
        return parse_faulthandler_dump(text, thread_id)
