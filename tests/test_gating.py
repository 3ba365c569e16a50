"""CI gating: observe mode, the baseline (new / grown / unchanged / fixed), exit status,
and bad gating options caught at startup."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_asyncbudget.budgets.base import Verdict
from pytest_asyncbudget.gating import Gate, load_baseline, parse_tolerance

MIXED = """
import asyncio, time, pytest

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("50ms")
async def test_blocks():
    time.sleep(0.2)

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("50ms")
async def test_clean():
    await asyncio.sleep(0.01)
"""

ORDINARY_FAILURE = """

@pytest.mark.asyncio
async def test_ordinary_failure():
    assert 1 == 2
"""


def _load(path) -> dict:
    with open(path, encoding="utf-8") as file:
        return json.load(file)


# -- observe mode ----------------------------------------------------------------------------
def test_enforce_is_the_default_and_fails_the_test(suite):
    suite.write(source=MIXED)
    result = suite.run()
    result.assert_outcomes(failed=1, passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*max_loop_lag exceeded*", "*culprit: test_suite.py:6 in test_blocks"])


def test_observe_never_fails_a_test_but_still_reports_it(suite, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")  # room for whole test ids in the table
    suite.write(source=MIXED)
    path = tmp_path / "r.json"
    result = suite.run("--asyncbudget-mode=observe", f"--asyncbudget-report={path}", "-rP")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            # the note on the passed test (shown by -rP), with the culprit
            "*observe mode (--asyncbudget-mode=observe): not enforced",
            "*max_loop_lag exceeded: loop blocked * ms > budget 50 ms (call)",
            "*culprit: test_suite.py:6 in test_blocks",
            # the summary
            f"2 tests measured on {suite.loop}: 1 budget violation in 1 test (observe mode: none enforced)",
            "*observed*test_suite.py::test_blocks*50 ms*test_suite.py:6",
        ]
    )
    report = _load(path)
    assert report["settings"]["mode"] == "observe"
    blocks = next(t for t in report["tests"] if t["id"].endswith("::test_blocks"))
    assert blocks["outcome"] == "passed"
    assert blocks["budgets"]["max_loop_lag"]["verdict"] == "failed"
    assert blocks["budgets"]["max_loop_lag"]["gate"] == "observed"
    assert report["totals"]["violations_observed"] == 1 and report["totals"]["violations_enforced"] == 0


def test_observe_keeps_ordinary_failures_in_the_exit_status(suite):
    suite.write(source=MIXED + ORDINARY_FAILURE)
    result = suite.run("--asyncbudget-mode=observe")
    result.assert_outcomes(passed=2, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["FAILED test_suite.py::test_ordinary_failure - assert 1 == 2"])
    result.stdout.no_fnmatch_line("FAILED test_suite.py::test_blocks*")


def test_observe_from_the_ini_file(suite):
    suite.write(source=MIXED)
    suite.ini(extra="asyncbudget_mode = observe\n")
    result = suite.run()
    result.assert_outcomes(passed=2)
    # the command line wins over the ini file
    result = suite.run("--asyncbudget-mode=enforce")
    result.assert_outcomes(failed=1, passed=1)


# -- baseline --------------------------------------------------------------------------------
BEFORE = """
import asyncio, time, pytest

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("50ms")
async def test_unchanged():
    time.sleep(0.2)

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("50ms")
async def test_grown():
    time.sleep(0.2)

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("50ms")
async def test_fixed():
    time.sleep(0.2)

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("50ms")
async def test_new():
    await asyncio.sleep(0)
"""

AFTER = """
import asyncio, time, pytest

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("50ms")
async def test_unchanged():
    time.sleep(0.2)

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("50ms")
async def test_grown():
    time.sleep(0.9)

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("50ms")
async def test_fixed():
    await asyncio.sleep(0)

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("50ms")
async def test_new():
    time.sleep(0.2)
