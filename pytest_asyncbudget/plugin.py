"""pytest glue: options, markers, and the session manager. Kept thin on purpose.

Everything else lives in its own module: the loop core (:mod:`.core`), the probes that
measure (:mod:`.probes`), the budgets that judge (:mod:`.budgets`) and the words that
present (:mod:`.present`).
"""

from __future__ import annotations

import inspect

import pytest

from . import budgets, gating
from .manager import Manager
from .present import report, terminal

_MANAGER_NAME = "asyncbudget-manager"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("asyncbudget", "performance budgets for async tests (pytest-asyncbudget)")
    for module in budgets.MODULES:
        module.add_options(group, parser)
    for options in (terminal.add_options, report.add_options, gating.add_options):  # issue 7
        options(group, parser)


def pytest_configure(config: pytest.Config) -> None:
    for module in budgets.MODULES:
        help_line = inspect.getdoc(module.marker).splitlines()[0]
        config.addinivalue_line("markers", help_line)
    if not config.pluginmanager.has_plugin(_MANAGER_NAME):
        config.pluginmanager.register(Manager(config), _MANAGER_NAME)


def pytest_unconfigure(config: pytest.Config) -> None:
    manager = config.pluginmanager.get_plugin(_MANAGER_NAME)
    if manager is not None:
        config.pluginmanager.unregister(manager, _MANAGER_NAME)
