#!/usr/bin/env python
"""How much more often the garbage collector runs with the plugin: collections counted.

Timing a collection per test (``paired.py``) is noisy, because a collection is charged
whole to the test that happens to trigger it, and a full one takes 20-60 ms here. This
script counts instead. It runs ``fixed_cost.py``'s 1,000 trivial async tests, plain
(``-p no:asyncbudget``) and with only a ``max_loop_lag`` default (issue 2's
configuration, in which every budget is measured), in alternating fresh processes. A
``gc.callbacks`` hook, added after collection and removed at the end, counts the
collections of each generation and times them.

The counts depend only on what is allocated, so they repeat exactly from one run to the
next. The times vary, so their medians are printed.

Usage::

    /work/venv/bin/python benchmarks/gc_counts.py --rounds 3 --loops asyncio,uvloop
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
from fixed_cost import ASYNC_TESTS  # noqa: E402

#: Appended to the suite's conftest: counts and times the collections during the tests.
GC_CONFTEST = '''\


import gc as _gc

_GC_COUNTS = [0, 0, 0]
_GC_SECONDS = [0.0, 0.0, 0.0]
_GC_START = [0.0]


def _gc_count(phase, info):
    if phase == "start":
        _GC_START[0] = time.perf_counter()
    else:
        generation = info["generation"]
        _GC_COUNTS[generation] += 1
        _GC_SECONDS[generation] += time.perf_counter() - _GC_START[0]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session):
    _gc.callbacks.append(_gc_count)


def pytest_unconfigure(config):
    if _gc_count in _gc.callbacks:
        _gc.callbacks.remove(_gc_count)
    with open(os.environ["ASYNCBUDGET_BENCH_GC_OUT"], "w") as out:
        json.dump({"counts": _GC_COUNTS, "seconds": _GC_SECONDS}, out)
'''

CONFIGS = {"plain": c.PLAIN_ARGS, "plugin": ["--asyncbudget-max-loop-lag=10s"]}


def run_once(root: Path, args: list[str]) -> dict[str, Any]:
    out = Path(tempfile.mkstemp(prefix="asyncbudget-gc-", suffix=".json")[1])
    try:
        run, _ = c.run_pytest_retry(root, args, env={"ASYNCBUDGET_BENCH_GC_OUT": str(out)})
        if run.rc != 0:
            raise SystemExit(f"run failed (rc={run.rc}):\n{run.tail}")
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="sessions of each configuration (default 3)")
    ap.add_argument("--tests", type=int, default=1000, help="trivial async tests per session (default 1000)")
    ap.add_argument("--loops", default="asyncio")
    ap.add_argument("--json", metavar="PATH")
    ns = ap.parse_args()
    c.precompile_plugin()
    tmp = Path(tempfile.mkdtemp(prefix="asyncbudget-gc-counts-"))
    results: dict[str, Any] = {"machine": c.machine_info(), "tests": ns.tests, "loops": {}}
    try:
        for loop in [x.strip() for x in ns.loops.split(",") if x.strip()]:
            root = c.write_project(tmp / loop, loop, {"test_trivial.py": ASYNC_TESTS.format(n=ns.tests)},
                                   extra_conftest=GC_CONFTEST)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
            for r in range(ns.rounds):
                names = list(CONFIGS) if r % 2 == 0 else list(reversed(CONFIGS))
                for name in names:
                    runs[name].append(run_once(root, CONFIGS[name]))
            print(f"\n[{loop}] {ns.tests} trivial async tests, {ns.rounds} sessions each")
            print("    configuration   collections by generation (young, middle, full)   ms in them (median)")
            for name, data in runs.items():
                counts = sorted({tuple(d["counts"]) for d in data})
                ms = [c.median([d["seconds"][g] * 1000 for d in data]) for g in range(3)]
                print(f"    {name:<15} {' or '.join(str(list(x)) for x in counts):<50} "
                      f"{ms[0]:6.1f} {ms[1]:6.1f} {ms[2]:6.1f}")
            results["loops"][loop] = runs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if ns.json:
        Path(ns.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
