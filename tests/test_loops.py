"""``--asyncbudget-loops``: every async test on each listed loop; anyio tests too."""

from __future__ import annotations

import pytest

pytest.importorskip("uvloop")

_LOOP_KIND = """
import asyncio

def kind():
    loop = asyncio.get_running_loop()
    return type(loop).__module__.split(".")[0]
"""


def _ini(pytester: pytest.Pytester, extra: str = "", mode: str = "strict") -> None:
    pytester.makefile(
        ".ini",
        pytest=f"[pytest]\nasyncio_mode = {mode}\nasyncio_default_fixture_loop_scope = function\n{extra}",
    )


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def test_ids_and_real_loop_per_param(pytester):
    _ini(pytester)
    pytester.makepyfile(loopkind=_LOOP_KIND)
    pytester.makepyfile(
        """
        import pytest
        from loopkind import kind

        @pytest.mark.asyncio
        async def test_runs_on_its_loop(request):
            expected = request.node.callspec.id
            assert kind() == expected

        def test_sync_is_not_parametrized():
            pass
        """
    )
    result = _run(pytester, "--asyncbudget-loops=asyncio,uvloop", "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*test_runs_on_its_loop[[]asyncio[]] PASSED*",
            "*test_runs_on_its_loop[[]uvloop[]] PASSED*",
            "*test_sync_is_not_parametrized PASSED*",
        ]
    )


def test_ini_option_and_budget_fires_on_each_loop(pytester):
    _ini(pytester, "asyncbudget_loops = asyncio, uvloop\n")
    pytester.makepyfile(
        """
        import time, pytest

        @pytest.mark.asyncio
        @pytest.mark.max_loop_lag("50ms")
        async def test_blocks():
            time.sleep(0.2)
        """
    )
    result = _run(pytester)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        ["*_ test_blocks[[]asyncio[]] _*", "max_loop_lag exceeded*", "*_ test_blocks[[]uvloop[]] _*", "max_loop_lag exceeded*"]
    )


def test_nothing_changes_without_the_option(pytester):
    _ini(pytester)
    pytester.makepyfile(loopkind=_LOOP_KIND)
    pytester.makepyfile(
        """
        import pytest
        from loopkind import kind

        @pytest.mark.asyncio
        async def test_plain():
            assert kind() == "asyncio"
        """
    )
    result = _run(pytester, "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*::test_plain PASSED*"])


def test_subset_with_pytest_asyncio_marker(pytester):
    _ini(pytester)
    pytester.makepyfile(loopkind=_LOOP_KIND)
    pytester.makepyfile(
        """
        import pytest
        from loopkind import kind

        @pytest.mark.asyncio(loop_factories=["uvloop"])
        async def test_uvloop_only():
            assert kind() == "uvloop"
        """
    )
    result = _run(pytester, "--asyncbudget-loops=asyncio,uvloop", "-v")
    result.assert_outcomes(passed=1)
    assert "[asyncio]" not in result.stdout.str()


def test_custom_factory_from_ini(pytester):
    pytester.makepyfile(
        myloops="""
        import asyncio

        class TracingLoop(asyncio.SelectorEventLoop):
            pass

        def new_loop():
            return TracingLoop()
        """
    )
    _ini(pytester, "asyncbudget_loops = asyncio,tracing\nasyncbudget_loop_factories =\n    tracing = myloops:new_loop\n")
    pytester.makepyfile(
        """
        import asyncio, time, pytest

        @pytest.mark.asyncio
        @pytest.mark.max_loop_lag("50ms")
        async def test_kind(request):
            loop = asyncio.get_running_loop()
            assert (type(loop).__name__ == "TracingLoop") == (request.node.callspec.id == "tracing")
            time.sleep(0.2)
        """
    )
    result = _run(pytester, "-v")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*_ test_kind[[]tracing[]] _*", "max_loop_lag exceeded*"])


def test_merges_with_the_users_own_hook(pytester):
    _ini(pytester)
    pytester.makepyfile(loopkind=_LOOP_KIND)
    pytester.makeconftest(
        """
        import asyncio, uvloop

        CALLS = []

        def my_uvloop():
            CALLS.append("mine")
            return uvloop.new_event_loop()

        class Special(asyncio.SelectorEventLoop):
            pass

        def pytest_asyncio_loop_factories(config, item):
            return {"uvloop": my_uvloop, "special": Special}
        """
    )
    pytester.makepyfile(
        """
        import asyncio, pytest
        from loopkind import kind
        import conftest

        @pytest.mark.asyncio
        async def test_where(request):
            name = request.node.callspec.id
            if name == "uvloop":
                assert conftest.CALLS == ["mine"]
            if name == "special":
                assert type(asyncio.get_running_loop()).__name__ == "Special"
        """
    )
    result = _run(pytester, "--asyncbudget-loops=asyncio,uvloop", "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_where[[]asyncio[]] PASSED*", "*test_where[[]uvloop[]] PASSED*", "*test_where[[]special[]] PASSED*"])


