"""How peak resident memory (RSS) is measured.

What is measured
----------------
Resident set size as the operating system counts it: every page of the process that is
in RAM, whoever allocated it (Python objects, C extensions, a ``to_thread`` worker, an
executor). RSS is process-wide, so memory a worker thread touches counts like any other.
Nothing traces allocations; the cost does not depend on what the test does.

For each test the probe takes the *baseline* (RSS when setup starts) and, at the end of
every phase, the *peak* so far: the highest RSS from the start of setup to the end of
that phase. Growth is peak minus baseline.

How, on Linux (exact, no thread)
--------------------------------
The kernel keeps the process's peak RSS itself, the "high-water mark" (``VmHWM`` in
``/proc/self/status``), and updates it on every page fault, so a spike counts however
short it is. Writing ``5`` to ``/proc/self/clear_refs`` (Linux 4.0+) resets the mark to
the current RSS. So, per test: one write when setup starts, one read of
``/proc/self/statm`` for the baseline, and, when each phase ends, the mark and the RSS.
Nothing stays in place between tests, and nothing runs while the test runs.

The mark is read through ``getrusage``: its ``ru_maxrss`` is the same counter, a sixth
of the cost of a ``/proc/self/status`` read (about 1.5 us against 10, and more with cold
caches). One catch: ``ru_maxrss`` is the larger of the mark and a figure the reset does
not clear, kept from the process image before ``exec`` (say, the big process that forked
this one). That figure never changes afterwards, and every reading is at least it, so a
reading above the lowest one so far is the mark itself. A reading that is not (the
process was never bigger than that figure, or shrank back to it) is checked against
``/proc/self/status``. And ``getrusage`` is used at all only where the check below saw
its figure rise with a spike and come down with the reset.

The only trace this leaves is the one it must: after a test, the process's ``VmHWM``
(and ``ru_maxrss``, which reads it) count from that test's start instead of from process
start. That cannot be put back, and the docs say so.

Before trusting the reset, the first test of each process checks that it really works
(a container may forbid the write or silently ignore it): it maps and touches 2 MiB,
unmaps it, resets, and checks that the mark came down (and whether ``ru_maxrss`` came
down with it: :meth:`ClearRefsMeter.check`). If it did not, the fallback below
is used: a reset that does nothing would make every test look as big as the process's
worst moment, and that must never fail a test.

Elsewhere (macOS, Windows, Linux without clear_refs): a lower bound
--------------------------------------------------------------------
The process's lifetime peak is still available (``ru_maxrss`` on macOS and the BSDs,
``peak_wset`` on Windows, ``VmHWM`` on Linux) but cannot be reset. When it rose during
the test, the test's peak *is* the new lifetime peak: exact. When it did not, the probe
knows only a lower bound: the highest RSS seen by a light sampler (a daemon thread that
reads RSS every ``SAMPLE_INTERVAL`` while a test with an RSS budget runs, and sleeps
otherwise) and at the phase boundaries. The measurement then says ``exact=False`` and the
report calls the figure a lower bound.
"""

from __future__ import annotations

import _thread
import mmap
import os
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..sampler import _let_through
from .base import Probe

if TYPE_CHECKING:
    from .base import ProbeContext

__all__ = [
    "SAMPLE_INTERVAL",
    "ClearRefsMeter",
    "FallbackMeter",
    "Meter",
    "RssMeasurement",
    "RssProbe",
    "meter",
]

#: How often the fallback sampler reads RSS while a budgeted test runs.
SAMPLE_INTERVAL = 0.002
#: Size of the mapping used to check, once per process, that clear_refs resets the mark.
#: 2 MiB: the kernel's RSS counters can lag by a few hundred KiB (per-thread or per-CPU
#: batching), well inside the check's margin of half the block; making it resident costs
#: about 1 ms (8 MiB took 4).
_CHECK_SIZE = 2 * 2**20

_PAGE = mmap.PAGESIZE
# Bound now, before no_blocking patches ``os``: the probe's own reads and writes of /proc
# must not go through the guard it puts on the user's file I/O.
_pread = os.pread
_pwrite = os.pwrite
if sys.platform.startswith("linux"):
    from resource import RUSAGE_SELF as _RUSAGE_SELF
    from resource import getrusage as _getrusage


