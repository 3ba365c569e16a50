#!/usr/bin/env python
"""Could uvloop's lag be measured without the heartbeat? A feasibility check, no plugin.

On uvloop the lag probe runs a 1 ms heartbeat (``probes/lag.py``). Its cost is worst for
code that waits on threads (``to_thread``): see ``benchmarks/README.md``, session 11.
Linux shows every thread's current system call in ``/proc/PID/task/TID/syscall``: the
call's number and arguments while the thread is in one, ``running`` while it runs user
code. An idle uvloop loop is in ``epoll_pwait``/``epoll_wait`` with a timeout other than
0; anything else (running Python, a ``time.sleep``, a blocking read, waiting for the GIL)
is a busy stretch of the loop. Another thread that reads that file every half
millisecond, in C and without the GIL, could time the busy stretches with nothing at all
running on the loop.

This script checks the idea before anyone writes that thread. The watcher here is
another *process* (so it has its own GIL and cannot slow the loop's), reading the file
of a child that runs a uvloop loop:

* **precision**: the child blocks its loop for known times (``time.sleep`` and
  busy-waits, 5 ms to 200 ms, started from a timer), records when each block really
  began and ended, and the watcher rebuilds the busy stretches from its samples. The
  error is the stretch's length minus the block's;
* **cost to the loop**: one child runs ``to_thread`` batches (another a loopback TCP
  echo) again and again, in rounds of three: with nothing, with a 1 ms heartbeat like
  the probe's, and while being watched, in rotating order. The figures are the median
  of the per-round ratios to nothing, with a 95% CI. One process for all three, because
  processes differ from one another by more than these costs.

The watcher's own CPU (one ``pread`` of the file, about 2 us, per sample) is not in
these figures: in the real design it would be a thread of the test process.

Usage::

    /work/venv/bin/python benchmarks/syscall_watch.py --rounds 15 --json watch.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

#: System calls an idle epoll loop waits in (x86-64 and aarch64 numbers).
WAITS = {"x86_64": {232, 281, 441}, "aarch64": {22, 441}}

CHILD = r'''
import asyncio, json, os, sys, threading, time
import uvloop

work, interval = sys.argv[1], float(sys.argv[2])
clock = time.perf_counter

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
        t0 = clock()
        result = await {"to_thread": to_thread_work, "echo": echo_work, "blocks": blocks}[work]()
        elapsed = clock() - t0
        if beat[0] is not None:
            beat[0].cancel()
        print(json.dumps({"elapsed": elapsed, "blocks": result if work == "blocks" else None}), flush=True)

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

    def __init__(self, work: str, watch_every: float, beat: float = 0.001) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, work, str(beat)],
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
            waits = WAITS.get(os.uname().machine, WAITS["x86_64"])
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


def precision(rounds: int, every: float) -> list[dict]:
    rows = []
    child = Child("blocks", every)
    for _ in range(rounds):
        res = child.run("watched")
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

    rows = precision(max(ns.rounds // 3, 3), ns.every)
    print(f"precision (watcher every {ns.every * 1e3:g} ms; error = rebuilt stretch - real block):")
    summary: dict[str, dict] = {"precision": {}, "cost": {}}
    for kind in ("sleep", "busy"):
        for d in sorted({r["block_ms"] for r in rows}):
            errs = [r["error_ms"] for r in rows if r["kind"] == kind and r["block_ms"] == d]
            seen = [e for e in errs if e is not None]
            med = c.median(seen) if seen else float("nan")
            worst = max((abs(e) for e in seen), default=float("nan"))
            summary["precision"][f"{kind} {d:g} ms"] = {"median_ms": med, "max_abs_ms": worst, "missed": len(errs) - len(seen)}
            print(f"  {kind:5} {d:6.0f} ms: median {med:+.3f} ms, max |error| {worst:.3f} ms, missed {len(errs) - len(seen)} of {len(errs)}")

    modes = ("plain", "heartbeat", "watched")
    for work in ("to_thread", "echo"):
        # Every mode in the same child process, round by round: processes differ from
        # one another by more than these costs (benchmarks/README.md, session 11).
        ratios: dict[str, list[float]] = {m: [] for m in modes[1:]}
        child = Child(work, ns.every)
        child.run("plain")  # warm-up
        for r in range(ns.rounds):
            order = modes[r % 3:] + modes[: r % 3]
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
                     summary=summary, precision_rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
