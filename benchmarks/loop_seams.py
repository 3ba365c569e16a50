#!/usr/bin/env python
"""What the lag probe's two seams cost a loop, in one process, with nothing else loaded.

``max_loop_lag`` measures stock asyncio through a wrapper on the selector's ``select``
(one clock read per loop iteration) and uvloop through a 1 ms heartbeat timer
(``probes/lag.py``). This script times each seam alone against the bare loop, and one
effect of the heartbeat that is not its own work:

* **epoll**: ``epoll.poll`` on a descriptor that is always ready, with the timeouts a
  loop passes: -1 (no timer pending), 0 (callbacks ready) and 1 ms (a timer pending).
  With events ready the call returns at once in all three cases, but a finite timeout
  makes the kernel read the clock and set the timeout up first.
* **select wrapper** (asyncio): a ``sleep(0)`` ping-pong of two tasks (about two
  callbacks per iteration) with the compiled ``SelectTimer``, its Python twin, a
  pass-through lambda (the cost of any wrapper at all) and nothing.
* **pending timer** (uvloop): 1,500 round trips of 32 bytes over loopback TCP in one loop,
  bare, with one timer pending that never fires (``call_later(1000, ...)``), and with a
  heartbeat like the probe's every 1, 2 or 3 ms. A loop with no timer waits in
  ``epoll_wait(-1)``; with any timer pending it waits with a finite timeout, which is the
  cost above, paid at every iteration that finds nothing ready. The same variants then
  run 1,500 ``asyncio.to_thread`` calls in batches of 10 (the loop waits for its worker
  threads).

Each variant runs in interleaved rounds (the order rotates) and is reported as the median
time and the median of the per-round ratios to the bare loop.

Usage::

    /work/venv/bin/python benchmarks/loop_seams.py --rounds 15 --json seams.json
"""

from __future__ import annotations

import argparse
import asyncio
import select
import socket
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

try:
    import uvloop
except ImportError:  # pragma: no cover - the pending-timer part needs it
    uvloop = None


def epoll_costs(rounds: int) -> dict[str, float]:
    """ns per ``epoll.poll`` call on an always-ready descriptor, per timeout."""
    a, b = socket.socketpair()
    b.send(b"x")  # a stays readable
    ep = select.epoll()
    ep.register(a.fileno(), select.EPOLLIN)
    variants = {"-1": lambda: ep.poll(-1), "0": lambda: ep.poll(0), "0.001": lambda: ep.poll(0.001)}
    out: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for _ in range(rounds):
            for name, fn in variants.items():
                out[name].append(min(timeit.repeat(fn, number=20000, repeat=3)) / 20000 * 1e9)
    finally:
        ep.close()
        a.close()
        b.close()
    return {k: statistics.median(v) for k, v in out.items()}


async def _switcher(rounds: int) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def _ping_pong() -> None:
    await asyncio.gather(_switcher(9000), _switcher(9000))


def _select_run(kind: str) -> float:
    from pytest_asyncbudget.probes import lag

    loop = asyncio.new_event_loop()
    ticks = None
    try:
        if kind == "SelectTimer (compiled)":
            if lag._compiled_timer() is None:
                return float("nan")
            ticks = lag._SelectorTicks(loop, 0.001, lambda *a: None)
        elif kind == "Python closure":
            saved, lag._TIMER = lag._TIMER, False  # False: "no compiled timer"
            try:
                ticks = lag._SelectorTicks(loop, 0.001, lambda *a: None)
            finally:
                lag._TIMER = saved
        elif kind == "pass-through lambda":
            original = loop._selector.select  # type: ignore[attr-defined]
            loop._selector.select = lambda timeout=None: original(timeout)  # type: ignore[attr-defined]
        start = time.perf_counter()
        loop.run_until_complete(_ping_pong())
        return time.perf_counter() - start
    finally:
        if ticks is not None:
            ticks.detach()
        loop.close()


