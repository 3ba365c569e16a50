"""``--asyncbudget-measure``: every budget for every async test, or only the budgets each has.

By default (``all``) a default budget or the report makes the plugin measure every budget
for every async test, so the summary and report can list the worst offenders of each.
``budgeted`` measures only the budgets a test has (from a marker or a default), and then
nothing of the other budgets is put in place: that is what makes it cheaper.
"""

from __future__ import annotations

import json

import pytest

SOURCE = """
import asyncio, json, os, time, pytest

# Taken at import, before any test runs. In a tuple: no_blocking also rebinds module
# globals that hold a patched function (``from time import sleep``).
ORIGINALS = (time.sleep, asyncio.gather)
SEEN = {}

async def forever():
    await asyncio.sleep(3600)

@pytest.mark.asyncio
async def test_unmarked():
    # What this test's body sees: the plugin's wrappers, or the originals.
    SEEN["sleep patched"] = time.sleep is not ORIGINALS[0]
    SEEN["gather patched"] = asyncio.gather is not ORIGINALS[1]
    asyncio.get_running_loop().create_task(forever())  # left behind: a leak
    time.sleep(0.002)  # a blocking call on the loop

@pytest.mark.asyncio
@pytest.mark.no_blocking
async def test_marked_no_blocking():
    SEEN["marked sleep patched"] = time.sleep is not ORIGINALS[0]
    await asyncio.sleep(0)

def test_write_down():
    with open(os.environ["SEEN_FILE"], "w") as f:
        json.dump(SEEN, f)
"""


def _run(suite, tmp_path, monkeypatch, *args, report=True):
    """Run SOURCE; the result, what its tests saw, and the report (None without one)."""
    seen = tmp_path / "seen.json"
    path = tmp_path / "report.json"
    monkeypatch.setenv("SEEN_FILE", str(seen))
    result = suite.run(*((f"--asyncbudget-report={path}",) if report else ()), *args)
    return result, json.loads(seen.read_text()), json.loads(path.read_text()) if report else None


def _budgets(document, name):
    return next(t["budgets"] for t in document["tests"] if t["id"].endswith(f"::{name}"))


def test_by_default_a_lag_default_measures_every_budget(suite, tmp_path, monkeypatch):
    suite.ini(extra="asyncbudget_max_loop_lag = 10s\n")
    suite.write(source=SOURCE)
    # No report here: the report alone would also switch every budget on.
    result, seen, _ = _run(suite, tmp_path, monkeypatch, report=False)
    # The unmarked test's leaked task and sleep are measured, never judged...
    result.assert_outcomes(passed=3)
    assert seen == {"sleep patched": True, "gather patched": True, "marked sleep patched": True}
    # ...and the summary lists every budget.
    result.stdout.fnmatch_lines(["*= asyncbudget =*", "max_loop_lag: *", "no_blocking: *", "max_rss: *", "no_leaked_tasks: *"])

    result, seen, document = _run(suite, tmp_path, monkeypatch)
    assert document["settings"]["measure"] == "all"
    unmarked = _budgets(document, "test_unmarked")
    assert set(unmarked) == {"max_loop_lag", "no_blocking", "no_leaked_tasks", "max_rss"}
    assert unmarked["max_loop_lag"]["verdict"] == "passed"
    assert unmarked["no_blocking"]["verdict"] == "measured" and unmarked["no_blocking"]["measured"] >= 0.001
    assert unmarked["no_leaked_tasks"]["verdict"] == "measured" and unmarked["no_leaked_tasks"]["measured"] == 1


@pytest.mark.parametrize("how", ["cli", "ini"])
def test_budgeted_measures_only_the_budgets_each_test_has(suite, tmp_path, monkeypatch, how):
    extra = "asyncbudget_max_loop_lag = 10s\n" + ("asyncbudget_measure = budgeted\n" if how == "ini" else "")
    suite.ini(extra=extra)
    suite.write(source=SOURCE)
    args = ("--asyncbudget-measure=budgeted",) if how == "cli" else ()
    # The report is on too, which would otherwise switch every budget on as well.
    result, seen, document = _run(suite, tmp_path, monkeypatch, *args)
    result.assert_outcomes(passed=3)
    assert document["settings"]["measure"] == "budgeted"
    # Nothing of the budgets the unmarked test lacks was in place while it ran.
    assert seen == {"sleep patched": False, "gather patched": False, "marked sleep patched": True}
    unmarked = _budgets(document, "test_unmarked")
    assert set(unmarked) == {"max_loop_lag"} and unmarked["max_loop_lag"]["verdict"] == "passed"
    marked = _budgets(document, "test_marked_no_blocking")
    assert set(marked) == {"max_loop_lag", "no_blocking"} and marked["no_blocking"]["verdict"] == "passed"
    # The summary lists only the budgets that were measured.
    section = result.stdout.str().split("= asyncbudget =")[1]
    assert "max_loop_lag:" in section and "no_blocking:" in section
    assert "no_leaked_tasks:" not in section and "max_rss:" not in section


def test_a_blocking_call_still_fails_the_test_that_has_the_budget(suite):
    suite.ini(extra="asyncbudget_max_loop_lag = 10s\nasyncbudget_measure = budgeted\n")
    suite.write(
        source="""
        import time, pytest

        @pytest.mark.asyncio
        @pytest.mark.no_blocking
        async def test_sleeps():
            time.sleep(0.01)

        @pytest.mark.asyncio
        async def test_sleeps_unmarked():
            time.sleep(0.01)
        """
    )
    result = suite.run()
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*FAILED test_suite.py::test_sleeps - no_blocking*"])


@pytest.mark.parametrize(
    ("args", "ini", "expected"),
    [
        ((), "asyncbudget_measure = some\n", "*asyncbudget_measure='some': expected one of all, budgeted*"),
        (("--asyncbudget-measure=some",), "", "*--asyncbudget-measure: invalid choice: 'some'*"),
    ],
)
def test_a_bad_value_is_a_usage_error(pytester, args, ini, expected):
    pytester.makefile(".ini", pytest="[pytest]\n" + ini)
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])
    assert "Traceback" not in result.stderr.str()
