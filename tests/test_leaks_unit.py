"""Unit tests of ``no_leaked_tasks``: the marker's parser, the verdict, and the probe driven
directly on a real loop (no pytest run in between), including its clean-up guarantees."""

from __future__ import annotations

import asyncio
import datetime
import gc
import sys
import types
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_asyncbudget.budgets import call_marker, leaks
from pytest_asyncbudget.probes import leaks as probes
from pytest_asyncbudget.probes.base import ProbeContext

try:
    import uvloop

    LOOPS = [asyncio.new_event_loop, uvloop.new_event_loop]
except ImportError:  # pragma: no cover
    LOOPS = [asyncio.new_event_loop]


# -- the marker ---------------------------------------------------------------------------
@given(st.floats(min_value=0, max_value=1e6, allow_nan=False), st.sampled_from(["s", "ms", "us"]))
def test_grace_accepts_any_duration_spelling(number, unit):
    budget = leaks.marker(grace=f"{number!r}{unit}")
    scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6}[unit]
    assert budget.grace == pytest.approx(number * scale)
    assert leaks.marker(grace=datetime.timedelta(seconds=number)).grace == pytest.approx(number, abs=1e-6)


@given(st.floats(min_value=1e-9, max_value=1e6, allow_nan=False))
def test_cancel_timeout_must_be_positive(seconds):
    assert leaks.marker(cancel_timeout=seconds).cancel_timeout == seconds
    with pytest.raises(ValueError, match="cancel_timeout must be more than 0"):
        leaks.marker(cancel_timeout=0)


@given(st.one_of(st.text(min_size=1).filter(str.strip), st.lists(st.text(min_size=1).filter(str.strip), max_size=5)))
def test_ignore_takes_a_pattern_or_a_list(patterns):
    budget = leaks.marker(ignore=patterns)
    assert budget.ignore == ((patterns,) if isinstance(patterns, str) else tuple(patterns))


@given(
    st.one_of(
        st.integers(),
        st.floats(),
        st.text(),
        st.none(),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    ),
    st.sampled_from(["enabled", "grace", "ignore", "cancel_timeout"]),
)
def test_any_bad_value_is_a_usage_error_never_a_crash(value, name):
    kwargs = {name: value}
    try:
        budget = call_marker(leaks, (), kwargs, "test_x.py::test_x")
    except pytest.UsageError as exc:
        assert str(exc).startswith("test_x.py::test_x: @pytest.mark.no_leaked_tasks(")
    else:
        assert budget is None or isinstance(budget, leaks.LeakBudget)


def test_marker_defaults_and_opt_out():
    assert leaks.marker() == leaks.LeakBudget()
    assert leaks.marker(False) is None
    settings = leaks.LeakBudget(grace=0.5).resolve(probes.LeakSettings(cancel_timeout=2, ignore=("x",)))
    assert settings == probes.LeakSettings(grace=0.5, cancel_timeout=2, ignore=("x",))


def test_ignore_matches_task_name_or_coroutine_name():
    settings = probes.LeakSettings(ignore=("metrics-*", "*.keepalive"))
    assert settings.ignores("metrics-flusher", "flush")
    assert settings.ignores("Task-3", "Conn.keepalive")
    assert not settings.ignores("Task-3", "worker")


# -- data helpers -------------------------------------------------------------------------
def test_line_of_matches_f_lineno():
    def where():
        frame = sys._getframe(1)
        return frame.f_lineno, probes._line_of(frame.f_code, frame.f_lasti)

    results = [
        where(),
        (
            where()
        ),
    ]
    for lineno, computed in results:
        assert lineno == computed


# -- the probe, driven directly -----------------------------------------------------------
async def _the_test_body(body):  # stands in for the test function
    return await body()


def _context():
    item = types.SimpleNamespace(obj=_the_test_body, stash={}, _fixtureinfo=None)
    return ProbeContext(item=item, config=None, sampler=None)  # type: ignore[arg-type]


