#!/usr/bin/env python
"""Could uvloop's lag heartbeat be driven by something cheaper than a ``call_later`` timer?

On uvloop the lag probe times busy stretches from the gaps between 1 ms beats
(``probes/lag.py``, ``_HeartbeatTicks``): a ``call_later`` callback that schedules the
next one. A timer that is always pending makes every ``epoll_wait`` of the loop take a
finite timeout, which costs a loop doing I/O about 2% (``loop_seams.py``). This script
compares that timer with two beats that leave no timer pending in the loop, each a
reader on a descriptor (``loop.add_reader``), with the same estimate (gap between two
beats minus half an interval), in one process, on uvloop:

* **timer**: the probe's own ``_HeartbeatTicks``;
* **eventfd thread**: a thread with no Python in it (compiled by this script, loaded with
  ctypes) writes to an eventfd every 1 ms; it gives itself a descriptor table holding
  only the eventfd, as the plugin's watchdog does. Its beat is capped by how long the
  thread's first write since the last beat waited (plus half an interval), so that a
  late write cannot make a free loop look blocked;
* **timerfd**: a kernel timer behind a descriptor (``timerfd_create`` through ctypes),
  expiring every 1 ms; no thread.

Two measurements:

* **cost**: 1,500 loopback TCP round trips per repetition, interleaved rounds, paired
  against the bare loop;
* **precision**: busy-wait blocks of 5, 20 and 50 ms that start at a random moment,
  error = reported longest stretch - the block; and a loop that only sleeps for a
  second (no block at all), its longest reported stretch. ``--hogs N`` runs N busy
  processes meanwhile, as a loaded CI machine would (pytest-xdist on every core).

Usage::

    /work/venv/bin/python benchmarks/beat_sources.py --rounds 31 --json beats.json
    /work/venv/bin/python benchmarks/beat_sources.py --precision-only --hogs 2

Linux only (eventfd, timerfd, ``unshare``), with a C compiler for the eventfd thread.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
import uvloop  # noqa: E402

from loop_seams import _echo  # noqa: E402
from pytest_asyncbudget.probes import lag  # noqa: E402

HEARTBEAT = lag.HEARTBEAT
_clock = time.perf_counter  # CLOCK_MONOTONIC on Linux, as the C code's

#: The eventfd writer: one thread, armed while a loop runs. ``pending`` holds the time of
#: its first write since the loop last took it (ns, CLOCK_MONOTONIC), so the beat can cap
#: a stretch by how long that write waited.
PULSE_C = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int efd = -1;
static volatile int armed, stop_flag, table_errno = -1;
static long every_ns;
static pthread_t thread;
static int64_t pending;

static int64_t ns_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void *run(void *arg) {
    (void)arg;
    if (unshare(CLONE_FILES) != 0
        || (efd > 0 && syscall(SYS_close_range, 0U, (unsigned)efd - 1, 0U) != 0)
        || syscall(SYS_close_range, (unsigned)efd + 1, ~0U, 0U) != 0) {
        table_errno = 1;
        return NULL;
    }
    table_errno = 0;
    uint64_t one = 1;
    int64_t next = ns_now();
    while (!stop_flag) {
        next += every_ns;
        struct timespec ts = {next / 1000000000, next % 1000000000};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        int64_t now = ns_now(), none = 0;
        if (now - next > every_ns) next = now;  /* fell behind: no burst of catch-up writes */
        if (armed && __atomic_compare_exchange_n(&pending, &none, now, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            if (write(efd, &one, 8) < 0) {}
        }
    }
    return NULL;
}

int pulse_start(int fd, long interval_ns) {
    efd = fd; every_ns = interval_ns;
    if (pthread_create(&thread, NULL, run, NULL) != 0) return -1;
    while (table_errno < 0) usleep(100);
    return table_errno;
}
void pulse_arm(int on) { __atomic_store_n(&pending, 0, __ATOMIC_RELEASE); armed = on; }
double pulse_take(int fd) {
    uint64_t count;
    if (read(fd, &count, 8) < 0) {}
    return (double)__atomic_exchange_n(&pending, 0, __ATOMIC_ACQ_REL) * 1e-9;
}
"""


