"""Judgment: the registry of budgets, and which budgets apply to which test.

Each budget is one module in this package (see :mod:`.base` for what it provides). The
marker function of each module is the marker's API: ``@pytest.mark.max_loop_lag("50ms")``
calls ``lag.marker("50ms")``. Bad arguments become a :class:`pytest.UsageError` naming the
test and the marker, raised at collection time, before anything runs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest

from ..units import UnitError
from . import blocking, lag, leaks, rss

__all__ = [
    "BY_NAME",
    "MEASURE_CHOICES",
    "MODULES",
    "Plan",
    "add_options",
    "budget_error",
    "call_marker",
    "defaults",
    "measure_all",
    "measure_choice",
    "plan_for",
]

#: Every budget module, in the order their verdicts are shown.
MODULES: tuple[ModuleType, ...] = (lag, blocking, rss, leaks)
#: Budget name -> its module.
BY_NAME: dict[str, ModuleType] = {module.NAME: module for module in MODULES}
#: ``--asyncbudget-measure``: every budget for every async test once a default or the
#: report is on (the default), or only the budgets each test has.
MEASURE_CHOICES = ("all", "budgeted")


@dataclass
class Plan:
    """What to measure and judge for one test, decided at collection time."""

    #: Budget name -> parsed budget (None: measured for the summary/report, never judged).
    budgets: dict[str, Any] = field(default_factory=dict)
    is_async: bool = True


def _describe_call(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"@pytest.mark.{name}({', '.join(parts)})"


def budget_error(where: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], why: object) -> pytest.UsageError:
    return pytest.UsageError(f"{where}: {_describe_call(name, args, kwargs)}: {why}")


def call_marker(module: ModuleType, args: tuple[Any, ...], kwargs: dict[str, Any], where: str) -> Any:
    """Parse one marker's arguments with its module's marker function."""
    signature = inspect.signature(module.marker)
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        plain = signature.replace(
            parameters=[p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()],
            return_annotation=inspect.Signature.empty,
        )
        raise budget_error(
            where, module.NAME, args, kwargs, f"{exc}; the marker's signature is {module.NAME}{plain}"
        ) from None
    try:
        return module.marker(*args, **kwargs)
    except (UnitError, TypeError, ValueError) as exc:
        raise budget_error(where, module.NAME, args, kwargs, exc) from None


def defaults(config: pytest.Config) -> dict[str, Any]:
    """Each budget's session-wide default from ini/CLI (None when unset)."""
    return {module.NAME: module.default(config) for module in MODULES}


def add_options(group: pytest.OptionGroup, parser: pytest.Parser) -> None:
    group.addoption(
        "--asyncbudget-measure",
        dest="asyncbudget_measure",
        choices=MEASURE_CHOICES,
        default=None,
        help="all (default): once a default budget or the report is on, measure every budget "
        "for every async test, for the summary and report; budgeted: measure only the "
        "budgets each test has, which costs only what those budgets cost",
    )
    parser.addini("asyncbudget_measure", "all (default) or budgeted; see --asyncbudget-measure", default="")


def measure_choice(config: pytest.Config) -> str:
    """``--asyncbudget-measure`` or its ini option: "all" or "budgeted" (a usage error else)."""
    value, where = config.getoption("asyncbudget_measure", None), "--asyncbudget-measure"
    if value is None:
        value, where = config.getini("asyncbudget_measure"), "asyncbudget_measure"
    choice = str(value).strip().lower() or "all"
    if choice not in MEASURE_CHOICES:
        raise pytest.UsageError(f"{where}={value!r}: expected one of {', '.join(MEASURE_CHOICES)}")
    return choice


def measure_all(config: pytest.Config, *, anything_on: bool) -> bool:
    """Whether tests are measured for budgets they do not have.

    *anything_on*: a default budget or the report is on. The option is checked either way.
    """
    return measure_choice(config) == "all" and anything_on


def plan_for(
    item: pytest.Item, session_defaults: dict[str, Any], *, is_async: bool, measure_all: bool
) -> Plan | None:
    """The plan for *item*, or None when nothing applies to it."""
    plan = Plan(is_async=is_async)
    for module in MODULES:
        if not is_async and getattr(module, "ASYNC_ONLY", True):
            continue
        mark = item.get_closest_marker(module.NAME)
        if mark is None:
            budget = session_defaults[module.NAME]
        else:
            budget = call_marker(module, mark.args, dict(mark.kwargs), item.nodeid)
        if budget is not None or (measure_all and is_async):
            plan.budgets[module.NAME] = budget
    return plan if plan.budgets else None


def module_for(name: str) -> ModuleType:
    """The module of the budget called *name* (KeyError for an unknown name)."""
    return BY_NAME[name]
