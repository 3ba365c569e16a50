#!/usr/bin/env python
"""Wall-time overhead of pytest-asyncbudget on a callback-heavy async test suite.

Generates (into a temporary directory) a suite of async tests that stress the event loop
the ways real async code does: task switching (``await asyncio.sleep(0)`` ping-pongs
between tasks), ``gather`` of many tasks, TCP echo over loopback, ``asyncio.Queue``
producer/consumer and ``asyncio.to_thread``. Each test takes roughly 20-100 ms and the
suite a few seconds.

Then runs it in fresh subprocesses, interleaved round by round, in two configurations:

* ``plain``  - pytest + pytest-asyncio with the plugin disabled (``-p no:asyncbudget``);
* ``plugin`` - the plugin with every budget it offers turned on for every test through
  its CLI options (found in ``pytest --help``; large budgets so nothing fails),

on stock asyncio and on uvloop (chosen by a generated conftest implementing
pytest-asyncio's ``pytest_asyncio_loop_factories`` hook). Within a round the order of the
two configurations alternates (plain/plugin, then plugin/plain, ...) so drift and noise
from other work on the machine hit both alike.

Five clocks per run: the process wall time, the session time measured by a conftest hook
(``pytest_sessionstart`` to ``pytest_sessionfinish``: collection plus the tests, without
interpreter start-up), the "in X.XXs" pytest prints, and the CPU time (all threads) of the
session and of the whole process; on a loaded machine the CPU clocks are the steadier.
Reported per loop: the median of each configuration, the ratio of medians (plugin/plain),
and the median (and IQR) of the per-round paired ratios. A run killed by a signal is
retried, not timed, and counted. ``--per-budget`` adds one configuration per budget alone,
for attribution.

Usage::

    /work/venv/bin/python benchmarks/overhead.py --rounds 15 --loops asyncio,uvloop --json out.json
    /work/venv/bin/python benchmarks/overhead.py --durations      # per-test durations, to tune sizes
    /work/venv/bin/python benchmarks/overhead.py --per-budget     # also each budget alone
    /work/venv/bin/python benchmarks/overhead.py --lag-default --lag-budgeted  # issue 2's configurations
    /work/venv/bin/python benchmarks/overhead.py --profile        # cProfile one plugin run per loop
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

#: Work per test at --scale 1 (tuned so each test takes ~20-100 ms on stock asyncio here).
SIZES = {
    "SWITCH_PAIR": 9000,  # sleep(0) rounds for each of 2 ping-ponging tasks
    "SWITCH_MANY_TASKS": 100,  # tasks ...
    "SWITCH_MANY_ROUNDS": 360,  # ... each doing this many sleep(0)
    "GATHER_TASKS": 6000,  # tasks gathered at once, each awaiting sleep(0) twice
    "TCP_ROUNDS": 1500,  # 32-byte request/response round trips over loopback
    "QUEUE_ITEMS": 60000,  # items through a bounded queue, 2 producers -> 2 consumers
    "THREAD_CALLS": 1500,  # asyncio.to_thread calls, in batches of 10
}
#: How many times each test is repeated (parametrized) in the suite.
REPEATS = 10

TESTS = '''\
import asyncio

import pytest

SWITCH_PAIR = {SWITCH_PAIR}
SWITCH_MANY_TASKS = {SWITCH_MANY_TASKS}
SWITCH_MANY_ROUNDS = {SWITCH_MANY_ROUNDS}
GATHER_TASKS = {GATHER_TASKS}
TCP_ROUNDS = {TCP_ROUNDS}
QUEUE_ITEMS = {QUEUE_ITEMS}
THREAD_CALLS = {THREAD_CALLS}
REPEATS = range({REPEATS})


async def _switcher(rounds):
    for _ in range(rounds):
        await asyncio.sleep(0)


@pytest.mark.asyncio
@pytest.mark.parametrize("rep", REPEATS)
async def test_switch_pair(rep):
    """Two tasks ping-pong through sleep(0): ~2 callbacks per loop iteration."""
    await asyncio.gather(_switcher(SWITCH_PAIR), _switcher(SWITCH_PAIR))


@pytest.mark.asyncio
@pytest.mark.parametrize("rep", REPEATS)
async def test_switch_many(rep):
    """Many tasks switching through sleep(0): long ready queues per iteration."""
    await asyncio.gather(*(_switcher(SWITCH_MANY_ROUNDS) for _ in range(SWITCH_MANY_TASKS)))


async def _child(i):
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    return i


@pytest.mark.asyncio
@pytest.mark.parametrize("rep", REPEATS)
async def test_gather(rep):
    """gather() of thousands of short tasks."""
    results = await asyncio.gather(*(_child(i) for i in range(GATHER_TASKS)))
    assert results[-1] == GATHER_TASKS - 1


@pytest.mark.asyncio
@pytest.mark.parametrize("rep", REPEATS)
async def test_tcp_echo(rep):
    """Many small request/response round trips over a loopback TCP connection."""
    handler_done = asyncio.Event()

    async def handle(reader, writer):
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            handler_done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    msg = b"x" * 32
    for _ in range(TCP_ROUNDS):
        writer.write(msg)
        await writer.drain()
        assert await reader.readexactly(len(msg)) == msg
    writer.close()
    await writer.wait_closed()
    await handler_done.wait()
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
@pytest.mark.parametrize("rep", REPEATS)
async def test_queue(rep):
    """Two producers and two consumers through a bounded asyncio.Queue."""
    queue = asyncio.Queue(maxsize=64)
    per_producer = QUEUE_ITEMS // 2
    total = 0

    async def produce():
        for i in range(per_producer):
            await queue.put(i)

    async def consume():
        nonlocal total
        while True:
            item = await queue.get()
            if item is None:
                return
            total += 1

    consumers = [asyncio.create_task(consume()) for _ in range(2)]
    await asyncio.gather(produce(), produce())
    for _ in consumers:
        await queue.put(None)
    await asyncio.gather(*consumers)
    assert total == 2 * per_producer


def _work(x):
    return x * 2


@pytest.mark.asyncio
@pytest.mark.parametrize("rep", REPEATS)
async def test_to_thread(rep):
    """asyncio.to_thread() calls, in small concurrent batches."""
    done = 0
    for start in range(0, THREAD_CALLS, 10):
        results = await asyncio.gather(*(asyncio.to_thread(_work, i) for i in range(start, start + 10)))
        done += len(results)
    assert done == THREAD_CALLS
'''


def make_suite(root: Path, loop: str, scale: float, repeats: int) -> Path:
    sizes = {k: max(1, int(v * scale)) for k, v in SIZES.items()}
    sizes["THREAD_CALLS"] = max(10, sizes["THREAD_CALLS"] // 10 * 10)
    return c.write_project(root / loop, loop, {"test_overhead.py": TESTS.format(REPEATS=repeats, **sizes)})


#: session: conftest hook, sessionstart..sessionfinish; wall: the whole process; pytest: its
#: own "in X.XXs"; session_cpu / cpu: CPU seconds (all threads) of the session / process.
CLOCKS = ("session_s", "wall_s", "pytest_s", "session_cpu_s", "cpu_s")


def summarize(runs: dict[str, dict[str, list[c.Run]]], loops: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """loop -> configuration (other than plain) -> figures against plain."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for loop in loops:
        plain = runs[loop]["plain"]
        out[loop] = {}
        for name, other in runs[loop].items():
            if name == "plain":
                continue
            row: dict[str, float] = {"rounds": len(other)}
            for clock in CLOCKS:
                a = [getattr(r, clock) for r in plain if getattr(r, clock) is not None]
                b = [getattr(r, clock) for r in other if getattr(r, clock) is not None]
                pairs = [
                    getattr(q, clock) / getattr(p, clock)
                    for p, q in zip(plain, other)
                    if getattr(p, clock) and getattr(q, clock)
                ]
                row[f"plain_{clock}_median"] = c.median(a)
                row[f"{clock}_median"] = c.median(b)
                row[f"{clock}_ratio_of_medians"] = c.median(b) / c.median(a) if a and b else float("nan")
                row[f"{clock}_paired_ratio_median"] = c.median(pairs)
                row[f"{clock}_paired_ratio_q25"] = c.quantile(pairs, 0.25)
                row[f"{clock}_paired_ratio_q75"] = c.quantile(pairs, 0.75)
                row[f"{clock}_paired_ratio_ci95_low"], row[f"{clock}_paired_ratio_ci95_high"] = c.median_ci(pairs)
            out[loop][name] = row
    return out


