#!/usr/bin/env python
"""What the plugin costs a real project's own suite: interleaved rounds, paired ratios.

``real_suites.py`` runs each real suite once per configuration, to compare outcomes;
its two wall times are a sanity check. This script measures the cost. For each project
(default: the MCP SDK, 6,055 short anyio tests), each round runs the suite once in every
configuration, in an order that rotates from round to round:

* ``plain``: the plugin disabled (``-p no:asyncbudget``);
* ``all``: every budget on for every async test, as ``real_suites.py`` sets them (lag
  100 ms, so the watchdog samples at 50 ms, as a user's budget would), observe mode,
  no report;
* ``lag``: the same options, with every budget but ``max_loop_lag`` taken out of each
  test's plan (issue 2's configuration; the plugin otherwise measures every budget as
  soon as one default is set);
* ``report``: ``all`` plus ``--asyncbudget-report`` (only with ``--with-report``);
* ``blocking``, ``leaks``, ``rss``: like ``lag``, each keeping only that budget (for
  attribution, with ``--configs``).

Each run is timed from ``pytest_sessionstart`` to ``pytest_sessionfinish`` by a small
plugin loaded with ``-p`` (``_common.TIMING_CONFTEST``), and as a whole process. Per
round, each configuration's time is divided by that round's plain time; printed per
configuration: the median ratio with a distribution-free 95% interval, and the extra
milliseconds per test (difference of median session times over the number of tests).

Uses the venv and sources ``real_suites.py`` prepares under ``--work`` (it prepares
them too, so PyPI is needed the first time).

Usage::

    /work/venv/bin/python benchmarks/real_overhead.py --rounds 8 --json real-overhead.json
    /work/venv/bin/python benchmarks/real_overhead.py --only mcp --select tests/server tests/interaction
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
import real_suites as rs  # noqa: E402

CONFIGS = ("plain", "all", "lag")
#: Configurations that keep a single budget in each test's plan.
ONLY = {"lag": "max_loop_lag", "blocking": "no_blocking", "leaks": "no_leaked_tasks", "rss": "max_rss"}


def config_args(name: str, report: Path) -> tuple[list[str], dict[str, str]]:
    if name == "plain":
        return ["-p", "no:asyncbudget"], {}
    args = list(rs.PLUGIN)
    env: dict[str, str] = {}
    if name in ONLY:
        env["ASYNCBUDGET_BENCH_ONLY"] = ONLY[name]
    if name == "report":
        args.append(f"--asyncbudget-report={report}")
    return args, env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/asyncbudget-real", help="real_suites.py's work directory (reused)")
    ap.add_argument("--only", default="mcp", help="comma-separated project names (default: mcp)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--with-report", action="store_true", help="add the 'report' configuration")
    ap.add_argument("--configs", help="comma-separated configurations to run after plain "
                    "(all, lag, report, blocking, leaks, rss; default: all,lag)")
    ap.add_argument("--select", nargs="*", default=[], help="test paths passed to pytest (default: the whole suite)")
    ap.add_argument("--json", metavar="PATH")
    opts = ap.parse_args(argv)
    projects = [p for p in rs.PROJECTS if p.name in opts.only.split(",")]
    if not projects:
        ap.error(f"no project named {opts.only!r}; known: {', '.join(p.name for p in rs.PROJECTS)}")
    work = Path(opts.work)
    work.mkdir(parents=True, exist_ok=True)
    python = rs.prepare(work, projects)
    configs = CONFIGS + (("report",) if opts.with_report else ())
    if opts.configs:
        configs = ("plain", *opts.configs.split(","))
        unknown = set(configs) - {"plain", "all", "report", *ONLY}
        if unknown:
            ap.error(f"unknown configuration(s): {', '.join(sorted(unknown))}")
    timer_dir = Path(tempfile.mkdtemp(prefix="asyncbudget-real-overhead-"))
    (timer_dir / "_asyncbudget_timing.py").write_text(c.TIMING_CONFTEST)
    results = {}
    for project in projects:
        src = work / "src" / project.name
        report = timer_dir / f"{project.name}.report.json"
        runs: dict[str, list[c.Run]] = {name: [] for name in configs}
        base = [*rs.COMMON, *project.args, "-p", "_asyncbudget_timing", *opts.select]
        pythonpath = os.pathsep.join(filter(None, [str(timer_dir), os.environ.get("PYTHONPATH", "")]))
        for name in configs:  # once each, untimed: caches, .pyc files
            args, env = config_args(name, report)
            c.run_pytest(src, [*base, *args], python=str(python), timeout=3600, env={"PYTHONPATH": pythonpath, **env})
        for i in range(opts.rounds):
            order = configs[i % len(configs):] + configs[: i % len(configs)]
            for name in order:
                args, env = config_args(name, report)
                run = c.run_pytest(
                    src, [*base, *args], python=str(python), timeout=3600, env={"PYTHONPATH": pythonpath, **env}
                )
                runs[name].append(run)
                print(f"[{project.name}] round {i + 1} {name:6} session {run.session_s or float('nan'):7.2f}s  "
                      f"wall {run.wall_s:7.2f}s  tests {run.items}  rc {run.rc}", flush=True)
        plain = runs["plain"]
        summary = {}
        print(f"\n{project.name}: {plain[0].items} tests, {opts.rounds} rounds, load {c.loadavg()}")
        print("config   session ratio (95% CI)      wall ratio (95% CI)         extra per test")
        for name in configs[1:]:
            ratios = [r.session_s / p.session_s for r, p in zip(runs[name], plain) if r.session_s and p.session_s]
            walls = [r.wall_s / p.wall_s for r, p in zip(runs[name], plain)]
            extra_ms = 1000 * (c.median([r.session_s or 0 for r in runs[name]]) - c.median([p.session_s or 0 for p in plain]))
            per_test = extra_ms / max(plain[0].items, 1)
            lo, hi = c.median_ci(ratios)
            wlo, whi = c.median_ci(walls)
            print(f"{name:8} {c.median(ratios):.3f} ({lo:.3f}-{hi:.3f})       {c.median(walls):.3f} ({wlo:.3f}-{whi:.3f})"
                  f"        {per_test:.2f} ms")
            summary[name] = {
                "session_ratio": c.median(ratios), "session_ci": [lo, hi], "session_ratios": ratios,
                "wall_ratio": c.median(walls), "wall_ci": [wlo, whi], "extra_ms_per_test": per_test,
            }
        results[project.name] = {
            "tests": plain[0].items,
            "select": opts.select,
            "summary": summary,
            "runs": {
                name: [{"session_s": r.session_s, "wall_s": r.wall_s, "rc": r.rc, "items": r.items} for r in config_runs]
                for name, config_runs in runs.items()
            },
        }
    if opts.json:
        c.write_json(opts.json, "real_overhead", machine=c.machine_info(), rounds=opts.rounds, results=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
