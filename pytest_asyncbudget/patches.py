"""The one module that patches blocking functions (for the ``no_blocking`` budget).

What is patched
---------------
Every place is listed in :data:`TARGETS`: module functions (``time.sleep``, ``os.stat``,
``socket.getaddrinfo``, ``subprocess.run`` ...) and methods of *Python* classes
(``socket.socket`` is a Python subclass of the C ``_socket.socket``, so ``recv`` & co. can
be put on it; ``threading.Event.wait``, ``queue.Queue.get``, ``ssl.SSLSocket.read`` ...).
C types cannot be patched by ``setattr``; for the three that matter the objects are
*made* watchable instead, only while a phase of a budgeted test runs:

* files: ``open()`` called on the test's thread, from the user's code, builds the usual
  ``TextIOWrapper``/``Buffered*`` stack over :class:`WatchedFileIO`, a Python subclass of
  ``io.FileIO`` (unbuffered binary files, ``buffering=0``, are left unwatched: the caller
  would get the raw object itself, of another type). The C buffered layer calls the raw file's ``readinto``/``readall``/
  ``write`` by name, so every real read or write system call (not a buffered write that
  only fills memory) passes through Python. The object the caller gets has the usual
  type; no reference cycle is made, so files still close when dropped.
* ``threading.Lock()``/``RLock()`` called from the user's code return a thin
  :class:`WatchedLock` around the real lock (locks made by the standard library for its
  own use are left alone: their waits are seen at ``Condition.wait``, ``Queue.get`` ...).
* ``sqlite3.connect()`` without a ``factory`` gets one: :class:`WatchedConnection`, a
  Python subclass of ``sqlite3.Connection`` whose cursors are :class:`WatchedCursor`.

Names imported by value into the user's own modules (``from time import sleep`` in a
test file or helper) are rebound for the phase too: each user module is scanned once for
globals that are one of the patched functions.

Why it is safe
--------------
A wrapper always calls the original function with the caller's own arguments and returns
its result or lets its exception through unchanged. The fast path is one global read:
``_probe is None`` outside a budgeted phase, then ``_get_running_loop() is not
probe.loop`` (C, about 40 ns), which also sends every call made on another thread
(executors, ``asyncio.to_thread``, the test's own threads) straight to the original.
The socket methods asyncio's transports call at every read and write (``recv``,
``send``, ...) have an optional compiled twin, ``_speedups.SocketGuard``: it lets a call
on a non-blocking socket through without a Python frame and hands any other call to the
same Python check (see :func:`_socket_positional_wrapper`).
Only a call made on the loop's own thread while that loop runs goes on to the probe,
which decides (from the caller's frames) whether it is the user's blocking call; it never
raises into the caller, except :class:`BlockingCallError` when the user asked for
``--asyncbudget-blocking-raise``. "A wait that actually waits": the checks in this module
try the non-blocking form first (``acquire(False)``, ``get(block=False)``) and return
its result when it succeeds, so the state of a lock, semaphore or queue always ends up
exactly as the original call would leave it.

How it is undone
----------------
:func:`install` is called when a phase of a budgeted test starts and :func:`uninstall`
when it stops (from the probe's ``phase_stopped``, which the core calls in a ``finally``
block). Uninstalling puts back each original that is still our wrapper, and deletes a
class attribute we added (``socket.socket.recv`` lives on ``_socket.socket`` and is only
*shadowed*). An attribute someone else replaced in between (``monkeypatch``, ``mock``)
is left alone both ways, and a wrapper that outlives its phase (say a fixture's
``monkeypatch`` restores it after we uninstalled) is a pass-through, because it consults
the global ``_probe``, which is None between phases. Objects made watchable (files,
locks, connections) stay watchable for their life; outside budgeted phases their extra
cost is that same single global check.
"""

from __future__ import annotations

import _socket
import functools
import io
import os
import sys
import threading
import types
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType, ModuleType
from typing import Any, Protocol

from asyncio import _get_running_loop

from .accel import speedups
from .culprit import _user_file_cache, is_user_file

__all__ = [
    "BlockingCallError",
    "FUNCTION_NAMES",
    "NO_LOOP",
    "TARGETS",
    "Watcher",
    "WatchedConnection",
    "WatchedCursor",
    "WatchedFileIO",
    "WatchedLock",
    "install",
    "installed",
    "uninstall",
]

_clock = time.perf_counter
_get_ident = threading.get_ident
_real_open = io.open
_real_lock = threading.Lock
_real_rlock = threading.RLock


class BlockingCallError(RuntimeError):
    """Raised at a blocking call on the event loop under ``--asyncbudget-blocking-raise``."""


#: ``probe.loop`` while no loop is attached: never equal to a running loop (nor to None).
NO_LOOP: Any = object()


class Watcher(Protocol):
    """What a wrapper talks to: the ``no_blocking`` probe of the running test phase."""

    #: The loop running on the test's thread, or :data:`NO_LOOP`.
    loop: Any
    #: How many watched calls are in progress on the loop thread (nested calls are not
    #: judged again: ``shutil.copy`` is one blocking call, not also an ``open``).
    depth: int
    #: ``threading.get_ident()`` of the test's thread.
    thread: int

    def enter(self, name: str, caller: FrameType) -> Any:
        """A watched call on the loop; a token for :meth:`leave`, or None to ignore it.

        Never raises, except :class:`BlockingCallError` in raise mode."""

    def leave(self, token: Any, elapsed: float) -> None:
        """The call *token* came from returned (or raised) after *elapsed* seconds."""

    def watchable(self, caller: FrameType) -> bool:
        """Should an object (file, connection) the code at *caller* creates be watched?"""

    def check_failed(self, name: str) -> None:
        """A check in this module raised: report it (the call went ahead unchanged)."""


#: The probe of the budgeted phase in progress, or None. Read by every wrapper.
_probe: Watcher | None = None
_stack: list[Watcher] = []

# -- the slow path ------------------------------------------------------------------------
_BLOCKS: Any = object()  # a check's answer: the call will block
_PASS: Any = object()  # a check's answer: the call will not block, call the original