def _kind(nodeid: str) -> str:
    return nodeid.split("::")[-1].split("[")[0]


def per_test_minimum(runs: dict[str, dict[str, list[c.Run]]], loops: list[str]) -> dict[str, dict[str, Any]]:
    """loop -> configuration -> the low-noise estimate: per kind of test, the fastest call
    over all its copies and rounds; summed over the kinds; as a ratio to plain.

    On a shared machine a session's time moves by 5-10% from run to run, as much as the
    overhead itself. The fastest of 10 x rounds calls of the same test is much steadier
    (the machine's noise only ever adds time), so this sum resolves differences of about
    1%. It leaves out what happens between calls (collection, setup and teardown: the
    plugin's fixed cost per test, measured by fixed_cost.py).
    """
    out: dict[str, dict[str, Any]] = {}
    for loop in loops:
        mins: dict[str, dict[str, float]] = {}
        #: configuration -> kind -> the median over rounds of the round's fastest call
        typical: dict[str, dict[str, float]] = {}
        for name, rs in runs[loop].items():
            kinds: dict[str, float] = {}
            per_round: dict[str, list[float]] = {}
            for run in rs:
                fastest: dict[str, float] = {}
                for nodeid, seconds in run.durations.items():
                    kind = _kind(nodeid)
                    fastest[kind] = min(seconds, fastest.get(kind, float("inf")))
                for kind, seconds in fastest.items():
                    kinds[kind] = min(seconds, kinds.get(kind, float("inf")))
                    per_round.setdefault(kind, []).append(seconds)
            mins[name] = kinds
            typical[name] = {kind: c.median(xs) for kind, xs in per_round.items()}
        plain = mins.get("plain", {})
        plain_typical = typical.get("plain", {})
        out[loop] = {}
        for name, kinds in mins.items():
            if not kinds or not plain:
                continue
            total = sum(kinds.values())
            mid = typical[name]
            out[loop][name] = {
                "sum_of_min_call_s": total,
                "ratio": total / sum(plain.values()),
                "per_kind_ratio": {k: kinds[k] / plain[k] for k in sorted(kinds) if plain.get(k)},
                "per_kind_min_s": dict(sorted(kinds.items())),
                # The same from the median over rounds of each round's fastest call: one
                # lucky round (the machine briefly quieter) cannot set it.
                "median_of_round_min_ratio": sum(mid.values()) / sum(plain_typical.values()),
                "per_kind_median_of_round_min_ratio": {
                    k: mid[k] / plain_typical[k] for k in sorted(mid) if plain_typical.get(k)
                },
            }
    return out