def _run_test(loop_factory, body, settings=probes.LeakSettings(grace=0.05, cancel_timeout=0.3)):
    """One 'test': call phase running *body*, then the check at the end of teardown."""
    loop = loop_factory()
    probe = probes.LeakProbe(settings, _context())
    try:
        probe.phase_started("call")
        try:
            loop.call_soon(probe.loop_started, loop)  # as the core would, once the loop runs
            loop.run_until_complete(_the_test_body(body))
        finally:
            probe.phase_stopped("call")  # the core always ends the phase
        probe.phase_started("teardown")
        probe.phase_stopped("teardown")  # the loop outlives the test: checked here
        return probe.measurement("teardown"), loop
    finally:
        loop.close()


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_probe_finds_a_leak_and_undoes_everything(loop_factory):
    def site():
        return asyncio.create_task(asyncio.sleep(10), name="leak")

    async def body():
        site()
        await asyncio.sleep(0)

    before = (warnings._warn_unawaited_coroutine, list(gc.callbacks), asyncio.runners._cancel_all_tasks)
    m, loop = _run_test(loop_factory, body)
    assert (warnings._warn_unawaited_coroutine, list(gc.callbacks), asyncio.runners._cancel_all_tasks) == before
    assert loop.get_task_factory() is None and loop.get_exception_handler() is None
    assert [t.name for t in m.leaked] == ["leak"]
    leak = m.leaked[0]
    assert leak.owner.describe() == "the test body"
    assert leak.outcome == "cancelled"
    assert leak.created[0][0] == __file__ and leak.created[0][2] == "site"
    verdict = leaks.judge(leaks.LeakBudget(), m)
    assert not verdict.passed
    assert verdict.headline == "no_leaked_tasks failed: 1 task leaked"
    assert verdict.findings[0].culprit.function == "site"


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_probe_passes_clean_code(loop_factory):
    async def body():
        await asyncio.gather(*(asyncio.sleep(0) for _ in range(50)))
        await asyncio.wait([asyncio.create_task(asyncio.sleep(0))])
        asyncio.create_task(asyncio.sleep(0))  # finishes within the grace period

    m, _ = _run_test(loop_factory, body)
    assert m.problems == 0
    verdict = leaks.judge(leaks.LeakBudget(), m)
    assert verdict.passed and verdict.headline.startswith("no_leaked_tasks ok: no task left pending")


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_probe_bounds_the_wait_for_a_task_that_ignores_cancel(loop_factory):
    async def stubborn():
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                pass

    async def body():
        asyncio.create_task(stubborn())
        await asyncio.sleep(0)

    m, loop = _run_test(loop_factory, body)
    assert [t.outcome for t in m.leaked] == ["ignored"]
    assert [f[2] for f in m.leaked[0].stuck_at] == ["sleep", "stubborn"]  # innermost first
    assert not asyncio.all_tasks(loop) or all(t.get_coro().cr_frame is None for t in asyncio.all_tasks(loop))


def test_probe_error_is_reported_and_patches_are_still_undone(monkeypatch):
    loop = asyncio.new_event_loop()
    warn_unawaited = warnings._warn_unawaited_coroutine  # "_py_warnings"'s on 3.14
    probe = probes.LeakProbe(probes.LeakSettings(), _context())
    monkeypatch.setattr(probe, "_check_remaining_loops", lambda: 1 / 0)
    try:
        probe.phase_started("teardown")
        loop.call_soon(probe.loop_started, loop)
        loop.run_until_complete(asyncio.sleep(0))
        with pytest.raises(ZeroDivisionError):
            probe.phase_stopped("teardown")
        assert loop.get_task_factory() is None and loop.get_exception_handler() is None
        assert warnings._warn_unawaited_coroutine is warn_unawaited
        assert asyncio.runners._cancel_all_tasks.__module__ == "asyncio.runners"
        assert probe._gc_event not in gc.callbacks
    finally:
        loop.close()


def test_an_error_inside_the_task_factory_never_breaks_create_task(monkeypatch):
    loop = asyncio.new_event_loop()
    probe = probes.LeakProbe(probes.LeakSettings(), _context())
    monkeypatch.setattr(probes, "_getframe", None)  # any failure inside the recording

    async def body():
        return await asyncio.create_task(asyncio.sleep(0, result=42))

    try:
        probe.phase_started("call")
        loop.call_soon(probe.loop_started, loop)
        assert loop.run_until_complete(body()) == 42
        with pytest.raises(RuntimeError, match="no_leaked_tasks probe failed earlier in this test"):
            probe.phase_stopped("call")
    finally:
        loop.close()


def test_judge_does_not_fail_a_test_that_already_failed():
    m = probes.LeakMeasurement(
        phase="teardown",
        judged=False,
        settings=probes.LeakSettings(),
        leaked=[probes.TaskSnapshot("t", "w()", probes.Owner(probes.TEST), "call", [], None)],
        lost=[],
        unawaited=[],
        foreign_stuck=[],
    )
    verdict = leaks.judge(leaks.LeakBudget(), m)
    assert verdict.passed
    assert verdict.headline == "no_leaked_tasks: not judged, the test did not pass (1 task leaked)"


