#!/usr/bin/env python
"""Could uvloop's lag be measured without the heartbeat? A feasibility check, no plugin.

On uvloop the lag probe runs a 1 ms heartbeat (``probes/lag.py``), which costs a loop
that does I/O about 2% (``loop_seams.py``), and may cost code that waits on threads more
(``benchmarks/README.md``, session 11).
Linux shows every thread's current system call in ``/proc/PID/task/TID/syscall``: the
call's number and arguments while the thread is in one, ``running`` while it runs user
code. An idle uvloop loop is in ``epoll_pwait``/``epoll_wait`` with a timeout other than
0; anything else (running Python, a ``time.sleep``, a blocking read, waiting for the GIL)
is a busy stretch of the loop. Another thread that reads that file every half
millisecond, in C and without the GIL, could time the busy stretches with nothing at all
running on the loop.

This script checks the idea with two watchers reading the file of a child process that
runs a uvloop loop: a Python thread in this process (``watched``: its own GIL, so it
cannot hold the loop's), and a thread inside the child, in C with no Python in it
(``in-process``: the real design; compiled here with ``cc`` and loaded with ctypes,
skipped without a compiler). Measured:

* **precision**: the child blocks its loop for known times (``time.sleep`` and
  busy-waits, 5 ms to 200 ms, started from a timer), records when each block really
  began and ended, and the watcher rebuilds the busy stretches from its samples. The
  error is the stretch's length minus the block's;
* **what it cannot see**: 100 ms of two tasks passing the loop back and forth with
  ``sleep(0)``. Each iteration takes microseconds, so the real lag does too; but uvloop
  then polls with a 0 timeout and never waits, and the watcher, sampling every half
  millisecond, sees one busy stretch as long as the whole exchange (the "switching" row:
  its "error" is that stretch's length). The heartbeat does not have this problem: it
  is itself a callback, and runs between those iterations;
* **cost to the loop**: one child runs ``to_thread`` batches (another a loopback TCP
  echo) again and again, in rounds: with nothing, with a 1 ms heartbeat like the
  probe's, and under each watcher, in rotating order. The figures are the median of the
  per-round ratios to nothing, with a 95% CI. One process for all modes, because
  processes differ from one another by more than these costs.

The answer (``benchmarks/README.md``, session 11): precise for blocks between idle
periods, cheaper than the heartbeat on I/O, but blind to lag in a loop that is never
idle, so it cannot replace the heartbeat.

Usage::

    /work/venv/bin/python benchmarks/syscall_watch.py --rounds 81 --json watch.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

#: System calls an idle epoll loop waits in (x86-64 and aarch64 numbers).
WAITS = {"x86_64": {232, 281, 441}, "aarch64": {22, 441}}


def _waits() -> set[int]:
    """This machine's epoll wait system calls (x86-64's where the machine is not listed)."""
    return WAITS.get(os.uname().machine, WAITS["x86_64"])

#: The same watcher as a thread inside the loop's own process, in C with no Python in
#: it (loaded with ctypes; ``ws_start`` and ``ws_stop`` are called around each
#: repetition). ``IS_WAIT`` is filled in from ``_waits()`` when it is compiled.
WATCHER_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int fd = -1;
static long every_ns;
static volatile int stop_flag;
static pthread_t thread;
static double *times;
static unsigned char *states;
static int cap, count;

static void *run(void *arg) {
    char buf[512];
    struct timespec ts, nap = {0, every_ns};
    (void)arg;
    while (!stop_flag && count < cap) {
        ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
        unsigned char waiting = 0;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        if (n > 0 && buf[0] != 'r') {
            char *p;
            long nr;
            buf[n] = 0;
            nr = strtol(buf, &p, 10);
            if (IS_WAIT(nr)) {  /* epoll_wait(fd, events, max, timeout) */
                unsigned long long v = 0;
                int i;
                for (i = 0; i < 4; i++) v = strtoull(p, &p, 16);
                waiting = v != 0;
            }
        }
        times[count] = ts.tv_sec + ts.tv_nsec * 1e-9;
        states[count] = waiting;
        count++;
        nanosleep(&nap, NULL);
    }
    return NULL;
}

int ws_start(const char *path, long interval_ns, int max_samples) {
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    every_ns = interval_ns; cap = max_samples; count = 0; stop_flag = 0;
    times = malloc(sizeof(double) * cap);
    states = malloc(cap);
    if (times == NULL || states == NULL || pthread_create(&thread, NULL, run, NULL) != 0) {
        free(times);
        free(states);
        close(fd);
        fd = -1;
        return -1;
    }
    return 0;
}

int ws_stop(double *out_times, unsigned char *out_states, int max) {
    int n;
    stop_flag = 1;
    pthread_join(thread, NULL);
    close(fd);
    fd = -1;
    n = count < max ? count : max;
    memcpy(out_times, times, sizeof(double) * n);
    memcpy(out_states, states, n);
    free(times);
    free(states);
    return n;
}
"""

