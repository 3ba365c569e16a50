"""Test records as data: the ``--asyncbudget-report`` JSON file, JUnit properties, xdist.

Every consumer of results past the test itself (the terminal summary, the JSON report,
the baseline comparison, ``--junitxml`` properties, the xdist controller) reads the same
plain-data form of a test: :func:`test_entry` turns a :class:`~..record.TestRecord` into
it. Under pytest-xdist, each worker serializes that entry onto the test's teardown report
(an extra report attribute, which pytest's own report serialization carries to the
controller); the controller's :meth:`Results.collect` picks it up. Without xdist the
entry is made when the test ends, in the same way. Both paths keep the same entries (as
packed into tuples), keyed by test id, so a test appears exactly once whichever way it ran.

The report's layout is versioned (``"schema": "asyncbudget-report/1"``) and described by
the JSON Schema shipped next to this package, ``report-schema.json``.

Measurements are converted generically (:func:`to_data`): a dataclass becomes an object
of its fields, except fields declared with ``repr=False`` (raw stacks and other bulky
internals), plus its public properties (derived values such as an RSS growth); a :class:`~..culprit.Culprit` becomes its ``as_dict()``; non-finite floats
become null. A new budget's measurements appear in the report without code here; its
unit and formatting for the summary come from :data:`DESCRIPTIONS`.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import tempfile
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from ..budgets import measure_choice
from ..budgets.base import Verdict
from ..culprit import Culprit
from ..units import format_duration, format_size

if TYPE_CHECKING:
    from ..errors import PluginErrors
    from ..gating import Gate
    from ..record import TestRecord

__all__ = [
    "DESCRIPTIONS",
    "SCHEMA",
    "BudgetInfo",
    "Results",
    "add_options",
    "build_report",
    "check_report_path",
    "describe",
    "environment",
    "junit_properties",
    "schema_path",
    "test_entry",
    "to_data",
]

SCHEMA = "asyncbudget-report/1"
#: The attribute a worker's teardown report carries its test entry in (a JSON string).
_REPORT_ATTR = "asyncbudget_entry"
#: Reports of up to this many tests are indented for people; larger ones are compact.
_INDENTED_UP_TO = 200


def schema_path() -> str:
    """Where the report's JSON Schema is installed."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "report-schema.json")


