"""Catching the loop thread's stack while the loop is blocked.

A blocked loop cannot report what blocks it, so another thread looks. The
:class:`StackSampler` runs one watchdog thread per session. It is started on first use
(again in a forked child, which inherits the sampler but not its thread)
with ``_thread.start_new_thread``, so it never shows in ``threading.enumerate()`` and a
test that counts threads is not disturbed. Between tests that measure lag it waits on an
event and costs nothing.

While a test is watched, the watchdog reads the target's ``busy_since`` (when the loop
last left its I/O wait, or None while it waits). Once the loop has been busy for
``threshold`` seconds it takes one sample of the loop thread's stack with
``sys._current_frames()``, and hands it to the target as ``on_sample(when, frames)``. The
lag probe pins each sample to the stretch it falls in.

The watchdog wakes only when a stretch could first have crossed the threshold: at
``busy_since + threshold`` while the loop is busy, else ``threshold`` after its look
(a stretch that begins later cannot cross it sooner). Every wake-up costs the loop
thread a GIL hand-over, so a 50 ms budget (25 ms threshold) means about 40 wake-ups a
second, and a 10 s budget almost none, whatever the loop does.

Blocking code that lets go of the GIL (``time.sleep``, blocking I/O) is caught in the
act. C code that holds the GIL for the whole block (``sum(range(10**8))``,
``json.dumps`` of a huge object) starves the watchdog instead. It cannot run a line of
Python until the call returns. But CPython checks for a waiting thread right after a C
function returns, inside the very ``CALL`` instruction, so the watchdog gets the GIL
while the loop thread's frame still points at the line that made the call. The watchdog
therefore samples as soon as it holds the GIL again, both after its nap and after being
woken, and that names the right line. This was checked on CPython 3.10 to 3.14.

A thread that merely exists costs the loop thread, on Linux: while two threads share one
table of file descriptors, the kernel takes and drops a reference on the file in every
system call given a descriptor (the loop's ``epoll_wait``/``select``, each socket read and
write), which a process with one thread skips. That is about 50-75 ns a call, 1-6% of a
switch-heavy loop (``benchmarks/thread_cost.py``). So the watchdog, which uses no file,
first gives itself a table of its own (``unshare(CLONE_FILES)``) and closes its copies of
every descriptor above 2, so it keeps no socket or pipe open that the test closes. The
loop thread's table is then its own again, and an idle watchdog costs it nothing. (One
consequence: should the watchdog itself crash, pytest's faulthandler, which writes to a
copy of stderr above 2, could not print its traceback.) Where that is not possible (not
Linux, a sandbox that forbids ``unshare``, Python < 3.12 without the compiled helpers)
the watchdog shares the table and the cost stays; ``fd_table`` says which.

Nothing here reads another thread's frames without the GIL. An earlier version used
``faulthandler.dump_traceback_later`` for the GIL-holding case. That reads every
thread's frames from a C thread without the GIL, and it crashed the process under load.
"""

from __future__ import annotations

import _thread
import functools
import os
import sys
import threading
import time
from typing import Protocol

from .accel import speedups
from .culprit import RawFrame, frames_from

__all__ = ["SampleTarget", "StackSampler"]

_clock = time.perf_counter
_LINUX = sys.platform.startswith("linux")


class SampleTarget(Protocol):
    """What the sampler watches (the lag probe)."""

    #: ``perf_counter()`` time the loop last left its I/O wait, or None while it waits.
    busy_since: float | None

    def on_sample(self, when: float, frames: list[RawFrame]) -> None:
        """A stack of the loop thread, innermost first, taken at ``perf_counter()`` *when*."""


