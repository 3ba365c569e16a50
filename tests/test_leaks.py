"""End-to-end tests of the ``no_leaked_tasks`` budget, on stock asyncio and on uvloop.

Leaked tasks sleep for 10 s, so nothing finishes by accident within the 100 ms grace
period; timing-dependent cases use margins of 10x or more (the machine is shared).
"""

from __future__ import annotations

import json
import sys
import textwrap
import time

import pytest

ON = "asyncbudget_no_leaked_tasks = true\n"


# -- 1. leaked tasks ------------------------------------------------------------------
def test_leaked_task_of_the_test_body(suite):
    suite.ini(extra=ON)
    suite.write(
        source="""
        import asyncio, pytest

        async def worker():
            await asyncio.sleep(10)

        @pytest.mark.asyncio
        async def test_leak():
            asyncio.create_task(worker(), name="ticker")

        @pytest.mark.asyncio
        async def test_next():
            assert [t for t in asyncio.all_tasks() if t.get_name() == "ticker"] == []
        """
    )
    result = suite.run("-v")
    result.assert_outcomes(failed=1, passed=1)  # each test counts once
    result.stdout.fnmatch_lines(
        [
            "*::test_leak PASSED*",
            "*::test_leak FAILED*",
            "*::test_next PASSED*",
            "*_ test_leak _*",
            "no_leaked_tasks failed: 1 task leaked",
            "  task 'ticker' running worker() was still pending after the test",
            "    culprit: test_suite.py:8 in test_leak",
            "        asyncio.create_task(worker(), name=\"ticker\")",
            "    created by the test body (culprit line)",
            "    suspended at: test_suite.py:4 in worker (awaiting asyncio.sleep)",
            "*FAILED test_suite.py::test_leak - no_leaked_tasks failed: 1 task leaked",
            "*= 1 failed, 1 passed in *",
        ]
    )
    assert "ERROR at teardown" not in result.stdout.str()


def test_leaked_task_of_a_function_scoped_fixture(suite):
    suite.ini(extra=ON)
    suite.write(
        source="""
        import asyncio, pytest, pytest_asyncio

        async def heartbeat():
            while True:
                await asyncio.sleep(10)

        @pytest_asyncio.fixture
        async def monitor():
            task = asyncio.create_task(heartbeat())
            yield task

        @pytest.mark.asyncio
        async def test_uses_monitor(monitor):
            assert not monitor.done()
        """
    )
    result = suite.run()
    result.assert_outcomes(failed=1, passed=0)
    result.stdout.fnmatch_lines(
        [
            "  task 'Task-*' running heartbeat() was still pending after the test",
            "    culprit: test_suite.py:9 in monitor",
            "        task = asyncio.create_task(heartbeat())",
            "    created by fixture 'monitor' (culprit line)",
            "    suspended at: test_suite.py:5 in heartbeat (awaiting asyncio.sleep)",
        ]
    )


def test_tasks_leaked_through_gather_name_the_gather_line(suite):
    # gather() is wrapped for the phase so that it finds its caller's line once for all
    # the tasks it makes; the answer must be the one a per-task look gives: the gather
    # line, in a helper called by the test (with the test's line as its caller), and the
    # same when gather was imported by name (not wrapped: looked at task by task).
    suite.ini(extra=ON)
    suite.write(
        source="""
        import asyncio, pytest
        from asyncio import gather as imported_gather

        async def forever():
            await asyncio.sleep(10)

        def start_many():
            return asyncio.gather(forever(), forever(), forever())

        @pytest.mark.asyncio
        async def test_direct():
            asyncio.gather(*(forever() for _ in range(3)))
            await asyncio.sleep(0)

        @pytest.mark.asyncio
        async def test_in_helper():
            start_many()
            await asyncio.sleep(0)

        @pytest.mark.asyncio
        async def test_imported():
            imported_gather(forever(), forever())
            await asyncio.sleep(0)

        @pytest.mark.asyncio
        async def test_awaited_is_clean():
            assert await asyncio.gather(asyncio.sleep(0, 1), asyncio.sleep(0, 2)) == [1, 2]
        """
    )
    result = suite.run("-p", "no:randomly")
    result.assert_outcomes(failed=3, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_direct _*",
            "no_leaked_tasks failed: 3 tasks leaked",
            "  task 'Task-*' running forever() was still pending after the test",
            "    culprit: test_suite.py:12 in test_direct",
            "        asyncio.gather(*(forever() for _ in range(3)))",
            "*_ test_in_helper _*",
            "no_leaked_tasks failed: 3 tasks leaked",
            "    culprit: test_suite.py:8 in start_many",
            "        return asyncio.gather(forever(), forever(), forever())",
            "    stack (user frames, innermost last):",
            "      test_suite.py:17 in test_in_helper",
            "      test_suite.py:8 in start_many",
            "*_ test_imported _*",
            "no_leaked_tasks failed: 2 tasks leaked",
            "    culprit: test_suite.py:22 in test_imported",
            "        imported_gather(forever(), forever())",
        ]
    )
    assert "internal error" not in result.stdout.str()


