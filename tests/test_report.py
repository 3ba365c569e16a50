"""``--asyncbudget-report``: a real report against the shipped JSON Schema, its contents,
bad paths caught at startup, and the measurements as ``--junitxml`` properties."""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import xml.etree.ElementTree as ET

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_asyncbudget.present.report import SCHEMA, schema_path, to_data

SUITE = """
import asyncio, time, pytest, pytest_asyncio

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("50ms")
async def test_blocks():
    await asyncio.sleep(0)
    time.sleep(0.2)

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("1s")
async def test_clean():
    await asyncio.sleep(0.01)

@pytest.mark.asyncio
async def test_unmarked():
    await asyncio.sleep(0)

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("1s")
async def test_assert_fails():
    assert 1 == 2

@pytest.mark.asyncio
async def test_skipped():
    pytest.skip("not today")

@pytest_asyncio.fixture
async def broken():
    raise RuntimeError("fixture broke")

@pytest.mark.asyncio
async def test_setup_error(broken):
    pass

@pytest.mark.asyncio
@pytest.mark.max_rss("1 GiB")
async def test_memory():
    data = bytearray(16 * 2**20)
    data[::4096] = b"x" * len(data[::4096])

def test_sync():
    pass
"""
BLOCK_LINE = 7  # time.sleep(0.2) in test_blocks


def _schema() -> dict:
    with open(schema_path(), encoding="utf-8") as file:
        return json.load(file)


def _validate(document: dict) -> None:
    jsonschema.Draft202012Validator(_schema()).validate(document)


def _load(path) -> dict:
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def test_schema_is_valid_json_schema_and_not_vacuous():
    schema = _schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert not validator.is_valid({})
    assert not validator.is_valid({"schema": "asyncbudget-report/2"})


def test_real_report_matches_schema_and_holds_the_facts(suite, tmp_path):
    suite.write(source=SUITE)
    path = tmp_path / "out" / "report.json"  # the directory is created
    result = suite.run(f"--asyncbudget-report={path}")
    result.assert_outcomes(failed=2, passed=4, skipped=1, errors=1)
    result.stdout.fnmatch_lines([f"report written to {path}"])
    report = _load(path)
    _validate(report)

    assert report["schema"] == SCHEMA == "asyncbudget-report/1"
    env = report["environment"]
    assert env["python"] == platform.python_version()
    assert env["pytest"] == pytest.__version__
    assert env["pytest_asyncio"] and env["asyncbudget"]
    assert env["loops"] == [suite.loop]
    if suite.loop == "uvloop":
        assert env["uvloop"]
    assert report["settings"]["mode"] == "enforce"
    assert report["exitstatus"] == 1
    assert report["outcomes"]["failed"] == 2 and report["outcomes"]["error"] == 1

    tests = {t["id"]: t for t in report["tests"]}
    ids = [t["id"] for t in report["tests"]]
    assert len(ids) == len(set(ids))
    # the report measures every async test; the sync test has no budget and is not in it
    assert sorted(tests) == sorted(
        f"test_suite.py::{name}"
        for name in ("test_blocks", "test_clean", "test_unmarked", "test_assert_fails", "test_skipped", "test_setup_error", "test_memory")
    )
    assert {name.split("::")[1]: t["outcome"] for name, t in tests.items()} == {
        "test_blocks": "failed",
        "test_clean": "passed",
        "test_unmarked": "passed",
        "test_assert_fails": "failed",
        "test_skipped": "skipped",
        "test_setup_error": "error",
        "test_memory": "passed",
    }

    blocks = tests["test_suite.py::test_blocks"]
    assert blocks["loop"] == suite.loop
    lag = blocks["budgets"]["max_loop_lag"]
    assert lag["verdict"] == "failed" and lag["gate"] == "enforced" and lag["unit"] == "s"
    assert lag["limit"] == 0.05 and lag["measured"] >= 0.15 and lag["used"] >= 3
    assert lag["phase"] == "call"
    assert lag["culprit"]["location"] == f"test_suite.py:{BLOCK_LINE}"
    assert lag["culprit"]["function"] == "test_blocks"
    call = lag["phases"]["call"]
    assert call["verdict"] == "failed"
    assert call["headline"].startswith("max_loop_lag exceeded: loop blocked")
    finding = call["findings"][0]
    assert finding["data"]["duration_s"] >= 0.15
    assert finding["culprit"]["location"] == f"test_suite.py:{BLOCK_LINE}"
    events = call["measurement"]["events"]
    assert events[0]["duration"] >= 0.15
    assert events[0]["culprit"]["location"] == f"test_suite.py:{BLOCK_LINE}"
    assert "frames" not in events[0]  # raw stacks stay out of the report

    clean = tests["test_suite.py::test_clean"]["budgets"]["max_loop_lag"]
    assert clean["verdict"] == "passed" and clean["gate"] is None and clean["limit"] == 1.0
    assert clean["measured"] < 0.5
    unmarked = tests["test_suite.py::test_unmarked"]["budgets"]["max_loop_lag"]
    assert unmarked["verdict"] == "measured" and unmarked["limit"] is None and unmarked["used"] is None
    assert tests["test_suite.py::test_assert_fails"]["budgets"]["max_loop_lag"]["verdict"] == "passed"

    memory = tests["test_suite.py::test_memory"]["budgets"]["max_rss"]
    assert memory["unit"] == "bytes" and memory["verdict"] == "passed"
    assert memory["limit"] == 2**30
    assert memory["measured"] >= 8 * 2**20  # 16 MiB touched: at least half of it shows
    rss = memory["phases"]["call"]["measurement"]
    assert {"baseline", "peak", "growth"} <= set(rss)  # RSS baseline, peak and growth

    totals = report["totals"]
    assert totals["tests_measured"] == 7
    assert totals["violations"] == totals["violations_enforced"] == 1
    assert totals["tests_with_violations"] == 1
    assert report["baseline"] is None and report["plugin_errors"] == []


