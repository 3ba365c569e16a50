"""The "asyncbudget" terminal summary: ordering, size, width, verbosity, and when it is silent.

End-to-end runs go through ``pytester`` on stock asyncio and uvloop. Blocks are long
(200-300 ms) against budgets far from them, so orderings hold on a loaded machine. The
layout itself (width, truncation, ordering invariants) is checked on synthetic entries
with hypothesis, without running pytest.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_asyncbudget.present.terminal import rows_for, summary_lines

# Four tests whose share of their budget is far apart: over (400%), 60%, 15%, 0.
RANKED = """
import asyncio, time, pytest

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("2s")
async def test_low():
    time.sleep(0.3)

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("500ms")
async def test_high():
    time.sleep(0.3)

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("50ms")
async def test_over():
    time.sleep(0.2)

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("1s")
async def test_idle():
    await asyncio.sleep(0)

def test_sync():
    pass
"""


def _section(result: pytest.RunResult) -> list[str]:
    """The lines of the asyncbudget section (without its separator)."""
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if re.match(r"^=+ asyncbudget =+$", line))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("=", "_"))), len(lines))
    return lines[start + 1 : end]


def _row_order(section: list[str], names: list[str]) -> list[str]:
    """The order in which test *names* appear as rows of the section."""
    found = []
    for line in section:
        for name in names:
            if re.search(rf"::{name}\b", line) and name not in found:
                found.append(name)
    return found


def test_violations_first_then_closest_to_budget(suite, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    suite.write(source=RANKED)
    result = suite.run()
    result.assert_outcomes(failed=1, passed=4)
    section = _section(result)
    order = _row_order(section, ["test_over", "test_high", "test_low", "test_idle"])
    # test_idle barely blocks (0 on asyncio, a few ms of start-up on uvloop): last if shown
    assert order[:3] == ["test_over", "test_high", "test_low"], section
    result.stdout.fnmatch_lines(
        [
            "*= asyncbudget =*",
            f"4 tests measured on {suite.loop}: 1 budget violation in 1 test (1 failed)",
            "max_loop_lag: longest loop block (worst * of 4, 1 over budget)",
            "*test*loop*max lag*budget*used*culprit",
            f"*FAILED*test_suite.py::test_over*{suite.loop}*ms*50 ms*%*test_suite.py:16",
            f"*test_suite.py::test_high*{suite.loop}*ms*500 ms*%*",
            f"*test_suite.py::test_low*{suite.loop}*ms*2 s*%*",
        ]
    )
    over = next(line for line in section if "::test_over" in line)
    percent = int(re.search(r"(\d+)%", over).group(1))
    assert percent >= 300  # 200 ms of 50 ms
    assert "test_sync" not in "\n".join(section)  # sync tests are not measured for lag


def test_size_limits_rows_and_says_how_many_are_hidden(suite):
    suite.write(source=RANKED)
    result = suite.run("--asyncbudget-summary=1")
    result.assert_outcomes(failed=1, passed=4)
    section = _section(result)
    assert _row_order(section, ["test_over", "test_high", "test_low"]) == ["test_over"]
    result.stdout.fnmatch_lines(
        [
            "max_loop_lag: longest loop block (worst 1 of 4, 1 over budget)",
            "... * more; --asyncbudget-summary=N shows more rows",
        ]
    )


def test_size_zero_hides_the_section_but_not_the_failure(suite):
    suite.write(source=RANKED)
    result = suite.run("--asyncbudget-summary=0")
    result.assert_outcomes(failed=1, passed=4)
    result.stdout.fnmatch_lines(["*max_loop_lag exceeded*", "*culprit: test_suite.py:16 in test_over"])
    result.stdout.no_fnmatch_line("*= asyncbudget =*")


_COUNT_ENTRIES = """
def pytest_unconfigure(config):
    manager = config.pluginmanager.get_plugin("asyncbudget-manager")
    if manager is not None:
        print(f"entries kept: {len(manager.results._entries)}")