def test_large_gathers_are_recorded_as_a_whole_with_the_same_answers(suite):
    # A gather of 8 or more awaitables is recorded once it returns, not task by task;
    # what a test sees must not change: tasks still running after a gather failed fast,
    # a gather never awaited, a task made by one of gather's tasks, a cancelled gather.
    suite.ini(extra=ON)
    suite.write(
        source="""
        import asyncio, pytest

        async def forever():
            await asyncio.sleep(10)

        async def boom():
            raise ValueError("first")

        async def spawner():
            asyncio.create_task(forever(), name="grandchild")
            await asyncio.sleep(0)

        @pytest.mark.asyncio
        async def test_failed_fast():
            with pytest.raises(ValueError):
                await asyncio.gather(boom(), *(forever() for _ in range(8)))

        @pytest.mark.asyncio
        async def test_never_awaited():
            asyncio.gather(*(forever() for _ in range(9)))
            await asyncio.sleep(0)

        @pytest.mark.asyncio
        async def test_grandchild():
            await asyncio.gather(*(spawner() for _ in range(8)))

        @pytest.mark.asyncio
        async def test_raised_half_way():
            with pytest.raises(TypeError):
                asyncio.gather(*(forever() for _ in range(8)), 42)

        @pytest.mark.asyncio
        async def test_mixed_with_a_task():
            early = asyncio.create_task(forever(), name="early")
            asyncio.gather(early, *(forever() for _ in range(8)))
            await asyncio.sleep(0)

        @pytest.mark.asyncio
        async def test_awaited_is_clean():
            assert await asyncio.gather(*(asyncio.sleep(0, i) for i in range(9))) == list(range(9))

        @pytest.mark.asyncio
        async def test_cancelled_is_clean():
            outer = asyncio.gather(*(forever() for _ in range(9)))
            await asyncio.sleep(0)
            outer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await outer
        """
    )
    result = suite.run("-p", "no:randomly")
    result.assert_outcomes(failed=5, passed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_failed_fast _*",
            "no_leaked_tasks failed: 8 tasks leaked",
            "  task 'Task-*' running forever() was still pending after the test",
            "    culprit: test_suite.py:16 in test_failed_fast",
            "        await asyncio.gather(boom(), *(forever() for _ in range(8)))",
            "    created by the test body (culprit line)",
            "*_ test_never_awaited _*",
            "no_leaked_tasks failed: 9 tasks leaked",
            "    culprit: test_suite.py:20 in test_never_awaited",
            "        asyncio.gather(*(forever() for _ in range(9)))",
            "*_ test_grandchild _*",
            "no_leaked_tasks failed: 8 tasks leaked",
            "  task 'grandchild' running forever() was still pending after the test",
            "    culprit: test_suite.py:10 in spawner",
            "        asyncio.create_task(forever(), name=\"grandchild\")",
            "    created by the test body (culprit line)",
            "*_ test_raised_half_way _*",
            "no_leaked_tasks failed: 8 tasks leaked",
            "    culprit: test_suite.py:30 in test_raised_half_way",
            "        asyncio.gather(*(forever() for _ in range(8)), 42)",
            "*_ test_mixed_with_a_task _*",
            "no_leaked_tasks failed: 9 tasks leaked",
        ]
    )
    out = result.stdout.str()
    mixed = out.split("_ test_mixed_with_a_task _", 1)[1].split("short test summary", 1)[0]
    early = mixed.split("task 'early'", 1)[1].split("  task '", 1)[0]
    assert "culprit: test_suite.py:34 in test_mixed_with_a_task" in early
    assert "asyncio.create_task(forever(), name=\"early\")" in early
    assert mixed.count("culprit: test_suite.py:35 in test_mixed_with_a_task") == 8
    assert "internal error" not in out


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.eager_task_factory is 3.12+")
def test_gather_with_an_eager_task_factory_names_each_line(suite):
    # An eager task runs its first step inside gather's create_task: tasks it makes then
    # are its own children (not gather's), and must be named where they were made.
    if suite.loop == "uvloop" and sys.version_info >= (3, 13):
        pytest.skip("uvloop passes eager_start= to the task factory, which 3.13's eager_task_factory rejects")
    suite.ini(extra=ON)
    suite.write(
        source="""
        import asyncio, pytest, pytest_asyncio

        async def forever():
            await asyncio.sleep(10)

        async def spawner():
            asyncio.create_task(forever())
            await asyncio.sleep(10)

        @pytest_asyncio.fixture
        async def eager():
            loop = asyncio.get_running_loop()
            loop.set_task_factory(asyncio.eager_task_factory)
            yield
            loop.set_task_factory(None)

        @pytest.mark.asyncio
        async def test_eager(eager):
            asyncio.gather(spawner(), spawner())
            await asyncio.sleep(0)
        """
    )
    result = suite.run()
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "internal error" not in out
    # Count in the failure section only: the short summary may repeat the whole message.
    failure = out.split("= FAILURES =", 1)[1].split("Captured log teardown", 1)[0]
    assert "no_leaked_tasks failed: 4 tasks leaked" in failure
    assert failure.count("running spawner() was still pending") == 2
    assert failure.count("running forever() was still pending") == 2
    assert failure.count("culprit: test_suite.py:19 in test_eager") == 2
    assert failure.count("culprit: test_suite.py:7 in spawner") == 2