CHILD = r'''
import asyncio, json, os, sys, threading, time
import uvloop

work, interval, watcher_so, every = sys.argv[1], float(sys.argv[2]), sys.argv[3], float(sys.argv[4])
clock = time.perf_counter  # CLOCK_MONOTONIC on Linux, as the watchers' clocks

CAP = 1 << 20
if watcher_so:
    import ctypes
    ws = ctypes.CDLL(watcher_so)
    ws.ws_start.argtypes = [ctypes.c_char_p, ctypes.c_long, ctypes.c_int]
    ws.ws_stop.argtypes = [ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_ubyte), ctypes.c_int]
    out_t = (ctypes.c_double * CAP)()
    out_s = (ctypes.c_ubyte * CAP)()
    own = f"/proc/self/task/{threading.get_native_id()}/syscall".encode()

def _double(i):
    return i * 2

async def to_thread_work(n=1500):
    for s in range(0, n, 10):
        await asyncio.gather(*(asyncio.to_thread(_double, i) for i in range(s, s + 10)))

async def echo_work(n=1500):
    async def handle(r, w):
        while data := await r.read(64):
            w.write(data)
            await w.drain()
        w.close()
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    r, w = await asyncio.open_connection("127.0.0.1", srv.sockets[0].getsockname()[1])
    for _ in range(n):
        w.write(b"x" * 32)
        await w.drain()
        await r.readexactly(32)
    w.close()
    await w.wait_closed()
    srv.close()
    await srv.wait_closed()

async def blocks():
    done = []
    for d in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2):
        for kind in ("sleep", "busy"):
            await asyncio.sleep(0.03)  # idle, then the block starts from a timer
            start = clock()
            if kind == "sleep":
                time.sleep(d)
            else:
                while clock() - start < d:
                    pass
            done.append((kind, d, start, clock()))
    # No block at all: 100 ms of two tasks passing the loop back and forth. Every
    # iteration is a few microseconds, so the longest lag is too; but uvloop then polls
    # with a 0 timeout and never waits, so a watcher sees one long busy stretch.
    await asyncio.sleep(0.03)
    async def ping():
        end = clock() + 0.1
        while clock() < end:
            await asyncio.sleep(0)
    start = clock()
    await asyncio.gather(ping(), ping())
    mid = (start + clock()) / 2
    done.append(("switching", 0.0, mid, mid))
    await asyncio.sleep(0.03)
    return done

async def main():
    loop = asyncio.get_running_loop()
    print(json.dumps({"pid": os.getpid(), "tid": threading.get_native_id()}), flush=True)
    # One repetition per line from the parent: its mode ("plain", "heartbeat" or
    # "watched": the parent is watching), so all modes run in this one process.
    for line in iter(sys.stdin.readline, ""):
        mode = line.strip()
        beat = [None]
        if mode == "heartbeat":
            def tick():
                beat[0] = loop.call_later(interval, tick)
            tick()
        if mode == "in-process":
            if ws.ws_start(own, int(every * 1e9), CAP) != 0:
                raise SystemExit("could not start the compiled watcher")
        t0 = clock()
        result = await {"to_thread": to_thread_work, "echo": echo_work, "blocks": blocks}[work]()
        elapsed = clock() - t0
        samples = []
        if mode == "in-process":
            n = ws.ws_stop(out_t, out_s, CAP)
            samples = [(out_t[i], bool(out_s[i])) for i in range(n)]
        if beat[0] is not None:
            beat[0].cancel()
        print(json.dumps({"elapsed": elapsed, "blocks": result if work == "blocks" else None,
                          "samples": samples}), flush=True)

uvloop.run(main())
'''


def _watch(path: str, interval: float, stop: threading.Event, waits: set[int], out: list[tuple[float, bool]]) -> None:
    """Sample the loop thread's system call every *interval*: (time, waiting)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        while not stop.is_set():
            text = os.pread(fd, 512, 0)
            now = time.perf_counter()
            fields = text.split()
            waiting = False
            if fields and fields[0] != b"running":
                nr = int(fields[0])
                # epoll_wait(epfd, events, maxevents, timeout): a 0 timeout is a poll.
                waiting = nr in waits and len(fields) > 4 and int(fields[4], 16) != 0
            out.append((now, waiting))
            time.sleep(interval)
    finally:
        os.close(fd)


class Child:
    """A child process running a uvloop loop, and repetitions of *work* in it on demand."""

    def __init__(self, work: str, watch_every: float, watcher_so: str = "", beat: float = 0.001) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, work, str(beat), watcher_so, str(watch_every)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=c.clean_env(),
        )
        assert self.proc.stdout is not None
        ids = json.loads(self.proc.stdout.readline())
        self.path = f"/proc/{ids['pid']}/task/{ids['tid']}/syscall"
        self.every = watch_every

    def run(self, mode: str) -> dict:
        """One repetition; with *mode* "watched", the samples taken while it ran."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        samples: list[tuple[float, bool]] = []
        stop = threading.Event()
        watcher = None
        if mode == "watched":
            waits = _waits()
            watcher = threading.Thread(target=_watch, args=(self.path, self.every, stop, waits, samples))
            watcher.start()
            time.sleep(0.01)
        self.proc.stdin.write(mode + "\n")
        self.proc.stdin.flush()
        result = json.loads(self.proc.stdout.readline())
        stop.set()
        if watcher is not None:
            watcher.join()
            result["samples"] = samples
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def stretches(samples: list[tuple[float, bool]]) -> list[tuple[float, float]]:
    """Busy stretches (start, end) rebuilt from the samples: each edge at the midpoint
    between the last sample before it and the first after it."""
    out = []
    start = None
    for (t0, w0), (t1, w1) in zip(samples, samples[1:]):
        if w0 and not w1:
            start = (t0 + t1) / 2
        elif not w0 and w1 and start is not None:
            out.append((start, (t0 + t1) / 2))
            start = None
    return out


