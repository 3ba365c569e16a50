"""Per-test state, kept in ``item.stash``, and the record each test leaves for the summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from .budgets import Plan
from .budgets.base import Verdict
from .probes.base import Probe

__all__ = ["PLAN", "STATE", "TestRecord", "TestState"]


@dataclass
class TestRecord:
    """Everything measured and judged for one test, kept for the summary and report."""

    nodeid: str
    #: The loop the test ran on ("asyncio", "uvloop", ...), None if no loop ran.
    loop: str | None
    #: Budget name -> the budget that applied (None: measured only).
    budgets: dict[str, Any]
    #: Every phase's verdict, in phase order.
    verdicts: list[Verdict] = field(default_factory=list)
    #: Budget name -> phase -> measurement.
    measurements: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Budgets that could not be measured because the plugin failed.
    not_measured: list[str] = field(default_factory=list)
    outcome: str = "passed"

    def failed_verdicts(self, phase: str | None = None) -> list[Verdict]:
        return [v for v in self.verdicts if not v.passed and (phase is None or v.phase == phase)]


@dataclass
class TestState:
    """Live state of one running test."""

    plan: Plan
    probes: list[Probe]
    record: TestRecord


PLAN = pytest.StashKey[Plan]()
STATE = pytest.StashKey[TestState]()