def test_task_spawned_by_a_task_is_the_tests_and_named_where_spawned(suite):
    suite.ini(extra=ON)
    suite.write(
        source="""
        import asyncio, pytest

        async def child():
            await asyncio.sleep(10)

        async def parent():
            asyncio.create_task(child(), name="grandchild")

        async def start(n):
            await asyncio.gather(*(parent() for _ in range(n)))

        @pytest.mark.asyncio
        async def test_spawns():
            await asyncio.create_task(start(1))
        """
    )
    result = suite.run()
    result.assert_outcomes(failed=1, passed=0)
    result.stdout.fnmatch_lines(
        [
            "  task 'grandchild' running child() was still pending after the test",
            "    culprit: test_suite.py:7 in parent",
            "        asyncio.create_task(child(), name=\"grandchild\")",
            "    created by the test body (culprit line)",
        ]
    )


def test_task_created_from_a_callback(suite):
    suite.ini(extra=ON)
    suite.write(
        source="""
        import asyncio, pytest

        async def worker():
            await asyncio.sleep(10)

        def on_event():
            asyncio.ensure_future(worker())

        @pytest.mark.asyncio
        async def test_callback():
            asyncio.get_running_loop().call_soon(on_event)
            await asyncio.sleep(0.01)
        """
    )
    result = suite.run()
    result.assert_outcomes(failed=1, passed=0)
    result.stdout.fnmatch_lines(
        [
            "  task 'Task-*' running worker() was still pending after the test",
            "    culprit: test_suite.py:7 in on_event",
            "    created by a callback during the test body (culprit line)",
        ]
    )


def test_task_created_by_library_code_is_named_by_its_coroutine(suite):
    suite.ini(extra=ON)
    suite.write(
        source="""
        import asyncio, pytest

        async def handle(reader, writer):
            await reader.read(100)

        CLIENTS = []  # the client stays connected: its handler waits for data

        @pytest.mark.asyncio
        async def test_server():
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            CLIENTS.append(await asyncio.open_connection("127.0.0.1", port))
            for _ in range(100):
                await asyncio.sleep(0.01)
                if any(t.get_coro().__qualname__ == "handle" for t in asyncio.all_tasks()):
                    break
        """
    )
    result = suite.run()
    result.assert_outcomes(failed=1, passed=0)
    result.stdout.fnmatch_lines(
        [
            "  task 'Task-*' running handle() was still pending after the test",
            "    culprit: test_suite.py:3 in handle",
            "        async def handle(reader, writer):",
            "    created by a callback during the test body",
            "    created in library code (*streams.py:* in connection_made), no frame of your code on the stack",
            "    culprit: where its coroutine function is defined",
            "    suspended at: test_suite.py:4 in handle*",
        ]
    )


def test_task_destroyed_while_pending_is_a_leak(suite):
    suite.ini(extra=ON)
    suite.write(
        source="""
        import asyncio, gc, pytest

        async def wait_forever():
            await asyncio.Event().wait()

        @pytest.mark.asyncio
        async def test_dropped():
            asyncio.create_task(wait_forever())
            await asyncio.sleep(0)
            gc.collect()
            await asyncio.sleep(0)
        """
    )
    result = suite.run()
    result.assert_outcomes(failed=1, passed=0)
    result.stdout.fnmatch_lines(
        [
            "  task 'Task-*' running wait_forever() was garbage-collected while still pending",
            "    culprit: test_suite.py:8 in test_dropped",
        ]
    )


# -- 2. exceptions never retrieved ----------------------------------------------------
def test_exception_never_retrieved(suite):
    suite.ini(extra=ON)
    suite.write(
        source="""
        import asyncio, pytest, pytest_asyncio

        async def fail(what):
            await asyncio.sleep(0)
            raise ValueError(f"bad {what}")

        @pytest_asyncio.fixture
        async def job():
            task = asyncio.create_task(fail("kept"))
            yield

        @pytest.mark.asyncio
        async def test_fire_and_forget():
            asyncio.create_task(fail("fire"))
            await asyncio.sleep(0.05)

        @pytest.mark.asyncio
        async def test_kept_by_a_fixture_never_awaited(job):
            await asyncio.sleep(0.05)

        @pytest.mark.asyncio
        async def test_awaited_is_fine():
            with pytest.raises(ValueError):
                await asyncio.create_task(fail("awaited"))
        """
    )
    result = suite.run()
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_fire_and_forget _*",
            "no_leaked_tasks failed: 1 exception never retrieved",
            "  task 'Task-*' running fail() raised ValueError: bad fire, and nobody retrieved it",
            "    culprit: test_suite.py:14 in test_fire_and_forget",
            "    created by the test body (culprit line)",
            "    raised at: test_suite.py:5 in fail",
            "*_ test_kept_by_a_fixture_never_awaited _*",
            "  task 'Task-*' running fail() raised ValueError: bad kept, and nobody retrieved it",
            "    culprit: test_suite.py:9 in job",
            "    created by fixture 'job' (culprit line)",
        ]
    )