def build_watcher(where: Path) -> str:
    """Compile WATCHER_C into a shared library in *where* ("" when there is no compiler)."""
    test = " || ".join(f"(nr) == {n}" for n in sorted(_waits()))
    so, why = c.build_shared(where, "watcher", f"#define IS_WAIT(nr) ({test})\n" + WATCHER_C)
    if not so:
        print(f"no compiled watcher ({why}): only the watcher in another process is measured")
    return so


def precision(rounds: int, every: float, mode: str, watcher_so: str) -> list[dict]:
    rows = []
    child = Child("blocks", every, watcher_so)
    for _ in range(rounds):
        res = child.run(mode)
        found = stretches(res["samples"])
        for kind, d, start, end in res["blocks"]:
            over = [(s, e) for s, e in found if s < end and e > start]
            if not over:
                rows.append({"kind": kind, "block_ms": d * 1e3, "error_ms": None})
                continue
            s, e = max(over, key=lambda se: min(se[1], end) - max(se[0], start))
            rows.append({"kind": kind, "block_ms": d * 1e3, "error_ms": ((e - s) - (end - start)) * 1e3})
    child.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    ap.add_argument("--every", type=float, default=0.0005, help="watcher's sampling interval, s (default 0.0005)")
    ap.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    ns = ap.parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("Linux only (/proc/PID/task/TID/syscall)")
        return 1

    tmp = Path(tempfile.mkdtemp(prefix="asyncbudget-watch-"))
    watcher_so = build_watcher(tmp)
    watchers = ["watched"] + (["in-process"] if watcher_so else [])
    summary: dict[str, dict] = {"precision": {}, "cost": {}}
    all_rows: dict[str, list[dict]] = {}
    for mode in watchers:
        rows = all_rows[mode] = precision(max(ns.rounds // 3, 3), ns.every, mode, watcher_so)
        print(f"precision, watcher {mode} (every {ns.every * 1e3:g} ms; error = rebuilt stretch - real block):")
        for kind in ("sleep", "busy", "switching"):
            for d in sorted({r["block_ms"] for r in rows if r["kind"] == kind}):
                errs = [r["error_ms"] for r in rows if r["kind"] == kind and r["block_ms"] == d]
                seen = [e for e in errs if e is not None]
                med = c.median(seen) if seen else float("nan")
                worst = max((abs(e) for e in seen), default=float("nan"))
                summary["precision"][f"{mode}: {kind} {d:g} ms"] = {
                    "median_ms": med, "max_abs_ms": worst, "missed": len(errs) - len(seen),
                }
                print(f"  {kind:5} {d:6.0f} ms: median {med:+.3f} ms, max |error| {worst:.3f} ms, "
                      f"missed {len(errs) - len(seen)} of {len(errs)}")

    modes = ("plain", "heartbeat", *watchers)
    for work in ("to_thread", "echo"):
        # Every mode in the same child process, round by round: processes differ from
        # one another by more than these costs (benchmarks/README.md, session 11).
        ratios: dict[str, list[float]] = {m: [] for m in modes[1:]}
        child = Child(work, ns.every, watcher_so)
        child.run("plain")  # warm-up
        for r in range(ns.rounds):
            order = modes[r % len(modes):] + modes[: r % len(modes)]
            took = {mode: child.run(mode)["elapsed"] for mode in order}
            for mode in modes[1:]:
                ratios[mode].append(took[mode] / took["plain"])
        child.close()
        summary["cost"][work] = {m: {"median": c.median(v), "ci95": c.median_ci(v)} for m, v in ratios.items()}
        print(f"cost, {work} on uvloop ({ns.rounds} rounds in one process, paired ratio to plain, median (95% CI)): "
              + "  ".join(f"{m} {c.median(v):.3f} ({c.median_ci(v)[0]:.3f}-{c.median_ci(v)[1]:.3f})"
                          for m, v in ratios.items()))
    if ns.json:
        c.write_json(ns.json, "syscall_watch", machine=c.machine_info(), every=ns.every, rounds=ns.rounds,
                     summary=summary, precision_rows=all_rows)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
