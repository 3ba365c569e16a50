"""Judgment for ``no_blocking``: the marker, its allowlist, and the verdict per phase.

``@pytest.mark.no_blocking`` (or the ini option ``asyncbudget_no_blocking = true``, or
``--asyncbudget-no-blocking``) fails an async test that makes a blocking call on the
event loop's thread while the loop runs; ``@pytest.mark.no_blocking(False)`` opts a test
out. What counts is listed in ``docs/no_blocking.md`` and measured by
:mod:`pytest_asyncbudget.probes.blocking`.

Allowlist entries (``no_blocking(allow=[...])`` and the ini lines
``asyncbudget_blocking_allow``) are checked when they are read, so a typo is a usage
error naming the test and the marker (or the ini option), never a silent no-op:

* a blocking function this budget reports, by its reported name (``time.sleep``,
  ``os.stat``, ``socket.socket.recv``; also ``open`` and ``input``), or a prefix of such
  names (``socket.socket``, ``sqlite3``, ``os``);
* a caller allowed to block: a module that can be found (``myapp.cache``: calls made
  while code of that module or its submodules is on the stack) or ``module:function``
  (``myapp.cache:load``; the function by name or qualified name, e.g. ``Cache.load``).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..patches import ALIASES, FUNCTION_NAMES
from ..probes.blocking import AllowEntry, BlockingMeasurement, BlockingProbe
from ..units import format_duration
from .base import Finding, Verdict

if TYPE_CHECKING:
    from ..probes.base import ProbeContext
    from ..record import TestRecord

__all__ = [
    "BlockingBudget",
    "INI",
    "INI_ALLOW",
    "NAME",
    "add_options",
    "default",
    "judge",
    "make_probe",
    "marker",
    "parse_allow",
    "summary_digest",
    "summary_lines",
]

NAME = "no_blocking"
INI = "asyncbudget_no_blocking"
INI_ALLOW = "asyncbudget_blocking_allow"
#: How many distinct blocking calls a failure lists before "... and N more".
SHOWN = 10

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_INI_ALLOW_KEY = pytest.StashKey[tuple]()
#: Every dotted prefix of a reported name ("socket", "socket.socket", ...).
_PREFIXES = frozenset(name.rsplit(".", n)[0] for name in FUNCTION_NAMES for n in range(1, name.count(".") + 1))


@dataclass(frozen=True)
class BlockingBudget:
    """The parsed budget of one test: on, with the marker's allowlist entries."""

    allow: tuple[AllowEntry, ...] = ()