# -- 3. coroutines never awaited ------------------------------------------------------
def test_coroutine_never_awaited(suite):
    suite.ini(extra=ON)
    suite.write(
        source="""
        import asyncio, pytest, pytest_asyncio

        async def save(x):
            return x

        @pytest_asyncio.fixture
        async def db():
            save("setup")
            yield

        @pytest.mark.asyncio
        async def test_forgot_await():
            save(1)
            await asyncio.sleep(0)

        @pytest.mark.asyncio
        async def test_in_fixture(db):
            pass

        @pytest.mark.asyncio
        async def test_from_call_soon():
            asyncio.get_running_loop().call_soon(save, 2)
            await asyncio.sleep(0.01)
        """
    )
    result = suite.run("-W", "default::RuntimeWarning")
    result.assert_outcomes(failed=3, passed=0)
    result.stdout.fnmatch_lines(
        [
            "*_ test_forgot_await _*",
            "no_leaked_tasks failed: 1 coroutine never awaited",
            "  coroutine 'save' was never awaited",
            "    culprit: test_suite.py:13 in test_forgot_await",
            "        save(1)",
            "    dropped at the culprit line: for a call missing its 'await' this is where it was created",
            "    during the test body",
            "*_ test_in_fixture _*",
            "    culprit: test_suite.py:8 in db",
            "    during fixture 'db'",
            "*_ test_from_call_soon _*",
            "    culprit: test_suite.py:3 in save",
            "    dropped in library code (*), no frame of your code on the stack",
            "    culprit: where the coroutine function is defined",
        ]
    )
    # Python's own warning still points at the user's line, not at the plugin
    result.stdout.fnmatch_lines(["*test_suite.py:13: RuntimeWarning: coroutine 'save' was never awaited"])
    assert "probes/leaks.py" not in result.stdout.str()


# -- 4. tasks that ignore cancellation ------------------------------------------------
def test_task_swallowing_every_cancel_fails_fast_and_the_suite_goes_on(suite):
    suite.ini(extra=ON)
    suite.write(
        source="""
        import asyncio, pytest, time

        async def stubborn():
            while True:
                try:
                    await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    pass

        @pytest.mark.asyncio
        async def test_stubborn():
            asyncio.create_task(stubborn(), name="stubborn")
            await asyncio.sleep(0)

        @pytest.mark.asyncio
        async def test_next_one_runs():
            assert [t for t in asyncio.all_tasks() if t.get_name() == "stubborn"] == []

        def test_sync_after():
            pass
        """
    )
    started = time.monotonic()
    result = suite.run("--durations=0", "-vv")
    elapsed = time.monotonic() - started
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines(
        [
            "no_leaked_tasks failed: 1 task ignored cancel",
            "  task 'stubborn' running stubborn() ignored its cancellation: still running 1 s after cancel()",
            "    culprit: test_suite.py:12 in test_stubborn",
            "    created by the test body (culprit line)",
            "    suspended at: test_suite.py:6 in stubborn (awaiting asyncio.sleep)",
            "    the plugin closed its coroutine so the suite can go on",
        ]
    )
    # 1 s cancel timeout + 0.1 s grace: the teardown of the stubborn test is short
    durations = result.stdout.str()
    teardown = [line for line in durations.splitlines() if "teardown" in line and "test_stubborn" in line]
    assert teardown and float(teardown[0].split("s", 1)[0]) < 5.0, teardown
    assert elapsed < 60, elapsed
    assert "Task was destroyed but it is pending" not in durations
    assert "cannot reuse already awaited coroutine" not in durations


def test_cancel_timeout_option_and_slow_cleanup(suite):
    suite.ini(extra=ON)
    suite.write(
        source="""
        import asyncio, pytest

        async def slow_cleanup():
            try:
                await asyncio.sleep(10)
            finally:
                await asyncio.shield(asyncio.sleep(0.5))

        @pytest.mark.asyncio
        @pytest.mark.no_leaked_tasks(cancel_timeout="100ms")
        async def test_short_timeout():
            asyncio.create_task(slow_cleanup())
            await asyncio.sleep(0)

        @pytest.mark.asyncio
        async def test_default_timeout_is_enough():
            asyncio.create_task(slow_cleanup())
            await asyncio.sleep(0)
        """
    )
    result = suite.run()
    result.assert_outcomes(failed=2, passed=0)
    result.stdout.fnmatch_lines(
        [
            "*_ test_short_timeout _*",
            "  task 'Task-*' running slow_cleanup() ignored its cancellation: still running 100 ms after cancel()",
            "    suspended at: test_suite.py:5 in slow_cleanup (awaiting asyncio.sleep)",
            "    still running at: test_suite.py:7 in slow_cleanup*",
            "*_ test_default_timeout_is_enough _*",
            "no_leaked_tasks failed: 1 task leaked",
            "  task 'Task-*' running slow_cleanup() was still pending after the test",
        ]
    )


def test_leaked_task_that_raises_when_cancelled(suite):
    suite.ini(extra=ON)
    suite.write(
        source="""
        import asyncio, pytest

        async def worker():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                raise RuntimeError("cleanup failed")

        @pytest.mark.asyncio
        async def test_leak():
            asyncio.create_task(worker())
            await asyncio.sleep(0)
        """
    )
    result = suite.run()
    result.assert_outcomes(failed=1, passed=0)
    result.stdout.fnmatch_lines(
        [
            "  task 'Task-*' running worker() was still pending after the test",
            "    when cancelled by the plugin it raised RuntimeError: cleanup failed",
        ]
    )


