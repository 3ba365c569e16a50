"""pytest glue: options, markers, and the session manager. Kept thin on purpose.

Everything else lives in its own module: the loop core (:mod:`.core`), the probes that
measure (:mod:`.probes`), the budgets that judge (:mod:`.budgets`) and the words that
present (:mod:`.present`).
"""

from __future__ import annotations

import inspect

import pytest

from . import budgets, gating, loops
from .manager import Manager
from .present import report, terminal

_MANAGER_NAME = "asyncbudget-manager"
_LOOPS_NAME = "asyncbudget-loops"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("asyncbudget", "performance budgets for async tests (pytest-asyncbudget)")
    for module in budgets.MODULES:
        module.add_options(group, parser)
    budgets.add_options(group, parser)  # --asyncbudget-measure
    for options in (terminal.add_options, report.add_options, gating.add_options):  # issue 7
        options(group, parser)
    loops.add_options(group, parser)


def pytest_configure(config: pytest.Config) -> None:
    for module in budgets.MODULES:
        help_line = inspect.getdoc(module.marker).splitlines()[0]
        config.addinivalue_line("markers", help_line)
    if not config.pluginmanager.has_plugin(_MANAGER_NAME):
        config.pluginmanager.register(Manager(config), _MANAGER_NAME)
    # Only when asked for: defining pytest-asyncio's loop-factories hook has side effects.
    matrix = loops.matrix_from_config(config)
    if matrix is not None and not config.pluginmanager.has_plugin(_LOOPS_NAME):
        config.pluginmanager.register(matrix, _LOOPS_NAME)


def pytest_unconfigure(config: pytest.Config) -> None:
    for name in (_MANAGER_NAME, _LOOPS_NAME):
        plugin = config.pluginmanager.get_plugin(name)
        if plugin is not None:
            config.pluginmanager.unregister(plugin, name)
