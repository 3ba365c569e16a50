#!/usr/bin/env python
"""Where the plugin's per-test time goes: a timer around each of its per-test steps.

Runs a suite under the plugin with every budget on (the same options as ``overhead.py``
and ``fixed_cost.py``) and loads a small timing plugin (``-p``) that wraps the plugin's
per-test steps in ``perf_counter_ns`` timers: each probe's events (``phase_started``,
``loop_started``, ``phase_stopped``, ...) and constructor, each budget's ``make_probe``
and ``judge``, the manager's judging and digests, the report entry, and
``no_blocking``'s patching (``patches._apply``/``_restore``). The suite is either
``overhead.py``'s callback-heavy one (the default: 60 tests of 20-100 ms, where the
per-test code runs with caches cold from the heavy test before it) or, with
``--trivial``, 1,000 empty async tests as in ``fixed_cost.py`` (caches warm).

Printed per step, with the median over ``--runs`` sessions:

* **per test**: the step's total time over the session divided by the number of tests
  (one-off work, such as the first test's module scans, included);
* **median per call**: the median of the step's calls (one-off work excluded);
* **calls per test**.

The timers cost about 0.2 us per call themselves. Steps nest (a probe event includes
the steps it calls, ``BlockingProbe.phase_started`` includes ``patches._apply``), so the
rows do not add up to the total.

Usage::

    /work/venv/bin/python benchmarks/pieces.py --loops uvloop --runs 5
    /work/venv/bin/python benchmarks/pieces.py --trivial --runs 3 --json pieces.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
import overhead  # noqa: E402
from fixed_cost import ASYNC_TESTS  # noqa: E402

#: The timing plugin, written next to the suite and loaded with ``-p _pieces_timer``.
TIMER_PLUGIN = '''\
import json
import os
import time

_pc = time.perf_counter_ns
_calls = {}  # label -> list of durations (ns)
_tests = [0]
_missing = []


def _wrap(owner, name, label):
    original = vars(owner).get(name)
    if original is None:
        _missing.append(label)
        return
    durations = _calls.setdefault(label, [])

    def timed(*args, **kwargs):
        start = _pc()
        try:
            return original(*args, **kwargs)
        finally:
            durations.append(_pc() - start)

    setattr(owner, name, timed)


def _install():
    import importlib

    from pytest_asyncbudget import budgets, manager, patches
    from pytest_asyncbudget.core import LoopCore
    from pytest_asyncbudget.present.report import Results
    from pytest_asyncbudget.probes.base import Probe

    _wrap(patches, "_apply", "no_blocking: patches._apply (per test)")
    _wrap(patches, "_restore", "no_blocking: patches._restore (per test)")
    _wrap(manager.Manager, "_judge", "manager: _judge (per phase)")
    _wrap(manager.Manager, "_keep_digests", "manager: _keep_digests")
    _wrap(Results, "test_finished", "report: Results.test_finished (the entry)")
    _wrap(LoopCore, "begin_phase", "core: begin_phase (probes' phase_started)")
    _wrap(LoopCore, "end_phase", "core: end_phase (probes' phase_stopped)")
    for module in budgets.MODULES:
        _wrap(module, "make_probe", f"{module.NAME}: make_probe")
        _wrap(module, "judge", f"{module.NAME}: judge")
    for name in ("lag", "blocking", "leaks", "rss"):
        module = importlib.import_module(f"pytest_asyncbudget.probes.{name}")
        for cls in list(vars(module).values()):
            if isinstance(cls, type) and issubclass(cls, Probe) and cls.__module__ == module.__name__:
                for event in ("__init__", "phase_started", "loop_started", "loop_stopped",
                              "phase_stopped", "measurement", "test_finished"):
                    if event in vars(cls):
                        _wrap(cls, event, f"{cls.budget}: {cls.__name__}.{event}")


def pytest_configure(config):
    _install()


def pytest_runtest_logreport(report):
    if report.when == "teardown":
        _tests[0] += 1


def pytest_unconfigure(config):
    with open(os.environ["ASYNCBUDGET_PIECES_OUT"], "w") as out:
        json.dump({"tests": _tests[0], "calls": _calls, "missing": _missing}, out)
'''


def run_once(root: Path, budget: list[str]) -> dict:
    out = Path(tempfile.mkstemp(prefix="asyncbudget-pieces-", suffix=".json")[1])
    try:
        env = c.clean_env(ASYNCBUDGET_PIECES_OUT=str(out),
                          PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH", "")])))
        proc = subprocess.run([c.PYTHON, "-m", "pytest", *c.COMMON_ARGS, "-p", "_pieces_timer", *budget],
                              cwd=root, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"pytest failed in {root} (rc={proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


def summarize(runs: list[dict]) -> list[tuple[str, float, float, float]]:
    """(label, per test in us, median per call in us, calls per test), medians over runs."""
    rows = []
    for label in runs[0]["calls"]:
        per_test, per_call, calls = [], [], []
        for run in runs:
            durations, tests = run["calls"].get(label, []), max(1, run["tests"])
            per_test.append(sum(durations) / tests / 1000)
            calls.append(len(durations) / tests)
            if durations:
                per_call.append(c.median(durations) / 1000)
        if any(calls):
            rows.append((label, c.median(per_test), c.median(per_call) if per_call else 0.0, c.median(calls)))
    return sorted(rows, key=lambda row: -row[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loops", default="asyncio,uvloop", help="comma-separated: asyncio,uvloop")
    ap.add_argument("--runs", type=int, default=3, help="sessions per loop (default 3)")
    ap.add_argument("--trivial", action="store_true", help="1,000 empty async tests instead of the callback-heavy suite")
    ap.add_argument("--json", metavar="PATH", help="write the per-run figures and the summary as JSON")
    ns = ap.parse_args(argv)
    print(f"plugin modules compiled to bytecode (as an installed plugin is): {c.precompile_plugin()}")
    budget, used, _ = c.budget_args()
    print(f"budgets on: {' '.join(used)}")
    result: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="asyncbudget-pieces-") as tmp:
        for loop in ns.loops.split(","):
            if ns.trivial:
                root = c.write_project(Path(tmp) / loop, loop, {"test_trivial.py": ASYNC_TESTS.format(n=1000)})
            else:
                root = overhead.make_suite(Path(tmp), loop, 1.0, overhead.REPEATS)
            (root / "_pieces_timer.py").write_text(TIMER_PLUGIN)
            runs = [run_once(root, budget) for _ in range(ns.runs)]
            missing = sorted({label for run in runs for label in run["missing"]})
            rows = summarize(runs)
            compact = [{"tests": run["tests"], "calls": {label: [len(d), sum(d), c.median(d) if d else 0]
                                                        for label, d in run["calls"].items()}} for run in runs]
            result[loop] = {"runs (calls, total ns, median ns)": compact, "summary": rows, "missing": missing}
            suite = "trivial tests" if ns.trivial else "callback-heavy suite"
            print(f"\n[{loop}] {suite}, {runs[0]['tests']} tests, medians over {ns.runs} runs (us)")
            print(f"    {'step':58} {'per test':>9} {'per call':>9} {'calls/test':>10}")
            for label, per_test, per_call, calls in rows:
                print(f"    {label:58} {per_test:9.1f} {per_call:9.1f} {calls:10.1f}")
            if missing:
                print(f"    not found (renamed?), not timed: {', '.join(missing)}")
    if ns.json:
        c.write_json(ns.json, "pieces", machine=c.machine_info(), trivial=ns.trivial, loops=result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
