#!/usr/bin/env python
"""Precision of the max_loop_lag measurement against blocks of known length.

Generates async tests that block the event loop for d in 5 ms, 10 ms, 20 ms, 50 ms,
200 ms and 1 s, two ways: ``time.sleep(d)`` (lets go of the GIL) and a busy-wait CPU loop
of the same length (holds it, apart from the interpreter's regular switch requests). Each
test measures its block's real duration with ``time.perf_counter()`` around it, and runs
under the plugin with a ``max_loop_lag`` budget smaller than d (d * --budget-fraction,
0.5 by default), so the test fails with "loop blocked X ms".

A tiny conftest plugin reads, after each test's teardown report, what the plugin measured
for the call phase (``item.stash[STATE].record.measurements["max_loop_lag"]["call"]``:
``max_lag``, and the precision mode, "exact" or "heartbeat") and the "loop blocked X" of
the failure text, and writes them with the real block length to a JSON-lines file.

The block starts at a random moment (``--phase-ms``, default 1): before it the test
passes the loop on with ``await asyncio.sleep(0)`` for a random 0 to 1 ms, so the loop
stays free (a heartbeat can beat) and the block starts anywhere between two beats.
Without it a block always started
the same short time after the loop woke from ``asyncio.sleep``; on uvloop, whose timers
keep to whole milliseconds, that is a fixed time after a heartbeat beat, so the
heartbeat's error (up to half an interval either way) showed as one constant offset, and
a heartbeat late by a fraction of an interval could not show at all (session 12).

Error = measured max_lag - real block length. Reported per loop, per way of blocking and
per d, over all repetitions: the median error and the largest absolute error, against the
target of +-1 ms on stock asyncio and +-2 ms on uvloop. Sessions alternate between the
loops so machine noise hits both alike.

Usage::

    /work/venv/bin/python benchmarks/precision.py --sessions 3 --reps 3 --loops asyncio,uvloop --json precision.json
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

BLOCKS_MS = [5, 10, 20, 50, 200, 1000]
KINDS = ["sleep", "busy"]
TARGET_MS = {"asyncio": 1.0, "uvloop": 2.0}

TESTS = '''\
import asyncio
import random
import time

import pytest

BUDGET_FRACTION = {fraction!r}
PHASE_S = {phase_ms!r} / 1000
BLOCKS_MS = {blocks!r}


def _block(kind, seconds):
    if kind == "sleep":
        time.sleep(seconds)
    else:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass


@pytest.mark.asyncio
@pytest.mark.parametrize("rep", range({reps}))
@pytest.mark.parametrize("kind", {kinds!r})
@pytest.mark.parametrize(
    "d_ms",
    [pytest.param(d, marks=pytest.mark.max_loop_lag(d * BUDGET_FRACTION / 1000), id=f"{{d}}ms") for d in BLOCKS_MS],
)
async def test_block(record_block, d_ms, kind, rep):
    # Let the loop settle (on uvloop the heartbeat is running by now).
    for _ in range(3):
        await asyncio.sleep(0.002)
    until = time.perf_counter() + random.uniform(0, PHASE_S)
    while time.perf_counter() < until:  # the loop stays free: the block starts at a random moment
        await asyncio.sleep(0)
    t0 = time.perf_counter()
    _block(kind, d_ms / 1000)
    t1 = time.perf_counter()
    record_block(t0, t1)
    await asyncio.sleep(0.002)
'''

CONFTEST = '''

import json as _json
import re as _re

_ACTUAL = pytest.StashKey[tuple]()
_CALL_TEXT = pytest.StashKey[str]()
_BLOCKED = _re.compile(r"loop blocked ([0-9.]+) (us|ms|s)\\b")
_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


@pytest.fixture
def record_block(request):
    def record(t0, t1):
        request.node.stash[_ACTUAL] = (t0, t1)
    return record


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: sees the report after the plugin's wrapper
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.stash[_CALL_TEXT] = str(report.longrepr or "")
    if report.when != "teardown":
        return report
    out = os.environ.get("ASYNCBUDGET_PRECISION_OUT")
    t0, t1 = item.stash.get(_ACTUAL, (None, None))
    row = {"nodeid": item.nodeid, "actual_s": None if t0 is None else t1 - t0, "t0": t0, "t1": t1}
    try:
        from pytest_asyncbudget.record import STATE

        state = item.stash.get(STATE, None)
        m = state.record.measurements.get("max_loop_lag", {}).get("call") if state else None
        if m is not None:
            row.update(
                measured_s=m.max_lag,
                precision=m.precision,
                loop=m.loop,
                iterations=m.iterations,
                events=[e.duration for e in m.events],
                event_starts=[e.start for e in m.events],
                culprit=next((e.culprit.location for e in m.events if e.culprit is not None), None),
            )
    except Exception as exc:  # the benchmark must say why a row is empty
        row["error"] = repr(exc)
    text = item.stash.get(_CALL_TEXT, "")
    found = _BLOCKED.search(text)
    if found:
        row["text_s"] = float(found.group(1)) * _UNIT[found.group(2)]
    if out:
        with open(out, "a") as f:
            f.write(_json.dumps(row) + "\\n")
    return report
'''

_ID = re.compile(r"\[(?P<d>\d+)ms-(?P<kind>\w+)-(?P<rep>\d+)\]")


def block_stretch(row: dict) -> float | None:
    """The measured stretch that contains the block (the longest overlap with [t0, t1])."""
    t0, t1 = row.get("t0"), row.get("t1")
    if t0 is None or not row.get("event_starts"):
        return None
    best, best_overlap = None, 0.0
    for start, duration in zip(row["event_starts"], row["events"]):
        overlap = min(t1, start + duration) - max(t0, start)
        if overlap > best_overlap:
            best, best_overlap = duration, overlap
    return best


def run_session(root: Path, out: Path, args: list[str], attempts: int = 8) -> tuple[list[dict], int, c.Run]:
    """Run the suite once; a crashed session is retried and its partial rows discarded."""
    crashes = 0
    for _ in range(attempts):
        out.unlink(missing_ok=True)
        run = c.run_pytest(root, args, env={"ASYNCBUDGET_PRECISION_OUT": str(out)})
        if not c.crashed(run):
            rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
            return rows, crashes, run
        crashes += 1
    return [], crashes, run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=3, help="pytest sessions per loop, alternating loops (default 3)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each (d, kind) per session (default 3)")
    ap.add_argument("--loops", default="asyncio,uvloop")
    ap.add_argument("--blocks", default=",".join(map(str, BLOCKS_MS)), help="block lengths in ms")
    ap.add_argument("--kinds", default=",".join(KINDS), help="sleep,busy")
    ap.add_argument("--budget-fraction", type=float, default=0.5, help="budget = d * this (default 0.5)")
    ap.add_argument("--phase-ms", type=float, default=1.0,
                    help="pass the loop on for a random 0..this many ms before each block (default 1; 0: none)")
    ap.add_argument("--json", metavar="PATH", help="write every row and the summary as JSON")
    ap.add_argument("--pytest-arg", action="append", default=[], metavar="ARG",
                    help="extra pytest argument, e.g. --pytest-arg=-ofaulthandler_timeout=3600 (repeatable)")
    ns = ap.parse_args(argv)
    print(f"plugin modules compiled to bytecode (as an installed plugin is): {c.precompile_plugin()}")

    loops = [x.strip() for x in ns.loops.split(",") if x.strip()]
    blocks = [int(x) for x in ns.blocks.split(",")]
    kinds = [x.strip() for x in ns.kinds.split(",")]
    info = c.machine_info()
    print(f"machine: {info}")
    tmp = Path(tempfile.mkdtemp(prefix="asyncbudget-precision-"))
    try:
        source = TESTS.format(fraction=ns.budget_fraction, blocks=blocks, reps=ns.reps, kinds=kinds, phase_ms=ns.phase_ms)
        projects = {loop: c.write_project(tmp / loop, loop, {"test_precision.py": source}, CONFTEST) for loop in loops}
        rows: list[dict] = []
        crashes = {loop: 0 for loop in loops}
        for s in range(ns.sessions):
            order = loops if s % 2 == 0 else loops[::-1]
            for loop in order:
                got, crashed, run = run_session(projects[loop], tmp / f"{loop}.jsonl", ns.pytest_arg)
                crashes[loop] += crashed
                for row in got:
                    m = _ID.search(row["nodeid"])
                    row.update(loop_config=loop, session=s, d_ms=int(m["d"]), kind=m["kind"], rep=int(m["rep"]))
                rows.extend(got)
                bad = [r for r in got if r.get("measured_s") is None or r.get("actual_s") is None]
                print(f"session {s + 1}/{ns.sessions} {loop:7}: {len(got)} rows, {len(bad)} incomplete, "
                      f"rc={run.rc}, {run.session_s or 0:.1f}s" + (f", crashed x{crashed} (retried)" if crashed else "")
                      + f", load {c.loadavg():.2f}", flush=True)
                if bad:
                    print(f"    e.g. {bad[0]}\n{run.tail}")

        summary: dict[str, dict] = {}
        print()
        print("error = measured max_lag - real block length (ms); target +-1 ms asyncio, +-2 ms uvloop")
        print("the block's own stretch: the measured stretch overlapping the block; 'other': tests whose max_lag")
        print("came from another stretch (something else also held the loop); text-stash: failure text vs stash")
        print(f"{'loop':8} {'kind':6} {'d':>7} {'n':>3} {'median err':>11} {'max |err|':>10} {'p90 |err|':>10} "
              f"{'in target':>9} {'own med':>10} {'own max':>10} {'other':>6} {'text-stash':>10}  mode")
        for loop in loops:
            for kind in kinds:
                for d in blocks:
                    sel = [r for r in rows if r["loop_config"] == loop and r["kind"] == kind and r["d_ms"] == d
                           and r.get("measured_s") is not None and r.get("actual_s") is not None]
                    if not sel:
                        continue
                    err = [(r["measured_s"] - r["actual_s"]) * 1e3 for r in sel]
                    stretch = [(block_stretch(r), r) for r in sel]
                    s_err = [(d_s - r["actual_s"]) * 1e3 for d_s, r in stretch if d_s is not None]
                    other = sum(1 for d_s, r in stretch if d_s is None or r["measured_s"] > d_s + 1e-9)
                    abs_err = [abs(e) for e in err]
                    inside = sum(1 for e in abs_err if e <= TARGET_MS.get(loop, 2.0))
                    text_diff = [abs(r["text_s"] - r["measured_s"]) * 1e3 for r in sel if r.get("text_s") is not None]
                    modes = sorted({r.get("precision") or "?" for r in sel})
                    key = f"{loop}/{kind}/{d}ms"
                    summary[key] = {
                        "loop": loop, "kind": kind, "d_ms": d, "n": len(sel),
                        "median_err_ms": c.median(err), "max_abs_err_ms": max(abs_err),
                        "p90_abs_err_ms": c.quantile(abs_err, 0.9),
                        "min_err_ms": min(err), "max_err_ms": max(err),
                        "within_target": inside, "target_ms": TARGET_MS.get(loop, 2.0),
                        "median_actual_ms": c.median([r["actual_s"] * 1e3 for r in sel]),
                        "max_text_vs_stash_ms": max(text_diff) if text_diff else None,
                        "block_stretch_median_err_ms": c.median(s_err),
                        "block_stretch_max_abs_err_ms": max(map(abs, s_err)) if s_err else None,
                        "max_lag_from_another_stretch": other,
                        "modes": modes,
                    }
                    print(f"{loop:8} {kind:6} {d:>5}ms {len(sel):>3} {c.median(err):>+10.3f} {max(abs_err):>10.3f} "
                          f"{c.quantile(abs_err, 0.9):>10.3f} {inside:>5}/{len(sel):<3} "
                          f"{c.median(s_err):>+10.3f} {max(map(abs, s_err)) if s_err else float('nan'):>10.3f} {other:>6} "
                          f"{(max(text_diff) if text_diff else float('nan')):>10.3f}  {','.join(modes)}")
            allerr = [abs(v["max_abs_err_ms"]) for k, v in summary.items() if v["loop"] == loop]
            meds = [v["median_err_ms"] for k, v in summary.items() if v["loop"] == loop]
            if allerr:
                print(f"{loop:8} overall: median errors {min(meds):+.3f}..{max(meds):+.3f} ms, "
                      f"max |err| {max(allerr):.3f} ms (target {TARGET_MS.get(loop, 2.0):g} ms)")
        if any(crashes.values()):
            print(f"crashed sessions (killed by a signal, retried, partial rows discarded): {crashes}")
        print(f"(sessions per loop: {ns.sessions}, reps per session: {ns.reps}; "
              f"budget = {ns.budget_fraction:g} x d; random start 0-{ns.phase_ms:g} ms; 2 cores, load {c.loadavg():.2f} at the end)")
        if ns.json:
            c.write_json(
                ns.json, "precision", machine=info, sessions=ns.sessions, reps=ns.reps,
                budget_fraction=ns.budget_fraction, phase_ms=ns.phase_ms, crashed_sessions=crashes, pytest_args=ns.pytest_arg,
                summary=summary, rows=rows,
            )
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