class StackSampler:
    """One watchdog thread per session, sampling the loop thread's stack when it blocks.

    Lifecycle: :meth:`watch` a target at the start of a test and :meth:`release` it at
    the end. :meth:`park` the watchdog when the next test does not measure lag, and at
    the end of the session. Between consecutive measured tests the watchdog keeps
    cycling, so switching targets costs only two attribute writes.
    """

    def __init__(self) -> None:
        # Two raw locks, held while their thread should wait: the watchdog blocks in
        # acquire() until a release() lets it through, or its timeout passes. Unlike
        # time.sleep or threading.Event they are C calls that no test can mock or patch
        # (a mocked time.sleep would make the watchdog spin).
        #: Released to unpark the watchdog (held while it is parked).
        self._unpark = _thread.allocate_lock()
        self._unpark.acquire()
        #: Released to cut the watchdog's nap short (a smaller threshold, or a park).
        self._nap = _thread.allocate_lock()
        self._nap.acquire()
        self._target: SampleTarget | None = None
        #: (loop thread id, sampling threshold, shortest nap)
        self._settings = (0, 0.0, 0.0)
        self._active = False
        #: The pid the watchdog was started in (0: not started). fork() copies this
        #: object but not the thread: a child starts its own (see watch).
        self._pid = 0
        #: An error raised inside the watchdog, reported by the plugin (None if all is well).
        self.error: str | None = None
        #: The watchdog's file-descriptor table: "private", or "shared (why)"; None
        #: until the watchdog has started (see the module's docstring).
        self.fd_table: str | None = None

    def watch(self, target: SampleTarget, threshold: float, interval: float) -> None:
        """Sample *target*'s loop, which runs on this thread, until :meth:`release`.

        *threshold*: how long a stretch must last before its stack is sampled.
        *interval*: the shortest nap between two looks (the clock's useful resolution).
        """
        previous = self._settings[1]
        self._settings = (threading.get_ident(), threshold, interval)
        self._target = target
        if self._pid != os.getpid():
            self._start()
        elif self._active:
            if threshold < previous:
                _let_through(self._nap)  # it may be napping for the old, longer threshold
            return
        self._active = True
        _let_through(self._unpark)

    def _start(self) -> None:
        """Start the watchdog (once per process: again in a forked child, which has the
        parent's state but not its thread, and locks in whatever state they were in)."""
        if self._pid:  # a forked child: start from a clean state
            self._unpark = _thread.allocate_lock()
            self._unpark.acquire()
            self._nap = _thread.allocate_lock()
            self._nap.acquire()
            self._active = False
            self.fd_table = None
        self._pid = os.getpid()
        ready = _thread.allocate_lock()
        ready.acquire()
        _thread.start_new_thread(self._run, (ready,))
        # Wait (once per session, well under a millisecond) for the watchdog to set up
        # its fd table: that lets go of the GIL, which must not happen while the loop
        # thread is in a long C call, or the watchdog would miss the end of the call.
        ready.acquire(True, 1.0)

    def release(self) -> None:
        """Stop sampling the current target; the watchdog keeps cycling until :meth:`park`."""
        self._target = None

    def park(self) -> None:
        """Let the watchdog sleep until the next :meth:`watch`."""
        self._target = None
        if self._active:
            self._active = False
            _let_through(self._nap)  # let it see that now rather than after its nap

    # -- the watchdog thread --------------------------------------------------------
    def _run(self, ready: _thread.LockType) -> None:
        try:
            try:
                self.fd_table = _private_fd_table()
            except Exception as exc:  # noqa: BLE001 - no reason to lose the watchdog
                self.fd_table = f"shared ({type(exc).__name__}: {exc})"
            finally:
                ready.release()
            while True:
                self._unpark.acquire()  # held again once through: the next one waits
                self._cycle_until_parked()
        except BaseException as exc:  # noqa: BLE001 - a dying watchdog must say why, once
            self.error = f"{type(exc).__name__}: {exc}"

    def _cycle_until_parked(self) -> None:
        last_target: SampleTarget | None = None
        last_stretch: float | None = None
        nap = self._nap
        while self._active:
            # Look first, sleep after: the first moment this thread holds the GIL again
            # (after its nap, or after being woken) may be right after a long C call
            # returned, with the loop thread's frame still on the line that made it.
            thread_id, threshold, shortest = self._settings
            target = self._target
            now = _clock()
            wake_at = now + threshold
            if target is not None:
                if target is not last_target:
                    last_target, last_stretch = target, None
                since = target.busy_since
                if since is not None and since != last_stretch:
                    if now - since >= threshold:
                        frame = sys._current_frames().get(thread_id)
                        if frame is not None and self._target is target:
                            last_stretch = since
                            target.on_sample(now, frames_from(frame))
                        del frame
                    else:
                        wake_at = since + threshold  # when this stretch would cross it
            # Cut short by a release() made at any time since the last nap: a watch() or
            # park() between the look and here is not missed.
            nap.acquire(True, max(wake_at - _clock(), shortest))


def _private_fd_table() -> str:
    """Give the calling thread a file-descriptor table of its own, holding only 0-2.

    Returns "private", or "shared (why not)". Linux only: ``unshare(CLONE_FILES)`` copies
    the process's table for this thread. The copy holds a reference to every open file,
    so every descriptor above 2 is closed in it at once: a socket or pipe the other
    threads close is then really closed (the peer sees EOF), as without this thread.
    0-2 stay, so a traceback this thread prints still reaches stderr.
    """
    if not _LINUX:
        return "shared (not Linux)"
    unshare = getattr(os, "unshare", None)  # Python 3.12+
    if unshare is not None:
        detach = functools.partial(unshare, os.CLONE_FILES)
    else:
        compiled = speedups()
        if compiled is None:
            return "shared (Python < 3.12 without the compiled helpers)"
        detach = compiled.unshare_files
    try:
        detach()
    except OSError as exc:  # e.g. EPERM under a seccomp profile: keep sharing
        return f"shared (unshare: {exc})"
    try:
        open_fds = [int(name) for name in os.listdir("/proc/thread-self/fd")]
    except OSError:  # no /proc: close them all, one call where close_range() exists
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    else:
        for fd in open_fds:
            if fd > 2:
                try:
                    os.close(fd)
                except OSError:  # listdir's own descriptor, already closed
                    pass
    return "private"


def _let_through(lock: _thread.LockType) -> None:
    """Release *lock* if it is held: the waiting watchdog goes on (at once if not waiting)."""
    try:
        lock.release()
    except RuntimeError:  # already released: a wake-up is pending anyway
        pass