def test_report_is_written_when_the_run_stops_early(suite, tmp_path):
    suite.write(source=SUITE)
    path = tmp_path / "r.json"
    result = suite.run(f"--asyncbudget-report={path}", "-x")
    result.assert_outcomes(failed=1)
    report = _load(path)
    _validate(report)
    assert [t["id"] for t in report["tests"]] == ["test_suite.py::test_blocks"]
    assert report["exitstatus"] == 1  # the first failure stopped the run


def test_report_of_a_clean_run_is_empty_but_valid(suite, tmp_path):
    suite.write(source="def test_sync():\n    pass\n")
    path = tmp_path / "r.json"
    result = suite.run(f"--asyncbudget-report={path}")
    result.assert_outcomes(passed=1)
    report = _load(path)
    _validate(report)
    assert report["tests"] == [] and report["totals"]["tests_measured"] == 0
    assert report["outcomes"]["passed"] == 1  # the session's tests are still counted


@pytest.mark.parametrize("where", ["file", "directory"])
def test_bad_report_path_is_a_usage_error_at_startup(pytester, where):
    pytester.makepyfile("def test_x(): pass")
    blocker = pytester.path / "blocker"
    if where == "file":
        blocker.write_text("a file, not a directory")
        path = blocker / "report.json"
        message = f"*--asyncbudget-report={path}: cannot write the report there: *"
    else:
        blocker.mkdir()
        path = blocker
        message = f"*--asyncbudget-report={path}: is a directory; give a file name such as*"
    result = pytester.runpytest_subprocess(f"--asyncbudget-report={path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()
    result.stdout.no_fnmatch_line("*collected*")  # nothing ran


def test_startup_check_leaves_no_file_behind_on_usage_error(pytester):
    """A good report path with another bad option: the probe file is not left behind."""
    pytester.makepyfile("def test_x(): pass")
    path = pytester.path / "r.json"
    result = pytester.runpytest_subprocess(f"--asyncbudget-report={path}", "--asyncbudget-summary=-3")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert not path.exists()


# -- JUnit XML -------------------------------------------------------------------------------
def _properties(xml_path) -> dict[str, dict[str, str]]:
    root = ET.parse(xml_path).getroot()
    out = {}
    for case in root.iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        out[case.get("name")] = props
    return out


@pytest.mark.parametrize("family", ["xunit1", "xunit2"])
def test_junit_xml_has_the_measurements_as_properties(suite, tmp_path, family):
    suite.write(source=SUITE)
    xml = tmp_path / "junit.xml"
    result = suite.run(f"--junitxml={xml}", "-o", f"junit_family={family}", "-W", "error::pytest.PytestWarning")
    result.assert_outcomes(failed=2, passed=4, skipped=1, errors=1)
    props = _properties(xml)
    blocks = props["test_blocks"]
    assert blocks["asyncbudget.loop"] == suite.loop
    assert blocks["asyncbudget.max_loop_lag.verdict"] == "failed"
    assert blocks["asyncbudget.max_loop_lag.limit"] == "0.05"
    assert float(blocks["asyncbudget.max_loop_lag.measured"]) >= 0.15
    assert blocks["asyncbudget.max_loop_lag.unit"] == "s"
    assert blocks["asyncbudget.max_loop_lag.culprit"] == f"test_suite.py:{BLOCK_LINE}"
    assert blocks["asyncbudget.max_loop_lag.gate"] == "enforced"
    clean = props["test_clean"]
    assert clean["asyncbudget.max_loop_lag.verdict"] == "passed"
    assert float(clean["asyncbudget.max_loop_lag.measured"]) < 0.5
    assert "asyncbudget.max_loop_lag.gate" not in clean
    memory = props["test_memory"]
    assert memory["asyncbudget.max_rss.unit"] == "bytes"
    assert int(memory["asyncbudget.max_rss.measured"]) >= 8 * 2**20  # whole bytes, not 1.6e+07
    assert memory["asyncbudget.max_rss.limit"] == str(2**30)
    # without a default budget or the report, unmarked tests are not measured: no properties
    assert not any(name.startswith("asyncbudget.") for name in props["test_unmarked"])
    assert not any(name.startswith("asyncbudget.") for name in props["test_sync"])


# -- data conversion -------------------------------------------------------------------------
@dataclasses.dataclass
class _Event:
    duration: float
    raw: list = dataclasses.field(default_factory=list, repr=False)


_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # nan and inf included: they become null
    st.text(),
    st.binary(),
    st.builds(_Event, st.floats(), st.lists(st.integers())),
)
_values = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children),
        st.tuples(children, children),
        st.dictionaries(st.one_of(st.text(), st.integers()), children),
        st.frozensets(st.integers()),
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_to_data_is_always_strict_json(value):
    data = to_data(value)
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text) == data