def _spike_free(run: c.Run) -> dict[str, float] | None:
    """One run's session clock with the spikes of single tests taken out, two ways.

    Garbage collections are taken out of every test and out of the time outside the
    tests, and added back whole: the run's total. They are a real cost (the plugin
    allocates too), but which test a collection lands in shifts from run to run, and a
    20-30 ms collection would otherwise decide which copy of a test looks fastest, or
    make the first test look slow. Then each kind of test stands for its copies by its
    fastest copy (``min``) or its median copy (``median``); the first test keeps what it
    took beyond that (the process's one-off work); the time outside the tests
    (collection, the hooks between tests) is kept as measured. None for a run recorded
    without protocol times.
    """
    if not run.protocols or run.session_s is None:
        return None
    gc_in = run.gc
    by_kind: dict[str, list[float]] = {}
    for nodeid, seconds in run.protocols.items():
        by_kind.setdefault(_kind(nodeid), []).append(seconds - gc_in.get(nodeid, 0.0))
    first_id, first_s = next(iter(run.protocols.items()))
    first_s -= gc_in.get(first_id, 0.0)
    first = by_kind[_kind(first_id)]
    outside = run.session_s - sum(run.protocols.values()) - gc_in.get("", 0.0)
    gc_total = sum(gc_in.values())
    out = {"outside_s": outside, "gc_s": gc_total}
    for how, pick in (("min", min), ("median", c.median)):
        out[f"first_extra_{how}_s"] = first_s - pick(first)
        out[how] = outside + gc_total + sum(len(xs) * pick(xs) for xs in by_kind.values()) + out[f"first_extra_{how}_s"]
    return out