@dataclass
class RssMeasurement:
    """Peak RSS of one test, as known at the end of one phase. Sizes are in bytes."""

    phase: str
    #: RSS when the test's setup started.
    baseline: int
    #: Highest RSS from the start of setup to the end of this phase.
    peak: int
    #: The phase in which that peak was reached.
    peak_phase: str
    #: ``peak`` as it stood at the end of the previous phase (None in the first phase).
    earlier_peak: int | None
    #: RSS at the end of this phase.
    end: int
    #: True when ``peak`` is the real peak; False when it is only a lower bound.
    exact: bool
    #: How the peak was obtained, in a few words.
    method: str

    @property
    def growth(self) -> int:
        """Peak minus baseline."""
        return self.peak - self.baseline


# -- meters: how this process can read its RSS and peak ---------------------------------


class Meter:
    """How one process reads its RSS and peak; chosen once per process by :func:`meter`."""

    #: How the peak is obtained, in a few words, for the report.
    method = ""

    def start(self) -> int:
        """A test starts: reset what can be reset, and return the baseline RSS."""
        raise NotImplementedError

    def peak(self, since_rss: int, mark: int) -> tuple[int, int, bool]:
        """``(peak since start, RSS now, exact)``; *mark* is what :meth:`mark` returned at start."""
        raise NotImplementedError

    def mark(self) -> int:
        """Whatever :meth:`peak` needs to compare against later (the lifetime peak)."""
        return 0

    def watch(self) -> None:
        """A phase with an RSS budget begins (the fallback starts sampling)."""

    def unwatch(self) -> int:
        """The phase ended; the highest RSS sampled since :meth:`watch` (0 if none)."""
        return 0


def _read(path: str, size: int = 4096) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _status_field(data: bytes, name: bytes) -> int:
    """A ``kB`` field of ``/proc/self/status`` (e.g. ``VmHWM:``), in bytes."""
    start = data.index(name) + len(name)
    return int(data[start : data.index(b"kB", start)]) * 1024


def _linux_status() -> tuple[int, int]:
    """``(VmHWM, VmRSS)`` of this process, in bytes."""
    data = _read("/proc/self/status", 8192)
    return _status_field(data, b"VmHWM:"), _status_field(data, b"VmRSS:")


def _maxrss() -> int:
    """``getrusage``'s peak RSS of this process, in bytes (Linux counts it in KiB)."""
    return _getrusage(_RUSAGE_SELF).ru_maxrss * 1024


def _linux_rss() -> int:
    return int(_read("/proc/self/statm", 256).split()[1]) * _PAGE