# -- the marker ----------------------------------------------------------------------------
def marker(enabled: bool = True, *, allow: Iterable[str] | str = ()) -> BlockingBudget | None:
    """no_blocking(enabled=True, *, allow=[...]): fail if the test makes a blocking call (time.sleep, file, socket, DNS, subprocess, sqlite3, thread waits, input) on the event loop's thread; allow names functions (time.sleep) or callers (module, module:function) that may block; no_blocking(False) opts a test out."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {type(enabled).__name__} {enabled!r}")
    entries = parse_allow(allow, origin="marker")
    if not enabled:
        if entries:
            raise ValueError("allow= has no effect with no_blocking(False); remove one of them")
        return None
    return BlockingBudget(allow=entries)


def parse_allow(values: Iterable[str] | str, origin: str, search: Iterable[Path] = ()) -> tuple[AllowEntry, ...]:
    """Parse and check allowlist entries; a bad one raises ValueError saying why.

    *search*: extra directories where a caller module may live (the rootdir, for the ini
    file's entries, which are read before the tests' directories are on ``sys.path``).
    """
    if isinstance(values, str):
        values = [values]
    try:
        items = list(values)
    except TypeError:
        raise TypeError(f"allow must be a list of strings, got {type(values).__name__} {values!r}") from None
    entries: list[AllowEntry] = []
    seen: set[str] = set()
    for value in items:
        if not isinstance(value, str):
            raise TypeError(f"allow entries must be strings, got {type(value).__name__} {value!r}")
        text = value.strip()
        if text and text not in seen:
            seen.add(text)
            entries.append(_entry(text, origin, tuple(search)))
        elif not text:
            raise ValueError("an empty allow entry names nothing")
    return tuple(entries)


def _entry(text: str, origin: str, search: tuple[Path, ...]) -> AllowEntry:
    if ":" in text:
        module, _, function = text.partition(":")
        module, function = module.strip(), function.strip()
        if not _DOTTED.match(module) or not _DOTTED.match(function):
            raise ValueError(f"{text!r}: a caller is written 'module' or 'module:function'")
        if not _module_exists(module, search):
            raise ValueError(f"{text!r}: no module {module!r} can be found{_suggest(module)}")
        loaded = sys.modules.get(module)
        if loaded is not None and _lookup(loaded, function) is None:
            raise ValueError(f"{text!r}: module {module!r} has no function {function!r}")
        return AllowEntry(text, origin, caller=(module, function))
    name = ALIASES.get(text, text)
    if name in FUNCTION_NAMES:
        return AllowEntry(text, origin, functions=frozenset({name}))
    if not _DOTTED.match(text):
        raise ValueError(f"{text!r} names nothing: write a function such as 'time.sleep' or a caller 'module[:function]'")
    functions = frozenset(n for n in FUNCTION_NAMES if n.startswith(text + ".")) if text in _PREFIXES else frozenset()
    caller = (text, None) if _module_exists(text, search) else None
    if not functions and caller is None:
        raise ValueError(
            f"{text!r} names neither a blocking function that no_blocking reports nor a module it can find"
            f"{_suggest(text)} (see docs/no_blocking.md for the names)"
        )
    return AllowEntry(text, origin, functions=functions, caller=caller)


def _lookup(module: Any, qualname: str) -> Any:
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _module_exists(name: str, search: tuple[Path, ...]) -> bool:
    if name in sys.modules:
        return True
    try:
        if importlib.util.find_spec(name) is not None:
            return True
    except (ImportError, ValueError, AttributeError):
        pass
    if name.partition(".")[0] in getattr(sys, "stdlib_module_names", ()):
        return False
    relative = name.replace(".", os.sep)
    return any(
        (base / (relative + ".py")).is_file() or (base / relative).is_dir() for base in search
    )


def _suggest(text: str) -> str:
    close = difflib.get_close_matches(text, sorted(FUNCTION_NAMES | set(ALIASES)), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


# -- options and defaults ------------------------------------------------------------------
def add_options(group: pytest.OptionGroup, parser: pytest.Parser) -> None:
    group.addoption(
        "--asyncbudget-no-blocking",
        dest="asyncbudget_no_blocking",
        action="store_true",
        default=None,
        help="apply the no_blocking budget to every async test: fail on any blocking call made on "
        "the event loop (opt a test out with @pytest.mark.no_blocking(False))",
    )
    group.addoption(
        "--asyncbudget-blocking-raise",
        dest="asyncbudget_blocking_raise",
        action="store_true",
        default=False,
        help="no_blocking: also raise BlockingCallError at the blocking call itself, for debugging",
    )
    parser.addini(INI, "true: apply the no_blocking budget to every async test", default="")
    parser.addini(
        INI_ALLOW,
        "no_blocking allowlist, one entry a line: a blocking function (time.sleep, os.stat) or a "
        "caller allowed to block (module, module:function)",
        type="linelist",
        default=[],
    )


def _search_dirs(config: pytest.Config) -> tuple[Path, ...]:
    dirs = [Path(config.rootpath)]
    inipath = getattr(config, "inipath", None)
    if inipath is not None:
        dirs.append(Path(inipath).parent)
    return tuple(dirs)


def ini_allow(config: pytest.Config) -> tuple[AllowEntry, ...]:
    """The ini file's allowlist entries, checked once per session."""
    key = _INI_ALLOW_KEY
    cached = config.stash.get(key, None)
    if cached is not None:
        return cached
    try:
        entries = parse_allow(config.getini(INI_ALLOW), origin="ini", search=_search_dirs(config))
    except (TypeError, ValueError) as exc:
        raise pytest.UsageError(f"{INI_ALLOW}: {exc}") from None
    config.stash[key] = entries
    return entries


def default(config: pytest.Config) -> BlockingBudget | None:
    """On for every async test with the CLI flag or the ini option; None otherwise."""
    ini_allow(config)  # bad entries are a usage error at startup, whether or not the default is on
    if config.getoption("asyncbudget_no_blocking"):
        return BlockingBudget()
    value = str(config.getini(INI)).strip().lower()
    if value in _TRUE:
        return BlockingBudget()
    if value in _FALSE or value == "none":
        return None
    raise pytest.UsageError(f"{INI}={config.getini(INI)!r}: expected true or false")