def test_session_fixture_in_sync_test_without_the_option(pytester):
    """pytest-asyncio#1501: the hook is not defined unless loops are asked for."""
    _ini(pytester)
    pytester.makepyfile(
        """
        import pytest, pytest_asyncio

        @pytest_asyncio.fixture(scope="session", loop_scope="session")
        async def shared():
            return 42

        def test_sync_uses_session_async_fixture(shared):
            assert shared == 42

        @pytest.mark.asyncio(loop_scope="session")
        @pytest.mark.max_loop_lag("1s")
        async def test_async_too(shared):
            assert shared == 42
        """
    )
    result = _run(pytester, "-p", "asyncbudget")
    result.assert_outcomes(passed=2)
    hooks = pytester.runpytest_subprocess("--trace-config", "-p", "no:cacheprovider")
    assert "asyncbudget-loops" not in hooks.stdout.str()


def test_loop_scopes_give_each_loop_its_own_fixture(pytester):
    _ini(pytester)
    pytester.makepyfile(loopkind=_LOOP_KIND)
    pytester.makepyfile(
        """
        import pytest, pytest_asyncio
        from loopkind import kind

        SEEN = []

        @pytest_asyncio.fixture(scope="module", loop_scope="module")
        async def resource():
            SEEN.append(kind())
            return kind()

        @pytest.mark.asyncio(loop_scope="module")
        async def test_one(resource):
            assert resource == kind()

        @pytest.mark.asyncio(loop_scope="module")
        async def test_two(resource):
            assert resource == kind()

        def test_each_loop_made_its_own():
            assert sorted(SEEN) == ["asyncio", "uvloop"]
        """
    )
    result = _run(pytester, "--asyncbudget-loops=asyncio,uvloop")
    result.assert_outcomes(passed=5)


def test_missing_uvloop_is_a_usage_error(pytester):
    pytester.mkpydir("uvloop").joinpath("__init__.py").write_text("raise ImportError('No module named uvloop')\n")
    _ini(pytester)
    pytester.makepyfile("def test_x(): pass")
    result = _run(pytester, "--asyncbudget-loops=asyncio,uvloop")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*uvloop is not installed; install it with: pip install 'pytest-asyncbudget[[]uvloop[]]'"])
    assert "Traceback" not in result.stderr.str()


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (["--asyncbudget-loops=asyncio,tokio"], "", "*unknown loop 'tokio'; known loops: asyncio, uvloop*"),
        (["--asyncbudget-loops=asyncio,asyncio"], "", "*a loop is listed twice*"),
        ([], "asyncbudget_loops = x\nasyncbudget_loop_factories =\n    x = nosuchmodule:f\n", "*cannot import 'nosuchmodule'*"),
        ([], "asyncbudget_loops = x\nasyncbudget_loop_factories =\n    x = asyncio\n", "*expected 'name = module:callable'*"),
    ],
)
def test_bad_loop_options_are_usage_errors(pytester, args, ini, message):
    _ini(pytester, ini)
    pytester.makepyfile("def test_x(): pass")
    result = _run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


# -- anyio ---------------------------------------------------------------------------

_ANYIO_TESTS = """
import asyncio, time, pytest
from loopkind import kind

pytestmark = pytest.mark.anyio

@pytest.mark.max_loop_lag("50ms")
async def test_blocks(request):
    time.sleep(0.2)

async def test_kind(anyio_backend):
    name, options = anyio_backend if isinstance(anyio_backend, tuple) else (anyio_backend, {})
    if name != "asyncio":
        pytest.skip("not an asyncio backend")
    assert kind() == ("uvloop" if options.get("use_uvloop") else "asyncio")
"""


