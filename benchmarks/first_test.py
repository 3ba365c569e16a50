#!/usr/bin/env python
"""What the plugin costs once per process: its first test against the ones after it.

The first budgeted test of every pytest process (and of every pytest-xdist worker) does
work no later test repeats: ``no_blocking`` finds every patch target and scans the
loaded modules for names bound by value (``from time import sleep``), the list of
library directories that tells user code from library code is built, ``max_rss`` checks
once that the kernel's high-water mark can be reset, and the lag probe's watchdog thread
starts. ``fixed_cost.py`` spreads that over 1,000 tests; this script measures it alone.

Each run is a suite of ``--tests`` trivial async tests. The benchmarks' shared timing
conftest (``_common.py``) times every test's whole protocol (setup, call, teardown and
reporting) from outside the plugin's hooks. Per configuration, the figures are the median over the rounds of

* the first test's time, and
* the median time of the tests after the first (warm).

The **one-off** cost is what the plugin adds to the first test beyond what it adds to a
warm one: ``(plugin first - plugin warm) - (plain first - plain warm)``, taken per round
(plain and plugin back to back, order alternating) and then the median over rounds.

Usage::

    /work/venv/bin/python benchmarks/first_test.py --rounds 20 --json first.json
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
from fixed_cost import ASYNC_TESTS  # noqa: E402


def _timed(root: Path, args: list[str]) -> tuple[c.Run, list[float], int]:
    """One run (retried if it crashed), each test's protocol time in order, and how many
    crashed. The protocol times come from the shared timing conftest (``_common``)."""
    run, crashes = c.run_pytest_retry(root, args, durations=True)
    return run, list(run.protocols.values()), crashes


def _first_minus_warm(times: list[float]) -> float:
    """How much longer a run's first test took than its median later test."""
    return times[0] - statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default 20)")
    ap.add_argument("--tests", type=int, default=20, help="trivial tests per run (default 20)")
    ap.add_argument("--loops", default="asyncio,uvloop", help="loops (default asyncio,uvloop)")
    ap.add_argument("--json", metavar="PATH", help="write all runs and the summary as JSON")
    ns = ap.parse_args(argv)
    print(f"plugin modules compiled to bytecode (as an installed plugin is): {c.precompile_plugin()}")
    budget, used, _ = c.budget_args()
    configs = {"plain": c.PLAIN_ARGS, "plugin": budget}
    print(f"budgets on in the plugin configuration: {' '.join(used) or '(none found!)'}")
    info = c.machine_info()
    print(f"machine: {info}")

    tmp = Path(tempfile.mkdtemp(prefix="asyncbudget-first-"))
    try:
        suites = {}
        for loop in [x.strip() for x in ns.loops.split(",") if x.strip()]:
            suites[loop] = c.write_project(tmp / loop, loop, {"test_trivial.py": ASYNC_TESTS.format(n=ns.tests)})
        for loop, root in suites.items():  # warm-up: .pyc caches, and a check that all pass
            for name, args in configs.items():
                run, times, _ = _timed(root, args)
                if run.rc != 0 or len(times) != ns.tests:
                    print(f"[{loop}/{name}] warm-up failed (rc={run.rc}, {len(times)} tests timed):\n{run.tail}")
                    return 1

        runs: dict[str, dict[str, list[list[float]]]] = {loop: {"plain": [], "plugin": []} for loop in suites}
        crashes = {loop: {"plain": 0, "plugin": 0} for loop in suites}
        for r in range(ns.rounds):
            order = ["plain", "plugin"] if r % 2 == 0 else ["plugin", "plain"]
            for loop, root in suites.items():
                for name in order:
                    run, times, crashed = _timed(root, configs[name])
                    crashes[loop][name] += crashed
                    if run.rc != 0 or len(times) != ns.tests:
                        print(f"[{loop}/{name}] round {r + 1} failed (rc={run.rc}):\n{run.tail}")
                        return 1
                    runs[loop][name].append(times)
            print(f"round {r + 1:2}/{ns.rounds} done (load {c.loadavg():.2f})", flush=True)

        summary = {}
        print()
        print(f"{'loop':8} {'config':7} {'first test':>11} {'warm test':>10} {'first - warm':>13}")
        for loop in suites:
            rows = {}
            for name in configs:
                firsts = [t[0] for t in runs[loop][name]]
                warms = [statistics.median(t[1:]) for t in runs[loop][name]]
                rows[name] = {
                    "first_ms": c.median(firsts) * 1e3,
                    "warm_ms": c.median(warms) * 1e3,
                    "extra_ms": c.median([_first_minus_warm(t) for t in runs[loop][name]]) * 1e3,
                }
                print(f"{loop:8} {name:7} {rows[name]['first_ms']:9.2f}ms {rows[name]['warm_ms']:8.3f}ms "
                      f"{rows[name]['extra_ms']:11.2f}ms")
            one_off = [
                _first_minus_warm(q) - _first_minus_warm(p) for p, q in zip(runs[loop]["plain"], runs[loop]["plugin"])
            ]
            low, high = c.median_ci(one_off)
            rows["one_off_ms"] = c.median(one_off) * 1e3
            rows["one_off_ci_ms"] = (low * 1e3, high * 1e3)
            ci = "too few rounds for a CI" if math.isnan(low) else f"95% CI {low * 1e3:.2f}-{high * 1e3:.2f} ms"
            print(f"{loop:8} one-off cost of the plugin's first test: {rows['one_off_ms']:.2f} ms "
                  f"({ci}, paired over {ns.rounds} rounds)")
            print(f"{loop:8} runs that crashed (killed by a signal; retried, not timed): "
                  f"plain {crashes[loop]['plain']}, plugin {crashes[loop]['plugin']}")
            rows["crashed"] = crashes[loop]
            summary[loop] = rows
        if ns.json:
            c.write_json(ns.json, "first_test", machine=info, tests=ns.tests, rounds=ns.rounds,
                         summary=summary, runs=runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
