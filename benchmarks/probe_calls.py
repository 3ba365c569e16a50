#!/usr/bin/env python
"""What two probes add to the calls they watch, in one process, without pytest.

``paired.py`` finds that ``asyncio.to_thread`` costs about 2.5-3 µs more per call with
the plugin, on both loops, and that this is ``no_blocking`` and ``no_leaked_tasks``.
This script times those two probes alone, driven the way the core drives them
(``phase_started``, ``loop_started`` once the loop runs, ``phase_stopped``), against the
same loop with no probe, in interleaved rounds:

* **gather**: ``asyncio.gather`` of N trivial coroutines under the leak probe, in its
  full mode (creation sites recorded: a test with a ``no_leaked_tasks`` budget) and in
  its measure-only mode (the others). Printed as extra microseconds per ``gather``.
  From 8 awaitables on, the probe handles a ``gather`` as one burst.
* **to_thread**: ``asyncio.to_thread`` calls in batches of 10 under ``no_blocking``'s
  patches, installed but with no loop attached (every guard lets the call through),
  and with the loop attached (every guard checks). Printed as extra microseconds per
  call and as the median paired ratio.

Each figure is the difference of the fastest runs (``min``), which on this noisy machine
is steadier than the medians.

Usage::

    /work/venv/bin/python benchmarks/probe_calls.py --rounds 15 --loops asyncio,uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
import loop_seams  # noqa: E402
from pytest_asyncbudget.probes import leaks  # noqa: E402
from pytest_asyncbudget.probes.base import ProbeContext  # noqa: E402
from pytest_asyncbudget.probes.blocking import BlockingProbe  # noqa: E402

try:
    import uvloop
except ImportError:  # pragma: no cover - optional
    uvloop = None


async def _body() -> None:
    """Stands for the test function the leak probe snapshots."""


def _context() -> ProbeContext:
    item = types.SimpleNamespace(obj=_body, stash={}, _fixtureinfo=None)
    return ProbeContext(item=item, config=None, sampler=None)  # type: ignore[arg-type]


async def _one() -> int:
    return 1


async def _gathers(n: int, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        await asyncio.gather(*(_one() for _ in range(n)))
    return (time.perf_counter() - start) / reps


async def _per_to_thread_call(calls: int) -> float:
    return await loop_seams._to_thread(calls) / calls


def _new_loop(loop_name: str) -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if loop_name == "uvloop" else asyncio.new_event_loop()


def run_gather(loop_name: str, mode: str, n: int, reps: int) -> float:
    loop = _new_loop(loop_name)
    probe = None
    if mode != "none":
        probe = leaks.LeakProbe(leaks.LeakSettings(grace=0), _context(), record_sites=mode == "full")
        probe.phase_started("call")
        loop.call_soon(probe.loop_started, loop)
    try:
        return loop.run_until_complete(_gathers(n, reps))
    finally:
        if probe is not None:
            probe.loop_stopped(loop)
            probe.phase_stopped("call")
        loop.close()


def run_to_thread(loop_name: str, mode: str, batches: int) -> float:
    loop = _new_loop(loop_name)
    probe = None
    if mode != "none":
        probe = BlockingProbe((), None)
        probe.phase_started("call")
        if mode == "attached":
            loop.call_soon(probe.loop_started, loop)
    try:
        return loop.run_until_complete(_per_to_thread_call(batches * 10))
    finally:
        if probe is not None:
            probe.loop_stopped(loop)
            probe.phase_stopped("teardown")  # takes the patches off
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def interleaved(run: Callable[[str], float], modes: list[str], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):
        order = modes[:]
        random.shuffle(order)
        for mode in order:
            times[mode].append(run(mode))
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    ap.add_argument("--loops", default="asyncio,uvloop")
    ap.add_argument("--json", metavar="PATH")
    ns = ap.parse_args()
    results: dict[str, Any] = {"machine": c.machine_info(), "rounds": ns.rounds, "loops": {}}
    for loop_name in [x.strip() for x in ns.loops.split(",") if x.strip()]:
        if loop_name == "uvloop" and uvloop is None:
            print("uvloop is not installed: skipped")
            continue
        out: dict[str, Any] = {"gather": {}, "to_thread": {}}
        print(f"\n[{loop_name}] asyncio.gather of N trivial coroutines, leak probe on (extra µs per gather):")
        for n in (1, 4, 8, 10, 16, 64):
            times = interleaved(lambda mode: run_gather(loop_name, mode, n, 400), ["none", "full", "measure-only"], ns.rounds)
            base = min(times["none"])
            row = {mode: (min(v) - base) * 1e6 for mode, v in times.items() if mode != "none"}
            out["gather"][n] = {"plain_us": base * 1e6, **row}
            print(f"    N={n:<3} plain {base * 1e6:7.1f} µs   +{row['full']:5.1f} (sites recorded)   "
                  f"+{row['measure-only']:5.1f} (measure-only)")
        times = interleaved(lambda mode: run_to_thread(loop_name, mode, 150), ["none", "installed", "attached"], ns.rounds)
        base = min(times["none"])
        print(f"[{loop_name}] asyncio.to_thread in batches of 10, no_blocking's patches (plain {base * 1e6:.1f} µs a call):")
        for mode in ("installed", "attached"):
            ratio = statistics.median(x / b for x, b in zip(times[mode], times["none"]))
            extra = (min(times[mode]) - base) * 1e6
            out["to_thread"][mode] = {"extra_us": extra, "paired_ratio": ratio, "plain_us": base * 1e6}
            label = "patches in place, no loop attached" if mode == "installed" else "loop attached (every guard checks)"
            print(f"    {label:<36} +{extra:5.2f} µs a call, paired ratio {ratio:.3f}")
        results["loops"][loop_name] = out
    if ns.json:
        Path(ns.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