# -- how each budget's numbers read ------------------------------------------------------
def _count(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class BudgetInfo:
    """How one budget's measured value reads in the summary and the report."""

    #: The summary table's title, e.g. ``"loop lag"``.
    title: str
    #: The measured column's header, e.g. ``"max lag"``.
    measured: str
    #: The unit of ``measured`` and ``limit`` in the report: ``s``, ``bytes``, ``count``.
    unit: str
    format: Callable[[float], str]


#: One entry per budget; a budget without one is shown with plain numbers.
DESCRIPTIONS: dict[str, BudgetInfo] = {
    "max_loop_lag": BudgetInfo("longest loop block", "max lag", "s", format_duration),
    "no_blocking": BudgetInfo("blocking calls on the loop", "blocked", "s", format_duration),
    "no_leaked_tasks": BudgetInfo("leaked tasks", "leaked", "count", _count),
    "max_rss": BudgetInfo("RSS growth, or peak RSS for absolute budgets", "measured", "bytes", format_size),
}


def describe(budget: str) -> BudgetInfo:
    return DESCRIPTIONS.get(budget) or BudgetInfo(budget, "measured", "", _count)


# -- options and the report path ---------------------------------------------------------
def add_options(group: pytest.OptionGroup, parser: pytest.Parser) -> None:
    group.addoption(
        "--asyncbudget-report",
        dest="asyncbudget_report",
        metavar="PATH",
        default=None,
        help="write every measured test's budgets, measurements and culprits to PATH as JSON "
        f"(schema {SCHEMA}); turns on measuring every async test",
    )


def check_report_path(path: str) -> str:
    """The absolute report path, or a :class:`pytest.UsageError` if it cannot be written.

    Checked at startup so a long run does not end without its report: the directory is
    created if needed and a file is opened for appending there (and removed again if it
    did not exist before).
    """
    where = f"--asyncbudget-report={path}"
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(full):
        raise pytest.UsageError(f"{where}: is a directory; give a file name such as {os.path.join(path, 'asyncbudget.json')}")
    directory = os.path.dirname(full)
    existed = os.path.exists(full)
    try:
        os.makedirs(directory, exist_ok=True)
        with open(full, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise pytest.UsageError(f"{where}: cannot write the report there: {exc.strerror or exc}") from None
    if not existed:
        try:
            os.unlink(full)
        except OSError:  # pragma: no cover - we just created it; leave it, it is rewritten at the end
            pass
    return full


# -- plain data ----------------------------------------------------------------------------
def to_data(obj: Any, _depth: int = 0) -> Any:
    """*obj* as JSON-ready data (see the module docstring for the rules)."""
    kind = type(obj)
    if obj is None or kind is str or kind is int or kind is bool:
        return obj
    if kind is float:
        return obj if math.isfinite(obj) else None
    if _depth > 12:
        return repr(obj)
    if kind is list or kind is tuple:
        return [to_data(v, _depth + 1) for v in obj]
    if kind is dict:
        return {str(k): to_data(v, _depth + 1) for k, v in obj.items()}
    if kind is Culprit:
        return obj.as_dict()
    if hasattr(kind, "__dataclass_fields__"):
        fields, properties = _shape(kind)
        data = {name: to_data(getattr(obj, name), _depth + 1) for name in fields}
        for name in properties:  # derived values, e.g. an RSS measurement's growth
            try:
                data[name] = to_data(getattr(obj, name), _depth + 1)
            except Exception:  # noqa: BLE001 - a property that cannot answer is left out
                continue
        return data
    # rarer types, and subclasses of the above
    if isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Culprit):
        return obj.as_dict()
    if isinstance(obj, Mapping):
        return {str(k): to_data(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_data(v, _depth + 1) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_data(v, _depth + 1) for v in obj), key=repr)
    if isinstance(obj, datetime.timedelta):
        return obj.total_seconds()
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    return repr(obj)


@functools.lru_cache(maxsize=None)
def _shape(cls: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A dataclass's shown fields (``repr=True``) and public properties, computed once per class."""
    fields = tuple(f.name for f in dataclasses.fields(cls) if f.repr)
    properties: list[str] = []
    for klass in reversed(cls.__mro__):
        for name, member in vars(klass).items():
            if isinstance(member, property) and not name.startswith("_") and name not in properties:
                properties.append(name)
    return fields, tuple(properties)


def _number(value: Any) -> float | None:
    """A finite int or float as it is (bytes stay whole), else None."""
    kind = type(value)
    if kind is int:
        return value
    if kind is not float and (kind is bool or not isinstance(value, (int, float))):
        return None
    return value if math.isfinite(value) else None


def _worst(verdicts: list[Verdict]) -> Verdict:
    """The verdict that stands for the budget: a failing one first, then the largest value."""
    if len(verdicts) == 1:
        return verdicts[0]

    def key(verdict: Verdict) -> tuple[bool, float]:
        value = _number(verdict.measured)
        return (not verdict.passed, -math.inf if value is None else value)

    return max(verdicts, key=key)


def _finding_data(finding: Any) -> dict[str, Any]:
    return {
        "title": finding.title,
        "culprit": finding.culprit.as_dict() if finding.culprit is not None else None,
        "details": list(finding.details),
        "data": to_data(finding.data),
    }


def _phases(record: TestRecord, name: str, verdicts: list[Verdict]) -> dict[str, Any]:
    """Every phase's verdict, with its events (findings) and the probe's raw measurement."""
    budget = record.budgets.get(name)
    measurements = record.measurements.get(name, {})
    phases: dict[str, Any] = {}
    for verdict in verdicts:
        phases[verdict.phase] = {
            "verdict": "measured" if budget is None else ("passed" if verdict.passed else "failed"),
            "measured": _number(verdict.measured),
            "limit": _number(verdict.limit),
            "headline": verdict.headline,
            "findings": [_finding_data(f) for f in verdict.findings],
            "measurement": to_data(measurements.get(verdict.phase)),
        }
    return phases


def _budget_entry(
    record: TestRecord, name: str, verdicts: list[Verdict], gate: Gate, detail: bool, texts: BudgetTexts
) -> dict[str, Any]:
    info = describe(name)
    budget = record.budgets.get(name)
    phases: dict[str, Any] = {}
    if verdicts:
        worst = _worst(verdicts)
        if detail:
            phases = _phases(record, name, verdicts)
        measured, limit, phase = _number(worst.measured), _number(worst.limit), worst.phase
        culprit = next((f.culprit for f in worst.findings if f.culprit is not None), None)
        if not worst.passed:
            verdict_word = "failed"
        elif name in record.not_measured:
            verdict_word = "not_measured"
        else:
            verdict_word = "measured" if budget is None else "passed"
    else:
        measured = limit = phase = culprit = None
        verdict_word = "not_measured"
    if limit is None and budget is not None:
        limit = _number(budget) if _number(budget) is not None else _number(getattr(budget, "limit", None))
    used = measured / limit if measured is not None and limit else None
    return {
        "unit": info.unit,
        "budget": texts.data(budget),
        "limit": limit,
        "measured": measured,
        "used": used,
        "verdict": verdict_word,
        "phase": phase,
        "culprit": culprit.as_dict() if culprit is not None else None,
        "gate": gate.gate_of(record.nodeid, name, measured) if verdict_word == "failed" else None,
        "baseline": gate.baseline_status(record.nodeid, name, verdict_word, measured),
        "phases": phases,
    }


class BudgetTexts:
    """Each budget object's report data and its JSON text, made once per object.

    Most tests share their budget objects (a session default is one object), so each is
    converted once; a marker's budget is parsed per test, so the cache is bounded. One
    per :class:`Results`, so sessions (and ``pytester`` runs in one process) never share
    it. Entries keep their budget and data alive, so an id stays their own.
    """

    #: Entries kept at most; then the cache starts over (cheap: one conversion each).
    LIMIT = 512

    def __init__(self) -> None:
        #: id(budget) -> (the budget, its data)
        self._data: dict[int, tuple[Any, Any]] = {}
        #: id(a budget's data) -> (the data, its JSON text)
        self._texts: dict[int, tuple[Any, str]] = {}

    def data(self, budget: Any) -> Any:
        cached = self._data.get(id(budget))
        if cached is None or cached[0] is not budget:
            if len(self._data) >= self.LIMIT:
                self._data.clear()
                self._texts.clear()
            data = to_data(budget)
            cached = self._data[id(budget)] = (budget, data)
            self._texts[id(data)] = (data, json.dumps(data))
        return cached[1]

    def text(self, value: Any) -> Any:
        """A value that may be a container, as :func:`pack` keeps it: None and numbers as
        they are, anything else as JSON text (a budget's is made once)."""
        kind = type(value)
        if value is None or kind is int or kind is float or kind is bool:
            return value
        known = self._texts.get(id(value))
        if known is not None and known[0] is value:
            return known[1]
        return json.dumps(value)


def test_entry(record: TestRecord, gate: Gate, detail: bool = True, texts: BudgetTexts | None = None) -> dict[str, Any]:
    """One test as plain data: the form the summary, the report and xdist share.

    Without *detail*, ``phases`` is left empty: enough for the summary and JUnit
    properties, at a fraction of the cost. *texts*: the session's cache of budget data.
    """
    if texts is None:
        texts = BudgetTexts()
    by_budget: dict[str, list[Verdict]] = {name: [] for name in record.budgets}
    for verdict in record.verdicts:
        by_budget.setdefault(verdict.budget, []).append(verdict)
    budgets = {}
    for name, verdicts in by_budget.items():
        if verdicts or name in record.not_measured:
            budgets[name] = _budget_entry(record, name, verdicts, gate, detail, texts)
    return {"id": record.nodeid, "loop": record.loop, "outcome": record.outcome, "budgets": budgets}


# -- entries kept until the session ends --------------------------------------------------
def _value(text: Any) -> Any:
    return json.loads(text) if type(text) is str else text


def pack(entry: Mapping[str, Any], texts: BudgetTexts | None = None) -> tuple[Any, ...]:
    """A test entry as a tuple of strings, numbers and tuples of them.

    That is what the session keeps of each test until the end. The garbage collector
    stops tracking such a tuple after its first pass, so thousands of them cost
    collections nothing, and it is cheaper to make than JSON text. Values that may be
    containers (``budget``, ``culprit``, ``phases``) are kept as JSON text.
    :func:`unpack` gives the entry back. *texts*: the cache :func:`test_entry` used.
    """
    text = (texts or _NO_TEXTS).text
    rows = []
    for name, b in entry["budgets"].items():
        rows.append(
            (
                name, b["unit"], text(b["budget"]), b["limit"], b["measured"], b["used"], b["verdict"],
                b["phase"], text(b["culprit"]), b["gate"], b["baseline"], json.dumps(b["phases"]) if b["phases"] else None,
            )
        )  # fmt: skip
    return (entry["id"], entry["loop"], entry["outcome"], tuple(rows))


#: An empty cache, for :func:`pack` without one (it never fills: only data() adds).
_NO_TEXTS = BudgetTexts()


def unpack(packed: tuple[Any, ...]) -> dict[str, Any]:
    """The entry :func:`pack` was given (made afresh at each call)."""
    budgets: dict[str, Any] = {}
    for name, unit, budget, limit, measured, used, verdict, phase, culprit, gate, baseline, phases in packed[3]:
        budgets[name] = {
            "unit": unit,
            "budget": _value(budget),
            "limit": limit,
            "measured": measured,
            "used": used,
            "verdict": verdict,
            "phase": phase,
            "culprit": _value(culprit),
            "gate": gate,
            "baseline": baseline,
            "phases": {} if phases is None else json.loads(phases),
        }
    return {"id": packed[0], "loop": packed[1], "outcome": packed[2], "budgets": budgets}


# -- JUnit XML -----------------------------------------------------------------------------
def _prop(value: float | None) -> str:
    """Whole numbers (bytes, counts) exactly; others to 6 significant digits."""
    if value is None:
        return ""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return format(value, ".6g")


def junit_properties(entry: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``record_property``-style (name, value) pairs for one test entry."""
    props = [("asyncbudget.loop", entry["loop"] or "")]
    for name, budget in entry["budgets"].items():
        prefix = f"asyncbudget.{name}"
        props.append((f"{prefix}.verdict", budget["verdict"]))
        props.append((f"{prefix}.measured", _prop(budget["measured"])))
        if budget["limit"] is not None:
            props.append((f"{prefix}.limit", _prop(budget["limit"])))
        if budget["unit"]:
            props.append((f"{prefix}.unit", budget["unit"]))
        if budget["culprit"] is not None:
            props.append((f"{prefix}.culprit", budget["culprit"]["location"]))
        if budget["gate"] is not None:
            props.append((f"{prefix}.gate", budget["gate"]))
        if budget["baseline"] is not None:
            props.append((f"{prefix}.baseline", budget["baseline"]))
    return props


# -- the run -------------------------------------------------------------------------------
def _version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def environment(config: pytest.Config, loops: list[str]) -> dict[str, Any]:
    from .. import __version__

    workers = getattr(config.option, "numprocesses", None)
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "pytest": pytest.__version__,
        "pytest_asyncio": _version("pytest-asyncio"),
        "uvloop": _version("uvloop"),
        "pytest_xdist": _version("pytest-xdist"),
        "asyncbudget": __version__,
        "xdist_workers": workers if isinstance(workers, int) and workers > 0 else None,
        "loops": loops,
    }


def _outcome_counts(config: pytest.Config) -> dict[str, int] | None:
    """Every test's outcome in the session, measured or not, as the terminal counts them."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    stats = getattr(reporter, "stats", None)
    if stats is None:
        return None
    return {key: len(stats.get(key, ())) for key in ("passed", "failed", "error", "skipped", "xfailed", "xpassed")}


def totals(tests: list[dict[str, Any]]) -> dict[str, int]:
    violations = [(t, b) for t in tests for b in t["budgets"].values() if b["verdict"] == "failed"]
    return {
        "tests_measured": len(tests),
        "violations": len(violations),
        "tests_with_violations": len({t["id"] for t, _ in violations}),
        "violations_enforced": sum(1 for _, b in violations if b["gate"] == "enforced"),
        "violations_observed": sum(1 for _, b in violations if b["gate"] == "observed"),
        "violations_allowed": sum(1 for _, b in violations if b["gate"] == "allowed"),
        "not_measured": sum(1 for t in tests for b in t["budgets"].values() if b["verdict"] == "not_measured"),
    }


def build_report(
    config: pytest.Config,
    gate: Gate,
    tests: list[dict[str, Any]],
    errors: Iterable[tuple[str, str]],
    exitstatus: int | None,
    defaults: Mapping[str, Any],
) -> dict[str, Any]:
    loops: list[str] = []
    for test in tests:
        if test["loop"] and test["loop"] not in loops:
            loops.append(test["loop"])
    comparison = None
    if gate.baseline_path is not None:
        comparison = {"path": gate.baseline_path, "tolerance": gate.tolerance, **gate.compare(tests)}
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(config, loops),
        "settings": {
            "mode": gate.mode,
            "baseline": gate.baseline_path,
            "baseline_tolerance": gate.tolerance,
            "defaults": {name: to_data(value) for name, value in defaults.items()},
            "measure": measure_choice(config),
        },
        "exitstatus": int(exitstatus) if exitstatus is not None else None,
        "outcomes": _outcome_counts(config),
        "totals": totals(tests),
        "baseline": comparison,
        "plugin_errors": [{"where": where, "traceback": text} for where, text in errors],
        "tests": tests,
    }


def _write_json(path: str, document: Mapping[str, Any]) -> None:
    """Write atomically: a reader never sees half a report."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".asyncbudget-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            if len(document.get("tests", ())) <= _INDENTED_UP_TO:
                file.write(json.dumps(document, indent=2, allow_nan=False))
            else:  # json's C encoder only runs without indent, and in one go (dumps, not dump)
                file.write(json.dumps(document, allow_nan=False, separators=(",", ":")))
            file.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class Results:
    """Collects every test's entry once, on the process that prints and writes them.

    Created by the manager at ``pytest_configure``. ``test_finished`` runs in the
    process that ran the test (an xdist worker or the only process), ``collect`` in the
    one that receives its reports (the xdist controller or the only process).
    """

    def __init__(self, config: pytest.Config, gate: Gate, errors: PluginErrors) -> None:
        self.config = config
        self.gate = gate
        self.errors = errors
        self.is_worker = hasattr(config, "workerinput")
        path = config.getoption("asyncbudget_report", None)
        self.report_path: str | None = None
        if path and not self.is_worker:
            self.report_path = check_report_path(path)
        #: True when some process will use the entries (the report is on, in any process).
        self.report_on = bool(path)
        self.junit = bool(getattr(config.option, "xmlpath", None))
        self.write_error: str | None = None
        self.written: str | None = None
        #: Test id -> its entry, packed (see :func:`pack`): made when the test ends (here
        #: or on an xdist worker). Packed, not the record or the entry's dicts: the garbage
        #: collector stops walking such tuples, and a session of thousands of tests would
        #: otherwise slow every collection down (about 0.3 ms per test over 1,000 trivial
        #: tests).
        self._entries: dict[str, tuple[Any, ...]] = {}
        #: Budget data converted once per budget object (see :class:`BudgetTexts`).
        self._texts = BudgetTexts()
        self._remote_errors: list[tuple[str, str]] = []
        self._sent_errors = 0
        self._tests: list[dict[str, Any]] | None = None

    # -- where the test ran ------------------------------------------------------------
    def test_finished(self, item: pytest.Item, report: pytest.TestReport, record: TestRecord) -> None:
        """At the teardown report: keep the entry; add JUnit properties; ship it from a worker."""
        self._tests = None
        try:
            entry = test_entry(record, self.gate, self.report_on, self._texts)
            if not self.is_worker:
                self._entries[record.nodeid] = pack(entry, self._texts)
            if self.junit:
                props = junit_properties(entry)
                item.user_properties.extend(props)
                report.user_properties.extend(props)
            if self.is_worker:
                payload: dict[str, Any] = {"test": entry}
                new_errors = self.errors.reported[self._sent_errors :]
                if new_errors:
                    payload["errors"] = [list(e) for e in new_errors]
                    self._sent_errors += len(new_errors)
                setattr(report, _REPORT_ATTR, json.dumps(payload, allow_nan=False))
        except Exception:  # noqa: BLE001 - reported once; the test's result is untouched
            self.errors.record("report entry", traceback.format_exc())

    # -- where the reports arrive ------------------------------------------------------
    def collect(self, report: pytest.TestReport) -> None:
        """On the xdist controller: take the entry a worker attached to a teardown report."""
        if self.is_worker:
            return
        payload = getattr(report, _REPORT_ATTR, None)
        if not isinstance(payload, str):
            return
        try:
            data = json.loads(payload)
            entry = data["test"]
            self._entries[entry["id"]] = pack(entry)
            for where, text in data.get("errors", ()):
                self.errors.record(f"{where} (on a worker)", text)
            self._tests = None
        except Exception:  # noqa: BLE001
            self.errors.record("report entry from a worker", traceback.format_exc())

    def tests(self) -> list[dict[str, Any]]:
        """Every test's entry, each exactly once (keyed by test id)."""
        if self._tests is None:
            entries = self._entries
            self._tests = [unpack(entries[nodeid]) for nodeid in sorted(entries)]  # the same order with xdist
        return self._tests

    def write(self, exitstatus: int | None, defaults: Mapping[str, Any], errors: Iterable[tuple[str, str]]) -> None:
        """Write the report (controller or single process only); problems are shown, not raised."""
        if self.report_path is None:
            return
        try:
            document = build_report(self.config, self.gate, self.tests(), errors, exitstatus, defaults)
            _write_json(self.report_path, document)
            self.written = self.report_path
        except OSError as exc:
            self.write_error = f"could not write {self.report_path}: {exc.strerror or exc}"
        except Exception:  # noqa: BLE001
            self.write_error = f"could not write {self.report_path}: plugin error, see below"
            self.errors.record("report", traceback.format_exc())
