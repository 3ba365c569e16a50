"""Nothing of the plugin stays in place after a test: no patch, no task, no visible thread.

These suites check the runtime's state from *inside* the user's tests and hooks, after
async tests that passed, failed, errored in a fixture, or were interrupted.
"""

from __future__ import annotations

import json

import pytest

_CHECKS = """
import asyncio, gc, json, sys, threading

REAL_SET_ASYNCGEN_HOOKS = sys.set_asyncgen_hooks
REAL_GATHER = asyncio.gather
BASE_THREADS = {t.ident for t in threading.enumerate()}
SEEN_LOOPS = []

def leftovers():
    found = []
    if sys.set_asyncgen_hooks is not REAL_SET_ASYNCGEN_HOOKS:
        found.append("sys.set_asyncgen_hooks still patched")
    if asyncio.gather is not REAL_GATHER or asyncio.tasks.gather is not REAL_GATHER:
        found.append("asyncio.gather still wrapped")
    for loop in SEEN_LOOPS:
        selector = getattr(loop, "_selector", None)
        if selector is not None and "select" in vars(selector):
            found.append("selector.select still wrapped")
    for obj in gc.get_objects():
        if type(obj).__name__ == "_HeartbeatTicks" and obj._handle is not None:
            found.append("heartbeat still scheduled")
    from pytest_asyncbudget import patches
    if patches.installed():
        found.append(f"blocking-call patches still installed: {patches.installed()[:3]}")
    ours = [cb for cb in gc.callbacks if getattr(cb, "__module__", "").startswith("pytest_asyncbudget")]
    if ours:
        found.append(f"gc.callbacks still hooked: {ours}")
    extra = {t.name for t in threading.enumerate() if t.ident not in BASE_THREADS}
    extra = {name for name in extra if not name.startswith(("asyncio_", "ThreadPoolExecutor"))}
    if extra:
        found.append(f"new visible threads: {sorted(extra)}")
    return found
"""


def test_nothing_left_after_passing_failing_and_erroring_tests(suite):
    suite.conftest(_CHECKS)
    suite.write(
        source="""
        import asyncio, time, pytest, pytest_asyncio
        from conftest import SEEN_LOOPS, leftovers

        pytestmark = [pytest.mark.max_loop_lag("50ms"), pytest.mark.no_blocking, pytest.mark.no_leaked_tasks]

        @pytest_asyncio.fixture
        async def broken():
            SEEN_LOOPS.append(asyncio.get_running_loop())
            raise RuntimeError("fixture broke")
            yield

        @pytest.mark.asyncio
        async def test_passes():
            SEEN_LOOPS.append(asyncio.get_running_loop())
            await asyncio.sleep(0.01)

        @pytest.mark.asyncio
        async def test_breaks_budget():
            SEEN_LOOPS.append(asyncio.get_running_loop())
            time.sleep(0.1)

        @pytest.mark.asyncio
        async def test_raises():
            SEEN_LOOPS.append(asyncio.get_running_loop())
            raise ValueError("boom")

        @pytest.mark.asyncio
        async def test_fixture_error(broken):
            pass

        @pytest.mark.asyncio(loop_scope="module")
        async def test_module_scoped_loop():
            SEEN_LOOPS.append(asyncio.get_running_loop())
            time.sleep(0.1)

        def test_zz_nothing_left():
            assert SEEN_LOOPS
            assert leftovers() == []
        """
    )
    result = suite.run("-v")
    result.assert_outcomes(passed=2, failed=3, errors=1)
    result.stdout.fnmatch_lines(["*test_zz_nothing_left PASSED*"])


def test_nothing_left_after_keyboard_interrupt(suite):
    suite.conftest(
        _CHECKS
        + """
def pytest_unconfigure(config):
    with open("leftovers.json", "w") as f:
        json.dump(leftovers(), f)
"""
    )
    suite.write(
        source="""
        import asyncio, pytest
        from conftest import SEEN_LOOPS

        @pytest.mark.asyncio
        @pytest.mark.max_loop_lag("50ms")
        @pytest.mark.no_blocking
        @pytest.mark.no_leaked_tasks
        async def test_interrupted():
            SEEN_LOOPS.append(asyncio.get_running_loop())
            await asyncio.sleep(0)
            raise KeyboardInterrupt
        """
    )
    result = suite.run()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    leftovers = json.loads((suite.pytester.path / "leftovers.json").read_text())
    assert leftovers == []


def test_sync_tests_are_untouched(pytester):
    pytester.makepyfile(
        """
        import sys, pytest

        REAL = sys.set_asyncgen_hooks

        @pytest.mark.max_loop_lag("1ms")
        def test_sync_with_marker():
            assert sys.set_asyncgen_hooks is REAL
            import time; time.sleep(0.05)
        """
    )
    pytester.runpytest_subprocess("--asyncbudget-max-loop-lag=1ms").assert_outcomes(passed=1)


