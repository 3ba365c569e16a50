"""Running every async test on each of several event loops (``--asyncbudget-loops``).

For pytest-asyncio tests this builds on pytest-asyncio's own
``pytest_asyncio_loop_factories`` hook (1.4+): pytest-asyncio parametrizes each test over
the factories the hook returns, ids ``[asyncio]``, ``[uvloop]``, ..., and honours
``@pytest.mark.asyncio(loop_factories=[...])`` for running one test on a subset.

The hook is implemented only when the user asks for loops: on pytest-asyncio 1.5.0 merely
defining it breaks sync tests that use session-scoped async fixtures (pytest-asyncio#1501),
so :class:`LoopMatrix` is registered from ``pytest_configure`` only then.

Merging with the user's own hook implementation: the result is the loops listed in
``--asyncbudget-loops``/``asyncbudget_loops``, in that order, followed by any other loops
the user's hook returns for the test; where the user's hook returns a loop under a listed
name, the user's factory is used for it.

For anyio tests (asyncio backend), the ``anyio_backend`` parameter is expanded instead:
each asyncio backend parameter becomes one per listed loop (``("asyncio", {"use_uvloop":
True})`` for uvloop, ``("asyncio", {"loop_factory": ...})`` for custom loops). Other
backends (trio) are kept as they are.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sys
from collections.abc import Callable, Generator, Mapping
from typing import Any

import pytest

__all__ = ["LoopMatrix", "add_options", "matrix_from_config", "runs_on_anyio"]

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

LOOPS_OPTION = "--asyncbudget-loops"
LOOPS_INI = "asyncbudget_loops"
FACTORIES_INI = "asyncbudget_loop_factories"


def add_options(group: pytest.OptionGroup, parser: pytest.Parser) -> None:
    group.addoption(
        LOOPS_OPTION,
        dest="asyncbudget_loops",
        metavar="NAMES",
        default=None,
        help="run every async test once per listed event loop, e.g. asyncio,uvloop",
    )
    parser.addini(LOOPS_INI, "event loops to run every async test on, e.g. asyncio,uvloop", default="")
    parser.addini(
        FACTORIES_INI,
        "extra loop factories for asyncbudget_loops, one 'name = module:callable' per line",
        type="linelist",
        default=[],
    )


def _stock_asyncio_loop() -> asyncio.AbstractEventLoop:
    """Stock asyncio's own loop for this platform, whatever event loop policy is set."""
    if sys.platform == "win32":  # pragma: no cover - not run on this project's CI
        return asyncio.ProactorEventLoop()
    return asyncio.SelectorEventLoop()


def _uvloop_factory() -> LoopFactory:
    try:
        import uvloop
    except ImportError:
        raise pytest.UsageError(
            f"{LOOPS_OPTION}: the loop 'uvloop' was asked for but uvloop is not installed; "
            "install it with: pip install 'pytest-asyncbudget[uvloop]'"
        ) from None
    return uvloop.new_event_loop


def _import_factory(name: str, target: str) -> LoopFactory:
    module_name, sep, attr = target.partition(":")
    where = f"{FACTORIES_INI}: {name} = {target}"
    if not sep or not module_name.strip() or not attr.strip():
        raise pytest.UsageError(f"{where}: expected 'name = module:callable'")
    try:
        obj: Any = importlib.import_module(module_name.strip())
    except ImportError as exc:
        raise pytest.UsageError(f"{where}: cannot import {module_name.strip()!r}: {exc}") from None
    for part in attr.strip().split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise pytest.UsageError(f"{where}: {module_name.strip()!r} has no attribute {attr.strip()!r}") from None
    if not callable(obj):
        raise pytest.UsageError(f"{where}: {attr.strip()!r} is not callable")
    return obj


def _custom_factories(config: pytest.Config) -> dict[str, str]:
    custom = {}
    for line in config.getini(FACTORIES_INI):
        name, sep, target = line.partition("=")
        name = name.strip()
        if not sep or not name:
            raise pytest.UsageError(f"{FACTORIES_INI}: cannot read {line!r}; expected 'name = module:callable'")
        custom[name] = target.strip()
    return custom