# -- what is not a leak ---------------------------------------------------------------
CLEAN_SUITE = """
import asyncio, contextlib, sys, pytest, pytest_asyncio

py311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="TaskGroup and asyncio.timeout are 3.11+")

async def quick(x=None):
    await asyncio.sleep(0)
    return x

async def forever():
    await asyncio.sleep(10)

@pytest.mark.asyncio
async def test_fire_and_forget_that_finished():
    asyncio.create_task(quick())
    await asyncio.sleep(0.05)

@pytest.mark.asyncio
async def test_cancelled_and_awaited():
    task = asyncio.create_task(forever())
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

@py311
@pytest.mark.asyncio
async def test_task_group():
    async with asyncio.TaskGroup() as tg:
        for i in range(5):
            tg.create_task(quick(i))

@py311
@pytest.mark.asyncio
async def test_task_group_cancelled_by_error():
    with pytest.raises(ExceptionGroup):
        async with asyncio.TaskGroup() as tg:
            tg.create_task(forever())
            tg.create_task(asyncio.sleep(0, result=1))
            raise ValueError("boom")

@pytest.mark.asyncio
async def test_gather_and_wait_for_and_wait():
    assert await asyncio.gather(*(quick(i) for i in range(10))) == list(range(10))
    assert await asyncio.wait_for(quick(3), timeout=5) == 3
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(forever(), timeout=0.01)
    done, pending = await asyncio.wait([asyncio.create_task(quick())], timeout=5)
    assert not pending

@py311
@pytest.mark.asyncio
async def test_timeout():
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await forever()

@pytest.mark.asyncio
async def test_finishes_within_grace():
    async def a_few_turns_later():
        for _ in range(3):
            await asyncio.sleep(0)
    asyncio.create_task(a_few_turns_later())

@pytest.mark.asyncio
async def test_cancelled_not_awaited_finishes_within_grace():
    task = asyncio.create_task(forever())
    await asyncio.sleep(0)
    task.cancel()

@pytest.mark.asyncio
async def test_awaited_coroutines_and_closed_ones():
    coro = quick()
    coro.close()  # closed on purpose: not "never awaited"
    await quick()

@pytest_asyncio.fixture
async def background():
    task = asyncio.create_task(forever())
    yield task
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

@pytest.mark.asyncio
async def test_fixture_that_cleans_up(background):
    assert not background.done()

def test_sync_test_is_not_measured():
    pass
"""


def test_clean_code_is_not_flagged(suite):
    suite.ini(extra=ON)
    suite.write(source=CLEAN_SUITE)
    result = suite.run("-W", "error::RuntimeWarning")
    skipped = 3 if sys.version_info < (3, 11) else 0
    result.assert_outcomes(passed=11 - skipped, skipped=skipped)
    assert "no_leaked_tasks failed" not in result.stdout.str()
    result.stdout.fnmatch_lines(["no_leaked_tasks: leaked tasks: nothing above zero in * tests"])


def test_wider_scoped_fixture_tasks_are_not_leaks(suite):
    suite.ini(extra=ON)
    suite.write(
        source="""
        import asyncio, contextlib, pytest, pytest_asyncio

        async def serve():
            while True:
                await asyncio.sleep(10)

        async def watcher():
            asyncio.create_task(serve(), name="watcher-child")
            await asyncio.sleep(10)

        @pytest_asyncio.fixture(scope="module", loop_scope="module")
        async def service():
            task = asyncio.create_task(watcher(), name="service")
            yield task
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        @pytest_asyncio.fixture(scope="session", loop_scope="session")
        async def session_service():
            task = asyncio.create_task(serve(), name="session-service")
            yield task
            task.cancel()

        @pytest.mark.asyncio(loop_scope="module")
        async def test_first(service):
            assert not service.done()

        @pytest.mark.asyncio(loop_scope="module")
        async def test_second(service):
            await asyncio.sleep(0.01)

        @pytest.mark.asyncio(loop_scope="module")
        async def test_leaks_in_a_module_loop(service):
            asyncio.create_task(serve(), name="mine")

        @pytest.mark.asyncio(loop_scope="module")
        async def test_leak_was_cancelled(service):
            names = {t.get_name() for t in asyncio.all_tasks()}
            assert "mine" not in names
            assert {"service", "watcher-child"} <= names

        @pytest.mark.asyncio(loop_scope="session")
        async def test_session(session_service):
            assert not session_service.done()
        """
    )
    result = suite.run()
    result.assert_outcomes(failed=1, passed=4)
    result.stdout.fnmatch_lines(
        [
            "*_ test_leaks_in_a_module_loop _*",
            "no_leaked_tasks failed: 1 task leaked",
            "  task 'mine' running serve() was still pending after the test",
            "    culprit: test_suite.py:35 in test_leaks_in_a_module_loop",
        ]
    )
    assert "'service'" not in result.stdout.str()
    assert "watcher-child" not in result.stdout.str()
    assert "session-service" not in result.stdout.str()