class ClearRefsMeter(Meter):
    """Linux: reset the kernel's high-water mark at the start, read it at each phase end.

    The three ``/proc`` files are opened once per process and kept open: ``pread`` and
    ``pwrite`` at offset 0 make the kernel produce (or take) the file afresh each time,
    for a third of the cost of opening, reading and closing it (about 9 us a test instead
    of 28). They are opened by the first measured test, before any of its fixtures, and
    are not inherited by subprocesses (``os.open`` makes them non-inheritable).
    """

    method = "kernel high-water mark, reset when setup started"

    def __init__(self, rusage: bool = False) -> None:
        """*rusage*: read the mark through ``getrusage`` (only where :meth:`check` found
        that its figure follows the reset here); else always from ``/proc/self/status``."""
        self._status = self._statm = self._clear = -1
        #: The lowest ``ru_maxrss`` read so far, in bytes: at least the figure the reset
        #: cannot clear, so a reading above it is the high-water mark (see the module).
        #: ``sys.maxsize``: no reading is ever taken for the mark.
        self._floor = sys.maxsize
        try:
            self._status = os.open("/proc/self/status", os.O_RDONLY)
            self._statm = os.open("/proc/self/statm", os.O_RDONLY)
            self._clear = os.open("/proc/self/clear_refs", os.O_WRONLY)
            if rusage:
                # The first reading, just after a reset, while the process is as small as
                # it will be: later readings are above it (so, fast) once it has grown.
                self.start()
                self._floor = _maxrss()
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        for fd in (self._status, self._statm, self._clear):
            if fd >= 0:
                os.close(fd)
        self._status = self._statm = self._clear = -1

    def _hwm_and_rss(self) -> tuple[int, int]:
        """``(VmHWM, VmRSS)`` of this process, in bytes."""
        data = _pread(self._status, 8192, 0)
        return _status_field(data, b"VmHWM:"), _status_field(data, b"VmRSS:")

    def _rss(self) -> int:
        return int(_pread(self._statm, 256, 0).split()[1]) * _PAGE

    def start(self) -> int:
        _pwrite(self._clear, b"5", 0)  # reset the mark to the current RSS
        return self._rss()

    def peak(self, since_rss: int, mark: int) -> tuple[int, int, bool]:
        maxrss = _maxrss()
        if maxrss > self._floor:  # above what the reset cannot clear: the mark itself
            rss = self._rss()
            return max(maxrss, since_rss, rss), rss, True
        self._floor = maxrss
        hwm, rss = self._hwm_and_rss()
        return max(hwm, since_rss, rss), rss, True

    @staticmethod
    def check() -> tuple[bool, bool]:
        """Checked once per process: does clear_refs really reset the mark here, and does
        ``getrusage``'s ``ru_maxrss`` show a spike and then come down with the reset?

        The second can fail for two reasons. One is a figure that no reset clears, above
        the spike: a process exec'd from a big one, whose peak it keeps. The other is a
        kernel (or a sandbox such as gVisor) that keeps ``ru_maxrss`` its own way. Either
        way the mark is then read from ``/proc/self/status`` only: a stale figure taken
        for the mark would make every later test look as big as the worst one.
        """
        try:
            meter = ClearRefsMeter()
        except OSError:
            return False, False
        try:
            meter.start()
            meter._hwm_and_rss()
            low = _maxrss()
            populate = getattr(mmap, "MAP_POPULATE", 0)
            if populate:  # resident at once: half the time of touching each page
                flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate
                block = mmap.mmap(-1, _CHECK_SIZE, flags=flags)
            else:
                block = mmap.mmap(-1, _CHECK_SIZE)
            try:
                if not populate:
                    for offset in range(0, _CHECK_SIZE, _PAGE):
                        block[offset] = 1  # touch every page so it is resident
                hwm_high, _ = meter._hwm_and_rss()
                high = _maxrss()
            finally:
                block.close()  # unmapped: RSS drops by _CHECK_SIZE, the mark does not
            meter.start()
            hwm_after, rss_after = meter._hwm_and_rss()
            after = _maxrss()
        except (OSError, ValueError):
            return False, False
        finally:
            meter.close()
        half = _CHECK_SIZE // 2
        resets = hwm_after <= hwm_high - half and hwm_after - rss_after < half
        return resets, resets and high >= low + half and after <= high - half


class _Sampler:
    """The fallback's light sampler: a daemon thread reading RSS while a phase is watched.

    Started on first use with ``_thread.start_new_thread`` so that it never shows in
    ``threading.enumerate()``. It waits on two raw locks, as the lag probe's watchdog
    does (``sampler.py``): between watched phases it blocks until :meth:`watch` lets it
    through, and between two reads it naps in a timed ``acquire`` of a lock nobody
    releases. Unlike ``time.sleep`` or ``threading.Event.wait`` those are C calls no test
    can mock or patch: a test that mocks ``time.sleep`` would otherwise make it spin.
    """

    def __init__(self, read_rss: object) -> None:
        self._read_rss = read_rss
        self._generation = 0
        self._high = 0
        self._active = False
        #: The pid the thread was started in (0: not started); a forked child starts its own.
        self._pid = 0
        #: Released to let the thread through (held while it should wait).
        self._unpark = _thread.allocate_lock()
        self.error: str | None = None

    def watch(self) -> None:
        self._generation += 1
        self._high = 0
        if self._pid != os.getpid():  # first use, or a forked child without the thread
            self._pid = os.getpid()
            self._unpark = _thread.allocate_lock()
            self._unpark.acquire()
            nap = _thread.allocate_lock()
            nap.acquire()  # never released: acquiring it again with a timeout is a nap
            _thread.start_new_thread(self._run, (self._unpark, nap))
        self._active = True
        _let_through(self._unpark)

    def unwatch(self) -> int:
        self._active = False
        self._generation += 1
        high, self._high = self._high, 0
        return high

    def _run(self, unpark: _thread.LockType, nap: _thread.LockType) -> None:
        read_rss = self._read_rss
        while True:
            unpark.acquire()  # held again once through: the next acquire waits for watch()
            while self._active:
                generation = self._generation
                try:
                    rss = read_rss()  # type: ignore[operator]
                except Exception as exc:  # noqa: BLE001 - kept, and the figure stays a lower bound
                    self.error = repr(exc)
                    break  # until the next watch()
                if generation == self._generation and rss > self._high:
                    self._high = rss
                nap.acquire(True, SAMPLE_INTERVAL)