class _Itimerspec(ctypes.Structure):
    _fields_ = [("interval_s", ctypes.c_long), ("interval_ns", ctypes.c_long),
                ("value_s", ctypes.c_long), ("value_ns", ctypes.c_long)]


class Beats:
    """The probe's estimate: a stretch is the gap between two beats minus half an interval."""

    def __init__(self) -> None:
        self.last: float | None = _clock()
        self.stretches: list[float] = []

    def beat(self, now: float, cap: float | None = None) -> None:
        if self.last is not None:
            lag = now - self.last - HEARTBEAT / 2
            self.stretches.append(lag if cap is None else min(lag, cap))
        self.last = now


class EventfdThread(Beats):
    lib: Any = None
    fd = -1

    @classmethod
    def setup(cls, where: Path) -> str | None:
        so, why = c.build_shared(where, "pulse", PULSE_C)
        if not so:
            return f"no C compiler ({why})"
        cls.lib = ctypes.CDLL(so)
        cls.lib.pulse_take.restype = ctypes.c_double
        cls.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        if cls.lib.pulse_start(cls.fd, int(HEARTBEAT * 1e9)) != 0:
            return "the thread could not have a descriptor table of its own"
        return None

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        loop.add_reader(self.fd, self._beat)
        self.lib.pulse_arm(1)

    def _beat(self) -> None:
        first = self.lib.pulse_take(self.fd)
        now = _clock()
        self.beat(now, now - first + HEARTBEAT / 2 if first else HEARTBEAT / 2)

    def detach(self) -> None:
        self.lib.pulse_arm(0)
        self.lib.pulse_take(self.fd)
        self.loop.remove_reader(self.fd)