def _requested_names(config: pytest.Config) -> tuple[str, list[str]] | None:
    raw, where = config.getoption("asyncbudget_loops"), LOOPS_OPTION
    if raw is None:
        raw, where = config.getini(LOOPS_INI), LOOPS_INI
    if not raw or not str(raw).strip():
        return None
    names = [name.strip() for name in str(raw).replace(" ", ",").split(",") if name.strip()]
    if len(set(names)) != len(names):
        raise pytest.UsageError(f"{where}={raw!r}: a loop is listed twice")
    return where, names


def matrix_from_config(config: pytest.Config) -> LoopMatrix | None:
    """The loop matrix the user asked for, or None; bad input is a UsageError now."""
    requested = _requested_names(config)
    if requested is None:
        return None
    where, names = requested
    custom = _custom_factories(config)
    factories: dict[str, LoopFactory] = {}
    for name in names:
        if name in custom:
            factories[name] = _import_factory(name, custom[name])
        elif name == "asyncio":
            factories[name] = _stock_asyncio_loop
        elif name == "uvloop":
            factories[name] = _uvloop_factory()
        else:
            known = ", ".join(["asyncio", "uvloop", *custom])
            raise pytest.UsageError(
                f"{where}: unknown loop {name!r}; known loops: {known} "
                f"(add your own with '{FACTORIES_INI} = {name} = module:callable')"
            )
    return LoopMatrix(factories)


def runs_on_anyio(function: Any, fixturenames: Any) -> bool:
    """True when anyio's pytest plugin runs this test function on an event loop.

    That is anyio's own rule: a coroutine function (or a hypothesis test whose inner test
    is one) that requests the ``anyio_backend`` fixture. The ``anyio`` marker is not part
    of it: with ``anyio_mode = "auto"`` (anyio 4.11+) anyio adds the fixture to every
    coroutine test without marking it.
    """
    if "anyio_backend" not in fixturenames:
        return False
    inner = getattr(getattr(function, "hypothesis", None), "inner_test", function)
    inner = getattr(inner, "_anyio_original_func", inner)  # anyio's hypothesis wrapper
    return inspect.iscoroutinefunction(inner)


def _anyio_params(name: str, factory: LoopFactory, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    options = {k: v for k, v in options.items() if k not in ("use_uvloop", "loop_factory")}
    if name == "uvloop":
        options["use_uvloop"] = True
    elif name != "asyncio":
        options["loop_factory"] = factory
    return ("asyncio", options)


class LoopMatrix:
    """Session plugin that runs each async test on every listed loop."""

    def __init__(self, factories: dict[str, LoopFactory]) -> None:
        self.factories = factories

    @pytest.hookimpl(wrapper=True)
    def pytest_asyncio_loop_factories(
        self, config: pytest.Config, item: pytest.Item
    ) -> Generator[None, Mapping[str, LoopFactory] | None, Mapping[str, LoopFactory]]:
        users = yield
        merged = dict(self.factories)
        if users:
            for name, factory in users.items():
                merged[name] = factory  # the user's factory wins for a listed name too
        return merged

    @pytest.hookimpl(tryfirst=True)
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if not runs_on_anyio(metafunc.function, metafunc.fixturenames):
            return
        fixturedefs = metafunc._arg2fixturedefs.get("anyio_backend")  # noqa: SLF001 - read only
        params = fixturedefs[-1].params if fixturedefs else None
        if not params:
            return  # an unparametrized user fixture: its backend is unknown until it runs
        from anyio.pytest_plugin import extract_backend_and_options

        values: list[Any] = []
        ids: list[str] = []
        for param in params:
            backend, options = extract_backend_and_options(param)
            if backend != "asyncio":
                values.append(param)
                ids.append(backend)
                continue
            for name, factory in self.factories.items():
                values.append(_anyio_params(name, factory, options))
                ids.append(name)
        metafunc.parametrize("anyio_backend", values, ids=ids, scope=fixturedefs[-1].scope)