def _lifetime_peak_reader() -> tuple[object, str]:
    """A function returning the process's lifetime peak RSS in bytes, and its name."""
    if sys.platform.startswith("linux"):
        return (lambda: _linux_status()[0]), "VmHWM"
    if sys.platform == "win32":
        import psutil

        process = psutil.Process()
        return (lambda: process.memory_info().peak_wset), "peak_wset"
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return (lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale), "ru_maxrss"


class FallbackMeter(Meter):
    """Where the mark cannot be reset: lifetime peak when it rose, else sampled RSS."""

    def __init__(self) -> None:
        if sys.platform.startswith("linux"):
            self._rss = _linux_rss
        else:
            import psutil

            process = psutil.Process()
            self._rss = lambda: process.memory_info().rss
        self._lifetime_peak, name = _lifetime_peak_reader()
        self.method = f"sampled every {SAMPLE_INTERVAL * 1e3:g} ms (the {name} high-water mark cannot be reset here)"
        self._sampler = _Sampler(self._rss)

    def start(self) -> int:
        return self._rss()

    def mark(self) -> int:
        return self._lifetime_peak()  # type: ignore[operator, no-any-return]

    def peak(self, since_rss: int, mark: int) -> tuple[int, int, bool]:
        rss = self._rss()
        lifetime = self._lifetime_peak()  # type: ignore[operator]
        if lifetime > mark:  # a new lifetime peak was set during the test: that is its peak
            return max(lifetime, since_rss, rss), rss, True
        return max(since_rss, rss), rss, False

    def watch(self) -> None:
        self._sampler.watch()

    def unwatch(self) -> int:
        return self._sampler.unwatch()


_METER: tuple[int, Meter] | None = None
_meter_lock = threading.Lock()


def meter() -> Meter:
    """This process's meter, chosen on first use (and again after a fork)."""
    global _METER
    current = _METER
    if current is not None and current[0] == os.getpid():
        return current[1]
    with _meter_lock:
        current = _METER
        if current is None or current[0] != os.getpid():
            chosen: Meter
            resets, rusage = ClearRefsMeter.check() if sys.platform.startswith("linux") else (False, False)
            chosen = ClearRefsMeter(rusage=rusage) if resets else FallbackMeter()
            current = _METER = (os.getpid(), chosen)
    return current[1]


# -- the probe --------------------------------------------------------------------------


class RssProbe(Probe):
    """Baseline when setup starts, peak so far when each phase ends."""

    budget = "max_rss"

    def __init__(self, budgeted: bool, context: ProbeContext | None = None) -> None:
        self._meter = meter()
        #: Sample (fallback only) when a budget is judged; measure-only tests skip it.
        self._sample = budgeted
        self._baseline: int | None = None
        self._mark = 0
        self._peak = 0
        self._peak_phase = ""
        self._measurements: dict[str, RssMeasurement] = {}

    def phase_started(self, phase: str) -> None:
        if self._baseline is None:
            self._mark = self._meter.mark()
            self._baseline = self._peak = self._meter.start()
            self._peak_phase = phase
        if self._sample:
            self._meter.watch()

    def phase_stopped(self, phase: str) -> None:
        sampled = self._meter.unwatch() if self._sample else 0
        if self._baseline is None:
            return
        peak, end, exact = self._meter.peak(max(self._peak, sampled), self._mark)
        earlier = self._peak
        if peak > self._peak:
            self._peak, self._peak_phase = peak, phase
        self._measurements[phase] = RssMeasurement(
            phase=phase,
            baseline=self._baseline,
            peak=self._peak,
            peak_phase=self._peak_phase,
            earlier_peak=earlier if self._measurements else None,
            end=end,
            exact=exact,
            method=self._meter.method,
        )

    def measurement(self, phase: str) -> RssMeasurement | None:
        return self._measurements.get(phase)
