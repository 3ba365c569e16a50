#!/usr/bin/env python
"""Where the lag probe's cost goes on a callback-heavy loop, measured in-process.

The lag probe has two parts that run while a test runs:

* the tick source: on stock asyncio a wrapper around the loop's ``selector.select``
  (one clock read per busy iteration, two when the loop waits, and a comparison, in
  Python); on uvloop a 1 ms ``call_later`` heartbeat;
* the session's stack sampler: a watchdog thread that wakes when a stretch could first
  cross the sampling threshold (half the budget) and reads the probe's ``busy_since``.

This script runs one workload (two tasks ping-ponging through ``await asyncio.sleep(0)``,
the worst case for a per-iteration cost: about two callbacks per iteration) on a fresh
loop, in three variants, interleaved trial by trial: none; the tick source alone; the
real probe (``loop_started``/``loop_stopped``: tick source plus stack sampler). The
sampler's share is the difference between the last two. It reports the median per-trial
time (CPU and wall), the ratio to "none", and the extra CPU per tick (per ``select`` call
on asyncio, per heartbeat on uvloop). It uses the plugin's own classes, so it follows the code as it is.

Usage::

    /work/venv/bin/python benchmarks/lag_probe_parts.py --trials 40 --loops asyncio,uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROUNDS = 20000


async def _switcher(rounds: int) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def _workload(rounds: int) -> None:
    await asyncio.gather(_switcher(rounds), _switcher(rounds))


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def trial(kind: str, variant: str, rounds: int, sampler, budget: float) -> tuple[float, float, int]:
    """One run of the workload; variant: none, ticks (tick source only), probe (the real probe)."""
    from types import SimpleNamespace

    from pytest_asyncbudget.probes.lag import LagProbe, _HeartbeatTicks, _SelectorTicks

    probe = LagProbe(budget, SimpleNamespace(sampler=sampler, item=None, config=None))
    loop = _new_loop(kind)
    ticks = None
    iterations = 0
    try:
        async def main() -> None:
            nonlocal ticks, iterations
            running = asyncio.get_running_loop()
            if variant == "probe":
                probe.phase_started("call")
                probe.loop_started(running)
                ticks = probe._ticks
            elif variant == "ticks":
                cls = _SelectorTicks if _SelectorTicks.fits(running) else _HeartbeatTicks
                ticks = cls(running, probe.floor, lambda *a: None)
            try:
                await _workload(rounds)
            finally:
                if ticks is not None:
                    iterations = ticks.iterations
                if variant == "probe":
                    probe.loop_stopped(running)
                    probe.phase_stopped("call")
                    sampler.park()
                elif ticks is not None:
                    ticks.detach()

        c0, w0 = time.process_time(), time.perf_counter()
        loop.run_until_complete(main())
        c1, w1 = time.process_time(), time.perf_counter()
    finally:
        loop.close()
    return c1 - c0, w1 - w0, iterations


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="sleep(0) rounds per task per trial")
    ap.add_argument("--loops", default="asyncio,uvloop")
    ap.add_argument("--budget", type=float, default=10.0, help="the max_loop_lag budget in seconds (default 10)")
    ap.add_argument("--json", metavar="PATH")
    ns = ap.parse_args(argv)

    from pytest_asyncbudget.sampler import StackSampler

    sampler = StackSampler()
    variants = ["none", "ticks", "probe"]
    loops = [x for x in ns.loops.split(",") if x]
    results: dict[str, dict[str, dict[str, list[float]]]] = {
        k: {v: {"cpu": [], "wall": [], "iterations": []} for v in variants} for k in loops
    }
    for kind in loops:  # warm-up
        for v in variants:
            trial(kind, v, ns.rounds // 10, sampler, ns.budget)
    for t in range(ns.trials):
        order = variants[t % 3:] + variants[: t % 3]
        for kind in loops:
            for v in order:
                cpu, wall, iterations = trial(kind, v, ns.rounds, sampler, ns.budget)
                results[kind][v]["cpu"].append(cpu)
                results[kind][v]["wall"].append(wall)
                results[kind][v]["iterations"].append(iterations)
    summary = {}
    print(f"workload: 2 tasks x {ns.rounds} sleep(0); {ns.trials} interleaved trials; budget {ns.budget:g} s")
    print(f"{'loop':8} {'variant':8} {'cpu med':>9} {'ratio':>7} {'wall med':>9} {'ratio':>7} {'per tick':>14}")
    for kind in loops:
        base_cpu = statistics.median(results[kind]["none"]["cpu"])
        base_wall = statistics.median(results[kind]["none"]["wall"])
        iters = max((max(results[kind][v]["iterations"]) for v in variants), default=0)
        summary[kind] = {}
        for v in variants:
            cpu = statistics.median(results[kind][v]["cpu"])
            wall = statistics.median(results[kind][v]["wall"])
            per_iter = (cpu - base_cpu) / iters * 1e9 if iters else float("nan")
            summary[kind][v] = {"cpu_median_s": cpu, "cpu_ratio": cpu / base_cpu, "wall_median_s": wall,
                                "wall_ratio": wall / base_wall, "iterations": iters, "cpu_ns_per_iteration": per_iter}
            print(f"{kind:8} {v:8} {cpu * 1e3:>7.1f}ms {cpu / base_cpu:>7.3f} {wall * 1e3:>7.1f}ms {wall / base_wall:>7.3f} "
                  f"{per_iter:>11.0f} ns")
    if ns.json:
        Path(ns.json).write_text(json.dumps({"benchmark": "lag_probe_parts", "trials": ns.trials, "rounds": ns.rounds,
                                             "budget": ns.budget,
                                             "summary": summary, "raw": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
