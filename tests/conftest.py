"""Shared helpers for the plugin's own tests.

Most tests are end-to-end: they write a small suite with ``pytester``, run it under the
plugin, and assert on outcomes and failure text. The ``loop`` fixture runs each such test
twice, once on stock asyncio and once on uvloop, by writing a conftest that returns the
chosen loop from pytest-asyncio's own ``pytest_asyncio_loop_factories`` hook.
"""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

try:
    import uvloop  # noqa: F401

    HAVE_UVLOOP = True
except ImportError:  # pragma: no cover - uvloop is in the test extra
    HAVE_UVLOOP = False

LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop not installed"))]

_UVLOOP_CONFTEST = """
import uvloop

def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}
"""

_INI = """
[pytest]
asyncio_mode = {mode}
asyncio_default_fixture_loop_scope = function
"""


class Suite:
    """A pytester suite set up for one loop kind."""

    def __init__(self, pytester: pytest.Pytester, loop: str) -> None:
        self.pytester = pytester
        self.loop = loop
        self.ini(mode="strict")
        conftest = _UVLOOP_CONFTEST if loop == "uvloop" else ""
        pytester.makeconftest(conftest)

    def ini(self, mode: str = "strict", extra: str = "") -> None:
        self.pytester.makefile(".ini", pytest=_INI.format(mode=mode) + textwrap.dedent(extra))

    def conftest(self, source: str) -> None:
        """Add *source* to the suite's conftest (after the loop selection)."""
        base = _UVLOOP_CONFTEST if self.loop == "uvloop" else ""
        self.pytester.makeconftest(base + "\n" + textwrap.dedent(source))

    def write(self, name: str = "test_suite", source: str = "") -> None:
        self.pytester.makepyfile(**{name: textwrap.dedent(source)})

    def run(self, *args: str) -> pytest.RunResult:
        """Run in a subprocess, so nothing of one run can leak into the next."""
        return self.pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", *args)


@pytest.fixture(autouse=True)
def _same_output_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make inner pytest runs print the same text on CI as on a developer machine.

    pytest stops truncating the "short test summary info" lines when ``CI`` or
    ``BUILD_NUMBER`` is set, so a failure message then appears twice in the output.
    """
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BUILD_NUMBER", raising=False)


@pytest.fixture(params=LOOPS)
def loop(request: pytest.FixtureRequest) -> str:
    """The loop kind a pytester suite runs on: "asyncio" or "uvloop"."""
    return request.param


@pytest.fixture
def suite(pytester: pytest.Pytester, loop: str) -> Suite:
    """A pytester suite on the loop chosen by the ``loop`` fixture."""
    return Suite(pytester, loop)