def test_probe_lets_go_of_its_tables_when_the_test_ends():
    """The manager keeps every test's probes until the session ends: they must be light."""
    loop = asyncio.new_event_loop()
    probe = probes.LeakProbe(probes.LeakSettings(grace=0), _context())

    async def body():
        await asyncio.wait([asyncio.create_task(asyncio.sleep(0)) for _ in range(100)])
        # a large gather is recorded as a whole, and forgotten once it is done
        await asyncio.gather(*(asyncio.sleep(0) for _ in range(100)))

    try:
        probe.phase_started("call")
        loop.call_soon(probe.loop_started, loop)
        loop.run_until_complete(_the_test_body(body))
        probe.phase_stopped("call")
        assert len(probe._origins) == 100 and probe._loops and probe._bursts == {}
        probe.phase_started("teardown")
        probe.phase_stopped("teardown")
        assert probe._origins == {} and not probe._loops and not probe._neutralized_tasks
        assert probe.measurement("teardown").problems == 0
    finally:
        loop.close()


def test_make_probe_resolves_each_budget_once_per_session():
    """Settings are resolved once per budget per session; equal budgets share them, and
    the measure-only probe (no budget) has no grace period and records no sites."""
    session = probes.LeakSettings(grace=0.25, cancel_timeout=2.0, ignore=("bg-*",))
    config = types.SimpleNamespace(stash=pytest.Stash())
    config.stash[leaks._SETTINGS] = session

    def probe(budget):
        item = types.SimpleNamespace(obj=_the_test_body, stash={}, _fixtureinfo=None)
        return leaks.make_probe(budget, ProbeContext(item=item, config=config, sampler=None))  # type: ignore[arg-type]

    default = probe(leaks.LeakBudget())
    assert default.settings == session and default.record_sites
    marked = probe(leaks.marker(grace="10ms", ignore="x*"))
    assert marked.settings == probes.LeakSettings(grace=0.01, cancel_timeout=2.0, ignore=("x*",))
    assert probe(leaks.marker(grace="10ms", ignore="x*")).settings is marked.settings  # an equal marker
    measured = probe(None)
    assert measured.settings == probes.LeakSettings(grace=0.0, cancel_timeout=2.0, ignore=("bg-*",))
    assert not measured.record_sites
    assert probe(leaks.LeakBudget()).settings is default.settings


def _module_patches():
    import asyncio.runners

    return (asyncio.gather, asyncio.tasks.gather, asyncio.runners._cancel_all_tasks, warnings._warn_unawaited_coroutine)


def test_module_wrappers_stay_for_the_test_act_only_in_its_phases_and_go_with_it():
    """gather's, the runners' and the warning's wrappers: one each per test, put in place
    when setup starts and back when teardown ends. Between phases (pytest reporting) they
    let everything through: a coroutine dropped there is not this test's to judge."""
    originals = _module_patches()
    probe = probes.LeakProbe(probes.LeakSettings(grace=0), _context())
    seen = []
    for phase in ("setup", "call", "teardown"):
        probe.phase_started(phase)
        placed = _module_patches()
        assert all(now is not before for now, before in zip(placed, originals))
        seen.append(placed)
        if phase != "teardown":
            probe.phase_stopped(phase)
            assert _module_patches() == placed  # still there between phases...
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _never_awaited()
                gc.collect()
            assert [w.category for w in caught] == [RuntimeWarning]  # ...Python's warning as ever
            assert probe._unawaited == []  # ...but nothing is judged there
    assert seen[0] == seen[1] == seen[2]  # the same objects in every phase
    with pytest.warns(RuntimeWarning, match="never awaited"):
        _never_awaited()  # in a phase: noted, and Python's warning issued as ever
    probe.phase_stopped("teardown")
    assert [u.name for u in probe._unawaited] == ["_coroutine_function"]
    assert _module_patches() == originals
    # let go with the test: the wrappers refer to the probe, so no cycle may outlive it
    assert probe._warn_patch is None and probe._gather_patches == [] and probe._runner_patches == []


def test_test_finished_puts_the_module_wrappers_back_when_teardown_never_came():
    """An interrupted test may never reach its teardown: the manager's safety net
    (test_finished) must still leave nothing in place, and twice is harmless."""
    originals = _module_patches()
    probe = probes.LeakProbe(probes.LeakSettings(grace=0), _context())
    probe.phase_started("setup")
    probe.phase_stopped("setup")
    probe.phase_started("call")
    assert _module_patches() != originals and probe._gc_event in gc.callbacks
    probe.test_finished()
    assert _module_patches() == originals and probe._gc_event not in gc.callbacks
    probe.test_finished()
    assert _module_patches() == originals


