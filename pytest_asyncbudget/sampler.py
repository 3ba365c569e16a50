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
returns, and by then the stack has moved on. For that case the watchdog arms
``faulthandler.dump_traceback_later`` before each sleep and cancels it after. If the
watchdog is starved past the deadline, faulthandler's own C thread, which needs no GIL,
dumps every thread's stack to a private temporary file; the watchdog parses the loop
thread's part once it runs again. The dump names the very line that called into C.
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
from typing import Protocol

from .culprit import RawFrame, frames_from

__all__ = ["SampleTarget", "StackSampler", "parse_faulthandler_dump"]

_clock = time.perf_counter


class SampleTarget(Protocol):
    """What the sampler watches (implemented by the lag probe's tick sources)."""

    #: ``perf_counter()`` time the loop last left its I/O wait, or None while it waits.
    busy_since: float | None

    def on_sample(self, when: float, frames: list[RawFrame]) -> None:
        """A stack of the loop thread, innermost first, taken at ``perf_counter()`` *when*."""


_THREAD_HEADER = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-fA-F]+)")
_FRAME_LINE = re.compile(r'^\s+File "(?P<file>.*)", line (?P<line>\d+|\?\?\?) in (?P<func>.*)$')


def parse_faulthandler_dump(text: str, thread_id: int) -> list[RawFrame]:
    """The frames of *thread_id* in a faulthandler dump, innermost first ([] if absent)."""
    frames: list[RawFrame] = []
    inside = False
    for line in text.splitlines():
        header = _THREAD_HEADER.match(line)
        if header:
            if inside:
                break
            inside = int(header.group(1), 16) == thread_id
            continue
        if inside:
            frame = _FRAME_LINE.match(line)
            if frame:
                lineno = frame["line"]
                frames.append((frame["file"], int(lineno) if lineno.isdigit() else 0, frame["func"]))
            elif frames:
                break
    return frames


def _deadline(interval: float) -> float:
    """faulthandler fires if the watchdog is starved this long past its wake-up time."""
    return interval + max(interval, 0.001)


class _Watch:
    __slots__ = ("target", "thread_id", "threshold", "interval")

    def __init__(self, target: SampleTarget, thread_id: int, threshold: float, interval: float) -> None:
        self.target = target
        self.thread_id = thread_id
        self.threshold = threshold
        self.interval = interval


class StackSampler:
    """One watchdog thread per session, sampling the loop thread's stack when it blocks."""

    def __init__(self, use_faulthandler: bool = True) -> None:
        self._use_faulthandler = use_faulthandler
        self._wake = threading.Event()
        self._watch: _Watch | None = None
        self._started = False
        self._dump_file = None
        self._dump_seen = 0
        self._dump_lock = threading.Lock()
        #: When the watchdog last armed faulthandler.
        self._armed_at = 0.0
        #: An error raised inside the watchdog, reported by the plugin (None if all is well).
        self.error: str | None = None

    def watch(self, target: SampleTarget, threshold: float, interval: float) -> None:
        """Sample *target*'s loop (running on this thread) until :meth:`unwatch`."""
        if self._dump_file is not None:  # a dump left from an earlier watch is stale
            with self._dump_lock:
                self._dump_seen = os.fstat(self._dump_file.fileno()).st_size
        watch = _Watch(target, threading.get_ident(), threshold, interval)
        if not self._started:
            self._started = True
            if self._use_faulthandler:
                self._dump_file = tempfile.TemporaryFile(prefix="asyncbudget-")
            _thread.start_new_thread(self._run, ())
        if self._dump_file is not None:
            # Armed here, on the loop thread: if the loop goes straight into a long C
            # call, the watchdog cannot even wake up to arm it itself.
            self._arm(_deadline(interval))
        self._watch = watch
        self._wake.set()

    def unwatch(self) -> None:
        """Stop sampling; a dump the watchdog has not read yet is delivered first."""
        watch, self._watch = self._watch, None
        self._wake.clear()
        if watch is not None and self._dump_file is not None:
            faulthandler.cancel_dump_traceback_later()
            self._deliver_dump(watch, self._armed_at + _deadline(watch.interval))

    # -- the watchdog thread --------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                self._wake.wait()
                watch = self._watch
                if watch is not None:
                    self._watch_loop(watch)
        except BaseException as exc:  # noqa: BLE001 - a dying watchdog must say why, once
            self.error = f"{type(exc).__name__}: {exc}"

    def _watch_loop(self, watch: _Watch) -> None:
        target = watch.target
        use_dump = self._dump_file is not None
        last_stretch: float | None = None
        deadline = _deadline(watch.interval)
        armed_at = self._armed_at  # armed by watch()
        try:
            while self._watch is watch:
                time.sleep(watch.interval)
                if use_dump:
                    # Cancel and re-arm back to back: neither call lets go of the GIL,
                    # so the loop thread cannot slip into a long C call while nothing
                    # is armed. Only then do anything that may release the GIL.
                    faulthandler.cancel_dump_traceback_later()
                    previous, armed_at = armed_at, self._arm(deadline)
                    if self._deliver_dump(watch, previous + deadline):
                        last_stretch = target.busy_since
                        continue
                since = target.busy_since
                if since is None or since == last_stretch:
                    continue
                now = _clock()
                if now - since < watch.threshold:
                    continue
                frame = sys._current_frames().get(watch.thread_id)
                if frame is not None and self._watch is watch:
                    last_stretch = since
                    target.on_sample(now, frames_from(frame))
                del frame
        finally:
            if use_dump:
                faulthandler.cancel_dump_traceback_later()

    def _arm(self, deadline: float) -> float:
        armed_at = _clock()
        self._armed_at = armed_at
        faulthandler.dump_traceback_later(deadline, file=self._dump_file)
        return armed_at

    def _deliver_dump(self, watch: _Watch, fired_at: float) -> bool:
        """Hand a new faulthandler dump of the loop thread to the target, if there is one."""
        with self._dump_lock:
            frames = self._read_dump(watch.thread_id)
            if frames:
                watch.target.on_sample(fired_at, frames)
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
