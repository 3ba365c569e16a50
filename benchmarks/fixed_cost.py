#!/usr/bin/env python
"""Per-test fixed cost of pytest-asyncbudget: 1,000 trivial async tests and 1,000 trivial
sync tests, plain vs plugin, interleaved.

``plain`` disables the plugin (``-p no:asyncbudget``); ``plugin`` turns every budget the
plugin offers on for every test through its CLI options (found in ``pytest --help``,
large budgets so nothing fails). The trivial tests do nothing, so the difference is what
the plugin adds per test: planning at collection, creating the probes, the per-phase
hooks, judging and recording.

Reported for each suite (async on each loop, and sync):

* per-test fixed cost = (median plugin session - median plain session) / number of tests,
  in microseconds, where the session time is measured inside pytest by a conftest hook
  (``pytest_sessionstart`` to ``pytest_sessionfinish``: collection plus the tests);
* the same from the median of the per-round paired differences;
* the per-process cost, from process wall time (interpreter start-up and plugin import
  included), which is paid once per pytest run, not per test.

Within a round the order of the two configurations alternates (plain/plugin, then
plugin/plain, ...) so drift and noise from other work on the machine hit both alike.

Usage::

    /work/venv/bin/python benchmarks/fixed_cost.py --rounds 15 --loops asyncio,uvloop --json fixed.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

ASYNC_TESTS = '''\
import pytest


@pytest.mark.asyncio
@pytest.mark.parametrize("i", range({n}))
async def test_trivial_async(i):
    pass
'''

SYNC_TESTS = '''\
import pytest


@pytest.mark.parametrize("i", range({n}))
def test_trivial_sync(i):
    pass
'''


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    ap.add_argument("--tests", type=int, default=1000, help="trivial tests per suite (default 1000)")
    ap.add_argument("--loops", default="asyncio,uvloop", help="loops for the async suite (default asyncio,uvloop)")
    ap.add_argument("--no-sync", action="store_true", help="skip the sync suite")
    ap.add_argument("--json", metavar="PATH", help="write all runs and the summary as JSON")
    ap.add_argument("--budget-opt", action="append", default=[], metavar="--OPT=VALUE",
                    help="extra/overriding plugin option for the plugin configuration (repeatable)")
    ap.add_argument("--faulthandler-timeout", type=float, default=0.0, metavar="SECONDS",
                    help="set pytest's faulthandler_timeout ini in BOTH configurations (0: unset, the default)")
    ns = ap.parse_args(argv)
    print(f"plugin modules compiled to bytecode (as an installed plugin is): {c.precompile_plugin()}")

    budget, used, skipped = c.budget_args(extra=ns.budget_opt)
    common = ["-o", f"faulthandler_timeout={ns.faulthandler_timeout:g}"] if ns.faulthandler_timeout > 0 else []
    configs = {"plain": common + c.PLAIN_ARGS, "plugin": common + budget}
    print(f"budgets on in the plugin configuration: {' '.join(used) or '(none found!)'}")
    if skipped:
        print(f"plugin options not treated as budgets: {' '.join(skipped)}")
    info = c.machine_info()
    print(f"machine: {info}")

    tmp = Path(tempfile.mkdtemp(prefix="asyncbudget-fixed-"))
    try:
        suites: dict[str, Path] = {}
        for loop in [x.strip() for x in ns.loops.split(",") if x.strip()]:
            suites[f"async/{loop}"] = c.write_project(
                tmp / f"async-{loop}", loop, {"test_trivial.py": ASYNC_TESTS.format(n=ns.tests)}
            )
        if not ns.no_sync:
            suites["sync"] = c.write_project(tmp / "sync", "asyncio", {"test_trivial.py": SYNC_TESTS.format(n=ns.tests)})

        planned = {}
        for suite, root in suites.items():  # warm-up: .pyc caches, and a check that all pass
            for name, args in configs.items():
                run, crashes = c.run_pytest_retry(root, args)
                if run.rc != 0:
                    print(f"[{suite}/{name}] warm-up failed (rc={run.rc}):\n{run.tail}")
                    return 1
                if name == "plugin":
                    planned[suite] = run.planned_budgets
            print(f"[{suite}] warm-up ok: {run.items} tests; budgets planned in the plugin run: {planned[suite]}")

        runs: dict[str, dict[str, list[c.Run]]] = {s: {"plain": [], "plugin": []} for s in suites}
        crashes = {s: {"plain": 0, "plugin": 0} for s in suites}
        loads = []
        for r in range(ns.rounds):
            order = ["plain", "plugin"] if r % 2 == 0 else ["plugin", "plain"]
            for suite, root in suites.items():
                parts = []
                for name in order:
                    run, crashed = c.run_pytest_retry(root, configs[name])
                    crashes[suite][name] += crashed
                    if run.rc != 0:
                        print(f"[{suite}/{name}] round {r} failed (rc={run.rc}):\n{run.tail}")
                        return 1
                    runs[suite][name].append(run)
                    parts.append(f"{name} {run.session_s:.3f}s/{run.wall_s:.3f}s" + (f" (crashed x{crashed}, retried)" if crashed else ""))
                load = c.loadavg()
                loads.append(load)
                print(f"round {r + 1:2}/{ns.rounds} {suite:14}: " + ", ".join(parts) + f"  (session/wall; load {load:.2f})", flush=True)

        summary = {}
        print()
        print(f"{'suite':14} {'plain sess':>10} {'plugin sess':>11} {'per test (medians)':>19} {'per test (paired)':>18} "
              f"{'CPU per test (paired)':>22} {'per process (wall)':>19}")
        for suite in suites:
            plain, plugin = runs[suite]["plain"], runs[suite]["plugin"]
            a = [x.session_s for x in plain]
            b = [x.session_s for x in plugin]
            n = plain[0].items
            per_test = (c.median(b) - c.median(a)) / n * 1e6
            paired = c.median([q.session_s - p.session_s for p, q in zip(plain, plugin)]) / n * 1e6
            # what the plugin costs outside the session (import, configure, unconfigure)
            outside = c.median([(q.wall_s - q.session_s) - (p.wall_s - p.session_s) for p, q in zip(plain, plugin)])
            cpu_pairs = [q.session_cpu_s - p.session_cpu_s for p, q in zip(plain, plugin)]
            cpu_per_test = c.median(cpu_pairs) / n * 1e6
            summary[suite] = {
                "tests": n,
                "rounds": len(plain),
                "plain_session_median_s": c.median(a),
                "plugin_session_median_s": c.median(b),
                "per_test_us_from_medians": per_test,
                "per_test_us_paired_median": paired,
                "per_test_us_paired_q25": c.quantile([q.session_s - p.session_s for p, q in zip(plain, plugin)], 0.25) / n * 1e6,
                "per_test_us_paired_q75": c.quantile([q.session_s - p.session_s for p, q in zip(plain, plugin)], 0.75) / n * 1e6,
                "plain_wall_median_s": c.median([x.wall_s for x in plain]),
                "plugin_wall_median_s": c.median([x.wall_s for x in plugin]),
                "per_process_outside_session_ms_paired_median": outside * 1e3,
                "per_test_cpu_us_paired_median": cpu_per_test,
                "plain_session_cpu_median_s": c.median([x.session_cpu_s for x in plain]),
                "plugin_session_cpu_median_s": c.median([x.session_cpu_s for x in plugin]),
                "crashed_runs": crashes[suite],
            }
            print(
                f"{suite:14} {c.median(a):>9.3f}s {c.median(b):>10.3f}s {per_test:>16.0f} us {paired:>15.0f} us "
                f"{cpu_per_test:>19.0f} us {outside * 1e3:>16.0f} ms"
            )
            if any(crashes[suite].values()):
                print(f"{'':14} crashed runs (retried, not timed): {crashes[suite]}")
        print(f"(rounds: {ns.rounds}; 1-min load average during the runs: median {c.median(loads):.2f}, max {max(loads):.2f}, 2 cores)")
        if ns.json:
            c.write_json(
                ns.json, "fixed_cost", machine=info, budgets_on=used, budgets_planned=planned,
                options_skipped=skipped, rounds=ns.rounds, faulthandler_timeout=ns.faulthandler_timeout,
                loadavg=loads, summary=summary, runs=c.runs_data(runs),
            )
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
