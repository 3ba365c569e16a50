"""Naming the line to blame: the innermost frame in the user's code.

Every probe ends up with a stack, innermost frame first, as plain ``(filename, lineno,
function)`` tuples. Those come from a live frame (:func:`frames_from`), from a stack
or sampled on another thread. :func:`culprit_from` turns
them into a :class:`Culprit`: the innermost frame that belongs to the user, plus a short
trimmed stack of the user's frames around it.

"User code" is every file that is not part of the standard library, of an installed
package (site-packages / dist-packages), of pytest/pluggy, or of this plugin. Files
pytest collected from a project, and helper modules beside them, are user code.
"""

from __future__ import annotations

import linecache
import os
import sys
import sysconfig
from dataclasses import dataclass
from types import FrameType

__all__ = [
    "Culprit",
    "RawFrame",
    "absolute_path",
    "culprit_from",
    "frames_from",
    "is_user_file",
    "module_dirs",
    "prepare",
]

#: One frame as ``(filename, lineno, function name)``.
RawFrame = tuple[str, int, str]

_PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

# Bound now, before anything patches them. The plugin's own code runs on the loop thread
# while a loop runs (the leak probe's task factory, no_blocking's wrappers), and tools
# such as blockbuster replace ``os.path.abspath`` (it may call ``os.getcwd``) and raise
# there; found on the MCP SDK's suite, where that made the leak budget "not measured".
_isabs = os.path.isabs
_join = os.path.join
_normpath = os.path.normpath
_dirname = os.path.dirname
try:
    _START_DIR = os.getcwd()
except OSError:  # pragma: no cover - the working directory was removed
    _START_DIR = os.sep


def absolute_path(filename: str) -> str:
    """``os.path.abspath`` without a system call or a patchable function.

    A relative name is taken from the directory the process started in, as imports
    resolved it; a test that changes directory does not change what a file is.
    """
    return _normpath(filename if _isabs(filename) else _join(_START_DIR, filename))


def _library_prefixes() -> tuple[str, ...]:
    prefixes = {_PLUGIN_DIR}
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = paths.get(key)
        if path:
            prefixes.add(os.path.join(path, ""))
            prefixes.add(os.path.join(os.path.realpath(path), ""))
    prefixes.update(module_dirs(("pytest", "_pytest", "pluggy", "pytest_asyncio", "anyio", "uvloop")))
    return tuple(sorted(prefixes))


def module_dirs(names: tuple[str, ...]) -> set[str]:
    """The directories (ending in a separator) of those of *names* that are imported.

    Safe on the loop thread mid-test: only :func:`absolute_path`."""
    dirs = set()
    for name in names:
        file = getattr(sys.modules.get(name), "__file__", None)
        if file:
            dirs.add(_dirname(absolute_path(file)) + os.sep)
    return dirs


_LIBRARY_PREFIXES: tuple[str, ...] | None = None
_user_file_cache: dict[str, bool] = {}


def prepare() -> None:
    """Find the library directories now, while no loop runs (``sysconfig`` reads files).

    The manager calls this at the end of collection; :func:`is_user_file` would
    otherwise do it on its first call, which may come from the loop thread mid-test.
    """
    global _LIBRARY_PREFIXES
    if _LIBRARY_PREFIXES is None:
        _LIBRARY_PREFIXES = _library_prefixes()


def is_user_file(filename: str) -> bool:
    """True when *filename* is the user's code rather than a library, pytest or the plugin."""
    cached = _user_file_cache.get(filename)
    if cached is not None:
        return cached
    if _LIBRARY_PREFIXES is None:
        prepare()
    if filename.startswith("<"):
        result = False  # <frozen importlib._bootstrap>, <string>, ...
    else:
        path = absolute_path(filename)
        result = not (
            path.startswith(_LIBRARY_PREFIXES)  # type: ignore[arg-type]
            or f"{os.sep}site-packages{os.sep}" in path
            or f"{os.sep}dist-packages{os.sep}" in path
        )
    _user_file_cache[filename] = result
    return result


def frames_from(frame: FrameType | None, limit: int = 200) -> list[RawFrame]:
    """The stack above *frame* (included), innermost first, as plain tuples. Cheap."""
    out: list[RawFrame] = []
    while frame is not None and len(out) < limit:
        code = frame.f_code
        out.append((code.co_filename, frame.f_lineno or code.co_firstlineno, code.co_name))
        frame = frame.f_back
    return out


def _display_path(filename: str) -> str:
    try:
        rel = os.path.relpath(filename)
    except ValueError:  # another drive on Windows
        return filename
    return filename if rel.startswith(os.pardir + os.sep) else rel


@dataclass(frozen=True)
class Culprit:
    """The line to blame, with a short stack of the user's frames leading to it."""

    path: str
    line: int
    function: str
    #: User frames from outermost to innermost, the culprit last (at most a few).
    stack: tuple[RawFrame, ...] = ()
    #: What the culprit line was calling when it was caught, e.g. ``time.sleep``.
    calling: str | None = None

    @property
    def location(self) -> str:
        """``path:line``, the path relative to the current directory when inside it."""
        return f"{_display_path(self.path)}:{self.line}"

    def describe(self) -> str:
        """``path:line in function``."""
        return f"{self.location} in {self.function}"

    def source(self) -> str:
        """The culprit's source line, stripped ("" when unavailable)."""
        return linecache.getline(self.path, self.line).strip()

    def stack_lines(self) -> list[str]:
        """The trimmed stack, one ``path:line in function`` line each, culprit last."""
        return [f"{_display_path(f)}:{n} in {fn}" for f, n, fn in self.stack]

    def as_dict(self) -> dict[str, object]:
        return {
            "path": _display_path(self.path),
            "line": self.line,
            "function": self.function,
            "location": self.location,
            "calling": self.calling,
            "stack": self.stack_lines(),
        }


def culprit_from(frames: list[RawFrame], depth: int = 5, calling: str | None = None) -> Culprit | None:
    """The innermost user frame in *frames* (innermost first), or None if there is none."""
    user = [f for f in frames if is_user_file(f[0])]
    if not user:
        return None
    filename, lineno, function = user[0]
    stack = tuple(reversed(user[:depth]))
    return Culprit(filename, lineno, function, stack, calling)