def test_probe_error_never_flips_a_result(suite):
    """A plugin bug is reported once and the test keeps its own outcome."""
    suite.conftest(
        """
        import pytest
        from pytest_asyncbudget.probes import lag

        @pytest.fixture(autouse=True, scope="session")
        def break_the_lag_probe():
            def explode(self, loop):
                raise RuntimeError("simulated probe bug")
            original = lag.LagProbe.loop_started
            lag.LagProbe.loop_started = explode
            yield
            lag.LagProbe.loop_started = original
        """
    )
    suite.write(
        source="""
        import time, pytest

        @pytest.mark.asyncio
        @pytest.mark.max_loop_lag("50ms")
        async def test_one():
            time.sleep(0.1)

        @pytest.mark.asyncio
        @pytest.mark.max_loop_lag("50ms")
        async def test_two():
            assert False, "the test's own failure"
        """
    )
    result = suite.run()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*the test's own failure*",
            "*pytest-asyncbudget internal error in LagProbe.loop_started*",
            "*RuntimeError: simulated probe bug*",
        ]
    )
    assert result.stdout.str().count("RuntimeError: simulated probe bug") == 1


def test_judge_error_never_flips_a_result(suite, tmp_path):
    """A budget module's judge that raises is reported once under its own name; the
    test keeps its outcome and the budget is "not measured", not passed or failed."""
    report = tmp_path / "report.json"
    suite.conftest(
        """
        import pytest
        from pytest_asyncbudget.budgets import lag

        @pytest.fixture(autouse=True, scope="session")
        def break_the_lag_judge():
            def explode(budget, measurement):
                raise RuntimeError("simulated judge bug")
            original = lag.judge
            lag.judge = explode
            yield
            lag.judge = original
        """
    )
    suite.write(
        source="""
        import time, pytest

        @pytest.mark.asyncio
        @pytest.mark.max_loop_lag("50ms")
        async def test_blocks():
            time.sleep(0.1)

        @pytest.mark.asyncio
        @pytest.mark.max_loop_lag("50ms")
        async def test_clean():
            pass
        """
    )
    result = suite.run(f"--asyncbudget-report={report}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*pytest-asyncbudget internal error in pytest_asyncbudget.budgets.lag.judge*",
            "*RuntimeError: simulated judge bug*",
        ]
    )
    assert result.stdout.str().count("RuntimeError: simulated judge bug") == 1
    tests = json.loads(report.read_text())["tests"]
    assert {t["budgets"]["max_loop_lag"]["verdict"] for t in tests} == {"not_measured"}


@pytest.mark.skipif(not isinstance(__import__("threading").Lock, type), reason="threading.Lock is a type from 3.13 on")
def test_isinstance_of_a_lock_still_works_while_patched(suite):
    suite.write(
        source="""
        import threading, pytest

        @pytest.mark.asyncio
        @pytest.mark.no_blocking
        async def test_lock_type():
            lock = threading.Lock()
            assert isinstance(lock, threading.Lock)
            assert isinstance(threading.Lock(), threading.Lock)
            assert not isinstance(object(), threading.Lock)
            with lock:
                pass
        """
    )
    suite.run().assert_outcomes(passed=1)


def test_finished_tests_leave_no_records_for_the_garbage_collector(suite, tmp_path):
    """What the summary and report need of a finished test is kept as tuples of plain
    values, not as records: thousands of records would slow every garbage collection
    down, and such tuples are not even tracked by the collector."""
    report = tmp_path / "report.json"
    suite.conftest(
        """
        import gc, pytest
        from pytest_asyncbudget import budgets, record
        from pytest_asyncbudget.budgets.base import Verdict

        @pytest.hookimpl(trylast=True)
        def pytest_sessionfinish(session):
            for _ in range(3):  # a tuple is untracked once the tuples in it are: one level a pass
                gc.collect()
            kinds = (record.TestRecord, record.TestState, Verdict)
            alive = sum(isinstance(o, kinds) for o in gc.get_objects())
            manager = session.config.pluginmanager.get_plugin("asyncbudget-manager")
            entries = manager.results._entries
            tracked = sum(gc.is_tracked(d) for ds in manager.digests.values() for d in ds)
            tracked += sum(gc.is_tracked(e) for e in entries.values())
            print(f"\\nALIVE {alive} ENTRIES {len(entries)} TUPLES {all(type(e) is tuple for e in entries.values())} "
                  f"DIGESTS {sum(map(len, manager.digests.values()))} TRACKED {tracked}")
        """
    )
    suite.write(
        source="""
        import asyncio, pytest

        @pytest.mark.asyncio
        @pytest.mark.parametrize("i", range(20))
        async def test_many(i):
            await asyncio.sleep(0)
        """
    )
    result = suite.run("-s", "--asyncbudget-max-loop-lag=10s", "--asyncbudget-no-blocking", f"--asyncbudget-report={report}")
    result.assert_outcomes(passed=20)
    result.stdout.fnmatch_lines(["ALIVE 0 ENTRIES 20 TUPLES True DIGESTS 40 TRACKED 0"])
    data = json.loads(report.read_text())
    assert len(data["tests"]) == 20
    assert all(t["budgets"]["max_loop_lag"]["verdict"] == "passed" for t in data["tests"])