class _Blocks:
    """A check's answer: the call will block; call the original with these arguments."""

    __slots__ = ("args", "kwargs")

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.args, self.kwargs = args, kwargs


def _blocking_call(
    p: Watcher, name: str, original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], caller: FrameType
) -> Any:
    __tracebackhide__ = True
    token = p.enter(name, caller)  # may raise BlockingCallError (raise mode) and nothing else
    p.depth += 1
    start = _clock()
    try:
        return original(*args, **kwargs)
    finally:
        p.depth -= 1
        if token is not None:
            p.leave(token, _clock() - start)


def _answered_call(
    p: Watcher,
    name: str,
    original: Callable[..., Any],
    answer: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    caller: FrameType,
) -> Any:
    __tracebackhide__ = True
    if type(answer) is _Blocks:
        return _blocking_call(p, name, original, answer.args, answer.kwargs, caller)
    return _blocking_call(p, name, original, args, kwargs, caller)


def _checked_call(
    p: Watcher, name: str, original: Callable[..., Any], check: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """A checked wrapper's path on the loop thread: ask *check*, then call the original
    (watched only when it will block). Called by the wrapper itself, so the frame that
    made the call is two up."""
    __tracebackhide__ = True
    try:
        answer = check(original, args, kwargs)
    except Exception:  # noqa: BLE001 - a bug of ours: reported by the probe, call goes ahead
        p.check_failed(name)
        answer = _PASS
    if answer is _PASS:
        return original(*args, **kwargs)
    if answer is not _BLOCKS and type(answer) is not _Blocks:
        return answer  # the result of the non-blocking attempt that succeeded
    return _answered_call(p, name, original, answer, args, kwargs, sys._getframe(2))


#: Timeouts the specialized wrappers compare without a check (anything else goes to it).
_REALS = frozenset({int, float})


def _has_signature(original: Callable[..., Any], names: tuple[str, ...], defaults: tuple[Any, ...]) -> bool:
    """Does *original* take exactly these parameters (by position or keyword), with these
    defaults for the last ones? Only then may a wrapper spell its signature out."""
    import inspect

    try:
        params = list(inspect.signature(original).parameters.values())
    except (TypeError, ValueError):
        return False
    if [p.name for p in params] != list(names):
        return False
    if any(p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params):
        return False
    got = tuple(p.default for p in params[len(params) - len(defaults) :])
    return len(got) == len(defaults) and all(a is b or a == b for a, b in zip(got, defaults))


#: Socket methods that are C methods taking positional arguments only, and at most this
#: many (``sendmsg(buffers, ancdata, flags, address)``).
_SOCKET_POSITIONAL = frozenset("connect connect_ex recv recvfrom recvmsg recvmsg_into send sendall sendto sendmsg".split())
_NO_ARG: Any = object()


def _positional_only(original: Any) -> bool:
    return isinstance(original, types.MethodDescriptorType) and original.__name__ in _SOCKET_POSITIONAL


def _socket_positional_wrapper(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    """The wrapper for ``socket.recv``, ``send`` and the like: the hottest on the loop
    (every read and write of asyncio's transports).

    These C methods take no keyword arguments, so the wrapper spells out up to four
    positional ones instead of ``*args, **kwargs``: a call then builds no tuple and no
    dict, which halves what the wrapper adds to a non-blocking call (about 330 -> 130 ns).

    Where the optional C extension is built, the wrapper is its ``SocketGuard`` instead
    (see :func:`_compiled_socket_wrapper`): it lets a non-blocking socket straight
    through without a Python frame and hands every other call to the same checks as
    below. The Python wrapper stays the reference (``tests/test_speedups.py``).
    """
    compiled = speedups()
    if compiled is not None:
        return _compiled_socket_wrapper(compiled, name, original)

    def wrapper(self: Any, a: Any = _NO_ARG, b: Any = _NO_ARG, c: Any = _NO_ARG, d: Any = _NO_ARG, /) -> Any:
        # A non-blocking socket (timeout 0.0: every socket of asyncio's transports) goes
        # straight through, wherever and whenever it is used.
        try:
            through = _socket_gettimeout(self) == 0.0
        except Exception:  # noqa: BLE001 - not a socket: the original raises the error
            through = True
        if not through:
            p = _probe
            through = p is None or p.depth or _get_running_loop() is not p.loop
        if through:
            if b is _NO_ARG:
                return original(self) if a is _NO_ARG else original(self, a)
            if c is _NO_ARG:
                return original(self, a, b)
            return original(self, a, b, c) if d is _NO_ARG else original(self, a, b, c, d)
        __tracebackhide__ = True  # pytest hides this frame (slow path only)
        args = tuple(arg for arg in (self, a, b, c, d) if arg is not _NO_ARG)
        return _blocking_call(p, name, original, args, {}, sys._getframe(1))  # type: ignore[arg-type]

    # Argument errors then name the method, as the original's do ("recv() got ...").
    code = wrapper.__code__
    try:
        wrapper.__code__ = code.replace(co_name=original.__name__, co_qualname=original.__name__)
    except TypeError:  # 3.10: no co_qualname
        wrapper.__code__ = code.replace(co_name=original.__name__)
    functools.update_wrapper(wrapper, original)
    return wrapper


def _compiled_socket_wrapper(compiled: Any, name: str, original: Callable[..., Any]) -> Any:
    """``_speedups.SocketGuard`` around *original*.

    A call on a non-blocking socket, a call that is not on a socket, and a call with
    keyword arguments or more than four arguments go straight to *original* (which raises
    its own argument errors). Every other call goes to ``slow``, the rest of the Python
    wrapper above. It binds like a function, so ``sock.recv(n)`` passes the socket first.
    """

    def slow(self: Any, *args: Any) -> Any:
        p = _probe
        if p is None or p.depth or _get_running_loop() is not p.loop:
            return original(self, *args)
        __tracebackhide__ = True  # pytest hides this frame (slow path only)
        return _blocking_call(p, name, original, (self, *args), {}, sys._getframe(1))

    guard = compiled.SocketGuard(original, _socket_gettimeout, slow)
    functools.update_wrapper(guard, original)
    return guard


def _function_wrapper(name: str, original: Callable[..., Any], check: Callable[..., Any] | None) -> Callable[..., Any]:
    if check is None:

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            p = _probe
            if p is None or p.depth or _get_running_loop() is not p.loop:
                return original(*args, **kwargs)
            __tracebackhide__ = True  # pytest hides this frame (slow path only)
            return _blocking_call(p, name, original, args, kwargs, sys._getframe(1))

    elif check is _socket_blocks and _positional_only(original):
        return _socket_positional_wrapper(name, original)

    elif check is _socket_blocks:  # hot on the loop (asyncio's transports): inlined

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            # A non-blocking socket (timeout 0.0: every socket of asyncio's transports)
            # goes straight through, wherever and whenever it is used: one C call.
            try:
                if _socket_gettimeout(self) == 0.0:
                    return original(self, *args, **kwargs)
            except Exception:  # noqa: BLE001 - not a socket: the original raises the error
                return original(self, *args, **kwargs)
            p = _probe
            if p is None or p.depth or _get_running_loop() is not p.loop:
                return original(self, *args, **kwargs)
            __tracebackhide__ = True  # pytest hides this frame (slow path only)
            return _blocking_call(p, name, original, (self, *args), kwargs, sys._getframe(1))

    elif check is _semaphore_acquire_blocks and _has_signature(original, ("self", "blocking", "timeout"), (True, None)):
        # Hot on the loop: an executor's submit does acquire(timeout=0) at every
        # run_in_executor/to_thread. The answers that need no look are inlined.

        def wrapper(self: Any, blocking: Any = True, timeout: Any = None) -> Any:  # type: ignore[misc]
            p = _probe
            if (
                p is None
                or not blocking
                or (timeout.__class__ in _REALS and timeout <= 0)
                or p.depth
                or _get_running_loop() is not p.loop
            ):
                return original(self, blocking, timeout)
            __tracebackhide__ = True  # pytest hides this frame (slow path only)
            return _checked_call(p, name, original, check, (self, blocking, timeout), {})

    elif check is _future_wait_blocks and _has_signature(original, ("self", "timeout"), (None,)):
        # Hot on the loop: asyncio reads every executor future's exception() and result()
        # once it is done (wrap_future). A done future needs no other look.

        def wrapper(self: Any, timeout: Any = None) -> Any:  # type: ignore[misc]
            p = _probe
            if p is None or getattr(self, "_state", None) in _FUTURE_DONE or p.depth or _get_running_loop() is not p.loop:
                return original(self, timeout)
            __tracebackhide__ = True  # pytest hides this frame (slow path only)
            return _checked_call(p, name, original, check, (self, timeout), {})

    else:

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            p = _probe
            if p is None or p.depth or _get_running_loop() is not p.loop:
                return original(*args, **kwargs)
            __tracebackhide__ = True  # pytest hides this frame (loop thread only)
            return _checked_call(p, name, original, check, args, kwargs)

    try:
        functools.update_wrapper(wrapper, original)
    except (AttributeError, TypeError):  # pragma: no cover - exotic callables
        pass
    compiled = _call_guards()
    if compiled is not None and (check is _future_wait_blocks or check is _semaphore_acquire_blocks):
        # The to_thread path: the compiled twin answers a done future and acquire(timeout=0)
        # without a Python frame, and hands every other call to the wrapper above.
        kind, data = (_GUARD_DONE, _FUTURE_DONE) if check is _future_wait_blocks else (_GUARD_NO_WAIT, frozenset())
        return _compiled_guard(compiled, original, kind, data, wrapper)
    return wrapper


#: ``_speedups.CallGuard`` kinds (see _speedups.c).
_GUARD_DONE, _GUARD_NO_WAIT, _GUARD_STDLIB_CALLER = 1, 2, 3


def _call_guards() -> Any:
    """The compiled module when it has ``CallGuard`` (an extension built from an older
    checkout, as an editable install can keep, has not: the Python wrappers then serve)."""
    compiled = speedups()
    return compiled if compiled is not None and hasattr(compiled, "CallGuard") else None


def _compiled_guard(compiled: Any, original: Callable[..., Any], kind: int, data: Any, slow: Callable[..., Any]) -> Any:
    """``_speedups.CallGuard`` around *original*: *slow* (the Python wrapper, or for a
    lock factory the rest of it) decides every call the guard cannot answer alone."""
    guard = compiled.CallGuard(original, kind, data, slow)
    try:
        functools.update_wrapper(guard, original)
    except (AttributeError, TypeError):  # pragma: no cover - exotic callables
        pass
    return guard


# -- checks: will this call block? (run only on the loop thread, while the loop runs) ---
def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _no_wait(timeout: Any) -> bool:
    """True for a timeout that makes the call return at once (0, negative, or invalid)."""
    if timeout is None:
        return False
    try:
        return bool(timeout <= 0)
    except TypeError:
        return True  # invalid: the original raises at once


def _sleep_blocks(original: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # time.sleep(0) only yields the GIL: it never holds the loop.
    return _PASS if args and _no_wait(args[0]) else _BLOCKS


def _fd_blocks(original: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # os.read/os.write on a non-blocking descriptor (asyncio's pipes) returns at once.
    try:
        return _BLOCKS if os.get_blocking(args[0]) else _PASS
    except (OSError, TypeError, ValueError, IndexError):
        return _PASS  # the original raises the same error


def _waitpid_blocks(original: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    options = _arg(args, kwargs, 1, "options", 0)
    try:
        return _PASS if options & os.WNOHANG else _BLOCKS
    except TypeError:
        return _PASS


_socket_gettimeout = _socket.socket.gettimeout


def _socket_blocks(original: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # A socket with timeout 0.0 is non-blocking (asyncio's transports); None or > 0 blocks.
    try:
        return _PASS if _socket_gettimeout(args[0]) == 0.0 else _BLOCKS
    except (TypeError, OSError, IndexError):
        return _PASS


def _condition_wait_blocks(original: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return _PASS if _no_wait(_arg(args, kwargs, 1, "timeout", None)) else _BLOCKS


def _event_wait_blocks(original: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _no_wait(_arg(args, kwargs, 1, "timeout", None)) or args[0].is_set():
        return _PASS
    return _BLOCKS


def _semaphore_acquire_blocks(original: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if not _arg(args, kwargs, 1, "blocking", True) or _no_wait(_arg(args, kwargs, 2, "timeout", None)):
        return _PASS  # (an executor's submit does acquire(timeout=0) every time)
    if original(args[0], False):  # acquired at once: exactly what the blocking call does
        return True
    return _BLOCKS


def _queue_get_blocks(original: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    import queue

    if not _arg(args, kwargs, 1, "block", True) or _no_wait(_arg(args, kwargs, 2, "timeout", None)):
        return _PASS
    try:
        return original(args[0], False)  # an item was there: the same result, no wait
    except queue.Empty:
        return _BLOCKS


def _queue_put_blocks(original: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    import queue

    if len(args) < 2 or not _arg(args, kwargs, 2, "block", True) or _no_wait(_arg(args, kwargs, 3, "timeout", None)):
        return _PASS
    try:
        return original(args[0], args[1], False)  # there was room: stored, no wait
    except queue.Full:
        return _BLOCKS


_FUTURE_DONE = frozenset({"FINISHED", "CANCELLED", "CANCELLED_AND_NOTIFIED"})


def _future_wait_blocks(original: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # Read the state without the future's lock (asyncio's to_thread reads every result on
    # the loop): a future that finishes right after this look is counted as a wait.
    future = args[0]
    state = getattr(future, "_state", None)
    if (state in _FUTURE_DONE if state is not None else future.done()) or _no_wait(_arg(args, kwargs, 1, "timeout", None)):
        return _PASS
    return _BLOCKS


def _futures_wait_blocks(original: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION

    if not args:
        return _PASS
    fs = args[0]
    if not isinstance(fs, (set, frozenset, list, tuple)):
        fs = set(fs)  # wait() does the same first; an iterator can be read only once
        args = (fs, *args[1:])
    if _no_wait(_arg(args, kwargs, 1, "timeout", None)):
        return original(*args, **kwargs)
    when = _arg(args, kwargs, 2, "return_when", ALL_COMPLETED)
    done = [f for f in fs if f.done()]
    if when == FIRST_COMPLETED:
        ready = bool(done)
    elif when == FIRST_EXCEPTION:
        ready = len(done) == len(set(fs)) or any(not f.cancelled() and f.exception() is not None for f in done)
    else:
        ready = len(done) == len(set(fs))
    if ready:
        return original(*args, **kwargs)
    return _Blocks(args, kwargs)


def _barrier_wait_blocks(original: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    barrier = args[0]
    if _no_wait(_arg(args, kwargs, 1, "timeout", None)) or barrier.broken:
        return _PASS
    return _PASS if barrier.n_waiting + 1 >= barrier.parties else _BLOCKS  # the last one in


def _thread_join_blocks(original: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    thread = args[0]
    if _no_wait(_arg(args, kwargs, 1, "timeout", None)) or not thread.is_alive():
        return _PASS
    return _PASS if thread is threading.current_thread() else _BLOCKS  # that one raises


def _popen_wait_blocks(original: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    process = args[0]
    if process.returncode is not None or _no_wait(_arg(args, kwargs, 1, "timeout", None)):
        return _PASS
    return _PASS if process.poll() is not None else _BLOCKS  # poll() reaps, as wait() would


def _popen_communicate_blocks(original: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    process = args[0]
    idle = process.stdin is None and process.stdout is None and process.stderr is None
    if idle and (process.returncode is not None or process.poll() is not None):
        return _PASS
    return _BLOCKS


# -- files ------------------------------------------------------------------------------------
_FileIO_read = io.FileIO.read
_FileIO_readall = io.FileIO.readall
_FileIO_readinto = io.FileIO.readinto
_FileIO_write = io.FileIO.write


class WatchedFileIO(io.FileIO):
    """``io.FileIO`` whose system calls are watched; see the module docstring."""

    __slots__ = ()

    def read(self, size: int = -1, /) -> Any:
        p = _probe
        if p is None or p.depth or _get_running_loop() is not p.loop:
            return _FileIO_read(self, size)
        __tracebackhide__ = True  # pytest hides this frame (slow path only)
        return _blocking_call(p, "io.FileIO.read", _FileIO_read, (self, size), {}, sys._getframe(1))

    def readall(self) -> Any:
        p = _probe
        if p is None or p.depth or _get_running_loop() is not p.loop:
            return _FileIO_readall(self)
        __tracebackhide__ = True  # pytest hides this frame (slow path only)
        return _blocking_call(p, "io.FileIO.read", _FileIO_readall, (self,), {}, sys._getframe(1))

    def readinto(self, buffer: Any, /) -> Any:
        p = _probe
        if p is None or p.depth or _get_running_loop() is not p.loop:
            return _FileIO_readinto(self, buffer)
        __tracebackhide__ = True  # pytest hides this frame (slow path only)
        return _blocking_call(p, "io.FileIO.read", _FileIO_readinto, (self, buffer), {}, sys._getframe(1))

    def write(self, data: Any, /) -> Any:
        p = _probe
        if p is None or p.depth or _get_running_loop() is not p.loop:
            return _FileIO_write(self, data)
        __tracebackhide__ = True  # pytest hides this frame (slow path only)
        return _blocking_call(p, "io.FileIO.write", _FileIO_write, (self, data), {}, sys._getframe(1))


_OPEN_MODE_CHARS = frozenset("axrwb+t")


def _is_path_or_fd(file: Any) -> bool:
    return isinstance(file, (int, str, bytes)) or hasattr(type(file), "__fspath__")


def _open_args(
    file: Any,
    mode: str = "r",
    buffering: int = -1,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
    closefd: bool = True,
    opener: Any = None,
) -> tuple[Any, ...]:
    return file, mode, buffering, encoding, errors, newline, closefd, opener


def _watched_open(
    file: Any,
    mode: str = "r",
    buffering: int = -1,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
    closefd: bool = True,
    opener: Any = None,
) -> Any:
    """``io.open`` over a :class:`WatchedFileIO`, or None for anything unusual.

    Mirrors the C ``io.open`` step by step for valid arguments; for anything else (bad
    mode or argument types, binary line buffering, ``-X warn_default_encoding``) it
    returns None *before* touching the file system, and the caller uses the real
    ``open``, so errors and warnings stay exactly the real ones.
    """
    if type(mode) is not str or type(buffering) is not int or not _is_path_or_fd(file):
        return None
    if not all(v is None or type(v) is str for v in (encoding, errors, newline)):
        return None
    if newline not in (None, "", "\n", "\r", "\r\n") or (opener is not None and not callable(opener)):
        return None
    modes = set(mode)
    if not modes <= _OPEN_MODE_CHARS or len(modes) != len(mode):
        return None
    creating, reading, writing, appending = "x" in modes, "r" in modes, "w" in modes, "a" in modes
    updating, text, binary = "+" in modes, "t" in modes, "b" in modes
    if (text and binary) or creating + reading + writing + appending != 1:
        return None
    if binary and (encoding is not None or errors is not None or newline is not None or buffering == 1):
        return None
    if not binary and encoding is None and sys.flags.warn_default_encoding:
        return None
    if buffering == 0:
        return None  # unbuffered: the caller would get the raw file itself, of another type
    rawmode = ("x" if creating else "r" if reading else "w" if writing else "a") + ("+" if updating else "")
    if not isinstance(file, int):
        file = os.fspath(file)  # as io.open does: f.name is the str/bytes path
    raw = WatchedFileIO(file, rawmode, closefd, opener=opener)
    result: Any = raw
    try:
        line_buffering = False
        if buffering == 1 or (buffering < 0 and raw.isatty()):
            buffering = -1
            line_buffering = True
        if buffering < 0:
            buffering = getattr(raw, "_blksize", io.DEFAULT_BUFFER_SIZE)
            if buffering <= 1:
                buffering = io.DEFAULT_BUFFER_SIZE
        if updating:
            buffer: Any = io.BufferedRandom(raw, buffering)
        elif creating or writing or appending:
            buffer = io.BufferedWriter(raw, buffering)
        else:
            buffer = io.BufferedReader(raw, buffering)
        result = buffer
        if binary:
            return buffer
        wrapper = io.TextIOWrapper(buffer, encoding, errors, newline, line_buffering)
        result = wrapper
        wrapper.mode = mode  # type: ignore[misc] - the real open sets it too
        return wrapper
    except BaseException:
        try:
            result.close()
        except Exception:  # noqa: BLE001 - the first error is the one to raise
            pass
        raise


def _open_wrapper(*args: Any, **kwargs: Any) -> Any:
    p = _probe
    if p is None or p.thread != _get_ident():
        return _real_open(*args, **kwargs)
    __tracebackhide__ = True  # pytest hides this frame (slow path only)
    return _open_on_test_thread(p, args, kwargs, sys._getframe(1))


def _open_on_test_thread(p: Watcher, args: tuple[Any, ...], kwargs: dict[str, Any], caller: FrameType) -> Any:
    __tracebackhide__ = True
    token = None
    target = args[0] if args else kwargs.get("file")
    # open(fd) wraps a descriptor that is already open: no file system call, not blocking
    if not p.depth and not isinstance(target, int) and _get_running_loop() is p.loop:
        token = p.enter("builtins.open", caller)
    watch = p.watchable(caller)
    p.depth += 1
    start = _clock()
    try:
        if watch:
            try:
                bound = _open_args(*args, **kwargs)
            except TypeError:
                bound = None  # bad arguments: the real open raises the real error
            result = _watched_open(*bound) if bound is not None else None
            if result is not None:
                return result
        return _real_open(*args, **kwargs)
    finally:
        p.depth -= 1
        if token is not None:
            p.leave(token, _clock() - start)


functools.update_wrapper(_open_wrapper, _real_open)


# -- locks --------------------------------------------------------------------------------
class WatchedLock:
    """A ``threading.Lock``/``RLock`` made by the user's code during a budgeted phase.

    ``acquire`` on the loop first tries the lock without waiting; only when that fails
    is the wait a blocking call. Everything else is the real lock's.
    """

    __slots__ = ("_lock", "_name", "__weakref__")

    def __init__(self, lock: Any, name: str) -> None:
        self._lock = lock
        self._name = name

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        p = _probe
        if p is None or not blocking or p.depth or _get_running_loop() is not p.loop:
            return self._lock.acquire(blocking, timeout)
        if self._lock.acquire(False):
            return True
        if timeout == 0:
            return self._lock.acquire(blocking, timeout)
        __tracebackhide__ = True  # pytest hides this frame (slow path only)
        return _blocking_call(p, self._name, self._lock.acquire, (blocking, timeout), {}, sys._getframe(1))

    __enter__ = acquire
    acquire_lock = acquire

    def release(self) -> None:
        self._lock.release()

    release_lock = release

    def __exit__(self, *exc_info: Any) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    locked_lock = locked

    def __getattr__(self, name: str) -> Any:  # _is_owned, _release_save, _at_fork_reinit ...
        if name == "_lock":
            raise AttributeError(name)
        return getattr(self._lock, name)

    def __repr__(self) -> str:
        return repr(self._lock)


def _watched_if_users(lock: Any, name: str, depth: int = 1) -> Any:
    """*lock*, as a :class:`WatchedLock` when the code *depth* frames up from here (the
    code that asked for it) is the user's, during a budgeted phase."""
    if _probe is not None:
        try:
            filename = sys._getframe(depth).f_code.co_filename
        except ValueError:  # asked for from C with no Python frame: not the user's code
            return lock
        # (is_user_file's cache read inline: every Condition and executor Future makes a
        # lock, from the standard library)
        user = _user_file_cache.get(filename)
        if user or (user is None and is_user_file(filename)):
            return WatchedLock(lock, name)
    return lock


class _LockTypeStandIn(type):
    """Stand-in for ``threading.Lock`` where it is a type (3.13+): ``isinstance`` keeps working.

    Calling it makes a lock as the factory below does; ``isinstance(x, threading.Lock)``
    and ``issubclass`` answer as they would for the real type (a :class:`WatchedLock`
    around a real lock counts as one).
    """

    _original: type
    _name: str

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return _watched_if_users(cls._original(*args, **kwargs), cls._name, 2)

    def __instancecheck__(cls, obj: Any) -> bool:
        if isinstance(obj, WatchedLock):
            obj = obj._lock
        return isinstance(obj, cls._original)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, cls._original)


def _lock_factory(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    if isinstance(original, type):
        namespace = {"_original": original, "_name": name, "__module__": original.__module__, "__doc__": original.__doc__}
        return _LockTypeStandIn(original.__name__, (), namespace)

    def factory(*args: Any, **kwargs: Any) -> Any:
        return _watched_if_users(original(*args, **kwargs), name, 2)

    try:
        functools.update_wrapper(factory, original)
    except (AttributeError, TypeError):  # pragma: no cover
        pass
    compiled = _call_guards()
    if compiled is None:
        return factory
    # The guard's slow path gets the lock it made, when the caller's file is not known to
    # be the standard library's. Neither the guard nor a partial is a Python frame, so
    # the caller is one up from _watched_if_users.
    watch = functools.partial(_watched_if_users, name=name, depth=1)
    return _compiled_guard(compiled, original, _GUARD_STDLIB_CALLER, _user_file_cache, watch)


# -- sqlite3 ------------------------------------------------------------------------------
WatchedConnection: Any = None
WatchedCursor: Any = None


def _sqlite_classes() -> tuple[Any, Any]:
    """Python subclasses of ``sqlite3.Connection``/``Cursor`` with watched methods."""
    global WatchedConnection, WatchedCursor
    if WatchedConnection is not None:
        return WatchedConnection, WatchedCursor
    import sqlite3

    def method(cls: type, attr: str) -> Callable[..., Any]:
        original = getattr(cls, attr)
        return _function_wrapper(f"sqlite3.{cls.__name__}.{attr}", original, None)

    cursor_attrs = ("execute", "executemany", "executescript", "fetchone", "fetchmany", "fetchall")
    cursor_cls = type("Cursor", (sqlite3.Cursor,), {a: method(sqlite3.Cursor, a) for a in cursor_attrs})
    cursor_cls.__module__ = "sqlite3"

    def cursor(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not args and "factory" not in kwargs:
            return sqlite3.Connection.cursor(self, cursor_cls)
        return sqlite3.Connection.cursor(self, *args, **kwargs)

    conn_attrs = ("execute", "executemany", "executescript", "commit", "rollback", "backup")
    namespace: dict[str, Any] = {a: method(sqlite3.Connection, a) for a in conn_attrs}
    namespace["cursor"] = cursor
    conn_cls = type("Connection", (sqlite3.Connection,), namespace)
    conn_cls.__module__ = "sqlite3"
    WatchedConnection, WatchedCursor = conn_cls, cursor_cls
    return conn_cls, cursor_cls


def _sqlite_connect_wrapper(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def connect(*args: Any, **kwargs: Any) -> Any:
        p = _probe
        if p is None:
            return original(*args, **kwargs)
        if len(args) < 6 and "factory" not in kwargs and p.thread == _get_ident() and p.watchable(sys._getframe(1)):
            kwargs = {**kwargs, "factory": _sqlite_classes()[0]}
        if p.depth or _get_running_loop() is not p.loop:
            return original(*args, **kwargs)
        __tracebackhide__ = True  # pytest hides this frame (slow path only)
        return _blocking_call(p, name, original, args, kwargs, sys._getframe(1))

    functools.update_wrapper(connect, original)
    return connect


# -- the table ------------------------------------------------------------------------------
# Special kinds (besides None = always blocking, or a check function).
_OPEN = "open"
_LOCK = "lock"
_SQLITE_CONNECT = "sqlite-connect"


@dataclass(frozen=True)
class Target:
    """One patched attribute: ``module.owner.attr`` (owner "" for a module function)."""

    module: str
    owner: str
    attr: str
    #: The name in reports and allowlists, e.g. ``socket.socket.recv``.
    name: str
    kind: Any = None


def _targets() -> tuple[Target, ...]:
    out: list[Target] = []

    def add(module: str, owner: str, attrs: str, kind: Any = None, name: str | None = None, prefix: str | None = None) -> None:
        for attr in attrs.split():
            where = f"{module}.{owner}" if owner else module
            out.append(Target(module, owner, attr, name or f"{prefix or where}.{attr}", kind))

    # sleeping
    add("time", "", "sleep", _sleep_blocks)
    # files
    add("builtins", "", "open", _OPEN)
    add("io", "", "open", _OPEN, name="builtins.open")
    add("os", "", "read readv pread write writev pwrite", _fd_blocks)
    add("os", "", "open fsync fdatasync")
    # filesystem calls
    add(
        "os",
        "",
        "stat lstat listdir scandir remove unlink rename renames replace mkdir makedirs rmdir removedirs "
        "chmod chown lchown utime truncate link symlink readlink access statvfs",
    )
    add("shutil", "", "copyfile copy copy2 copytree copymode copystat move rmtree disk_usage make_archive unpack_archive")
    add("pathlib", "Path", "read_text read_bytes write_text write_bytes")
    # Python 3.10's pathlib calls os.* through an accessor class that captured them at
    # import (absent from 3.11 on, where pathlib calls os directly: skipped there).
    add(
        "pathlib",
        "_NormalAccessor",
        "stat lstat listdir scandir chmod mkdir unlink rmdir rename replace symlink readlink",
        prefix="os",
    )
    add("tempfile", "", "TemporaryFile NamedTemporaryFile mkstemp mkdtemp")
    # sockets, and HTTP clients built on them
    add(
        "socket",
        "socket",
        "connect connect_ex accept recv recvfrom recv_into recvfrom_into recvmsg recvmsg_into "
        "send sendall sendto sendmsg sendfile",
        _socket_blocks,
    )
    add("socket", "", "create_connection")
    add("urllib.request", "", "urlopen")
    add("http.client", "HTTPConnection", "connect request getresponse")
    add("http.client", "HTTPResponse", "read readinto readline")
    add("requests", "Session", "request send")
    add("httpx", "Client", "send")
    # DNS
    add("socket", "", "getaddrinfo gethostbyname gethostbyname_ex gethostbyaddr getnameinfo getfqdn")
    # TLS
    add(
        "ssl",
        "SSLSocket",
        "do_handshake read write recv recv_into recvfrom recvfrom_into send sendall sendto sendfile "
        "unwrap connect connect_ex accept",
        _socket_blocks,
    )
    # subprocesses
    add("subprocess", "", "run call check_call check_output getoutput getstatusoutput")
    add("subprocess", "Popen", "wait", _popen_wait_blocks)
    add("subprocess", "Popen", "communicate", _popen_communicate_blocks)
    add("os", "", "system wait")
    add("os", "", "waitpid", _waitpid_blocks)
    # sqlite3
    add("sqlite3", "", "connect", _SQLITE_CONNECT)
    add("sqlite3.dbapi2", "", "connect", _SQLITE_CONNECT, name="sqlite3.connect")
    # thread waits
    add("threading", "", "Lock", _LOCK, name="threading.Lock.acquire")
    add("threading", "", "RLock", _LOCK, name="threading.RLock.acquire")
    add("threading", "Condition", "wait", _condition_wait_blocks)
    add("threading", "Event", "wait", _event_wait_blocks)
    add("threading", "Semaphore", "acquire", _semaphore_acquire_blocks)
    add("threading", "Barrier", "wait", _barrier_wait_blocks)
    add("threading", "Thread", "join", _thread_join_blocks)
    add("queue", "Queue", "get", _queue_get_blocks)
    add("queue", "Queue", "put", _queue_put_blocks)
    add("concurrent.futures._base", "Future", "result exception", _future_wait_blocks, prefix="concurrent.futures.Future")
    add("concurrent.futures", "", "wait", _futures_wait_blocks)
    add("concurrent.futures._base", "", "wait", _futures_wait_blocks, name="concurrent.futures.wait")
    # console input
    add("builtins", "", "input")
    add("getpass", "", "getpass")
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for target in out:
        key = (target.module, target.owner, target.attr)
        if key not in seen:
            seen.add(key)
            unique.append(target)
    return tuple(unique)


#: Everything patched, in one place.
TARGETS: tuple[Target, ...] = _targets()

#: Every name a blocking call can be reported under (and allowlisted by).
FUNCTION_NAMES: frozenset[str] = frozenset(
    {t.name for t in TARGETS} | {"io.FileIO.read", "io.FileIO.write"}
    | {
        f"sqlite3.{cls}.{attr}"
        for cls, attrs in (
            ("Connection", "execute executemany executescript commit rollback backup"),
            ("Cursor", "execute executemany executescript fetchone fetchmany fetchall"),
        )
        for attr in attrs.split()
    }
)
#: Other spellings accepted in allowlists.
ALIASES: dict[str, str] = {"open": "builtins.open", "io.open": "builtins.open", "input": "builtins.input"}


# -- resolving and applying ----------------------------------------------------------------
_MISSING: Any = object()


class _Patch:
    """One attribute of one live module or class: its owner, and the flat row that the
    per-test loops (_apply_rows, _restore_rows) read."""

    __slots__ = ("owner", "row")

    def __init__(self, target: Target, owner: Any, original: Any, wrapper: Any, had_own: bool) -> None:
        self.owner = owner
        self.row: _Row = (
            vars(owner),  # a module's dict, or a class's read-only mappingproxy
            target.attr,
            original if had_own else _MISSING,  # what is there before we patch
            wrapper,
            owner if isinstance(owner, type) else None,
            original,
            had_own,
            target,
        )


#: (module name, owner, attr) -> patch, for the module objects seen so far.
_patches: dict[tuple[str, str, str], _Patch] = {}
#: One wrapper per original, wherever it is found: (original, wrapper) under the id of
#: each of the two (both are kept alive here, so neither id is reused). The same table
#: answers "is this one of our wrappers?" (never wrap a wrapper) and, for the module scan,
#: "is this value a patched function or its wrapper?".
_wrappers: dict[int, tuple[Any, Any]] = {}


def _make_wrapper(target: Target, original: Any) -> Any:
    global _modules_seen
    known = _wrappers.get(id(original))
    if known is not None and known[0] is original:
        return known[1]
    if target.kind == _OPEN:
        wrapper: Any = _open_wrapper
    elif target.kind == _LOCK:
        wrapper = _lock_factory(target.name, original)
    elif target.kind == _SQLITE_CONNECT:
        wrapper = _sqlite_connect_wrapper(target.name, original)
    else:
        wrapper = _function_wrapper(target.name, original, target.kind)
    _wrappers[id(original)] = _wrappers[id(wrapper)] = (original, wrapper)
    _user_modules.clear()  # a new original to look for: scan the user's modules again
    _modules_seen = -1
    return wrapper


def _resolve(target: Target) -> _Patch | None:
    """The patch for *target* in the live modules, or None when its module is not loaded."""
    module = sys.modules.get(target.module)
    if module is None:
        return None  # never imported here: nothing can call it through this name
    owner: Any = module
    if target.owner:
        owner = getattr(module, target.owner, None)
        if not isinstance(owner, type):
            return None
    key = (target.module, target.owner, target.attr)
    patch = _patches.get(key)
    if patch is not None and patch.owner is owner:
        return patch
    own = vars(owner)
    had_own = target.attr in own
    original = own[target.attr] if had_own else getattr(owner, target.attr, _MISSING)
    if original is _MISSING or not callable(original):
        return None
    known = _wrappers.get(id(original))
    if known is not None and known[1] is original:
        return None  # a stale wrapper of ours (should not happen); never wrap a wrapper
    wrapper = _make_wrapper(target, original)
    if owner is not module and isinstance(original, types.BuiltinFunctionType):
        # A builtin function stored on a class does not bind to instances (e.g. 3.10's
        # pathlib._NormalAccessor.mkdir = os.mkdir); a plain Python wrapper would.
        wrapper = staticmethod(wrapper)
    patch = _Patch(target, owner, original, wrapper, had_own)
    _patches[key] = patch
    return patch


# Names bound by value in the user's modules (``from time import sleep``).
_user_modules: dict[str, tuple[ModuleType, list[tuple[str, Any, Any]]]] = {}
_other_modules: set[str] = set()
_modules_seen = -1


def _scan_user_modules() -> None:
    global _modules_seen
    if len(sys.modules) == _modules_seen:
        return
    for name, module in list(sys.modules.items()):
        if name in _other_modules:
            continue
        known = _user_modules.get(name)
        if known is not None and known[0] is module:
            continue
        try:
            filename = getattr(module, "__file__", None)
            user = isinstance(filename, str) and is_user_file(filename)
            namespace = vars(module) if user else None
        except Exception:  # noqa: BLE001 - odd objects in sys.modules are not ours to judge
            namespace = None
        if namespace is None:
            _other_modules.add(name)
            continue
        bindings = []
        for attr, value in list(namespace.items()):
            pair = _wrappers.get(id(value))
            if pair is not None and (value is pair[0] or value is pair[1]):
                bindings.append((attr, pair[0], pair[1]))
        _user_modules[name] = (module, bindings)
    _modules_seen = len(sys.modules)


#: One row per patch: ``(namespace, attr, expected, wrapper, class or None, original,
#: had_own, target)``.
_Row = tuple[Any, str, Any, Any, Any, Any, bool, Target]
#: The rows put in place for the test in progress, in order.
_applied: list[_Row] = []
_rebound: list[tuple[dict[str, Any], str, Any, Any]] = []


_rows: list[_Row] = []
_resolved_for = -1  # len(sys.modules) when _rows was built


def _apply_rows(rows: list[_Row], applied: list[_Row], missing: Any) -> None:
    """Put each wrapper in place where its attribute is still the original.

    The reference for ``_speedups.swap_in``, which does the same: these loops run at every
    test, just after the test's own code has pushed everything out of the CPU caches.
    """
    for row in rows:
        ns, attr, expected, wrapper, cls, _, _, _ = row
        current = ns.get(attr, missing)
        if current is expected:
            if cls is not None:
                setattr(cls, attr, wrapper)  # type.__setattr__ keeps its caches right
            else:
                ns[attr] = wrapper
            applied.append(row)
        elif current is wrapper:  # left in place earlier (say by a monkeypatch undo): ours to undo
            applied.append(row)
        # else: replaced by someone else; leave it to them


def _restore_rows(applied: list[_Row], missing: Any) -> None:
    """Empty *applied*, putting the originals back where our wrapper still is; then raise
    the first error, if any. The reference for ``_speedups.swap_out``."""
    first: BaseException | None = None
    rows = applied[:]
    del applied[:]
    for ns, attr, _, wrapper, cls, original, had_own, _ in reversed(rows):
        try:
            if ns.get(attr, missing) is not wrapper:
                continue  # replaced by someone else after we patched: theirs now
            if cls is None:
                ns[attr] = original
            elif had_own:
                setattr(cls, attr, original)
            else:
                delattr(cls, attr)
        except BaseException as exc:  # noqa: BLE001 - restore the rest, then raise the first
            first = first or exc
    if first is not None:
        raise first


def _swaps() -> tuple[Callable[..., None], Callable[..., None]]:
    """The compiled twins of _apply_rows/_restore_rows when built, else those two."""
    global _swap_pair
    if _swap_pair is None:
        compiled = speedups()
        if compiled is not None and hasattr(compiled, "swap_in"):  # an older build has not
            _swap_pair = (compiled.swap_in, compiled.swap_out)
        else:
            _swap_pair = (_apply_rows, _restore_rows)
    return _swap_pair


_swap_pair: tuple[Callable[..., None], Callable[..., None]] | None = None


def _apply() -> None:
    # Runs at every test.
    global _rows, _resolved_for
    if len(sys.modules) != _resolved_for:  # a module was imported (or dropped): look again
        _rows = [patch.row for patch in map(_resolve, TARGETS) if patch is not None]
        _resolved_for = len(sys.modules)
    _swaps()[0](_rows, _applied, _MISSING)
    _scan_user_modules()
    for module, bindings in _user_modules.values():
        namespace = vars(module)
        for attr, original, wrapper in bindings:
            current = namespace.get(attr, _MISSING)
            if current is original:
                namespace[attr] = wrapper
                _rebound.append((namespace, attr, original, wrapper))
            elif current is wrapper:
                _rebound.append((namespace, attr, original, wrapper))


def _restore() -> None:
    while _rebound:
        namespace, attr, original, wrapper = _rebound.pop()
        if namespace.get(attr, _MISSING) is wrapper:
            namespace[attr] = original
    _swaps()[1](_applied, _MISSING)


def install(probe: Watcher) -> None:
    """Patch everything for one phase of a budgeted test, watched by *probe*."""
    global _probe
    _stack.append(probe)
    _probe = probe
    if len(_stack) > 1:
        return  # nested session (pytester in-process): already in place
    try:
        _apply()
    except BaseException:
        _stack.pop()
        _probe = None
        _restore()
        raise


def uninstall(probe: Watcher) -> None:
    """Undo :func:`install` (every patch back, however the phase ended)."""
    global _probe
    if probe in _stack:
        _stack.remove(probe)
    _probe = _stack[-1] if _stack else None
    if not _stack:
        _restore()


def installed() -> list[str]:
    """``module.owner.attr`` of each patch currently in place (for tests and debugging)."""
    out = [
        ".".join(p for p in (target.module, target.owner, target.attr) if p)
        for ns, attr, _, wrapper, _, _, _, target in _applied
        if ns.get(attr, _MISSING) is wrapper
    ]
    out.extend(f"{ns.get('__name__')}.{attr}" for ns, attr, _, w in _rebound if ns.get(attr) is w)
    return out