def whole_test_estimate(runs: dict[str, dict[str, list[c.Run]]], loops: list[str]) -> dict[str, dict[str, Any]]:
    """loop -> configuration (other than plain) -> the session clock, spikes taken out.

    The session clock of two runs a few seconds apart differs by 5-10% on a shared
    machine, and part of that could be single tests hit by a burst of other work. Each run's
    session is rebuilt from its own parts (see :func:`_spike_free`): each kind of test
    counted at its fastest copy, or at its median copy, of that run; the first test's
    extra time; the time outside the tests. Unlike the per-test minimum above, this keeps
    everything the plugin does per test (setup, teardown, reports, its hooks between
    them) and per session (the first test's one-off work, collection). The rebuilt
    sessions are then paired round by round, as the session clock is. (On session 11's
    machine most of the noise was in whole runs: the ``min`` variant's IQR was only
    about a quarter narrower than the session clock's, the ``median`` one's no narrower.)
    """
    out: dict[str, dict[str, Any]] = {}
    for loop in loops:
        per_config = {name: [_spike_free(run) for run in rs] for name, rs in runs[loop].items()}
        plain = per_config.get("plain", [])
        out[loop] = {}
        for name, rebuilt in per_config.items():
            if name == "plain":
                continue
            pairs = [(p, q) for p, q in zip(plain, rebuilt) if p is not None and q is not None]
            if not pairs:
                continue
            row: dict[str, Any] = {"rounds": len(pairs)}
            for how in ("min", "median"):
                ratios = [q[how] / p[how] for p, q in pairs]
                row[f"{how}_paired_ratio_median"] = c.median(ratios)
                row[f"{how}_paired_ratio_q25"] = c.quantile(ratios, 0.25)
                row[f"{how}_paired_ratio_q75"] = c.quantile(ratios, 0.75)
                row[f"{how}_paired_ratio_ci95_low"], row[f"{how}_paired_ratio_ci95_high"] = c.median_ci(ratios)
                row[f"{how}_first_extra_ms"] = (
                    c.median([q[f"first_extra_{how}_s"] for _, q in pairs]) * 1e3,
                    c.median([p[f"first_extra_{how}_s"] for p, _ in pairs]) * 1e3,
                )
            for part in ("outside", "gc"):
                row[f"{part}_ms"] = (
                    c.median([q[f"{part}_s"] for _, q in pairs]) * 1e3,
                    c.median([p[f"{part}_s"] for p, _ in pairs]) * 1e3,
                )
            out[loop][name] = row
    return out