"""


def test_size_zero_builds_no_entries_unless_the_report_or_junit_reads_them(suite, tmp_path):
    """Nobody reads a test's entry when the summary is hidden and there is no report or
    JUnit file: none is built (a per-test cost saved). With either, every test has one."""
    suite.pytester.makeconftest(_COUNT_ENTRIES)
    suite.write(source=RANKED)
    hidden = suite.run("--asyncbudget-summary=0", "-s")
    hidden.assert_outcomes(failed=1, passed=4)
    hidden.stdout.fnmatch_lines(["*max_loop_lag exceeded*", "entries kept: 0"])
    report = tmp_path / "report.json"
    with_report = suite.run("--asyncbudget-summary=0", "-s", f"--asyncbudget-report={report}")
    with_report.assert_outcomes(failed=1, passed=4)
    with_report.stdout.fnmatch_lines(["entries kept: 4"])  # the four async tests
    assert len(json.loads(report.read_text())["tests"]) == 4
    junit = tmp_path / "junit.xml"
    with_junit = suite.run("--asyncbudget-summary=0", "-s", f"--junitxml={junit}")
    with_junit.stdout.fnmatch_lines(["entries kept: 4"])
    assert junit.read_text().count('<property name="asyncbudget.max_loop_lag.verdict"') == 4
    shown = suite.run("-s")
    shown.stdout.fnmatch_lines(["*= asyncbudget =*", "entries kept: 4"])


@pytest.mark.parametrize("bad", ["-1", "ten", "1.5"])
def test_bad_size_is_a_usage_error(pytester, bad):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess(f"--asyncbudget-summary={bad}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--asyncbudget-summary={bad}: expected a whole number of rows*"])
    assert "Traceback" not in result.stderr.str()


def test_default_budget_measures_unmarked_tests(suite):
    suite.write(
        source="""
        import asyncio, time, pytest

        @pytest.mark.asyncio
        async def test_busy():
            time.sleep(0.3)

        @pytest.mark.asyncio
        async def test_quick():
            time.sleep(0.05)
        """
    )
    result = suite.run("--asyncbudget-max-loop-lag=1s")
    result.assert_outcomes(passed=2)
    assert _row_order(_section(result), ["test_busy", "test_quick"]) == ["test_busy", "test_quick"]
    result.stdout.fnmatch_lines(
        [
            f"2 tests measured on {suite.loop}: no budget violations",
            "max_loop_lag: longest loop block (worst 2 of 2)",
            # 300 ms of 1 s: under half the budget, so lag sampling (and a culprit) never started
            "test_suite.py::test_busy *ms*1 s*30%",
        ]
    )


def test_report_alone_measures_every_async_test_without_failing_any(suite, tmp_path):
    suite.write(
        source="""
        import asyncio, time, pytest

        @pytest.mark.asyncio
        async def test_slow():
            time.sleep(0.2)

        @pytest.mark.asyncio
        async def test_fast():
            await asyncio.sleep(0)
        """
    )
    result = suite.run(f"--asyncbudget-report={tmp_path / 'r.json'}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            f"2 tests measured on {suite.loop}: no budget violations",
            "max_loop_lag: longest loop block (worst * of 2)",
            # no budget: no budget or used columns, but the value and the culprit
            "test*loop*max lag*culprit",
            f"test_suite.py::test_slow*{suite.loop}*ms*test_suite.py:5",
            f"report written to {tmp_path / 'r.json'}",
        ]
    )


def test_silent_when_nothing_is_measured(suite):
    suite.write(
        source="""
        import asyncio, time, pytest

        @pytest.mark.asyncio
        async def test_unbudgeted():
            time.sleep(0.1)

        def test_sync():
            pass
        """
    )
    result = suite.run()
    result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("*= asyncbudget =*")
    result.stdout.no_fnmatch_line("* tests measured *")


def test_quiet_lists_only_violations_and_very_quiet_only_totals(suite):
    suite.write(source=RANKED)
    quiet = suite.run("-q")
    quiet.assert_outcomes(failed=1, passed=4)
    section = _section(quiet)
    assert _row_order(section, ["test_over", "test_high", "test_low"]) == ["test_over"]
    quiet.stdout.fnmatch_lines(["max_loop_lag: longest loop block (1 over budget of 4 measured)"])
    quiet.stdout.no_fnmatch_line("*--asyncbudget-summary=N*")

    very_quiet = suite.run("-qq")
    assert very_quiet.ret == pytest.ExitCode.TESTS_FAILED  # -qq prints no outcome line to parse
    very_quiet.stdout.fnmatch_lines([f"4 tests measured on {suite.loop}: 1 budget violation in 1 test (1 failed)"])
    assert _row_order(_section(very_quiet), ["test_over", "test_high", "test_low"]) == []


LONG_IDS = """
import asyncio, time, pytest

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("50ms")
@pytest.mark.parametrize("payload", ["a-rather-long-parameter-value-that-makes-the-test-id-wide-" * 2])
async def test_with_a_very_long_name_that_does_not_fit_in_a_narrow_terminal(payload):
    time.sleep(0.2)
