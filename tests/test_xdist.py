"""pytest-xdist parity: under ``-n 2`` the controller's summary, JSON report and JUnit XML
hold every test exactly once, with the same outcomes, verdicts and culprits as a run
without xdist."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("xdist")

SUITE = """
import asyncio, time, pytest

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("50ms")
async def test_blocks_here():
    time.sleep(0.2)

async def helper():
    await asyncio.sleep(0)
    time.sleep(0.2)

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("50ms")
async def test_blocks_in_helper():
    await helper()

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("1s")
@pytest.mark.parametrize("n", range(8))
async def test_clean(n):
    await asyncio.sleep(0.01)

@pytest.mark.asyncio
async def test_unmarked():
    await asyncio.sleep(0)

@pytest.mark.asyncio
async def test_ordinary_failure():
    assert 1 == 2

@pytest.mark.asyncio
async def test_skipped():
    pytest.skip("not today")

def test_sync():
    pass
"""
CULPRITS = {"test_blocks_here": "test_suite.py:6", "test_blocks_in_helper": "test_suite.py:10"}


def _load(path) -> dict:
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def _facts(report: dict) -> dict[str, dict]:
    """What must not depend on xdist: per test, its outcome, loop, verdicts, gates, culprits."""
    out = {}
    for test in report["tests"]:
        out[test["id"]] = {
            "outcome": test["outcome"],
            "loop": test["loop"],
            "budgets": {
                name: (
                    budget["verdict"],
                    budget["gate"],
                    budget["limit"],
                    budget["culprit"]["location"] if budget["verdict"] == "failed" and budget["culprit"] else None,
                )
                for name, budget in test["budgets"].items()
                if name == "max_loop_lag"  # budgets whose verdict does not hang on timing noise
            },
        }
    return out


def _junit(path) -> dict[str, dict[str, str]]:
    root = ET.parse(path).getroot()
    return {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property") if p.get("name", "").startswith("asyncbudget.")}
        for case in root.iter("testcase")
    }


def _totals_line(result: pytest.RunResult) -> str:
    return next(line for line in result.stdout.lines if re.match(r"^\d+ tests? measured", line))


def test_xdist_matches_a_plain_run(suite, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    suite.write(source=SUITE)
    outcomes = {"failed": 3, "passed": 10, "skipped": 1}

    plain = suite.run(f"--asyncbudget-report={tmp_path / 'plain.json'}", f"--junitxml={tmp_path / 'plain.xml'}")
    plain.assert_outcomes(**outcomes)
    spread = suite.run("-n", "2", f"--asyncbudget-report={tmp_path / 'xdist.json'}", f"--junitxml={tmp_path / 'xdist.xml'}")
    spread.assert_outcomes(**outcomes)

    # failures are reported as usual, culprit included
    for result in (plain, spread):
        result.stdout.fnmatch_lines(["*max_loop_lag exceeded*", "*culprit: test_suite.py:6 in test_blocks_here"])
        result.stdout.fnmatch_lines(["*max_loop_lag exceeded*", "*culprit: test_suite.py:10 in helper"])

    a, b = _load(tmp_path / "plain.json"), _load(tmp_path / "xdist.json")
    ids = [t["id"] for t in b["tests"]]
    assert len(ids) == len(set(ids)) == 13  # every async test once; test_sync is not measured
    assert _facts(a) == _facts(b)
    assert a["totals"] == b["totals"]
    assert a["totals"]["violations"] == 2 and a["totals"]["tests_with_violations"] == 2
    assert a["outcomes"] == b["outcomes"] == {"passed": 10, "failed": 3, "error": 0, "skipped": 1, "xfailed": 0, "xpassed": 0}
    assert a["environment"]["xdist_workers"] is None and b["environment"]["xdist_workers"] == 2
    assert a["environment"]["loops"] == b["environment"]["loops"] == [suite.loop]
    for name, location in CULPRITS.items():
        test = next(t for t in b["tests"] if t["id"] == f"test_suite.py::{name}")
        assert test["budgets"]["max_loop_lag"]["culprit"]["location"] == location

    # the summary on the controller: the same totals, each violation listed once
    assert _totals_line(plain) == _totals_line(spread) == (
        f"13 tests measured on {suite.loop}: 2 budget violations in 2 tests (2 failed)"
    )
    for result in (plain, spread):
        for name, location in CULPRITS.items():
            rows = [line for line in result.stdout.lines if line.startswith("FAILED  ") and f"::{name} " in line]
            assert len(rows) == 1, rows
            assert rows[0].rstrip().endswith(location)

    # JUnit XML: every test's properties survive the trip from the worker
    ja, jb = _junit(tmp_path / "plain.xml"), _junit(tmp_path / "xdist.xml")
    assert set(ja) == set(jb)
    for name in ja:
        assert set(ja[name]) == set(jb[name]), name
        for key in ("asyncbudget.max_loop_lag.verdict", "asyncbudget.max_loop_lag.culprit", "asyncbudget.loop"):
            assert ja[name].get(key) == jb[name].get(key), (name, key)
    assert jb["test_blocks_here"]["asyncbudget.max_loop_lag.verdict"] == "failed"
    assert jb["test_blocks_here"]["asyncbudget.max_loop_lag.culprit"] == "test_suite.py:6"
    assert jb["test_sync"] == {}


def test_observe_mode_under_xdist(suite, tmp_path):
    suite.write(source=SUITE)
    result = suite.run("-n", "2", "--asyncbudget-mode=observe", f"--asyncbudget-report={tmp_path / 'r.json'}")
    result.assert_outcomes(failed=1, passed=12, skipped=1)  # only the ordinary failure
    result.stdout.fnmatch_lines(
        [f"13 tests measured on {suite.loop}: 2 budget violations in 2 tests (observe mode: none enforced)"]
    )
    report = _load(tmp_path / "r.json")
    assert report["totals"]["violations_observed"] == 2


BROKEN_PROBE = """
import pytest_asyncbudget.probes.lag as lag

_real = lag.LagProbe.measurement

def _broken(self, phase):
    if phase == "call":
        raise RuntimeError("deliberate probe bug")
    return _real(self, phase)

lag.LagProbe.measurement = _broken
"""


def test_plugin_errors_on_workers_reach_the_controller(suite, tmp_path):
    suite.conftest(BROKEN_PROBE)
    suite.write(
        source="""
        import time, pytest

        @pytest.mark.asyncio
        @pytest.mark.max_loop_lag("50ms")
        async def test_blocks():
            time.sleep(0.2)
        """
    )
    result = suite.run("-n", "2", f"--asyncbudget-report={tmp_path / 'r.json'}")
    result.assert_outcomes(passed=1)  # the plugin's failure never becomes the test's
    result.stdout.fnmatch_lines(
        [
            "*pytest-asyncbudget internal error in LagProbe.measurement (on a worker)*",
            "*RuntimeError: deliberate probe bug",
        ]
    )
    report = _load(tmp_path / "r.json")
    assert report["tests"][0]["budgets"]["max_loop_lag"]["verdict"] == "not_measured"
    assert report["totals"]["not_measured"] == 1
    assert [e["where"] for e in report["plugin_errors"]] == ["LagProbe.measurement (on a worker)"]