def print_whole_test(est: dict[str, dict[str, Any]]) -> None:
    if not any(est.values()):
        return
    print("\nsession rebuilt without single-test spikes (per run, garbage collections aside: each kind of test at "
          "its fastest or median copy, the first test's extra time, the time outside the tests; plus the run's "
          "total GC time; paired per round):")
    print(f"  {'loop':8} {'config':22} {'copies at':9} {'paired med':>10} {'paired IQR':>15} {'95% CI':>15}"
          f"   {'first test extra, ms':>22} {'outside tests, ms':>18} {'GC, ms':>16}")
    for loop, per_config in est.items():
        for name, row in per_config.items():
            for how in ("min", "median"):
                ext, extp = row[f"{how}_first_extra_ms"]
                out, outp = row["outside_ms"]
                gct, gcp = row["gc_ms"]
                print(f"  {loop:8} {name:22} {how:9} {row[f'{how}_paired_ratio_median']:>10.4f}"
                      f"  {row[f'{how}_paired_ratio_q25']:.4f}-{row[f'{how}_paired_ratio_q75']:.4f}"
                      f"  {row[f'{how}_paired_ratio_ci95_low']:.4f}-{row[f'{how}_paired_ratio_ci95_high']:.4f}"
                      f"   {ext:>9.2f} (plain {extp:.2f})   {out:>7.1f} (plain {outp:.1f})"
                      f"  {gct:>6.1f} (plain {gcp:.1f})")
    rounds = ", ".join(f"{loop}={next(iter(v.values()))['rounds']}" for loop, v in est.items() if v)
    print(f"  (rounds: {rounds})")


def print_per_test(est: dict[str, dict[str, Any]]) -> None:
    print("\nper-test minimum (fastest call of each kind of test over all copies and rounds, summed; "
          "calls only, no setup/teardown):")
    for loop, per_config in est.items():
        for name, row in per_config.items():
            if name == "plain":
                continue
            kinds = "  ".join(f"{k.removeprefix('test_')} {v:.3f}" for k, v in row["per_kind_ratio"].items())
            print(f"  {loop:8} {name:22} ratio {row['ratio']:.4f}   ({kinds})")
    print("per-test median of per-round minima (each round's fastest call of each kind, median over rounds; "
          "one lucky round cannot set it):")
    for loop, per_config in est.items():
        for name, row in per_config.items():
            if name == "plain" or "median_of_round_min_ratio" not in row:
                continue
            kinds = "  ".join(
                f"{k.removeprefix('test_')} {v:.3f}" for k, v in row["per_kind_median_of_round_min_ratio"].items()
            )
            print(f"  {loop:8} {name:22} ratio {row['median_of_round_min_ratio']:.4f}   ({kinds})")


def print_table(summary: dict[str, dict[str, dict[str, float]]]) -> None:
    print()
    print(f"{'loop':8} {'config':22} {'clock':11} {'plain med':>10} {'config med':>10} {'ratio of med':>12} "
          f"{'paired med':>10} {'paired IQR':>15} {'95% CI of paired med':>21}")
    for loop, per_config in summary.items():
        for name, row in per_config.items():
            for clock in CLOCKS:
                print(
                    f"{loop:8} {name:22} {clock[:-2]:11} {row[f'plain_{clock}_median']:>9.3f}s {row[f'{clock}_median']:>9.3f}s "
                    f"{row[f'{clock}_ratio_of_medians']:>12.4f} {row[f'{clock}_paired_ratio_median']:>10.4f} "
                    f"  {row[f'{clock}_paired_ratio_q25']:.4f}-{row[f'{clock}_paired_ratio_q75']:.4f}"
                    f"  {row.get(f'{clock}_paired_ratio_ci95_low', float('nan')):>9.4f}-"
                    f"{row.get(f'{clock}_paired_ratio_ci95_high', float('nan')):.4f}"
                )
    rounds = ", ".join(f"{loop}={int(next(iter(v.values()))['rounds'])}" for loop, v in summary.items() if v)
    print(f"(rounds: {rounds}; ratio = configuration / plain; the CI is distribution-free, from order statistics)")


