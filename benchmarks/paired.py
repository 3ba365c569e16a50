#!/usr/bin/env python
"""The plugin's cost per test, paired inside one pytest process.

``overhead.py`` compares whole sessions run in separate processes, plain against plugin.
On this machine one process differs from the next by 10-18% (the fastest copy of a test
moves that much between runs), so its ratio needs hundreds of rounds to resolve a point.
This script takes that noise out of the comparison: it runs one session in which every
test of ``overhead.py``'s callback-heavy suite has a twin, and the plugin measures only
one of the two.

* The suite has ``2 * --pairs`` copies of each of its six tests. Consecutive copies of a
  test form a pair; a small conftest (``PAIRED_CONFTEST``) takes the plugin's plan off
  one of the two at random (seeded, printed), after collection. The plugin is loaded,
  configured and collecting in the whole session, exactly as a user has it; the test
  without a plan goes through its hooks, each of which returns at once (a few
  microseconds a test: the one per-test cost the comparison leaves out).
* Each test's whole protocol is timed from outside every other hook wrapper: setup, call,
  teardown, the reports, and all of the plugin's per-test work in between (the timing
  conftest ``_common.TIMING_CONFTEST`` already does this).
* Per process: ``sum(measured) / sum(unmeasured)``, overall and for each kind of test,
  and for the call phase alone (pytest's own duration of it: the plugin's cost while the
  test's body runs). The rest (setup, teardown, reports) is given as milliseconds per
  test, and so is the time in garbage collections inside the tests (noisy: a collection
  is charged whole to the test that triggers it; ``gc_counts.py`` counts them instead).
* Across processes: the median with a distribution-free 95% interval, and the pooled
  ratio of all pairs. The same is given without each process's first pair, whose
  measured test also pays the plugin's one-off work (its first measured test).

What it does not include: the work done once per session (importing and configuring
the plugin, collection, the terminal summary), which ``first_test.py`` and
``fixed_cost.py`` measure, and the collector's extra work on the plugin's long-lived
objects, which both halves of a paired session share (``overhead.py --durations``
times the collections; see benchmarks/README.md, session 11).

Usage::

    /work/venv/bin/python benchmarks/paired.py --procs 20 --loops asyncio,uvloop
    /work/venv/bin/python benchmarks/paired.py --procs 40 --loops uvloop --all-budgets --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
import overhead  # noqa: E402

#: Added to the suite's conftest: in each pair of copies, one keeps the plugin's plan.
PAIRED_CONFTEST = '''\


if os.environ.get("ASYNCBUDGET_BENCH_PAIRED_SEED"):
    import random

    _keep_only = globals().get("pytest_collection_finish")  # ASYNCBUDGET_BENCH_ONLY's

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(session):
        from pytest_asyncbudget.record import PLAN

        if _keep_only is not None:
            _keep_only(session)

        rng = random.Random(int(os.environ["ASYNCBUDGET_BENCH_PAIRED_SEED"]))
        items = session.items
        pairs = []
        for first, second in zip(items[0::2], items[1::2]):
            if first.originalname != second.originalname:
                raise RuntimeError(f"not a pair: {first.nodeid} / {second.nodeid}")
            if first.stash.get(PLAN, None) is None or second.stash.get(PLAN, None) is None:
                raise RuntimeError(f"the plugin planned nothing for {first.nodeid}")
            off = first if rng.random() < 0.5 else second
            del off.stash[PLAN]
            pairs.append([first.nodeid, second.nodeid, off.nodeid])
        with open(os.environ["ASYNCBUDGET_BENCH_PAIRED_OUT"], "w") as out:
            json.dump(pairs, out)
'''


def run_process(root: Path, args: list[str], seed: int, extra_env: dict[str, str]) -> tuple[c.Run, list[list[str]], int]:
    """One paired session: the run (with each test's protocol time) and its pairs."""
    pairs_out = Path(tempfile.mkstemp(prefix="asyncbudget-paired-", suffix=".json")[1])
    try:
        env = {**extra_env, "ASYNCBUDGET_BENCH_PAIRED_SEED": str(seed), "ASYNCBUDGET_BENCH_PAIRED_OUT": str(pairs_out)}
        run, crashes = c.run_pytest_retry(root, args, durations=True, env=env)
        pairs = json.loads(pairs_out.read_text() or "[]")
        return run, pairs, crashes
    finally:
        pairs_out.unlink(missing_ok=True)


def kind_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[1].split("[", 1)[0].removeprefix("test_")


#: Prefix of the sums of one kind's call phases ("call" alone: every call phase).
CALL = "call "


def process_figures(run: c.Run, pairs: list[list[str]]) -> dict[str, Any]:
    """One process's ratios, measured twin over unmeasured: the whole protocol per kind
    and overall (and without pair 0), the call phase per kind and overall (pytest's own
    duration of it: the plugin's cost while the test's body runs), and in milliseconds
    per test the extra time outside the call phase (its per-test work) and in garbage
    collections (the timing conftest's gc.callbacks timer, anywhere in the test).

    Every ratio is the ratio of one pair of sums in ``_sums``, so pooling over processes
    needs nothing else."""
    sums: dict[str, list[float]] = {}
    gc_on = gc_off = 0.0

    def add(key: str, t_on: float, t_off: float) -> None:
        acc = sums.setdefault(key, [0.0, 0.0])
        acc[0] += t_on
        acc[1] += t_off

    for index, (first, second, off) in enumerate(pairs):
        on = second if off == first else first
        kind = kind_of(on)
        for key in (kind, "all") + (("steady",) if index else ()):
            add(key, run.protocols[on], run.protocols[off])
        for key in (CALL + kind, "call"):
            add(key, run.durations[on], run.durations[off])
        gc_on += run.gc.get(on, 0.0)
        gc_off += run.gc.get(off, 0.0)
    out: dict[str, Any] = {key: on / off for key, (on, off) in sums.items()}
    out["_sums"] = sums
    n = len(pairs)
    (total_on, total_off), (call_on, call_off) = sums["all"], sums["call"]
    out["_delta_ms_per_test"] = 1000 * (total_on - total_off) / n
    out["_outside_call_delta_ms"] = 1000 * ((total_on - call_on) - (total_off - call_off)) / n
    out["_gc_delta_ms"] = 1000 * (gc_on - gc_off) / n
    out["_plain_ms_per_test"] = 1000 * total_off / n
    return out


def summarize(per_proc: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    keys = [k for k in per_proc[0] if not k.startswith("_")]
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        ratios = [p[key] for p in per_proc if key in p]
        lo, hi = c.median_ci(ratios)
        on = sum(p["_sums"][key][0] for p in per_proc if key in p["_sums"])
        off = sum(p["_sums"][key][1] for p in per_proc if key in p["_sums"])
        out[key] = {"median": c.median(ratios), "ci_lo": lo, "ci_hi": hi, "pooled": on / off, "n": len(ratios)}
    for key in ("_delta_ms_per_test", "_outside_call_delta_ms", "_gc_delta_ms"):
        deltas = [p[key] for p in per_proc]
        lo, hi = c.median_ci(deltas)
        out[key] = {"median": c.median(deltas), "ci_lo": lo, "ci_hi": hi}
    out["_plain_ms_per_test"] = {"median": c.median([p["_plain_ms_per_test"] for p in per_proc])}
    return out


def show(loop: str, config: str, summary: dict[str, dict[str, float]], procs: int, crashes: int, seeds: str) -> None:
    print(f"\n[{loop}] {config}: measured / unmeasured twin, {procs} processes, coin seeds {seeds}"
          f" ({crashes} crashed and were retried)")
    print(f"    {'tests':<22}{'median':>8}   {'95% CI':<15}{'pooled':>8}   {'call phase (median)':>8}")
    first = ("all", "steady", "call")
    kinds = sorted(k for k in summary if k not in first and not k.startswith(("_", CALL)))
    for key in list(first) + kinds:
        s = summary[key]
        label = {"all": "all pairs", "steady": "all but the first pair", "call": "call phase only"}.get(key, key)
        call = f"{summary[CALL + key]['median']:>11.3f}" if CALL + key in summary else ""
        print(f"    {label:<22}{s['median']:>8.3f}   {s['ci_lo']:.3f}-{s['ci_hi']:.3f}    {s['pooled']:>8.3f}{call}")
    d, p = summary["_delta_ms_per_test"], summary["_plain_ms_per_test"]
    o = summary["_outside_call_delta_ms"]
    print(f"    per test: +{d['median']:.2f} ms (95% CI {d['ci_lo']:.2f}-{d['ci_hi']:.2f}) on a plain {p['median']:.1f} ms;"
          f" outside the call phase +{o['median']:.2f} ms ({o['ci_lo']:.2f}-{o['ci_hi']:.2f})")
    g = summary["_gc_delta_ms"]
    print(f"    of which garbage collection (anywhere in the test): +{g['median']:.2f} ms ({g['ci_lo']:.2f}-{g['ci_hi']:.2f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", type=int, default=20, help="pytest processes per loop (default 20)")
    ap.add_argument("--pairs", type=int, default=10, help="pairs of each test per process (default 10)")
    ap.add_argument("--loops", default="asyncio,uvloop")
    ap.add_argument("--all-budgets", action="store_true",
                    help="every budget's option on (as overhead.py's 'plugin'); default: only a max_loop_lag default")
    ap.add_argument("--scale", type=float, default=1.0, help="work per test, as in overhead.py")
    ap.add_argument("--only", metavar="BUDGETS",
                    help="attribution: the measured twin keeps only these budgets (comma-separated, e.g. no_blocking)")
    ap.add_argument("--kinds", metavar="KINDS", help="only these kinds of test (comma-separated, e.g. to_thread,tcp_echo)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the first process's coin flips (default 1)")
    ap.add_argument("--json", metavar="PATH")
    ns = ap.parse_args()

    loops = [x.strip() for x in ns.loops.split(",") if x.strip()]
    c.precompile_plugin()
    if ns.all_budgets:
        args, used, _ = c.budget_args()
        config = "all four budgets: " + " ".join(used)
    else:
        args = ["--asyncbudget-max-loop-lag=10s"]
        config = "only a max_loop_lag default (--asyncbudget-max-loop-lag=10s)"
    env: dict[str, str] = {}
    if ns.only:
        env["ASYNCBUDGET_BENCH_ONLY"] = ns.only
        config += f"; the measured twin keeps only {ns.only}"
    if ns.kinds:
        kinds = [k.strip().removeprefix("test_") for k in ns.kinds.split(",") if k.strip()]
        args = args + ["-k", " or ".join(f"test_{k}" for k in kinds)]
    tmp = Path(tempfile.mkdtemp(prefix="asyncbudget-paired-"))
    results: dict[str, Any] = {"machine": c.machine_info(), "config": config, "args": args, "seed": ns.seed,
                               "procs": ns.procs, "pairs": ns.pairs, "loops": {}}
    try:
        for loop in loops:
            root = overhead.make_suite(tmp, loop, ns.scale, 2 * ns.pairs)
            with open(root / "conftest.py", "a") as f:
                f.write(PAIRED_CONFTEST)
            per_proc, crashes_total, loads = [], 0, []
            for i in range(ns.procs + 1):  # the first process warms the disk caches, untimed
                run, pairs, crashes = run_process(root, args, ns.seed + i, env)
                crashes_total += crashes
                if run.rc != 0 or not pairs:
                    print(f"[{loop}] run failed (rc={run.rc}):\n{run.tail}")
                    return 1
                if i:
                    per_proc.append(process_figures(run, pairs))
                    loads.append(c.loadavg() or 0.0)
            summary = summarize(per_proc)
            show(loop, config, summary, ns.procs, crashes_total, f"{ns.seed + 1}-{ns.seed + ns.procs}")
            print(f"    load average (1 min) median {c.median(loads):.2f}")
            results["loops"][loop] = {"summary": summary, "processes": per_proc, "load": loads, "crashes": crashes_total}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if ns.json:
        Path(ns.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
