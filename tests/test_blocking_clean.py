"""What ``no_blocking`` must NOT flag, on both loops: a false alarm costs more than a miss.

Every suite here runs with the budget on for all async tests and must pass entirely.
"""

from __future__ import annotations

import sys
import textwrap

import pytest

from test_blocking import CHECK_RESTORED, line_of, no_internal_errors

try:
    import coverage  # noqa: F401

    HAVE_COVERAGE = True
except ImportError:  # pragma: no cover
    HAVE_COVERAGE = False


#: Proves the budget is really on in a clean suite (else "passes clean" would prove nothing).
ACTIVE = """

async def test_za_budget_is_active():
    from pytest_asyncbudget import patches
    assert patches._probe is not None and "time.sleep" in patches.installed()
"""


def run_clean(suite, source: str, *args: str, conftest: str | None = None, ini: str = ""):
    if conftest is not None:
        suite.conftest(conftest)
    suite.ini(mode="auto", extra="asyncbudget_no_blocking = true\n" + ini)
    suite.write(source=textwrap.dedent(source) + ACTIVE + CHECK_RESTORED)
    result = suite.run(*args)
    no_internal_errors(result)
    assert "no_blocking failed" not in result.stdout.str()
    return result


OTHER_THREADS = """
import asyncio, concurrent.futures as cf, os, threading, time

async def test_to_thread_and_executor():
    await asyncio.to_thread(time.sleep, 0.01)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, os.stat, ".")
    pool = cf.ThreadPoolExecutor(2)
    future = pool.submit(time.sleep, 0.01)  # starting a worker waits for it: not blocking
    await asyncio.wrap_future(future)
    future.result()  # already done
    pool.shutdown(wait=False)

async def test_threads_the_test_started(tmp_path):
    def work():
        time.sleep(0.01)
        os.listdir(tmp_path)
        with open(tmp_path / "t.txt", "w") as f:
            f.write("x")
        lock = threading.Lock()
        with lock:
            pass

    thread = threading.Thread(target=work)
    thread.start()
    while thread.is_alive():
        await asyncio.sleep(0.005)
    thread.join()  # finished: returns at once

async def test_a_thread_running_its_own_loop():
    def other_loop():
        async def main():
            time.sleep(0.01)  # a loop on another thread is not the test's loop
        asyncio.run(main())

    await asyncio.to_thread(other_loop)
"""


def test_other_threads(suite):
    result = run_clean(suite, OTHER_THREADS)
    result.assert_outcomes(passed=5)


NON_BLOCKING = """
import asyncio, concurrent.futures as cf, os, queue, socket, threading, time

async def handle(reader, writer):
    writer.write(await reader.readline())
    await writer.drain()
    writer.close()

async def test_streams_and_loop_sockets():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("localhost", port)  # DNS in the executor
    writer.write(b"hi\\n")
    await writer.drain()
    assert await reader.readline() == b"hi\\n"
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    await loop.sock_sendall(a, b"x")
    assert await loop.sock_recv(b, 1) == b"x"
    a.send(b"y")  # a non-blocking socket returns at once
    await asyncio.sleep(0.01)
    assert b.recv(1) == b"y"
    a.close()
    b.close()

async def test_nonblocking_descriptors():
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    os.write(w, b"x")
    assert os.read(r, 1) == b"x"
    os.close(r)
    os.close(w)

async def test_waits_that_do_not_wait():
    lock = threading.Lock()
    with lock:  # uncontended
        pass
    assert lock.acquire(False)
    lock.release()
    rlock = threading.RLock()
    with rlock:
        with rlock:
            pass
    event = threading.Event()
    event.set()
    event.wait()
    q = queue.Queue(1)
    q.put(1)
    q.get()
    q.put_nowait(2)
    q.get_nowait()
    sem = threading.Semaphore(1)
    sem.acquire()
    sem.release()
    cond = threading.Condition()
    with cond:
        cond.wait(0)
    future = cf.Future()
    future.set_result(1)
    assert future.result() == 1
    cf.wait([future])
    thread = threading.Thread(target=lambda: None)
    thread.start()
    while thread.is_alive():
        await asyncio.sleep(0.005)
    thread.join()
    time.sleep(0)  # only yields the GIL

async def test_asyncio_subprocess():
    import sys
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "print('hi')", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert out.strip() == b"hi"
"""


def test_non_blocking_operations(suite):
    result = run_clean(suite, NON_BLOCKING)
    result.assert_outcomes(passed=6)


OUTPUT = """
import logging, sys

log = logging.getLogger("clean")

async def test_print_and_logging():
    print("hello")
    print("to stderr", file=sys.stderr)
    sys.stdout.write("written\\n")
    sys.stdout.flush()
    log.warning("a warning")
    logging.getLogger().error("an error")

async def test_capsys(capsys):
    print("captured")
    assert capsys.readouterr().out == "captured\\n"

async def test_capfd(capfd):
    print("captured")
    log.error("logged")
    assert "captured" in capfd.readouterr().out
"""