def summarize_file(paths: list[str]) -> int:
    """The tables of earlier runs, from their JSON (the runs are kept in full).

    Several files are pooled: their rounds are put together (each round's configurations
    stay paired with each other), which narrows the confidence intervals when the runs
    measured the same code. Say so when quoting a pooled figure.
    """
    runs: dict[str, dict[str, list[c.Run]]] = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        for loop, per_config in data["runs"].items():
            if loop in runs and set(per_config) != set(runs[loop]):
                print(f"{path}: its {loop} configurations ({', '.join(per_config)}) differ from the "
                      f"earlier files' ({', '.join(runs[loop])}); cannot pool them")
                return 1
            for name, recs in per_config.items():
                runs.setdefault(loop, {}).setdefault(name, []).extend(c.Run(**rec) for rec in recs)
        machine = data.get("machine") or {}
        print(f"{path}: {data.get('rounds')} rounds, git {machine.get('git')}, machine {machine}")
    loops = list(runs)
    if len(paths) > 1:
        print(f"pooled: {', '.join(f'{loop} {len(runs[loop][next(iter(runs[loop]))])} rounds' for loop in loops)}")
    print_table(summarize(runs, loops))
    print_per_test(per_test_minimum(runs, loops))
    print_whole_test(whole_test_estimate(runs, loops))
    return 0


def show_durations(projects: dict[str, Path], budget: list[str], runs: int = 3) -> None:
    for loop, root in projects.items():
        for name, args in (("plain", c.PLAIN_ARGS), ("plugin", budget)):
            by_test: dict[str, list[float]] = {}
            sessions = []
            for _ in range(runs):
                run, crashes = c.run_pytest_retry(root, args, durations=True)
                if crashes:
                    print(f"[{loop}/{name}] {crashes} run(s) crashed (rc<0/>=128) and were retried")
                sessions.append(run.session_s)
                for nodeid, seconds in run.durations.items():
                    by_test.setdefault(_kind(nodeid), []).append(seconds * 1000)
            print(f"[{loop}/{name}] {run.items} tests, session median {c.median(sessions):.3f}s over {runs} runs")
            for test, ms in sorted(by_test.items()):
                print(f"    {test:20} median {c.median(ms):7.1f} ms  (min {min(ms):.1f}, max {max(ms):.1f}, n={len(ms)})")