def test_anyio_runner_task_is_not_a_leak_and_anyio_tests_are_checked(pytester):
    pytester.makeini(
        """
        [pytest]
        asyncbudget_no_leaked_tasks = true
        """
    )
    pytester.makepyfile(
        test_suite="""
        import anyio, asyncio, pytest

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        async def worker():
            await asyncio.sleep(10)

        @pytest.fixture
        async def resource():
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.sleep, 0)
            yield 1

        @pytest.mark.anyio
        async def test_clean(resource):
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.sleep, 0.01)

        @pytest.mark.anyio
        async def test_second_clean():
            await anyio.sleep(0)

        @pytest.mark.anyio
        async def test_leak(resource):
            asyncio.create_task(worker(), name="anyio-leak")

        @pytest.fixture
        async def leaky():
            asyncio.create_task(worker(), name="fixture-leak")
            yield

        @pytest.mark.anyio
        async def test_fixture_leak(resource, leaky):
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.sleep, 0)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(failed=2, passed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_leak _*",
            "no_leaked_tasks failed: 1 task leaked",
            "  task 'anyio-leak' running worker() was still pending after the test",
            "    culprit: test_suite.py:27 in test_leak",
            "    created by the test body (culprit line)",
            "*_ test_fixture_leak _*",
            "  task 'fixture-leak' running worker() was still pending after the test",
            "    culprit: test_suite.py:31 in leaky",
            "    created by fixture 'leaky' (culprit line)",
        ]
    )
    assert "_run_tests_and_fixtures" not in result.stdout.str()


# -- options ---------------------------------------------------------------------------
def test_grace_ignore_opt_out_and_markers_on_classes_and_modules(suite):
    suite.write(
        source="""
        import asyncio, pytest

        pytestmark = pytest.mark.no_leaked_tasks

        async def later(delay):
            await asyncio.sleep(delay)

        @pytest.mark.asyncio
        async def test_default_grace_too_short():
            asyncio.create_task(later(0.5))

        @pytest.mark.asyncio
        @pytest.mark.no_leaked_tasks(grace="2s")
        async def test_longer_grace():
            asyncio.create_task(later(0.05))

        @pytest.mark.asyncio
        @pytest.mark.no_leaked_tasks(grace=0)
        async def test_no_grace():
            asyncio.create_task(later(0.05))

        @pytest.mark.asyncio
        @pytest.mark.no_leaked_tasks(ignore=["metrics-*", "*.keepalive"])
        async def test_ignored_by_pattern():
            asyncio.create_task(later(10), name="metrics-flusher")
            class Conn:
                async def keepalive(self):
                    await asyncio.sleep(10)
            asyncio.create_task(Conn().keepalive())

        @pytest.mark.asyncio
        @pytest.mark.no_leaked_tasks(False)
        async def test_opted_out():
            asyncio.create_task(later(10))

        @pytest.mark.no_leaked_tasks(ignore="other")
        class TestClass:
            @pytest.mark.asyncio
            async def test_in_class(self):
                asyncio.create_task(later(10), name="in-class")
        """
    )
    result = suite.run()
    result.assert_outcomes(failed=3, passed=3)
    result.stdout.fnmatch_lines(
        [
            "*_ test_default_grace_too_short _*",
            "  task 'Task-*' running later() was still pending after the test",
            "*_ test_no_grace _*",
            "  task 'Task-*' running later() was still pending after the test",
            "*_ TestClass.test_in_class _*",
            "  task 'in-class' running later() was still pending after the test",
        ]
    )
    out = result.stdout.str()
    assert "metrics-flusher" not in out and "keepalive" not in out
    assert "test_longer_grace" not in out and "test_opted_out" not in out


def test_cli_flag_and_ini_options(suite):
    suite.ini(
        extra="""
        asyncbudget_leak_grace = 0
        asyncbudget_leak_ignore =
            keep-*
        """
    )
    suite.write(
        source="""
        import asyncio, pytest

        @pytest.mark.asyncio
        async def test_one_turn():
            async def soon():
                await asyncio.sleep(0.05)
            asyncio.create_task(soon())

        @pytest.mark.asyncio
        async def test_kept():
            asyncio.create_task(asyncio.sleep(10), name="keep-alive")
        """
    )
    result = suite.run()
    result.assert_outcomes(passed=2)  # off by default
    result = suite.run("--asyncbudget-no-leaked-tasks")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*_ test_one_turn _*", "  task 'Task-*' running *soon() was still pending after the test"])
    assert "keep-alive" not in result.stdout.str()


def test_a_test_that_already_failed_is_not_reported_twice(suite):
    suite.ini(extra=ON)
    suite.write(
        source="""
        import asyncio, pytest

        @pytest.mark.asyncio
        async def test_fails():
            asyncio.create_task(asyncio.sleep(10))
            assert 1 == 2

        @pytest.mark.asyncio
        async def test_next():
            assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        """
    )
    result = suite.run()
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*assert 1 == 2"])
    assert "no_leaked_tasks failed" not in result.stdout.str()


def test_user_task_factory_and_exception_handler_still_work_and_are_restored(suite):
    suite.ini(extra=ON)
    suite.write(
        source="""
        import asyncio, asyncio.runners, gc, warnings, pytest

        CREATED = []
        CONTEXTS = []
        # The stdlib's, taken at import (before any test phase). On 3.14 it is defined in
        # _py_warnings, so its __module__ cannot tell it from a wrapper.
        WARN_UNAWAITED = warnings._warn_unawaited_coroutine

        def factory(loop, coro, **kwargs):
            CREATED.append(coro.__qualname__)
            return asyncio.Task(coro, loop=loop, **kwargs)

        async def quick():
            await asyncio.sleep(0)

        @pytest.mark.asyncio
        async def test_with_own_factory():
            loop = asyncio.get_running_loop()
            old = loop.get_task_factory()
            loop.set_task_factory(factory)
            try:
                await asyncio.create_task(quick())
            finally:
                loop.set_task_factory(old)
            assert CREATED == ["quick"]

        @pytest.mark.asyncio
        async def test_own_handler_sees_every_context():
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda loop, ctx: CONTEXTS.append(ctx["message"]))
            loop.call_exception_handler({"message": "custom"})
            assert CONTEXTS == ["custom"]

        @pytest.mark.asyncio
        async def test_task_names_are_untouched():  # CPython 3.13.0 renames them with a factory
            unnamed = asyncio.create_task(quick())
            named = asyncio.get_running_loop().create_task(quick(), name="mine")
            assert unnamed.get_name().startswith("Task-") and named.get_name() == "mine"
            await unnamed, await named

        LOOP = []

        @pytest.mark.asyncio
        async def test_remember_loop():
            LOOP.append(asyncio.get_running_loop())

        def test_everything_was_restored():
            assert warnings._warn_unawaited_coroutine is WARN_UNAWAITED
            assert asyncio.runners._cancel_all_tasks.__module__ == "asyncio.runners"
            assert LOOP[0].get_task_factory() is None
            assert LOOP[0].get_exception_handler() is None
            assert not [cb for cb in gc.callbacks if "asyncbudget" in repr(cb)]
        """
    )
    result = suite.run()
    result.assert_outcomes(passed=5)


def test_runs_under_xdist(suite):
    suite.ini(extra=ON)
    suite.write(
        source="""
        import asyncio, pytest

        @pytest.mark.asyncio
        async def test_leak():
            asyncio.create_task(asyncio.sleep(10))

        @pytest.mark.asyncio
        async def test_fine():
            await asyncio.sleep(0)
        """
    )
    result = suite.run("-n", "2")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*FAILED test_suite.py::test_leak - no_leaked_tasks failed: 1 task leaked"])


# -- usage errors -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ('"no"', "enabled must be True or False, got str 'no'"),
        ('grace="fast"', "grace: cannot read 'fast' as a duration*"),
        ('grace="5 parsecs"', "grace: unknown duration unit 'parsecs'*"),
        ("cancel_timeout=0", "cancel_timeout must be more than 0, got 0"),
        ("ignore=3", "ignore takes a task-name pattern or a list of them, got int 3"),
        ('ignore=["ok", ""]', "ignore patterns must be non-empty strings, got ''"),
        ('False, grace="1s"', "no_leaked_tasks(False) turns the budget off; it takes no other argument"),
        ("timeout=1", "*unexpected keyword argument 'timeout'; the marker's signature is no_leaked_tasks(enabled*"),
    ],
)
def test_bad_marker_arguments_are_usage_errors(pytester, args, message):
    pytester.makepyfile(
        test_suite=f"""
        import pytest

        @pytest.mark.asyncio
        @pytest.mark.no_leaked_tasks({args})
        async def test_x():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: test_suite.py::test_x: @pytest.mark.no_leaked_tasks(*): {message}"])
    assert "Traceback" not in result.stderr.str()