def make_probe(budget: BlockingBudget | None, context: ProbeContext) -> BlockingProbe:
    marker_entries = budget.allow if budget is not None else ()
    texts = {e.text for e in marker_entries}
    allow = marker_entries + tuple(e for e in ini_allow(context.config) if e.text not in texts)
    return BlockingProbe(allow, context, raise_at_call=bool(context.config.getoption("asyncbudget_blocking_raise")))


# -- judgment ------------------------------------------------------------------------------
def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def judge(budget: BlockingBudget | None, m: BlockingMeasurement) -> Verdict:
    calls, count = m.calls, m.count
    passed = budget is None or not calls
    s = "" if count == 1 else "s"
    if not calls:
        headline = f"no_blocking ok: no blocking call on the event loop ({m.phase})"
        if not m.unused_allow:  # the usual case: nothing more to say
            return Verdict(budget=NAME, phase=m.phase, passed=True, headline=headline, measured=m.total)
    elif budget is None:
        headline = f"no_blocking: {count} blocking call{s} on the event loop ({m.phase})"
    else:
        distinct = f", {len(calls)} distinct" if len(calls) > 1 else ""
        headline = f"no_blocking failed: {count} blocking call{s} on the event loop{distinct} ({m.phase})"
    if m.unused_allow:
        headline += "; allowlist entries that matched nothing in this test: " + ", ".join(map(repr, m.unused_allow))
    findings = []
    for call in calls[:SHOWN]:
        details = []
        if call.culprit is None:
            details.append("culprit unknown: no frame of your code on the stack")
        findings.append(
            Finding(
                title=f"{call.function} called {_times(call.count)}, {format_duration(call.total)} in total ({call.phase})",
                culprit=call.culprit,
                details=details,
                data={"function": call.function, "count": call.count, "total_s": call.total, "phase": call.phase},
            )
        )
    if calls and budget is not None and not passed:
        names = ", ".join(repr(n) for n in dict.fromkeys(c.function for c in calls))
        findings[-1].details.append(f"if meant to block: @pytest.mark.no_blocking(allow=[{names}])")
    if len(calls) > SHOWN:
        more = calls[SHOWN:]
        findings.append(
            Finding(
                title=f"... and {len(more)} more distinct blocking calls ({sum(c.count for c in more)} calls)",
                data={"functions": sorted({c.function for c in more})},
            )
        )
    if m.unused_allow:
        findings.append(
            Finding(
                title="allowlist entries that matched nothing in this test: " + ", ".join(map(repr, m.unused_allow)),
                data={"unused_allow": list(m.unused_allow)},
            )
        )
    return Verdict(
        budget=NAME,
        phase=m.phase,
        passed=passed,
        headline=headline,
        measured=m.total,
        limit=None,  # nothing to compare with: any blocking call fails
        findings=findings,
    )


# -- summary -----------------------------------------------------------------------------
def summary_digest(record: TestRecord) -> tuple[Any, ...] | None:
    """What :func:`summary_lines` needs of one finished test (atomic values and tuples
    only, which the garbage collector stops tracking), or None when it adds nothing."""
    per_phase = record.measurements.get(NAME)
    if not per_phase or record.outcome == "skipped":
        return None
    used: set[str] = set()
    for measurement in per_phase.values():
        used.update(measurement.allowed)
    teardown = per_phase.get("teardown")
    unused = teardown.unused_allow if teardown is not None else None
    return (record.nodeid, tuple(sorted(used)), tuple(unused or ()))


def summary_lines(config: pytest.Config, digests: Iterable[tuple[Any, ...]]) -> list[str]:
    """Terminal-summary lines naming allowlist entries that never matched.

    Marker entries are reported per test; ini entries only when no test used them.
    Tests that did not run (skipped) or never ran a loop are left out: they could not
    have used an entry.
    """
    lines: list[str] = []
    ini_entries = ini_allow(config)
    ini_used: set[str] = set()
    measured_tests = 0
    for nodeid, used, unused in digests:
        measured_tests += 1
        ini_used.update(used)
        if unused:
            lines.append(f"  {nodeid}: {', '.join(map(repr, unused))} (marker)")
    unused_ini = [e.text for e in ini_entries if e.text not in ini_used]
    if measured_tests and unused_ini:
        lines.insert(0, f"  {', '.join(map(repr, unused_ini))} ({INI_ALLOW}, in {measured_tests} tests)")
    if lines:
        lines.insert(0, "no_blocking: allowlist entries that never matched:")
    return lines
