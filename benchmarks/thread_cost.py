#!/usr/bin/env python
"""What one idle extra thread costs an event loop, with no plugin involved.

The lag probe's culprits come from a watchdog thread (``sampler.py``). In a test process
that has no other thread (no executor, no ``to_thread``, no pytest-xdist), a second
thread that shares the process's file-descriptor table makes Linux take and drop a
reference on the file in every system call given a descriptor (the loop's
``epoll_wait``/``select`` on each iteration, every socket read and write), which it skips
while one thread owns the table. This script measures that, with nothing of
pytest-asyncbudget loaded: fresh interpreters run the same workloads with no extra
thread, with one extra thread blocked in a lock (started from Python, or
``faulthandler``'s C watchdog), and with one that first gave itself a table of its own
(``unshare(CLONE_FILES)``, what the plugin's watchdog does), interleaved round by round.

Workloads (best of 9 per process; the script reports the median over rounds):

* ``epoll``: 30,000 ``select.epoll().poll(0)`` calls;
* ``lseek``: 30,000 ``os.lseek(fd, 0, SEEK_CUR)`` calls on ``/dev/null``. ``lseek`` is not
  a cancellation point of the C library, so it separates the kernel's cost (above) from
  glibc's cancellation handling, which session 5 first suspected;
* ``getppid``: 30,000 ``os.getppid()`` calls, a system call with no descriptor (control);
* ``asyncio`` / ``uvloop``: two tasks ping-ponging through ``await asyncio.sleep(0)``
  (9,000 rounds each; the overhead suite's ``test_switch_pair``).

Usage::

    python benchmarks/thread_cost.py --rounds 8 --json thread-cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

VARIANTS = ("none", "python-thread", "faulthandler-thread", "private-fd-thread")

_CHILD = r'''
import asyncio, json, os, select, sys, time, _thread
variant = sys.argv[1]
if variant == "python-thread":
    lock = _thread.allocate_lock(); lock.acquire()
    _thread.start_new_thread(lock.acquire, ())
elif variant == "private-fd-thread":
    lock = _thread.allocate_lock(); lock.acquire()
    def idle():
        if hasattr(os, "unshare"):
            os.unshare(os.CLONE_FILES)
        else:
            import ctypes
            ctypes.CDLL(None, use_errno=True).unshare(0x400)
        lock.acquire()
    _thread.start_new_thread(idle, ())
elif variant == "faulthandler-thread":
    import faulthandler
    faulthandler.dump_traceback_later(3600)
time.sleep(0.01)

def best(fn, n=9):
    out = float("inf")
    for _ in range(n):
        t = time.perf_counter(); fn(); out = min(out, time.perf_counter() - t)
    return out

ep = select.epoll()
fd = os.open("/dev/null", os.O_RDONLY)
def seeks():
    for _ in range(30000):
        os.lseek(fd, 0, os.SEEK_CUR)

def ppids():
    for _ in range(30000):
        os.getppid()

def polls():
    poll = ep.poll
    for _ in range(30000):
        poll(0)

async def switcher(n):
    for _ in range(n):
        await asyncio.sleep(0)

async def pair():
    await asyncio.gather(switcher(9000), switcher(9000))

def on(factory):
    def run():
        loop = factory()
        try:
            loop.run_until_complete(pair())
        finally:
            loop.close()
    return run

result = {"epoll": best(polls), "lseek": best(seeks), "getppid": best(ppids), "asyncio": best(on(asyncio.new_event_loop))}
try:
    import uvloop
    result["uvloop"] = best(on(uvloop.new_event_loop))
except ImportError:
    pass
print(json.dumps(result))
'''


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--json", metavar="PATH")
    ns = ap.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for r in range(ns.rounds):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[: r % len(VARIANTS)]
        for variant in order:
            out = subprocess.run([sys.executable, "-c", _CHILD, variant], capture_output=True, text=True, check=True)
            runs[variant].append(json.loads(out.stdout))
    workloads = list(runs["none"][0])
    summary: dict[str, dict[str, float]] = {}
    print(f"{ns.rounds} rounds; median over rounds of each process's best of 9")
    print(f"{'workload':9} " + " ".join(f"{v:>22}" for v in VARIANTS))
    for w in workloads:
        summary[w] = {}
        cells = []
        for v in VARIANTS:
            med = statistics.median(run[w] for run in runs[v])
            paired = statistics.median(a[w] / b[w] for a, b in zip(runs[v], runs["none"]))
            summary[w][v] = med
            summary[w][v + "_paired_ratio"] = paired
            cells.append(f"{med * 1e3:7.2f} ms ({paired:5.3f}x)")
        print(f"{w:9} " + " ".join(f"{c:>22}" for c in cells))
    if ns.json:
        Path(ns.json).write_text(json.dumps({"benchmark": "thread_cost", "rounds": ns.rounds, "summary": summary,
                                             "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