"""


def test_table_fits_the_terminal_width(suite, monkeypatch):
    monkeypatch.setenv("COLUMNS", "70")
    suite.write(name="test_a_module_with_a_long_file_name", source=LONG_IDS)
    result = suite.run()
    result.assert_outcomes(failed=1)
    section = _section(result)
    rows = [line for line in section if "test_with_a" in line or "..." in line]
    assert rows, section
    for line in section:
        assert len(line) <= 70, line
    # shortened from the left: the end of the id (its parameters) and the culprit's line survive
    result.stdout.fnmatch_lines(["FAILED  ...payload0]  *ms*50 ms*%  ...*.py:7"])


def test_verbose_keeps_full_ids_and_names_the_function(suite, monkeypatch):
    monkeypatch.setenv("COLUMNS", "70")
    suite.write(name="test_a_module_with_a_long_file_name", source=LONG_IDS)
    result = suite.run("-v")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*FAILED  test_a_module_with_a_long_file_name.py::"
            "test_with_a_very_long_name_that_does_not_fit_in_a_narrow_terminal?payload0?*"
            "test_a_module_with_a_long_file_name.py:7 in test_with_a_very_long_name_that_does_not_fit_in_a_narrow_terminal"
        ]
    )


def test_rss_budget_gets_its_own_table(suite):
    suite.write(
        source="""
        import pytest

        @pytest.mark.asyncio
        @pytest.mark.max_rss("1 GiB")
        async def test_small():
            data = bytearray(8 * 2**20)
            data[::4096] = b"x" * len(data[::4096])
        """
    )
    result = suite.run()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [f"1 test measured on {suite.loop}: no budget violations", "max_rss: RSS growth*"]
    )


# -- layout on synthetic entries -----------------------------------------------------------
def _entry(measured, limit, verdict, gate=None, culprit=None):
    return {
        "unit": "s",
        "budget": limit,
        "limit": limit,
        "measured": measured,
        "used": None,
        "verdict": verdict,
        "phase": "call",
        "culprit": culprit,
        "gate": gate,
        "baseline": None,
        "phases": {},
    }


_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_/.[]-0123456789", min_size=1, max_size=120)


@st.composite
def _tests(draw):
    count = draw(st.integers(min_value=1, max_value=25))
    ids = draw(st.lists(_names, min_size=count, max_size=count, unique=True))
    tests = []
    for nodeid in ids:
        limit = draw(st.one_of(st.none(), st.sampled_from([0.0, 0.01, 0.05, 1.0])))
        measured = draw(st.floats(min_value=0, max_value=5, allow_nan=False))
        over = limit is not None and measured > limit
        path = draw(_names)
        culprit = draw(
            st.one_of(
                st.none(),
                st.just({"location": f"{path}.py:{len(path)}", "function": "f", "path": path, "line": 1, "stack": []}),
            )
        )
        entry = _entry(measured, limit, "failed" if over else ("passed" if limit is not None else "measured"),
                       "enforced" if over else None, culprit)
        tests.append({"id": nodeid, "loop": draw(st.sampled_from(["asyncio", "uvloop", None])),
                      "outcome": "failed" if over else "passed", "budgets": {"max_loop_lag": entry}})
    return tests


@settings(max_examples=200, deadline=None)
@given(tests=_tests(), width=st.integers(min_value=72, max_value=200), size=st.integers(min_value=1, max_value=30))
def test_layout_invariants(tests, width, size):
    lines = summary_lines(tests, size=size, verbosity=0, width=width)
    for text, _ in lines[1:]:  # the totals line and the titles are prose; the tables fit
        if not text.startswith("max_loop_lag:"):
            assert len(text) <= width, (width, text)
    rows = rows_for("max_loop_lag", tests)
    verdicts = [entry["verdict"] for _, entry in rows]
    # violations first, and nothing zero unless it is a violation
    assert verdicts == sorted(verdicts, key=lambda v: v != "failed")
    assert all(entry["measured"] > 0 or entry["verdict"] == "failed" for _, entry in rows)
    table = [text for text, _ in lines if text.startswith("  ") and "..." not in text.strip()[:3]]
    assert len(table) <= size + 1  # header + at most `size` rows


@settings(max_examples=100, deadline=None)
@given(tests=_tests())
def test_rows_with_a_budget_are_ordered_by_share_used(tests):
    rows = rows_for("max_loop_lag", tests)
    budgeted = [e for _, e in rows if e["verdict"] == "passed" and e["limit"]]
    shares = [e["measured"] / e["limit"] for e in budgeted]
    assert shares == sorted(shares, reverse=True)
    # each test at most once
    ids = [t["id"] for t, _ in rows]
    assert len(ids) == len(set(ids))


@settings(max_examples=300, deadline=None)
@given(text=_names, width=st.integers(min_value=0, max_value=130))
def test_shorten_keeps_the_end_within_the_width(text, width):
    from pytest_asyncbudget.present.terminal import _shorten

    short = _shorten(text, width)
    assert len(short) <= max(width, 0)
    if len(text) <= width:
        assert short == text
    elif width > 3:
        assert short.startswith("...") and text.endswith(short[3:])


def test_shorten_drops_whole_directories_first():
    from pytest_asyncbudget.present.terminal import _shorten

    nodeid = "tests/integration/api/test_orders.py::test_list[uvloop]"
    assert _shorten(nodeid, 60) == nodeid
    assert _shorten(nodeid, 48) == ".../api/test_orders.py::test_list[uvloop]"
    assert _shorten(nodeid, 40) == ".../test_orders.py::test_list[uvloop]"
    assert _shorten(nodeid, 30) == "...rders.py::test_list[uvloop]"  # no directory fits: cut mid-word