def profile(projects: dict[str, Path], budget: list[str], top: int) -> None:
    import pstats

    for loop, root in projects.items():
        prof = root / "plugin.prof"
        for _attempt in range(8):
            proc = subprocess.run(
                [c.PYTHON, "-m", "cProfile", "-o", str(prof), "-m", "pytest", *c.COMMON_ARGS, *budget],
                cwd=root, env=c.clean_env(), capture_output=True, text=True,
            )
            if proc.returncode == 0:
                break
            print(f"[{loop}] profiled run failed (rc={proc.returncode}), retrying")
        else:
            print(f"[{loop}] every profiled run failed")
            continue
        stats = pstats.Stats(str(prof))
        total = stats.total_tt  # type: ignore[attr-defined]
        rows = []
        for (file, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            if "pytest_asyncbudget" in file:
                rows.append((tt, ct, nc, f"{Path(file).parent.name}/{Path(file).name}:{line}({func})"))
        own = sum(r[0] for r in rows)
        print(f"\n[{loop}] cProfile of one plugin session: total {total:.2f}s, "
              f"time inside pytest_asyncbudget functions (tottime) {own:.3f}s = {own / total:.2%}")
        print(f"    {'tottime':>8} {'cumtime':>8} {'calls':>9}  function")
        for tt, ct, nc, name in sorted(rows, reverse=True)[:top]:
            print(f"    {tt:8.3f} {ct:8.3f} {nc:9d}  {name}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds per loop (default 10)")
    ap.add_argument("--loops", default="asyncio,uvloop", help="comma-separated: asyncio,uvloop")
    ap.add_argument("--json", metavar="PATH", help="write all runs and the summary as JSON")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the work per test (default 1)")
    ap.add_argument("--repeats", type=int, default=REPEATS, help=f"copies of each test (default {REPEATS})")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs of each configuration first (default 1)")
    ap.add_argument("--budget-opt", action="append", default=[], metavar="--OPT=VALUE",
                    help="extra/overriding plugin option for the plugin configuration (repeatable)")
    ap.add_argument("--faulthandler-timeout", type=float, default=0.0, metavar="SECONDS",
                    help="set pytest's faulthandler_timeout ini in BOTH configurations (0: unset, the default); "
                    "kept to reproduce the first round of figures (the sampler no longer uses faulthandler)")
    ap.add_argument("--per-budget", action="store_true",
                    help="also run the plugin with one budget at a time (attribution; a conftest drops the "
                    "other budgets from each test's plan)")
    ap.add_argument("--lag-default", action="store_true",
                    help="also run the plugin with only --asyncbudget-max-loop-lag=10s set (issue 2's bar: the "
                    "other budgets are then measured for the summary, without budgets)")
    ap.add_argument("--lag-budgeted", action="store_true",
                    help="also run the plugin with only --asyncbudget-max-loop-lag=10s and "
                    "--asyncbudget-measure=budgeted (only the lag budget is measured)")
    ap.add_argument("--durations", action="store_true", help="print per-test durations once and exit")
    ap.add_argument("--profile", action="store_true", help="cProfile one plugin session per loop and exit")
    ap.add_argument("--keep", action="store_true", help="keep the generated suite and print where it is")
    ap.add_argument("--kinds", metavar="LIST",
                    help="run only these kinds of test (e.g. to_thread,tcp_echo), in every configuration")
    ap.add_argument("--cpus", metavar="LIST",
                    help="run every session on these CPUs only (e.g. 1): all its threads share them (Linux)")
    ap.add_argument("--summarize", metavar="JSON", nargs="+",
                    help="print the tables again from earlier --json files (several are pooled); run nothing")
    ns = ap.parse_args(argv)
    if ns.summarize:
        return summarize_file(ns.summarize)
    if ns.cpus:
        print(f"every session runs on CPU(s) {c.pin_to(ns.cpus)} only")
    print(f"plugin modules compiled to bytecode (as an installed plugin is): {c.precompile_plugin()}")

    loops = [x.strip() for x in ns.loops.split(",") if x.strip()]
    budget, used, skipped = c.budget_args(extra=ns.budget_opt)
    common = ["-o", f"faulthandler_timeout={ns.faulthandler_timeout:g}"] if ns.faulthandler_timeout > 0 else []
    if ns.kinds:
        kinds = [k.strip().removeprefix("test_") for k in ns.kinds.split(",") if k.strip()]
        common += ["-k", " or ".join(f"test_{k}" for k in kinds)]
        print(f"only these kinds of test, in every configuration: {', '.join(kinds)}")
    budget = common + budget
    print(f"budgets on in the plugin configuration: {' '.join(used) or '(none found!)'}")
    if skipped:
        print(f"plugin options not treated as budgets: {' '.join(skipped)}")

    tmp = Path(tempfile.mkdtemp(prefix="asyncbudget-overhead-"))
    try:
        projects = {loop: make_suite(tmp, loop, ns.scale, ns.repeats) for loop in loops}
        if ns.keep:
            print(f"suite kept in {tmp}")
        if ns.durations:
            show_durations(projects, budget)
            return 0
        if ns.profile:
            profile(projects, budget, top=25)
            return 0

        configs: dict[str, tuple[list[str], dict[str, str]]] = {
            "plain": (common + c.PLAIN_ARGS, {}),
            "plugin": (budget, {}),
        }
        info = c.machine_info()
        print(f"machine: {info}")
        planned: dict[str, dict[str, int]] = {}
        for loop, root in projects.items():
            for _ in range(max(ns.warmup, 1)):
                for name, (args, env) in configs.items():
                    run, crashes = c.run_pytest_retry(root, args, env=env)
                    if crashes:
                        print(f"[{loop}/{name}] warm-up: {crashes} run(s) crashed and were retried")
                    if run.rc != 0:
                        print(f"[{loop}/{name}] warm-up run failed (rc={run.rc}):\n{run.tail}")
                        return 1
                    if name == "plugin":
                        planned[loop] = run.planned_budgets
            print(f"[{loop}] warm-up ok: {run.items} tests; budgets planned in the plugin run: {planned[loop]}")
        if ns.lag_default:
            configs["lag default only"] = (common + ["--asyncbudget-max-loop-lag=10s"], {})
            print("also running the plugin with only a max_loop_lag default (the rest measured, no budgets)")
        if ns.lag_budgeted:
            configs["lag default, budgeted"] = (
                common + ["--asyncbudget-max-loop-lag=10s", "--asyncbudget-measure=budgeted"], {}
            )
            print("also running the plugin with only a max_loop_lag default, measuring only that budget")
        if ns.per_budget:
            only = sorted({b for p in planned.values() for b in p})
            for b in only:
                configs[f"only {b}"] = (budget, {"ASYNCBUDGET_BENCH_ONLY": b})
            print(f"attribution: also running the plugin with one budget at a time: {', '.join(only)}")

        names = list(configs)
        runs: dict[str, dict[str, list[c.Run]]] = {loop: {n: [] for n in names} for loop in loops}
        crashes = {loop: {n: 0 for n in names} for loop in loops}
        loads: list[float] = []
        for r in range(ns.rounds):
            k = r % len(names)
            order = names[k:] + names[:k]  # rotate, so each configuration takes each slot in turn
            for loop in loops:
                line = []
                for name in order:
                    args, env = configs[name]
                    run, crashed = c.run_pytest_retry(projects[loop], args, env=env, durations=True)
                    crashes[loop][name] += crashed
                    if crashed:
                        line.append(f"{name} CRASHED x{crashed} (retried)")
                    if run.rc != 0:
                        print(f"[{loop}/{name}] round {r} failed (rc={run.rc}):\n{run.tail}")
                        return 1
                    runs[loop][name].append(run)
                    line.append(f"{name} {run.session_s:.3f}s/{run.wall_s:.3f}s")
                load = c.loadavg()
                if load is not None:
                    loads.append(load)
                print(f"round {r + 1:2}/{ns.rounds} {loop:7}: " + ", ".join(line) + f"  (session/wall; load {load:.2f})", flush=True)

        summary = summarize(runs, loops)
        for loop in loops:
            for name in names[1:]:
                summary[loop][name]["crashed_runs"] = crashes[loop][name]
                summary[loop][name]["plain_crashed_runs"] = crashes[loop]["plain"]
        print_table(summary)
        estimate = per_test_minimum(runs, loops)
        print_per_test(estimate)
        rebuilt = whole_test_estimate(runs, loops)
        print_whole_test(rebuilt)
        for loop in loops:
            parts = ", ".join(f"{n} {crashes[loop][n]} of {crashes[loop][n] + ns.rounds}" for n in names)
            print(f"[{loop}] runs that crashed (killed by a signal; retried, not timed): {parts}")
        if loads:
            print(f"1-min load average during the runs: median {c.median(loads):.2f}, max {max(loads):.2f} (2 cores)")
        if ns.json:
            c.write_json(
                ns.json, "overhead", machine=info, budgets_on=used, budgets_planned=planned,
                options_skipped=skipped, rounds=ns.rounds, faulthandler_timeout=ns.faulthandler_timeout,
                crashed_runs=crashes, scale=ns.scale, repeats=ns.repeats, sizes=SIZES, loadavg=loads,
                summary=summary, per_test_minimum=estimate, whole_test_estimate=rebuilt, runs=c.runs_data(runs),
            )
        return 0
    finally:
        if not ns.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