def test_a_mock_selector_survives_the_lag_probe(pytester):
    """A test loop whose selector is a ``unittest.mock.Mock`` (aiostream's time-travel loop).

    The lag probe wraps ``selector.select`` for each run of the loop. Deleting the wrapper
    does not undo it on a mock, which remembers the deletion and raises AttributeError
    from then on: the loop's next run (pytest-asyncio's runner closing it, in teardown)
    would fail. Found by running aiostream's own suite under the plugin.
    """
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = auto
        asyncio_default_fixture_loop_scope = function
        """
    )
    pytester.makeconftest(
        """
        import asyncio
        from unittest.mock import Mock

        class MockSelectorLoop(asyncio.BaseEventLoop):
            def __init__(self):
                super().__init__()
                self._selector = Mock()
                self._selector.select.return_value = []
                self.original_select = self._selector.select

            def _process_events(self, event_list):
                pass

            def _write_to_self(self):
                pass

        def pytest_asyncio_loop_factories(config, item):
            return {"mock": MockSelectorLoop}
        """
    )
    pytester.makepyfile(
        """
        import asyncio

        async def test_first():
            await asyncio.sleep(0)
            loop = asyncio.get_running_loop()
            assert callable(loop._selector.select)

        async def test_second():
            await asyncio.sleep(0.01)
            loop = asyncio.get_running_loop()
            assert loop.original_select.call_count >= 1
        """
    )
    result = pytester.runpytest(
        "-p", "no:randomly", "--asyncbudget-max-loop-lag=5s", "--asyncbudget-no-leaked-tasks", "--asyncbudget-no-blocking"
    )
    result.assert_outcomes(passed=2)
    result.stdout.no_fnmatch_line("*internal error*")
    result.stdout.fnmatch_lines(["*2 tests measured on *"])


def test_a_tool_that_guards_os_path_on_the_loop_does_not_break_the_probes(suite):
    """blockbuster (used by anyio's and the MCP SDK's suites) makes ``os.path.abspath``
    raise when it is called while a loop runs. The leak probe's task factory names the
    file that created a task, on the loop thread; through ``os.path.abspath`` that raised,
    the budget became "not measured" and a real leak went unreported. Found on the MCP
    SDK's suite. The stand-in here guards ``os.path.abspath``, ``os.path.realpath`` and
    ``os.getcwd`` the same way."""
    suite.ini(extra="asyncbudget_no_leaked_tasks = true\nasyncbudget_no_blocking = true\n")
    suite.conftest(
        """
        import asyncio, os, pytest

        class BlockingError(Exception):
            pass

        def guarded(name, function):
            def wrapper(*args, **kwargs):
                try:
                    asyncio.get_running_loop()
                except RuntimeError:
                    return function(*args, **kwargs)
                raise BlockingError(f"Blocking call to {name}")
            return wrapper

        @pytest.fixture(autouse=True)
        def guard_os_path(monkeypatch):
            for owner, name in ((os.path, "abspath"), (os.path, "realpath"), (os, "getcwd")):
                monkeypatch.setattr(owner, name, guarded(name, getattr(owner, name)))
        """
    )
    suite.write(
        "helpers",
        """
        import asyncio, time

        async def worker():
            await asyncio.sleep(10)

        def spawn():
            return asyncio.get_running_loop().create_task(worker())

        def nap():
            time.sleep(0.01)
        """,
    )
    suite.write(
        source="""
        import asyncio, contextlib, pytest

        @pytest.mark.asyncio
        async def test_leaks_through_a_helper():
            import helpers  # first imported here, on the loop: its file is new to the plugin

            helpers.spawn()

        @pytest.mark.asyncio
        async def test_blocks_in_a_helper():
            import helpers

            helpers.nap()

        @pytest.mark.asyncio
        async def test_awaits_its_task():
            import helpers

            task = helpers.spawn()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        """
    )
    result = suite.run()
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_leaks_through_a_helper _*",
            "no_leaked_tasks failed: 1 task leaked",
            "  task 'Task-*' running worker() was still pending after the test",
            "    culprit: helpers.py:7 in spawn",
            "*_ test_blocks_in_a_helper _*",
            "no_blocking failed: *",
            "    culprit: helpers.py:10 in nap (in time.sleep)",
        ]
    )
    assert "internal error" not in result.stdout.str()
