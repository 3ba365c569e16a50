#!/usr/bin/env python
"""Two revisions of the plugin against each other: what a change did to the per-test cost.

``fixed_cost.py`` and ``paired.py`` compare the plugin with plain pytest-asyncio. To see
what one change saved, this script runs the same suite under two revisions of the
plugin (and plain), in interleaved rounds with a rotating order, all in fresh processes:

* each revision is checked out with ``git worktree`` into a temporary directory (or
  ``WORKTREE``: the working tree as it is), byte-compiled, and put first on
  ``PYTHONPATH``, so both are imported the same way. The compiled ``_speedups`` module
  is copied from the installed package when the revision's C source is the same as the
  installed one, and built in place otherwise;
* ``plain`` runs with the newer tree on ``PYTHONPATH`` and the plugin disabled;
* every budget is on for every test (as ``fixed_cost.py`` sets them), with the summary
  shown, as users have it (with ``--asyncbudget-summary=0`` and no report the plugin
  builds no per-test entries since session 16, which would flatter a newer revision).

Suites (``--suite``):

* ``trivial``: N empty async tests (the per-test work with warm caches);
* ``churn``: N async tests that each write to every page of a fresh ``--churn-mb`` MiB
  buffer, so the plugin's per-test work runs with cold caches, as between two real
  tests;
* ``heavy``: ``overhead.py``'s callback-heavy suite (the per-test work is a small part
  of it: use many rounds).

Printed per loop: each configuration's median session time, the extra time per test of
each revision over plain, and the paired difference *new - old* per test, each as the
median over rounds with a distribution-free 95% interval. The session is timed by the
benchmarks' usual conftest (``pytest_sessionstart`` to ``pytest_sessionfinish``).

Usage::

    /work/venv/bin/python benchmarks/compare_revs.py --old HEAD~1 --new WORKTREE --rounds 20
    /work/venv/bin/python benchmarks/compare_revs.py --old 8a2bf0b --new HEAD --suite churn --loops asyncio,uvloop
"""

from __future__ import annotations

import argparse
import compileall
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
import overhead  # noqa: E402
from fixed_cost import ASYNC_TESTS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

CHURN_TESTS = '''\
import pytest

PAGE = 4096


@pytest.mark.asyncio
@pytest.mark.parametrize("i", range({n}))
async def test_churn(i):
    block = bytearray({size})
    block[::PAGE] = b"x" * ({size} // PAGE)  # every page written: the caches are cold after
'''


def checkout(rev: str, where: Path) -> Path:
    """The plugin's tree at *rev* (``WORKTREE``: this checkout as it is), ready to import."""
    if rev == "WORKTREE":
        tree = REPO
    else:
        tree = where / rev.replace("/", "_")
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), rev], check=True)
    package = tree / "pytest_asyncbudget"
    import pytest_asyncbudget

    installed = Path(pytest_asyncbudget.__file__).parent
    if package != installed:
        if filecmp.cmp(installed / "_speedups.c", package / "_speedups.c", shallow=False):
            for built in installed.glob("_speedups*.so"):
                shutil.copy2(built, package / built.name)
        else:
            subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree, check=True,
                           capture_output=True)
    compileall.compile_dir(str(package), quiet=1)
    return tree


def write_suite(root: Path, loop: str, suite: str, tests: int, churn_mb: int) -> Path:
    if suite == "trivial":
        return c.write_project(root / loop, loop, {"test_trivial.py": ASYNC_TESTS.format(n=tests)})
    if suite == "churn":
        source = CHURN_TESTS.format(n=tests, size=churn_mb << 20)
        return c.write_project(root / loop, loop, {"test_churn.py": source})
    return overhead.make_suite(root, loop, 1.0, 10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="git revision (or WORKTREE)")
    ap.add_argument("--new", default="WORKTREE", help="git revision, or WORKTREE (default)")
    ap.add_argument("--suite", choices=("trivial", "churn", "heavy"), default="trivial")
    ap.add_argument("--tests", type=int, default=1000, help="tests in the trivial/churn suite (default 1000)")
    ap.add_argument("--churn-mb", type=int, default=8, help="MiB each churn test writes (default 8)")
    ap.add_argument("--loops", default="asyncio,uvloop")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", metavar="PATH")
    ns = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="asyncbudget-revs-"))
    trees: dict[str, Path] = {}
    try:
        trees["old"] = checkout(ns.old, work)
        trees["new"] = checkout(ns.new, work)
        budget, used, _ = c.budget_args()
        configs = {
            "plain": (trees["new"], c.PLAIN_ARGS),
            "old": (trees["old"], budget),
            "new": (trees["new"], budget),
        }
        print(f"old = {ns.old}, new = {ns.new}; budgets: {' '.join(used)}; suite {ns.suite}")
        results = {}
        for loop in [x.strip() for x in ns.loops.split(",") if x.strip()]:
            root = write_suite(work / "suites", loop, ns.suite, ns.tests, ns.churn_mb)
            names = list(configs)
            runs: dict[str, list[c.Run]] = {name: [] for name in names}

            def run(name: str) -> c.Run:
                tree, args = configs[name]
                result, _ = c.run_pytest_retry(root, args, env={"PYTHONPATH": str(tree)})
                if result.rc != 0 or result.session_s is None:
                    raise SystemExit(f"[{loop}/{name}] failed (rc={result.rc}):\n{result.tail}")
                return result

            for name in names:  # warm-up, untimed
                run(name)
            for i in range(ns.rounds):
                order = names[i % len(names):] + names[: i % len(names)]
                for name in order:
                    runs[name].append(run(name))
            items = runs["plain"][0].items
            sessions = {name: [r.session_s for r in rs] for name, rs in runs.items()}
            print(f"\n[{loop}] {items} tests, {ns.rounds} rounds, load {c.loadavg()}")
            summary: dict[str, object] = {"tests": items}
            for name in names:
                print(f"    {name:6} session median {c.median(sessions[name]):.3f} s")
                summary[f"{name}_session_s"] = c.median(sessions[name])

            def per_test(a: str, b: str) -> tuple[float, float, float]:
                diffs = [(x - y) / items * 1e6 for x, y in zip(sessions[a], sessions[b])]
                lo, hi = c.median_ci(diffs)
                return c.median(diffs), lo, hi

            for a, b in (("old", "plain"), ("new", "plain"), ("new", "old")):
                med, lo, hi = per_test(a, b)
                print(f"    {a} - {b:5} per test: {med:+8.1f} us  (95% CI {lo:+.1f} to {hi:+.1f})")
                summary[f"{a}_minus_{b}_us"] = [med, lo, hi]
            summary["sessions"] = sessions
            results[loop] = summary
        if ns.json:
            c.write_json(ns.json, "compare_revs", machine=c.machine_info(), old=ns.old, new=ns.new, suite=ns.suite,
                         rounds=ns.rounds, results=results)
    finally:
        for name, tree in trees.items():
            if tree != REPO:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