def test_anyio_tests_are_measured(pytester):
    _ini(pytester)
    pytester.makepyfile(loopkind=_LOOP_KIND)
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(params=["asyncio", ("asyncio", {"use_uvloop": True})], ids=["plain", "uv"])
        def anyio_backend(request):
            return request.param
        """
    )
    pytester.makepyfile(_ANYIO_TESTS)
    result = _run(pytester, "-v")
    result.assert_outcomes(failed=2, passed=2)
    result.stdout.fnmatch_lines(
        ["*_ test_blocks[[]plain[]] _*", "max_loop_lag exceeded*", "*_ test_blocks[[]uv[]] _*", "max_loop_lag exceeded*"]
    )
    assert "uvloop" in result.stdout.str()


def test_anyio_tests_run_on_each_listed_loop(pytester):
    _ini(pytester)
    pytester.makepyfile(loopkind=_LOOP_KIND)
    pytester.makepyfile(_ANYIO_TESTS)
    result = _run(pytester, "--asyncbudget-loops=asyncio,uvloop", "-v")
    # anyio's own anyio_backend fixture also lists trio (in the test extra): kept as is.
    result.assert_outcomes(failed=2, passed=3, skipped=1)
    result.stdout.fnmatch_lines(["*test_blocks[[]trio[]] PASSED*"])
    result.stdout.fnmatch_lines(
        [
            "*test_kind[[]asyncio[]] PASSED*",
            "*test_kind[[]uvloop[]] PASSED*",
            "*_ test_blocks[[]asyncio[]] _*",
            "max_loop_lag exceeded*",
            "*_ test_blocks[[]uvloop[]] _*",
            "max_loop_lag exceeded*",
        ]
    )


def test_trio_backend_is_left_alone_and_said_once(pytester):
    pytest.importorskip("trio")
    _ini(pytester)
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(params=["asyncio", "trio"])
        def anyio_backend(request):
            return request.param
        """
    )
    pytester.makepyfile(
        """
        import time, pytest

        pytestmark = [pytest.mark.anyio, pytest.mark.max_loop_lag("50ms")]

        async def test_blocks():
            time.sleep(0.2)

        async def test_fine():
            pass
        """
    )
    result = _run(pytester, "-v", "--asyncbudget-loops=asyncio,uvloop")
    result.assert_outcomes(failed=2, passed=4)
    result.stdout.fnmatch_lines(
        [
            "*test_blocks[[]asyncio[]] FAILED*",
            "*test_blocks[[]uvloop[]] FAILED*",
            "*test_blocks[[]trio[]] PASSED*",
            "note: 2 tests on anyio's trio backend: loop budgets do not apply there (no asyncio event loop); max_rss still does",
        ]
    )
    assert result.stdout.str().count("anyio's trio backend") == 1


_ANYIO_AUTO_TESTS = _ANYIO_TESTS.replace("pytestmark = pytest.mark.anyio\n", "") + """
from hypothesis import given, settings, strategies as st

@pytest.mark.max_loop_lag("50ms")
@settings(max_examples=2, deadline=None, database=None)
@given(st.integers())
async def test_blocks_in_hypothesis(anyio_backend, n):
    name = anyio_backend if isinstance(anyio_backend, str) else anyio_backend[0]
    if name != "asyncio":
        pytest.skip("not an asyncio backend")
    time.sleep(0.1)

async def _block():
    time.sleep(0.1)

@pytest.mark.max_loop_lag("50ms")
def test_sync_with_a_backend(anyio_backend):  # not a coroutine: anyio does not run it,
    asyncio.run(_block())  # so neither is its own loop measured (sync tests are untouched)
"""


@pytest.mark.parametrize("loops", [None, "asyncio,uvloop"])
def test_anyio_auto_mode_tests_are_measured_without_a_marker(pytester, loops):
    """``anyio_mode = auto`` (anyio 4.11+) runs every coroutine test without marking it.

    Found by running anyio's own suite under the plugin: its 3,594 tests were treated as
    sync tests (only max_rss measured) because none carries the ``anyio`` marker.
    """
    pytest.importorskip("hypothesis")
    _ini(pytester, extra="anyio_mode = auto\n")
    pytester.makepyfile(loopkind=_LOOP_KIND)
    if loops is None:
        pytester.makeconftest(
            """
            import pytest

            @pytest.fixture(
                params=["asyncio", ("asyncio", {"use_uvloop": True})], ids=["asyncio", "uvloop"], scope="module"
            )
            def anyio_backend(request):
                return request.param
            """
        )
    pytester.makepyfile(_ANYIO_AUTO_TESTS)
    args = ["-v", "-p", "no:randomly"] + ([f"--asyncbudget-loops={loops}"] if loops else [])
    result = _run(pytester, *args)
    # With --asyncbudget-loops, anyio's own fixture's trio backend is kept as it is.
    trio = 0 if loops is None else 1
    # The sync test passes once per backend parameter (2: asyncio and uvloop, or
    # asyncio and trio): a sync test is never measured for lag, whatever its fixtures.
    result.assert_outcomes(failed=4, passed=2 + trio + 2, skipped=2 * trio)
    result.stdout.fnmatch_lines(["*test_sync_with_a_backend*PASSED*"])
    result.stdout.fnmatch_lines(
        [
            "*test_kind[[]asyncio[]] PASSED*",
            "*test_kind[[]uvloop[]] PASSED*",
        ]
    )
    for name in ("test_blocks", "test_blocks_in_hypothesis"):
        for loop in ("asyncio", "uvloop"):
            result.stdout.fnmatch_lines([f"*_ {name}[[]{loop}[]] _*", "max_loop_lag exceeded*"])