@pytest.mark.parametrize(
    ("ini", "message"),
    [
        ("asyncbudget_no_leaked_tasks = sometimes", "ERROR: asyncbudget_no_leaked_tasks: *sometimes*"),
        ("asyncbudget_leak_grace = soon", "ERROR: asyncbudget_leak_grace='soon': grace: cannot read 'soon'*"),
        ("asyncbudget_leak_cancel_timeout = 0s", "ERROR: asyncbudget_leak_cancel_timeout='0s': cancel_timeout must*"),
    ],
)
def test_bad_ini_values_are_usage_errors(pytester, ini, message):
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(test_suite="def test_x(): pass")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()


def test_module_fixture_task_ignoring_cancel_at_module_end_does_not_hang(suite):
    suite.ini(extra=ON + "asyncbudget_leak_cancel_timeout = 100ms\n")
    suite.write(
        name="test_a_module",
        source="""
        import asyncio, pytest, pytest_asyncio

        async def stubborn_service():
            while True:
                try:
                    await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    pass

        @pytest_asyncio.fixture(scope="module", loop_scope="module")
        async def service():
            task = asyncio.create_task(stubborn_service(), name="service")
            yield task  # never cancelled: the module's loop closes with it running

        @pytest.mark.asyncio(loop_scope="module")
        async def test_uses_service(service):
            assert not service.done()

        @pytest.mark.asyncio(loop_scope="module")
        async def test_last_in_module(service):
            assert not service.done()
        """,
    )
    suite.write(
        name="test_b_next",
        source="""
        def test_next_module_runs():
            pass
        """,
    )
    result = suite.run("-p", "no:xdist")
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_last_in_module _*",
            "no_leaked_tasks failed: 1 task ignored cancel",
            "  task 'service' running stubborn_service() ignored its cancellation when its loop closed"
            " at the end of this test: still running 1 s after cancel()",
            "    culprit: test_a_module.py:3 in stubborn_service",
            "        async def stubborn_service():",
            "    created by something outside this test (a wider-scoped fixture, an earlier test, or a task they started)",
            "    culprit: where its coroutine function is defined",
            "    suspended at: test_a_module.py:6 in stubborn_service (awaiting asyncio.sleep)",
            "    the plugin closed its coroutine so the suite can go on",
        ]
    )
    result.stdout.fnmatch_lines(["test_b_next.py .*"])  # the next module ran