def test_to_data_rules():
    assert to_data(_Event(0.5, [("f.py", 1, "f")])) == {"duration": 0.5}  # repr=False left out
    assert to_data(math.inf) is None and to_data(float("nan")) is None
    assert to_data({1: (2, 3)}) == {"1": [2, 3]}
    assert to_data(object()).startswith("<object object")


# -- what the session keeps of each test (pack / unpack) -----------------------------------
def _json_data(value):
    """*value* as strict JSON data, as an entry's values are."""
    return json.loads(json.dumps(to_data(value), allow_nan=False))


_atoms = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text())


@settings(max_examples=200, deadline=None)
@given(
    budgets=st.dictionaries(
        st.sampled_from(["max_loop_lag", "no_blocking", "max_rss", "no_leaked_tasks", "future_budget"]),
        st.fixed_dictionaries(
            {
                "unit": st.sampled_from(["s", "bytes", "count", ""]),
                "budget": _values.map(_json_data),
                "limit": _atoms,
                "measured": _atoms,
                "used": _atoms,
                "verdict": st.sampled_from(["passed", "failed", "measured", "not_measured"]),
                "phase": st.sampled_from(["setup", "call", "teardown", None]),
                "culprit": st.one_of(st.none(), st.fixed_dictionaries({"location": st.text(), "function": st.text()})),
                "gate": st.sampled_from([None, "enforced", "observed", "allowed"]),
                "baseline": st.sampled_from([None, "new", "grown", "unchanged"]),
                "phases": st.dictionaries(st.sampled_from(["setup", "call", "teardown"]), _values.map(_json_data)),
            }
        ),
    ),
    loop=st.sampled_from([None, "asyncio", "uvloop"]),
)
def test_packed_entries_come_back_unchanged(budgets, loop):
    """The session keeps each entry packed; unpacking gives the same entry."""
    from pytest_asyncbudget.present.report import pack, unpack

    entry = {"id": "t.py::test[x]", "loop": loop, "outcome": "passed", "budgets": budgets}
    assert unpack(pack(entry)) == entry


def test_packing_knows_every_key_of_a_real_entry():
    """pack() spells the entry's keys out: an entry key it does not know fails here."""
    import gc

    from pytest_asyncbudget.budgets.base import Verdict
    from pytest_asyncbudget.gating import Gate
    from pytest_asyncbudget.present.report import pack, test_entry, unpack
    from pytest_asyncbudget.record import TestRecord

    record = TestRecord(nodeid="t.py::test", loop="asyncio", budgets={"max_loop_lag": 0.05, "max_rss": None})
    record.verdicts.append(Verdict("max_loop_lag", "call", False, "over", measured=0.2, limit=0.05))
    record.verdicts.append(Verdict("max_rss", "call", True, lambda: "ok", measured=10.0))
    for detail in (False, True):
        entry = test_entry(record, Gate(), detail=detail)
        packed = pack(entry)
        assert unpack(packed) == json.loads(json.dumps(entry))
        # Only atoms and tuples: the garbage collector stops tracking it.
        for _ in range(3):  # a tuple is untracked once the tuples in it are: one level a pass
            gc.collect()
        assert not gc.is_tracked(packed)


def test_budget_texts_convert_each_budget_once_and_stay_bounded():
    """Budget data is cached per budget object, per session (Results), never unbounded."""
    from pytest_asyncbudget.budgets.leaks import LeakBudget
    from pytest_asyncbudget.present.report import BudgetTexts, pack, to_data

    texts = BudgetTexts()
    budget = LeakBudget()
    data = texts.data(budget)
    assert data == to_data(budget)
    assert texts.data(budget) is data  # the same object: converted once
    assert texts.text(data) == json.dumps(data)
    assert BudgetTexts().text(data) == json.dumps(data)  # another session has its own
    entry = {"id": "t", "loop": None, "outcome": "passed", "budgets": {"no_leaked_tasks": {
        "unit": "", "budget": data, "limit": None, "measured": 0, "used": None, "verdict": "passed",
        "phase": "teardown", "culprit": None, "gate": None, "baseline": None, "phases": {}}}}  # fmt: skip
    assert pack(entry, texts) == pack(entry)
    kept = [LeakBudget() for _ in range(BudgetTexts.LIMIT * 2 + 1)]
    for each in kept:
        texts.data(each)
    assert len(texts._data) <= BudgetTexts.LIMIT
    assert len(texts._texts) <= BudgetTexts.LIMIT
    assert texts.data(kept[-1]) == to_data(kept[-1])