"""


def test_baseline_new_grown_unchanged_fixed(suite, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # room for whole test ids in the table
    # 1. adopt: observe mode, and keep the report as the baseline
    suite.write(source=BEFORE)
    baseline = tmp_path / "baseline.json"
    first = suite.run("--asyncbudget-mode=observe", f"--asyncbudget-report={baseline}")
    first.assert_outcomes(passed=4)
    assert {t["id"].split("::")[1] for t in _load(baseline)["tests"] if t["budgets"]["max_loop_lag"]["verdict"] == "failed"} == {
        "test_unchanged",
        "test_grown",
        "test_fixed",
    }

    # 2. later: one block grew (200 -> 900 ms, past 100%), one went away, one is new
    suite.write(source=AFTER)
    after = tmp_path / "after.json"
    result = suite.run(
        f"--asyncbudget-baseline={baseline}", "--asyncbudget-baseline-tolerance=100%", f"--asyncbudget-report={after}", "-rfEP"
    )
    result.assert_outcomes(failed=2, passed=2)
    result.stdout.fnmatch_lines(["FAILED test_suite.py::test_grown - *", "FAILED test_suite.py::test_new - *"])
    result.stdout.fnmatch_lines(
        [
            "*_ test_grown _*",
            "max_loop_lag exceeded: loop blocked * > budget 50 ms (call)",
            "*culprit: test_suite.py:11 in test_grown",
            "baseline: max_loop_lag grown beyond the baseline: was * ms, tolerance 100%",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*_ test_new _*",
            "*culprit: test_suite.py:21 in test_new",
            f"baseline: max_loop_lag new: not in the baseline {baseline}",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*allowed by the baseline, not enforced:",
            "*max_loop_lag exceeded*",
            "*culprit: test_suite.py:6 in test_unchanged",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            f"4 tests measured on {suite.loop}: 3 budget violations in 3 tests (2 failed, 1 allowed by the baseline)",
            f"baseline {baseline} (tolerance 100%): 1 new, 1 grown, 1 unchanged, 1 fixed",
            "*test*budget*now*baseline",
            "new*test_suite.py::test_new*max_loop_lag*ms*-",
            "grown*test_suite.py::test_grown*max_loop_lag*ms*ms",
            "unchanged*test_suite.py::test_unchanged*max_loop_lag*ms*ms",
            "fixed*test_suite.py::test_fixed*max_loop_lag*ms",
        ]
    )
    report = _load(after)
    statuses = {t["id"].split("::")[1]: t["budgets"]["max_loop_lag"]["baseline"] for t in report["tests"]}
    assert statuses == {"test_new": "new", "test_grown": "grown", "test_unchanged": "unchanged", "test_fixed": "fixed"}
    gates = {t["id"].split("::")[1]: t["budgets"]["max_loop_lag"]["gate"] for t in report["tests"]}
    assert gates == {"test_new": "enforced", "test_grown": "enforced", "test_unchanged": "allowed", "test_fixed": None}
    comparison = report["baseline"]
    assert comparison["tolerance"] == 1.0
    assert [item["id"] for item in comparison["grown"]] == ["test_suite.py::test_grown"]
    assert comparison["grown"][0]["baseline_measured"] < comparison["grown"][0]["measured"] / 2
    assert [item["id"] for item in comparison["fixed"]] == ["test_suite.py::test_fixed"]
    # the new report is itself a baseline: the three violations are in it, gated or not
    assert set(load_baseline(str(after))) == {
        ("test_suite.py::test_new", "max_loop_lag"),
        ("test_suite.py::test_grown", "max_loop_lag"),
        ("test_suite.py::test_unchanged", "max_loop_lag"),
    }


def _hand_baseline(path, measured: dict[str, float]) -> None:
    """A minimal baseline written by hand: only what the comparison reads."""
    tests = [
        {"id": f"test_suite.py::{name}", "budgets": {"max_loop_lag": {"verdict": "failed", "measured": value}}}
        for name, value in measured.items()
    ]
    path.write_text(json.dumps({"schema": "asyncbudget-report/1", "tests": tests}))


def test_default_tolerance_is_twenty_percent(suite, tmp_path):
    suite.write(source=MIXED)
    baseline = tmp_path / "baseline.json"
    # test_blocks blocks ~200 ms: 0.19 s in the baseline is within 20%; 0.1 s is not
    _hand_baseline(baseline, {"test_blocks": 0.19})
    suite.run(f"--asyncbudget-baseline={baseline}").assert_outcomes(passed=2)
    _hand_baseline(baseline, {"test_blocks": 0.1})
    result = suite.run(f"--asyncbudget-baseline={baseline}")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["baseline: max_loop_lag grown beyond the baseline: was 100 ms, tolerance 20%"])


def test_baseline_other_test_does_not_excuse_this_one(suite, tmp_path):
    suite.write(source=MIXED)
    baseline = tmp_path / "baseline.json"
    _hand_baseline(baseline, {"test_clean": 10.0, "test_blocks_elsewhere": 10.0})
    result = suite.run(f"--asyncbudget-baseline={baseline}")
    result.assert_outcomes(failed=1, passed=1)
    # test_blocks is new (test_clean is excused, not it); test_clean is within budget: fixed
    result.stdout.fnmatch_lines(["*(tolerance 20%): 1 new, 0 grown, 0 unchanged, 1 fixed"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read it: No such file or directory"),
        ("{not json", "it is not JSON: *"),
        ('{"schema": "something-else/1", "tests": []}', "it is not an asyncbudget report (expected*"),
        ('{"schema": "asyncbudget-report/1"}', 'it has no "tests" list'),
    ],
)
def test_bad_baseline_is_a_usage_error_at_startup(pytester, content, message):
    pytester.makepyfile("def test_x(): pass")
    path = pytester.path / "baseline.json"
    if content is not None:
        path.write_text(content)
    result = pytester.runpytest_subprocess(f"--asyncbudget-baseline={path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--asyncbudget-baseline={path}: {message}"])
    assert "Traceback" not in result.stderr.str()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--asyncbudget-baseline-tolerance=lots"], "*--asyncbudget-baseline-tolerance=lots: cannot read 'lots' as a tolerance*"),
        (["--asyncbudget-baseline-tolerance=20"], "*'20' would mean 2000%; write '20%' or a fraction such as '0.2'"),
        (["--asyncbudget-baseline-tolerance=-5%"], "*--asyncbudget-baseline-tolerance=-5%: cannot read*"),
        (["--asyncbudget-mode=strict"], "*argument --asyncbudget-mode: invalid choice: 'strict'*"),
        (["-o", "asyncbudget_mode=lenient"], "*asyncbudget_mode = 'lenient': expected one of enforce, observe"),
    ],
)
def test_bad_gating_options_are_usage_errors(pytester, args, message):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()


# -- the rules, without pytest ---------------------------------------------------------------
@given(st.floats(min_value=0, max_value=10_000, allow_nan=False))
def test_tolerance_percent_and_fraction(percent):
    assert parse_tolerance(f"{percent!r}%") == pytest.approx(percent / 100)
    if percent <= 1:
        assert parse_tolerance(repr(percent)) == pytest.approx(percent)


@given(st.text())
def test_tolerance_parser_only_raises_value_error(text):
    try:
        value = parse_tolerance(text)
    except ValueError:
        return
    assert value >= 0


def _verdict(measured: float, budget: str = "max_loop_lag") -> Verdict:
    return Verdict(budget=budget, phase="call", passed=False, headline=f"{budget} exceeded", measured=measured, limit=0.05)


def test_gate_decisions():
    gate = Gate(mode="enforce", baseline_path="b.json", baseline={("t", "max_loop_lag"): 0.2, ("u", "max_loop_lag"): None}, tolerance=0.2)
    assert gate.classify("t", "max_loop_lag", 0.24) == "unchanged"  # exactly at the tolerance
    assert gate.classify("t", "max_loop_lag", 0.241) == "grown"
    assert gate.classify("t", "max_loop_lag", 0.01) == "unchanged"  # shrunk, still over budget
    assert gate.classify("t", "no_blocking", 0.01) == "new"  # same test, other budget
    assert gate.classify("other", "max_loop_lag", 0.01) == "new"
    assert gate.classify("u", "max_loop_lag", 99.0) == "unchanged"  # nothing to compare with
    text, note = gate.decide("t", [_verdict(0.22), _verdict(0.5, "no_blocking")])
    assert text is not None and "no_blocking exceeded" in text and "max_loop_lag exceeded" not in text
    assert note is not None and "max_loop_lag exceeded" in note
    assert gate.baseline_status("t", "max_loop_lag", "passed", 0.0) == "fixed"
    assert gate.baseline_status("t", "max_loop_lag", "not_measured", None) is None

    observe = Gate(mode="observe")
    text, note = observe.decide("t", [_verdict(1.0)])
    assert text is None and "observe mode" in note
    assert observe.gate_of("t", "max_loop_lag", 1.0) == "observed"

    enforce = Gate()
    text, note = enforce.decide("t", [_verdict(1.0)])
    assert text == "max_loop_lag exceeded" and note is None
    assert enforce.classify("t", "max_loop_lag", 1.0) is None
