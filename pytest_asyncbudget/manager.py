"""The session object: decides what to measure per test and runs the probes per phase.

One :class:`Manager` is registered per session from ``pytest_configure``; its methods are
the pytest hooks. Per-test state lives in ``item.stash``. Measuring is done by probes
(:mod:`.probes`), judging by budget modules (:mod:`.budgets`), and wording by
:mod:`.present`.
"""

from __future__ import annotations

import traceback
from collections.abc import Generator
from typing import Any

import pytest

from . import budgets, culprit, gating
from .budgets.base import Verdict
from .core import LoopCore
from .errors import PluginErrors
from .loops import runs_on_anyio
from .present import report as results_report
from .present import terminal
from .probes.base import ProbeContext
from .record import PLAN, STATE, TestRecord, TestState
from .sampler import StackSampler

__all__ = ["Manager", "is_async_item"]

PHASES = ("setup", "call", "teardown")


def is_async_item(item: pytest.Item) -> bool:
    """True for tests that run on an event loop: pytest-asyncio's and anyio's."""
    try:
        from pytest_asyncio import is_async_test
    except ImportError:  # pragma: no cover - pytest-asyncio is a dependency
        is_async_test = None
    if is_async_test is not None and is_async_test(item):
        return True
    return runs_on_anyio(getattr(item, "obj", None), getattr(item, "fixturenames", ()))


