"""CI gating: whether a broken budget fails its test.

Two things decide it, both fixed for the whole session at startup:

* the **mode**: ``enforce`` (the default) fails a test that breaks a budget, like any
  other failure; ``observe`` measures, summarises and reports, but never fails a test
  for a budget. Observe is how a team adopts the plugin on a large suite: run it in CI,
  read the summary and the report, then switch to enforce.
* the **baseline**: an earlier ``--asyncbudget-report`` file. A violation that is already
  in it (same test id, same budget) passes with a note as long as it has not grown past
  the tolerance; a new violation, or one that grew, fails. Every comparison is
  ``(test id, budget)``, with the worst value over the test's phases.

The :class:`Gate` is built once from the options (on every xdist worker too, from the
same command line), so each process reaches the same decision for the same test. It
holds no per-test state: a test's classification is a pure function of its verdicts,
the baseline and the tolerance, and so the report and the summary can recompute it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from .budgets.base import Verdict
from .present.failure import failure_text

__all__ = [
    "BASELINE_STATUSES",
    "DEFAULT_TOLERANCE",
    "MODES",
    "Gate",
    "add_options",
    "load_baseline",
    "parse_tolerance",
]

MODES = ("enforce", "observe")
#: Tolerance when ``--asyncbudget-baseline-tolerance`` is not given.
DEFAULT_TOLERANCE = "20%"
#: How a budget of one test compares with the baseline, in the order the summary lists them.
BASELINE_STATUSES = ("new", "grown", "unchanged", "fixed")
#: Report schemas a baseline may use (the major version must match).
_SCHEMA_PREFIX = "asyncbudget-report/1"


def add_options(group: pytest.OptionGroup, parser: pytest.Parser) -> None:
    group.addoption(
        "--asyncbudget-mode",
        dest="asyncbudget_mode",
        choices=MODES,
        default=None,
        help="enforce (default): budget violations fail their tests; "
        "observe: measure, summarise and report, but never fail a test for a budget",
    )
    parser.addini("asyncbudget_mode", "enforce (default) or observe; see --asyncbudget-mode", default="")
    group.addoption(
        "--asyncbudget-baseline",
        dest="asyncbudget_baseline",
        metavar="PATH",
        default=None,
        help="an earlier --asyncbudget-report: violations already in it pass with a note "
        "unless they grew beyond the tolerance; new or grown violations fail",
    )
    group.addoption(
        "--asyncbudget-baseline-tolerance",
        dest="asyncbudget_baseline_tolerance",
        metavar="PERCENT",
        default=None,
        help=f"how much a violation in the baseline may grow and still pass, e.g. 20%% "
        f"(default {DEFAULT_TOLERANCE.replace('%', '%%')})",
    )


_TOLERANCE = re.compile(r"^\s*(?P<number>[+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<percent>%)?\s*$")


def parse_tolerance(value: str) -> float:
    """``"20%"`` -> 0.2; a bare number is a fraction (``"0.2"`` -> 0.2) and must be <= 1.

    Raises :class:`ValueError` with a short message.
    """
    match = _TOLERANCE.match(value)
    if match is None:
        raise ValueError(f"cannot read {value!r} as a tolerance; write a percentage such as '20%'")
    number = float(match["number"])
    if math.isinf(number) or math.isnan(number):
        raise ValueError(f"a tolerance must be finite, got {value!r}")
    if match["percent"]:
        return number / 100
    if number > 1:
        raise ValueError(
            f"a tolerance without '%' is a fraction, so {value!r} would mean {number * 100:g}%; "
            f"write '{number:g}%' or a fraction such as '0.2'"
        )
    return number


def load_baseline(path: str) -> dict[tuple[str, str], float | None]:
    """The violations of an earlier report: ``(test id, budget) -> worst measured value``.

    Raises :class:`ValueError` with a message meant for the user.
    """
    try:
        with open(path, encoding="utf-8") as file:
            document = json.load(file)
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"it is not JSON: {exc}") from None
    schema = document.get("schema") if isinstance(document, dict) else None
    if not isinstance(schema, str) or not schema.startswith(_SCHEMA_PREFIX):
        raise ValueError(
            f"it is not an asyncbudget report (expected \"schema\": \"{_SCHEMA_PREFIX}\", "
            f"found {schema!r}); pass a file written by --asyncbudget-report"
        )
    tests = document.get("tests")
    if not isinstance(tests, list):
        raise ValueError('it has no "tests" list')
    violations: dict[tuple[str, str], float | None] = {}
    for test in tests:
        if not isinstance(test, dict) or not isinstance(test.get("id"), str):
            raise ValueError('a test entry has no "id"')
        for name, entry in (test.get("budgets") or {}).items():
            if isinstance(entry, dict) and entry.get("verdict") == "failed":
                measured = entry.get("measured")
                violations[(test["id"], name)] = float(measured) if isinstance(measured, (int, float)) else None
    return violations


def _describe(value: float | None, budget: str) -> str:
    if value is None:
        return "?"
    from .present.report import describe  # the unit's formatter

    return describe(budget).format(value)


@dataclass
class Gate:
    """The session's gating rules: mode, baseline violations, tolerance."""

    mode: str = "enforce"
    baseline_path: str | None = None
    #: ``(test id, budget) -> worst measured value`` of the baseline's violations.
    baseline: dict[tuple[str, str], float | None] = field(default_factory=dict)
    tolerance: float = 0.2

    @classmethod
    def from_config(cls, config: pytest.Config) -> Gate:
        """Read and check the options; bad values are a :class:`pytest.UsageError` now."""
        mode = config.getoption("asyncbudget_mode", None) or config.getini("asyncbudget_mode").strip() or "enforce"
        if mode not in MODES:
            raise pytest.UsageError(f"asyncbudget_mode = {mode!r}: expected one of {', '.join(MODES)}")
        raw = config.getoption("asyncbudget_baseline_tolerance", None)
        try:
            tolerance = parse_tolerance(raw if raw is not None else DEFAULT_TOLERANCE)
        except ValueError as exc:
            raise pytest.UsageError(f"--asyncbudget-baseline-tolerance={raw}: {exc}") from None
        path = config.getoption("asyncbudget_baseline", None)
        baseline: dict[tuple[str, str], float | None] = {}
        if path:
            try:
                baseline = load_baseline(path)
            except ValueError as exc:
                raise pytest.UsageError(f"--asyncbudget-baseline={path}: {exc}") from None
        return cls(mode=mode, baseline_path=path or None, baseline=baseline, tolerance=tolerance)

    @property
    def observe(self) -> bool:
        return self.mode == "observe"

    # -- one test -------------------------------------------------------------------
    def classify(self, nodeid: str, budget: str, measured: float | None) -> str | None:
        """How a violation compares with the baseline: new, grown, unchanged (None: no baseline)."""
        if self.baseline_path is None:
            return None
        key = (nodeid, budget)
        if key not in self.baseline:
            return "new"
        before = self.baseline[key]
        if before is not None and measured is not None and measured > before * (1 + self.tolerance):
            return "grown"
        return "unchanged"

    def decide(self, nodeid: str, failing: list[Verdict]) -> tuple[str | None, str | None]:
        """For one phase's broken budgets: (failure text to enforce, note for the others)."""
        if not failing:
            return None, None
        if self.observe:
            note = "observe mode (--asyncbudget-mode=observe): not enforced\n\n" + failure_text(failing)
            return None, note
        if self.baseline_path is None:
            return failure_text(failing), None
        enforced: list[tuple[Verdict, str]] = []
        allowed: list[tuple[Verdict, str]] = []
        for verdict in failing:
            status = self.classify(nodeid, verdict.budget, verdict.measured)
            before = self.baseline.get((nodeid, verdict.budget))
            if status == "unchanged":
                allowed.append((verdict, f"in the baseline at {_describe(before, verdict.budget)}; "
                                f"within the {self.tolerance * 100:g}% tolerance"))
            elif status == "grown":
                enforced.append((verdict, f"grown beyond the baseline: was {_describe(before, verdict.budget)}, "
                                 f"tolerance {self.tolerance * 100:g}%"))
            else:
                enforced.append((verdict, f"new: not in the baseline {self.baseline_path}"))
        text = note = None
        if enforced:
            text = failure_text([v for v, _ in enforced]) + "\n\n" + "\n".join(
                f"baseline: {v.budget} {why}" for v, why in enforced
            )
        if allowed:
            note = "allowed by the baseline, not enforced:\n\n" + failure_text([v for v, _ in allowed]) + "\n\n" + "\n".join(
                f"baseline: {v.budget} {why}" for v, why in allowed
            )
        return text, note

    def gate_of(self, nodeid: str, budget: str, measured: float | None) -> str:
        """What happened to a violation: ``enforced``, ``observed`` or ``allowed`` (by the baseline)."""
        if self.observe:
            return "observed"
        if self.classify(nodeid, budget, measured) == "unchanged":
            return "allowed"
        return "enforced"

    # -- the whole session ----------------------------------------------------------
    def compare(self, tests: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """The session's budgets against the baseline, grouped by status (see BASELINE_STATUSES).

        Reads the per-budget ``baseline`` status each test entry of the report carries.
        A baseline violation counts as fixed only when its test ran and that budget was
        measured within its limit; tests that did not run are left out.
        """
        groups: dict[str, list[dict[str, Any]]] = {status: [] for status in BASELINE_STATUSES}
        if self.baseline_path is None:
            return groups
        for test in tests:
            for name, entry in test.get("budgets", {}).items():
                status = entry.get("baseline")
                if status in groups:
                    groups[status].append(
                        {
                            "id": test["id"],
                            "budget": name,
                            "measured": entry.get("measured"),
                            "baseline_measured": self.baseline.get((test["id"], name)),
                        }
                    )
        return groups

    def baseline_status(self, nodeid: str, budget: str, verdict: str, measured: float | None) -> str | None:
        """A budget's baseline status for the report: new/grown/unchanged/fixed, or None."""
        if self.baseline_path is None:
            return None
        if verdict == "failed":
            return self.classify(nodeid, budget, measured)
        if verdict in ("passed", "measured") and (nodeid, budget) in self.baseline:
            return "fixed"
        return None