def test_measured_without_a_budget_when_another_default_is_on(suite, tmp_path):
    """A default of another budget (or the report) measures every async test for the
    summary and report: leaks are recorded, never fail the test, and nothing waits."""
    report = tmp_path / "report.json"
    suite.write(
        source="""
        import asyncio, pytest

        @pytest.mark.asyncio
        async def test_leaves_a_task():
            asyncio.create_task(asyncio.sleep(10), name="left-behind")

        @pytest.mark.asyncio
        async def test_fails_a_task_quietly():
            async def boom():
                raise ValueError("lost")
            asyncio.create_task(boom())
            await asyncio.sleep(0.01)

        @pytest.mark.asyncio
        async def test_clean():
            await asyncio.sleep(0)
            await asyncio.gather(*(asyncio.sleep(0) for _ in range(20)))

        @pytest.mark.asyncio
        async def test_large_gather_left_running():
            asyncio.gather(*(asyncio.sleep(10) for _ in range(9)))
            await asyncio.sleep(0)

        @pytest.mark.asyncio
        async def test_next_sees_no_task():
            assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        """
    )
    result = suite.run("--asyncbudget-max-loop-lag=10s", f"--asyncbudget-report={report}", "--asyncbudget-summary=5")
    result.assert_outcomes(passed=5)
    data = json.loads(report.read_text())
    tests = {t["id"].split("::")[-1]: t for t in data["tests"]}
    leaks = {name: t["budgets"]["no_leaked_tasks"] for name, t in tests.items()}
    assert {name: (b["verdict"], b["measured"], b["limit"]) for name, b in leaks.items()} == {
        "test_leaves_a_task": ("measured", 1, None),
        "test_fails_a_task_quietly": ("measured", 1, None),
        "test_clean": ("measured", 0, None),
        "test_large_gather_left_running": ("measured", 9, None),
        "test_next_sees_no_task": ("measured", 0, None),
    }
    text = json.dumps(leaks["test_leaves_a_task"])
    assert "left-behind" in text
    assert "lost" in json.dumps(leaks["test_fails_a_task_quietly"])
    result.stdout.fnmatch_lines(["*no_leaked_tasks*", "*test_leaves_a_task*"])


@pytest.mark.parametrize("backend", ["asyncio", ("asyncio", {"use_uvloop": True})], ids=["asyncio", "uvloop"])
def test_anyio_process_pool_shutdown_task_is_the_loops_not_a_leak(pytester, backend):
    """anyio.to_process starts a task that lives as long as the loop (it kills the worker
    processes when the loop shuts down). Found by running anyio's own suite under the
    plugin, where every to_process test was reported as leaking it."""
    if backend != "asyncio":
        pytest.importorskip("uvloop")
    pytester.makeini(
        """
        [pytest]
        asyncbudget_no_leaked_tasks = true
        """
    )
    pytester.makepyfile(
        test_suite=f"""
        import asyncio, os, pytest
        from anyio import to_process

        @pytest.fixture
        def anyio_backend():
            return {backend!r}

        async def worker():
            await asyncio.sleep(10)

        @pytest.mark.anyio
        async def test_uses_a_worker_process():
            assert await to_process.run_sync(os.getpid) != os.getpid()

        @pytest.mark.anyio
        async def test_uses_a_worker_process_and_leaks():
            await to_process.run_sync(os.getpid)
            asyncio.create_task(worker(), name="real-leak")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_uses_a_worker_process_and_leaks _*",
            "no_leaked_tasks failed: 1 task leaked",
            "  task 'real-leak' running worker() was still pending after the test",
        ]
    )
    assert "process pool shutdown" not in result.stdout.str()


def test_sse_starlette_shutdown_watcher_is_the_loops_not_a_leak(suite):
    """sse-starlette starts one shutdown watcher per thread's loop the first time an
    EventSourceResponse runs, and it polls until the server exits. Found on the MCP SDK's
    suite, where 596 tests were reported as leaking it (and each waited out the grace
    period). The package is stood in for here by a module of the same name and shape."""
    suite.ini(extra=ON)
    suite.pytester.mkpydir("sse_starlette")
    suite.pytester.path.joinpath("sse_starlette", "sse.py").write_text(
        textwrap.dedent(
            """
            import asyncio, threading

            _state = threading.local()

            async def _shutdown_watcher():
                try:
                    while True:
                        await asyncio.sleep(0.5)
                finally:
                    _state.started = False

            def _ensure_watcher_started_on_this_loop():
                if not getattr(_state, "started", False):
                    _state.started = True
                    asyncio.get_running_loop().create_task(_shutdown_watcher())

            async def not_a_watcher():
                await asyncio.sleep(10)
            """
        )
    )
    suite.write(
        source="""
        import asyncio, pytest
        from sse_starlette import sse

        @pytest.mark.asyncio
        async def test_serves_events():
            sse._ensure_watcher_started_on_this_loop()
            await asyncio.sleep(0)

        @pytest.mark.asyncio
        async def test_serves_events_again():
            sse._ensure_watcher_started_on_this_loop()
            await asyncio.sleep(0)

        @pytest.mark.asyncio
        async def test_same_library_other_task():
            sse._ensure_watcher_started_on_this_loop()
            asyncio.get_running_loop().create_task(sse.not_a_watcher())
        """
    )
    result = suite.run()
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_same_library_other_task _*",
            "no_leaked_tasks failed: 1 task leaked",
            "  task 'Task-*' running not_a_watcher() was still pending after the test",
        ]
    )
    assert "running _shutdown_watcher()" not in result.stdout.str()