def other_backend(item: pytest.Item) -> str | None:
    """The anyio backend of *item* when it is known and is not asyncio (e.g. "trio")."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or "anyio_backend" not in callspec.params:
        return None
    backend = callspec.params["anyio_backend"]
    name = backend[0] if isinstance(backend, tuple) else backend
    return None if name == "asyncio" else str(name)


class Manager:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.errors = PluginErrors()
        self.core = LoopCore(self.errors)
        self.sampler = StackSampler()
        self.defaults = budgets.defaults(config)
        #: Budget name -> its module's summary digest of each finished test (see
        #: budgets.base); records themselves are not kept past their test.
        self.digests: dict[str, list[Any]] = {}
        #: anyio backends other than asyncio -> how many collected tests run on them.
        self.other_backends: dict[str, int] = {}
        # Summary, report and CI gating (issue 7): options checked now, at startup.
        self.gate = gating.Gate.from_config(config)
        self.summary_size = terminal.summary_size(config)
        self.results = results_report.Results(config, self.gate, self.errors)
        self.measure_all = budgets.measure_all(
            config, anything_on=any(value is not None for value in self.defaults.values()) or self.results.report_on
        )
        #: Whether anything reads a finished test's entry and digests: the summary, the
        #: report, JUnit properties, or the xdist controller. With the summary hidden and
        #: none of the others, building them at every test would be wasted.
        self.keep_entries = bool(
            self.summary_size or self.results.report_on or self.results.junit or self.results.is_worker
        )

    # -- collection: decide and validate every test's budgets before anything runs ----
    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        defaults, measure_all = self.defaults, self.measure_all
        planned = False
        for item in items:
            is_async = is_async_item(item)
            if is_async and (backend := other_backend(item)) is not None:
                # No asyncio event loop there: only budgets that need none apply.
                self.other_backends[backend] = self.other_backends.get(backend, 0) + 1
                is_async = False
            plan = budgets.plan_for(item, defaults, is_async=is_async, measure_all=measure_all)
            if plan is not None:
                item.stash[PLAN] = plan
                planned = True
        if planned:
            culprit.prepare()  # reads files: now, not on the loop thread in the first test

    # -- running: one wrapper per phase ----------------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
        try:
            return (yield)
        finally:
            state = item.stash.get(STATE, None)
            if state is not None:
                for probe in state.probes:  # safety net: nothing stays in place after a test
                    self.errors.guard(probe, "test_finished")
                # The record (in self.records) is all that outlives the test: the probes
                # would otherwise stay alive with the item until the session ends, and
                # every garbage collection would walk them.
                del item.stash[STATE]
            # The sampler's watchdog keeps cycling between tests that measure lag, and
            # is parked otherwise (and always after an interrupted test).
            plan = nextitem.stash.get(PLAN, None) if nextitem is not None else None
            if plan is None or "max_loop_lag" not in plan.budgets or not plan.is_async:
                self.sampler.park()
            else:
                self.sampler.release()

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, Any, Any]:
        plan = item.stash.get(PLAN, None)
        if plan is None:
            return (yield)
        self.errors.failed_budgets.clear()
        context = ProbeContext(item=item, config=self.config, sampler=self.sampler)
        probes = []
        for name, budget in plan.budgets.items():
            probe = self.errors.guard(budgets.BY_NAME[name], "make_probe", budget, context)
            if probe is not None:
                probes.append(probe)
        record = TestRecord(nodeid=item.nodeid, loop=None, budgets=dict(plan.budgets))
        item.stash[STATE] = TestState(plan=plan, probes=probes, record=record)
        return (yield from self._phase(item, "setup"))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        return (yield from self._phase(item, "call"))

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, Any, Any]:
        return (yield from self._phase(item, "teardown"))

    def _phase(self, item: pytest.Item, phase: str) -> Generator[None, Any, Any]:
        state = item.stash.get(STATE, None)
        if state is None:
            return (yield)
        self.core.begin_phase(state.probes, phase)
        try:
            return (yield)
        finally:
            self.core.end_phase(phase)
            self._judge(state, phase)

    def _judge(self, state: TestState, phase: str) -> None:
        record = state.record
        if record.loop is None and self.core.phase_loops:
            record.loop = self.core.phase_loops[0]
        failed_budgets, planned = self.errors.failed_budgets, state.plan.budgets
        for probe in state.probes:  # errors.guard, inlined: this runs at every phase
            name = probe.budget
            if name in failed_budgets:
                if name not in record.not_measured:
                    record.not_measured.append(name)
                continue
            try:
                measurement = probe.measurement(phase)
            except Exception:  # noqa: BLE001 - reported once; the budget is skipped
                self.errors.failed(probe, "measurement")
                continue
            if measurement is None:
                continue
            record.measurements.setdefault(name, {})[phase] = measurement
            module = budgets.BY_NAME[name]
            try:
                verdict: Verdict = module.judge(planned[name], measurement)
            except Exception:  # noqa: BLE001 - the budget is "not measured" for this test
                self.errors.failed(probe, "judge", where=f"{module.__name__}.judge")
                if name not in record.not_measured:
                    record.not_measured.append(name)
                continue
            record.verdicts.append(verdict)

    # -- reporting: fail the phase a budget broke in ----------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
        report: pytest.TestReport = yield
        state = item.stash.get(STATE, None)
        if state is None:
            return report
        record = state.record
        failing = record.failed_verdicts(report.when)
        if failing:
            text, note = self.gate.decide(record.nodeid, failing)  # observe mode / baseline
            if text and report.passed and not hasattr(report, "wasxfail"):
                report.outcome = "failed"
                report.longrepr = text
                if report.when == "teardown" and any(
                    getattr(budgets.module_for(v.budget), "TEARDOWN_FAILS_TEST", False) for v in failing
                ):
                    report.asyncbudget_failed_test = True  # type: ignore[attr-defined]  # see pytest_report_teststatus
            elif text:
                report.sections.append(("asyncbudget", text))
            if note:
                report.sections.append(("asyncbudget", note))
        if report.failed and record.outcome == "passed":
            record.outcome = "failed" if report.when == "call" or getattr(report, "asyncbudget_failed_test", False) else "error"
        elif report.skipped and report.when != "teardown":
            record.outcome = "skipped"
        if report.when == "teardown" and self.keep_entries:
            self._keep_digests(record)
            self.results.test_finished(item, report, record)  # the entry; JUnit properties, xdist
        return report

    def _keep_digests(self, record: TestRecord) -> None:
        for module in budgets.MODULES:
            digest_of = getattr(module, "summary_digest", None)
            if digest_of is None:
                continue
            try:
                digest = digest_of(record)
            except Exception:  # noqa: BLE001 - shown with the other plugin errors
                self.errors.record(f"{module.NAME}.summary_digest", traceback.format_exc())
                continue
            if digest is not None:
                self.digests.setdefault(module.NAME, []).append(digest)

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report: pytest.TestReport) -> tuple[str, str, str] | None:
        """A budget checked at teardown (no_leaked_tasks) fails the test, not its teardown.

        The flag is a plain report attribute, so it survives pytest-xdist's transfer.
        """
        if getattr(report, "asyncbudget_failed_test", False):
            return "failed", "F", "FAILED"
        return None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "teardown":
            self.results.collect(report)  # entries sent by xdist workers
            if getattr(report, "asyncbudget_failed_test", False):
                self._uncount_passed_call(report.nodeid)

    def _uncount_passed_call(self, nodeid: str) -> None:
        """A test failed by a budget checked at teardown counts once, as failed.

        Its call report was already counted as passed (pytest reports each phase as it
        ends); take that one out of the terminal's tally so "N passed, M failed" adds up.
        """
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        passed = getattr(reporter, "stats", {}).get("passed")
        if passed:
            for i, earlier in enumerate(passed):
                if getattr(earlier, "nodeid", None) == nodeid and getattr(earlier, "when", None) == "call":
                    del passed[i]
                    break

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        errors = list(self.errors.reported)
        if self.sampler.error:
            errors.append(("stack sampler", self.sampler.error))
        self.results.write(exitstatus, self.defaults, errors)

    # -- end of session ---------------------------------------------------------------
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        from .present.terminal import write_summary

        write_summary(terminalreporter, self)