async def _echo(rounds: int = 1500) -> float:
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(4096)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.close()
        done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.perf_counter()
    for _ in range(rounds):
        writer.write(b"x" * 32)
        await writer.drain()
        await reader.readexactly(32)
    elapsed = time.perf_counter() - start
    writer.close()
    await writer.wait_closed()
    await done.wait()
    server.close()
    await server.wait_closed()
    return elapsed


def _work(x: int) -> int:
    return x * 2


async def _to_thread(calls: int = 1500) -> float:
    """``asyncio.to_thread`` calls in batches of 10, as in overhead.py's suite."""
    start = time.perf_counter()
    for _ in range(0, calls, 10):
        await asyncio.gather(*(asyncio.to_thread(_work, i) for i in range(10)))
    return time.perf_counter() - start


#: The heartbeats timed on uvloop, by name: their interval in seconds.
BEATS = {"1 ms heartbeat": 0.001, "2 ms heartbeat": 0.002, "3 ms heartbeat": 0.003}


def _timer_run(kind: str, workload: Callable[[], Any] = _echo) -> float:
    loop = uvloop.new_event_loop()
    handle: list[Any] = [None]
    try:
        if kind == "one timer pending (never fires)":
            handle[0] = loop.call_later(1000, lambda: None)
        elif kind in BEATS:
            interval = BEATS[kind]

            def beat() -> None:
                time.perf_counter()  # what the probe's beat does, roughly: read the clock
                handle[0] = loop.call_later(interval, beat)

            handle[0] = loop.call_later(interval, beat)
        return loop.run_until_complete(workload())
    finally:
        if handle[0] is not None:
            handle[0].cancel()
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def interleaved(run: Callable[[str], float], kinds: list[str], rounds: int) -> dict[str, dict[str, float]]:
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(rounds):
        shift = r % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            times[kind].append(run(kind))
    base = times[kinds[0]]
    return {
        k: {
            "median_ms": statistics.median(v) * 1e3,
            "paired_ratio": statistics.median(x / b for b, x in zip(base, v)),
            "min_ratio": min(v) / min(base),
        }
        for k, v in times.items()
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    ap.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    ns = ap.parse_args(argv)
    info = c.machine_info()
    print(f"machine: {info}")
    results: dict[str, Any] = {}

    results["epoll_ns"] = epoll = epoll_costs(ns.rounds)
    print("\nepoll.poll on an always-ready descriptor, ns per call (median of rounds):")
    for timeout, ns_call in epoll.items():
        print(f"    timeout {timeout:>6}: {ns_call:6.0f} ns")

    kinds = ["bare loop", "SelectTimer (compiled)", "Python closure", "pass-through lambda"]
    results["select_wrapper"] = table = interleaved(_select_run, kinds, ns.rounds)
    print("\nasyncio, sleep(0) ping-pong (9,000 rounds x 2 tasks):")
    for kind, row in table.items():
        print(f"    {kind:32} {row['median_ms']:7.2f} ms  paired {row['paired_ratio']:.4f}  min {row['min_ratio']:.4f}")

    if uvloop is not None:
        kinds = ["bare loop", "one timer pending (never fires)", *BEATS]
        results["pending_timer"] = table = interleaved(_timer_run, kinds, ns.rounds)
        print("\nuvloop, 1,500 loopback TCP round trips:")
        for kind, row in table.items():
            print(f"    {kind:32} {row['median_ms']:7.2f} ms  paired {row['paired_ratio']:.4f}  min {row['min_ratio']:.4f}")
        results["pending_timer_to_thread"] = table = interleaved(
            lambda kind: _timer_run(kind, _to_thread), kinds, ns.rounds)
        print("\nuvloop, 1,500 asyncio.to_thread calls in batches of 10:")
        for kind, row in table.items():
            print(f"    {kind:32} {row['median_ms']:7.2f} ms  paired {row['paired_ratio']:.4f}  min {row['min_ratio']:.4f}")
    if ns.json:
        c.write_json(ns.json, "loop_seams", machine=info, rounds=ns.rounds, results=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