async def _coroutine_function():
    pass


def _never_awaited():
    _coroutine_function()  # created and dropped on this line, never awaited


def test_fixture_snapshot_is_shared_by_the_tests_of_one_function():
    """Tests that share their fixture info (one parametrized function) share the fixture
    part of the snapshot; the test function itself is each test's own."""

    async def fixture_function():
        pass

    defs = {"fx": [types.SimpleNamespace(scope="module", func=fixture_function)]}
    info = types.SimpleNamespace(name2fixturedefs=defs)
    config = types.SimpleNamespace(stash=pytest.Stash())

    async def other_test():
        pass

    first = types.SimpleNamespace(obj=_the_test_body, _fixtureinfo=info, config=config)
    second = types.SimpleNamespace(obj=other_test, _fixtureinfo=info, config=config)
    a = probes.LeakProbe._snapshot_functions(first)
    b = probes.LeakProbe._snapshot_functions(second)
    fixture_owner = probes.Owner(probes.FIXTURE, "fx", "module")
    assert a == [(fixture_owner, fixture_function), (probes._TEST_OWNER, _the_test_body)]
    assert b == [(fixture_owner, fixture_function), (probes._TEST_OWNER, other_test)]
    assert a[0][0] is b[0][0]  # made once
    defs["late"] = [types.SimpleNamespace(scope="function", func=other_test)]  # the info grew
    c = probes.LeakProbe._snapshot_functions(first)
    assert (probes.Owner(probes.FIXTURE, "late", "function"), other_test) in c


def test_a_runner_module_imported_during_the_test_is_patched_from_then_on(monkeypatch):
    """anyio's runner module may first be imported by the test's own setup: the phases
    after that put the shutdown seam on it too."""
    runner_module = types.ModuleType("fake_runner_module")

    def cancel_all_tasks(loop):
        pass

    runner_module._cancel_all_tasks = cancel_all_tasks
    backend = types.ModuleType("anyio._backends._asyncio")
    backend.Runner = type("Runner", (), {"__module__": "fake_runner_module"})
    monkeypatch.delitem(sys.modules, "anyio._backends._asyncio", raising=False)
    probe = probes.LeakProbe(probes.LeakSettings(grace=0), _context())
    probe.phase_started("setup")
    assert runner_module._cancel_all_tasks is cancel_all_tasks  # not imported yet
    probe.phase_stopped("setup")
    monkeypatch.setitem(sys.modules, "fake_runner_module", runner_module)  # "imported" now
    monkeypatch.setitem(sys.modules, "anyio._backends._asyncio", backend)
    probe.phase_started("call")
    try:
        assert runner_module._cancel_all_tasks is not cancel_all_tasks
    finally:
        probe.phase_stopped("call")
    probe.phase_started("teardown")
    probe.phase_stopped("teardown")
    assert runner_module._cancel_all_tasks is cancel_all_tasks  # put back with the rest


def test_the_plugin_names_files_without_calls_other_tools_guard():
    """blockbuster makes ``os.path.abspath`` and ``os.getcwd`` raise while a loop runs. The
    leak probe names files on the loop thread (which file a task was made in, and whether
    a task's outermost frame is a runner's), so it must not call them there: on the MCP
    SDK's suite that made the budget "not measured". Relative names are resolved against
    the directory the process started in."""
    import os
    from unittest import mock

    from pytest_asyncbudget import culprit

    culprit.prepare()  # what the manager does at the end of collection, with no loop running
    guarded = mock.Mock(side_effect=AssertionError("a guarded function was called"))
    # Undone before pytest itself needs them again (it calls os.path.abspath too).
    with mock.patch.object(os.path, "abspath", guarded), mock.patch.object(
        os.path, "realpath", guarded
    ), mock.patch.object(os, "getcwd", guarded):
        prefixes = probes._infra_prefixes()
        absolute = culprit.absolute_path("/a/b/../c.py")
        relative = culprit.absolute_path("pkg/mod.py")
        ours = culprit.is_user_file(os.path.join(os.path.dirname(culprit.__file__), "not_cached_yet.py"))
    assert guarded.call_count == 0
    assert any(prefix.rstrip(os.sep).endswith("pytest_asyncio") for prefix in prefixes)
    assert absolute == "/a/c.py"
    assert relative == os.path.join(culprit._START_DIR, "pkg", "mod.py")
    assert ours is False