class TimerFd(Beats):
    fd = -1
    settime: Callable[..., int] | None = None

    @classmethod
    def setup(cls, where: Path) -> str | None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fd = libc.timerfd_create(1, os.O_NONBLOCK | os.O_CLOEXEC)  # CLOCK_MONOTONIC; TFD_* = O_*
        if fd < 0:
            return f"timerfd_create: {os.strerror(ctypes.get_errno())}"
        cls.fd, cls.settime = fd, libc.timerfd_settime
        return None

    def _set(self, interval: float) -> None:
        ns = int(interval * 1e9)
        spec = _Itimerspec(0, ns, 0, ns)
        assert self.settime is not None
        if self.settime(self.fd, 0, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        loop.add_reader(self.fd, self._beat)
        self._set(HEARTBEAT)

    def _beat(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass
        self.beat(_clock())

    def detach(self) -> None:
        self._set(0.0)
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass
        self.loop.remove_reader(self.fd)


class Timer(Beats):
    """The probe's own heartbeat, reporting into the same list."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.ticks = lag._HeartbeatTicks(loop, 0.0, lambda duration, start, ready: self.stretches.append(duration))

    def detach(self) -> None:
        self.ticks.detach()


SOURCES: dict[str, Any] = {"timer": Timer, "eventfd thread": EventfdThread, "timerfd": TimerFd}


def _spin(seconds: float) -> None:
    end = _clock() + seconds
    while _clock() < end:
        pass


async def _blocks(source: Any, errors: list[float]) -> None:
    loop = asyncio.get_running_loop()
    for block in (0.005, 0.02, 0.05):
        beats = source(loop)
        await asyncio.sleep(0.003)
        until = _clock() + random.uniform(0, HEARTBEAT)
        while _clock() < until:  # the loop stays free (beats run): the block starts at a random moment
            await asyncio.sleep(0)
        start = _clock()
        _spin(block)
        real = _clock() - start
        await asyncio.sleep(0.003)
        beats.detach()
        errors.append(max(beats.stretches) - real)


async def _free(source: Any) -> float:
    beats = source(asyncio.get_running_loop())
    end = _clock() + 1.0
    while _clock() < end:
        await asyncio.sleep(random.uniform(0, 0.004))
    beats.detach()
    return max(beats.stretches, default=0.0)


def _run(coro: Any) -> Any:
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def cost(names: list[str], rounds: int) -> dict[str, dict[str, float]]:
    kinds = ["bare loop", *names]
    times: dict[str, list[float]] = {k: [] for k in kinds}

    def one(kind: str) -> float:
        loop = uvloop.new_event_loop()
        beats = SOURCES[kind](loop) if kind in SOURCES else None
        try:
            return loop.run_until_complete(_echo())
        finally:
            if beats is not None:
                beats.detach()
            loop.close()

    for kind in kinds:  # warm-up
        one(kind)
    for r in range(rounds):
        shift = r % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            times[kind].append(one(kind))
    base = times["bare loop"]
    out = {}
    for kind, values in times.items():
        ratios = sorted(x / b for b, x in zip(base, values))
        out[kind] = {"median_ms": statistics.median(values) * 1e3, "paired_ratio": statistics.median(ratios),
                     "q1": ratios[len(ratios) // 4], "q3": ratios[3 * len(ratios) // 4]}
    return out


def precision(names: list[str], reps: int) -> dict[str, dict[str, float]]:
    errors: dict[str, list[float]] = {n: [] for n in names}
    free: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(reps):
        for name in names:
            for _ in range(10):
                _run(_blocks(SOURCES[name], errors[name]))
            free[name].append(_run(_free(SOURCES[name])))
    out = {}
    for name in names:
        e = sorted(x * 1e3 for x in errors[name])
        out[name] = {"n": len(e), "median_err_ms": statistics.median(e), "min_err_ms": e[0], "max_err_ms": e[-1],
                     "p5_err_ms": e[len(e) // 20], "p95_err_ms": e[-1 - len(e) // 20],
                     "free_loop_max_ms": max(free[name]) * 1e3}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=31, help="interleaved rounds of the cost part (default 31)")
    ap.add_argument("--reps", type=int, default=4, help="repetitions of the precision part (default 4: 120 blocks a source)")
    ap.add_argument("--hogs", type=int, default=0, help="busy processes running during the precision part (default 0)")
    ap.add_argument("--precision-only", action="store_true")
    ap.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    ns = ap.parse_args(argv)
    info = c.machine_info()
    print(f"machine: {info}")
    names = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, source in SOURCES.items():
            why = source.setup(Path(tmp)) if hasattr(source, "setup") else None
            if why:
                print(f"{name}: left out ({why})")
            else:
                names.append(name)
        results: dict[str, Any] = {}
        if not ns.precision_only:
            results["cost"] = table = cost(names, ns.rounds)
            print(f"\nuvloop, 1,500 loopback TCP round trips, {ns.rounds} rounds, paired against the bare loop:")
            for kind, row in table.items():
                print(f"    {kind:16} {row['median_ms']:7.2f} ms  paired {row['paired_ratio']:.4f}"
                      f"  (IQR {row['q1']:.4f}-{row['q3']:.4f})")
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(ns.hogs)]
        try:
            results["precision"] = table = precision(names, ns.reps)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
        print(f"\nbusy-wait blocks of 5/20/50 ms at random moments, {ns.hogs} busy processes alongside;"
              " error = reported - real, ms:")
        for name, row in table.items():
            print(f"    {name:16} n {row['n']:3d}  median {row['median_err_ms']:+.3f}  p5 {row['p5_err_ms']:+.3f}"
                  f"  p95 {row['p95_err_ms']:+.3f}  min {row['min_err_ms']:+.3f}  max {row['max_err_ms']:+.3f}"
                  f"  | a free loop's longest: {row['free_loop_max_ms']:.2f}")
    if ns.json:
        c.write_json(ns.json, "beat_sources", machine=info, rounds=ns.rounds, reps=ns.reps, hogs=ns.hogs, results=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