@pytest.mark.parametrize("capture", ["--capture=fd", "--capture=sys", "-s"])
def test_output(suite, capture):
    result = run_clean(suite, OUTPUT, capture, "--log-cli-level=INFO")
    result.assert_outcomes(passed=5)


TOOLING = """
import asyncio, importlib, inspect, sys, traceback, warnings, pytest

async def test_first_imports():
    import lazy_helper  # first import: pytest/importlib read files; so does its body
    importlib.import_module("lazy_other")
    assert lazy_helper.SOURCE and lazy_helper.add(1, 2) == 3

async def test_assertion_rewriting_of_a_helper():
    import rewritten_helper  # rewritten by pytest's import hook on first import
    rewritten_helper.check()

async def test_tracebacks_warnings_and_inspect():
    try:
        1 / 0
    except ZeroDivisionError:
        text = traceback.format_exc()
    assert "ZeroDivisionError" in text
    warnings.warn("careful", UserWarning)
    inspect.stack()
    inspect.getsource(test_first_imports)

async def test_pytest_raises_and_approx():
    with pytest.raises(ZeroDivisionError):
        1 / 0
    assert 0.1 + 0.2 == pytest.approx(0.3)
"""


def _tooling_files(suite):
    suite.pytester.makepyfile(
        lazy_helper="""
        SOURCE = open(__file__).read()

        def add(a, b):
            return a + b
        """,
        lazy_other="VALUE = 1",
        rewritten_helper="""
        def check():
            assert 1 + 1 == 2
        """,
    )


def test_imports_pytest_machinery_and_the_plugin(suite):
    _tooling_files(suite)
    result = run_clean(
        suite,
        TOOLING,
        "--asyncbudget-max-loop-lag=10s",  # the lag probe and its sampler run alongside
        conftest="import pytest\npytest.register_assert_rewrite('rewritten_helper')\n",
    )
    result.assert_outcomes(passed=6, warnings=1)


@pytest.mark.skipif(not HAVE_COVERAGE, reason="coverage.py not installed")
def test_coverage_tracer(suite):
    """coverage.py's tracer looks at each new file on the loop thread: not the user's call."""
    _tooling_files(suite)
    suite.conftest("import pytest\npytest.register_assert_rewrite('rewritten_helper')\n")
    suite.ini(mode="auto", extra="asyncbudget_no_blocking = true\n")
    suite.write(source=textwrap.dedent(TOOLING) + ACTIVE + CHECK_RESTORED)
    result = suite.pytester.run(
        sys.executable, "-m", "coverage", "run", "--branch", "-m", "pytest", "-p", "no:cacheprovider"
    )
    no_internal_errors(result)
    assert "no_blocking failed" not in result.stdout.str()
    result.assert_outcomes(passed=6, warnings=1)
    assert (suite.pytester.path / ".coverage").exists()


SYNC_AND_OPT_OUT = """
import asyncio, time, pytest

def test_sync_test_may_block():
    time.sleep(0.01)

def test_sync_test_running_its_own_loop():
    async def main():
        time.sleep(0.01)
    asyncio.run(main())

@pytest.mark.no_blocking(False)
async def test_opted_out():
    time.sleep(0.01)

async def test_monkeypatched_sleep(monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    time.sleep(10)  # the user's fake: not blocking

@pytest.fixture
def fake_sleep(monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda seconds: None)

async def test_monkeypatched_in_a_fixture(fake_sleep):
    time.sleep(10)

async def test_after_monkeypatch_it_is_caught_again():
    assert time.sleep.__name__ == "sleep"
"""


def test_sync_tests_opt_out_and_monkeypatch(suite):
    result = run_clean(suite, SYNC_AND_OPT_OUT)
    result.assert_outcomes(passed=8)


def test_anyio_tests(suite):
    backend = '("asyncio", {"loop_factory": uvloop.new_event_loop})' if suite.loop == "uvloop" else '"asyncio"'
    suite.ini(mode="strict", extra="asyncbudget_no_blocking = true\n")
    suite.write(
        source=textwrap.dedent(
            """
            import anyio, time, pytest
            try:
                import uvloop
            except ImportError:
                uvloop = None

            @pytest.fixture
            def anyio_backend():
                return BACKEND

            @pytest.mark.anyio
            async def test_clean():
                await anyio.sleep(0.01)
                await anyio.to_thread.run_sync(time.sleep, 0.01)

            @pytest.mark.anyio
            async def test_dirty():
                time.sleep(0.01)  # L:dirty
            """
        ).replace("BACKEND", backend)
    )
    result = suite.run()
    no_internal_errors(result)
    result.assert_outcomes(passed=1, failed=1)
    line = line_of(suite, "dirty")
    result.stdout.fnmatch_lines(["*_ test_dirty*", f"*culprit: test_suite.py:{line} in test_dirty (in time.sleep)"])
    if suite.loop == "uvloop":
        result.stdout.fnmatch_lines(["*uvloop*"])  # the summary names the loop it ran on
