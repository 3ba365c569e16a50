"""The compiled ``select`` wrapper (``_speedups.SelectTimer``) against its Python twin.

The lag probe on stock asyncio wraps ``selector.select``. Where the optional C extension
is built, that wrapper is ``_speedups.SelectTimer``; elsewhere, and with
``ASYNCBUDGET_PURE_PYTHON=1``, it is the closure in ``probes/lag.py``. The closure is the
reference: both must make the same calls, return the same things, raise the same errors
and report the same stretches.
"""

from __future__ import annotations

import _socket
import gc
import socket
import types
import weakref
from collections import deque
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_asyncbudget import accel, patches
from pytest_asyncbudget.probes import lag

from test_blocking_units import on_loop, probe  # noqa: F401 - the fake no_blocking probe

try:
    from pytest_asyncbudget import _speedups
except ImportError:  # no C compiler where the package was installed
    _speedups = None  # type: ignore[assignment]

needs_speedups = pytest.mark.skipif(_speedups is None, reason="the C extension is not built here")


class _Boom(Exception):
    pass


class FakeSelector:
    """Records every select() call; raises when told to."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.fail_next = False

    def select(self, timeout: Any = None) -> Any:
        self.calls.append(timeout)
        if self.fail_next:
            self.fail_next = False
            raise _Boom("select failed")
        return [("event", len(self.calls))]


def _run(implementation: Any, floor: float, ops: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch) -> dict:
    """Drive one wrapper through *ops*; everything observable, in order."""
    monkeypatch.setattr(lag, "_TIMER", implementation)
    selector = FakeSelector()
    loop = SimpleNamespace(_selector=selector, _ready=deque())
    blocked: list[Any] = []
    raise_in_blocked = [False]

    def on_blocked(duration: float, start: float, ready: int | None) -> None:
        assert duration >= 0.0
        blocked.append(ready)
        if raise_in_blocked[0]:
            raise_in_blocked[0] = False
            raise _Boom("on_blocked failed")

    ticks = lag._SelectorTicks(loop, floor, on_blocked)
    wrapper = selector.__dict__["select"]
    trace: list[Any] = []
    for op, arg in ops:
        if op == "queue":
            loop._ready.extend(range(arg))
            continue
        if op == "drain":
            loop._ready.clear()
            continue
        if op == "fail":
            selector.fail_next = True
            continue
        if op == "fail_blocked":
            raise_in_blocked[0] = True
            continue
        try:
            result = wrapper(timeout=arg) if op == "keyword" else wrapper(arg)
        except _Boom as exc:
            result = ("raised", str(exc))
        left, iterations, ready = ticks._state()
        trace.append((result, left is None, iterations, ready))
    iterations = ticks.iterations
    raise_in_blocked[0] = False
    ticks.detach()
    return {
        "trace": trace,
        "calls": selector.calls,
        "blocked": blocked,
        "iterations": iterations,
        "detached": "select" not in selector.__dict__,
    }


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.sampled_from([0, 0.0, None, 0.5, 1, -1])),
        st.tuples(st.just("keyword"), st.sampled_from([0, None, 0.25])),
        st.tuples(st.just("queue"), st.integers(0, 5)),
        st.tuples(st.sampled_from(["drain", "fail", "fail_blocked"]), st.none()),
    ),
    max_size=40,
)


@needs_speedups
@settings(max_examples=300, deadline=None)
@given(ops=_OPS, floor=st.sampled_from([0.0, 1e9]))
def test_compiled_wrapper_matches_the_python_one(ops: list[tuple[str, Any]], floor: float) -> None:
    with pytest.MonkeyPatch.context() as mp:
        python = _run(False, floor, ops, mp)
    with pytest.MonkeyPatch.context() as mp:
        compiled = _run(_speedups.SelectTimer, floor, ops, mp)
    assert compiled == python
    assert python["detached"]
    if floor == 0.0:  # every stretch is recorded, each with the callbacks queued as it began
        assert len(python["blocked"]) >= python["iterations"]


@needs_speedups
def test_compiled_wrapper_times_real_stretches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Durations and starts come from perf_counter's clock, to the microsecond."""
    import time

    monkeypatch.setattr(lag, "_TIMER", _speedups.SelectTimer)
    selector = FakeSelector()
    loop = SimpleNamespace(_selector=selector, _ready=deque([1, 2, 3]))
    seen: list[tuple[float, float, int | None]] = []
    before = time.perf_counter()
    ticks = lag._SelectorTicks(loop, 0.005, lambda d, s, r: seen.append((d, s, r)))
    time.sleep(0.02)
    selector.select(0)
    after = time.perf_counter()
    ticks.detach()
    assert len(seen) == 1
    duration, start, ready = seen[0]
    assert before <= start <= before + 0.002
    assert 0.02 <= duration <= after - before
    assert ready == 3


@needs_speedups
def test_compiled_wrapper_is_collected_with_its_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wrapper, the probe's callback and the selector form a cycle the GC can break."""
    monkeypatch.setattr(lag, "_TIMER", _speedups.SelectTimer)

    class Owner:
        def on_blocked(self, *args: Any) -> None:
            pass

    owner = Owner()
    selector = FakeSelector()
    loop = SimpleNamespace(_selector=selector, _ready=deque())
    owner.ticks = lag._SelectorTicks(loop, 0.001, owner.on_blocked)
    selector.select(0)
    gone = weakref.ref(owner)
    del owner, loop, selector
    gc.collect()
    assert gone() is None


def test_pure_python_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ASYNCBUDGET_PURE_PYTHON`` turns the compiled wrappers off."""
    monkeypatch.setattr(lag, "_TIMER", None)
    monkeypatch.setattr(accel, "_MODULE", None)
    monkeypatch.setenv("ASYNCBUDGET_PURE_PYTHON", "1")
    assert lag._compiled_timer() is None
    assert type(patches._socket_positional_wrapper("socket.socket.recv", _socket.socket.recv)) is types.FunctionType
    monkeypatch.setattr(lag, "_TIMER", None)
    monkeypatch.setattr(accel, "_MODULE", None)
    monkeypatch.delenv("ASYNCBUDGET_PURE_PYTHON")
    expected = None if _speedups is None else _speedups.SelectTimer
    assert lag._compiled_timer() is expected
    wrapper = patches._socket_positional_wrapper("socket.socket.recv", _socket.socket.recv)
    assert type(wrapper) is (types.FunctionType if _speedups is None else _speedups.SocketGuard)
    assert wrapper.__wrapped__ is _socket.socket.recv and wrapper.__name__ == "recv"
    factory = patches._lock_factory("threading.RLock.acquire", patches._real_rlock)
    assert type(factory) is (types.FunctionType if _speedups is None else _speedups.CallGuard)
    monkeypatch.setattr(accel, "_MODULE", None)
    monkeypatch.setenv("ASYNCBUDGET_PURE_PYTHON", "1")
    assert type(patches._lock_factory("threading.RLock.acquire", patches._real_rlock)) is types.FunctionType
    monkeypatch.setattr(accel, "_MODULE", None)
    monkeypatch.delenv("ASYNCBUDGET_PURE_PYTHON")


_E2E = """
import asyncio, time, pytest

def block():
    time.sleep(0.2)

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("50ms")
async def test_body():
    loop = asyncio.get_running_loop()
    print("WRAPPER", type(loop._selector.select).__name__)
    await asyncio.sleep(0)
    block()

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("50ms")
async def test_burst():
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = [200_000]
    def tick():
        left[0] -= 1
        if left[0] == 0:
            done.set_result(None)
    await asyncio.sleep(0)
    for _ in range(200_000):
        loop.call_soon(tick)
    await done

@pytest.mark.asyncio
@pytest.mark.max_loop_lag("50ms")
async def test_clean():
    for _ in range(100):
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
"""


@pytest.mark.parametrize("pure", [False, True], ids=["default", "pure-python"])
def test_both_wrappers_give_the_same_verdicts(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, pure: bool
) -> None:
    if pure:
        monkeypatch.setenv("ASYNCBUDGET_PURE_PYTHON", "1")
    else:
        monkeypatch.delenv("ASYNCBUDGET_PURE_PYTHON", raising=False)
    pytester.makeini("[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_suite=_E2E)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(failed=2, passed=1)
    expected = "function" if pure or _speedups is None else "SelectTimer"
    result.stdout.fnmatch_lines([f"*WRAPPER {expected}"])
    result.stdout.fnmatch_lines(
        [
            "*test_body*",
            "*max_loop_lag exceeded: loop blocked * ms > budget 50 ms (call)",
            "*culprit: test_suite.py:4 in block*",
        ]
    )
    result.stdout.fnmatch_lines(["*test_burst*", "*max_loop_lag exceeded: loop blocked * ms > budget 50 ms (call)"])
    result.stdout.fnmatch_lines(["*a burst of 200,00? callbacks*"])


# -- the socket guard -----------------------------------------------------------------------
_N = object()


def _strict_original(self: Any, a: Any = _N, b: Any = _N, c: Any = _N, d: Any = _N, /) -> Any:
    """Stands for a C socket method: a socket first, up to four positional arguments."""
    if not isinstance(self, _socket.socket):
        raise TypeError("descriptor 'fake' needs a socket")
    return ("called", sum(x is not _N for x in (a, b, c, d)))


_SELVES = ["non-blocking", "blocking", "timeout", "not a socket"]


@needs_speedups
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    calls=st.lists(
        st.tuples(st.sampled_from(_SELVES), st.integers(0, 6), st.booleans()),
        min_size=1,
        max_size=12,
    )
)
def test_compiled_socket_guard_matches_the_python_wrapper(probe: Any, calls: list[tuple[str, int, bool]]) -> None:
    """Same results, same errors, same calls reported, for every kind of call."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(patches, "speedups", lambda: None)
        python = patches._socket_positional_wrapper("socket.socket.fake", _strict_original)
    compiled = patches._compiled_socket_wrapper(_speedups, "socket.socket.fake", _strict_original)
    assert type(python) is types.FunctionType and type(compiled) is _speedups.SocketGuard
    pair = socket.socketpair()
    selves = {"non-blocking": pair[0], "blocking": pair[1], "timeout": socket.socket(), "not a socket": 5}
    selves["non-blocking"].setblocking(False)
    selves["timeout"].settimeout(0.5)

    def outcome(wrapper: Any, who: str, nargs: int, keyword: bool) -> Any:
        before = len(probe.calls)
        args = [selves[who], *range(nargs - 1)] if nargs else []  # nargs counts the socket
        kwargs = {"flags": 0} if keyword else {}
        try:
            result: Any = wrapper(*args, **kwargs)
        except TypeError:
            result = TypeError
        return result, probe.calls[before:]

    def body() -> None:
        for who, nargs, keyword in calls:
            assert outcome(compiled, who, nargs, keyword) == outcome(python, who, nargs, keyword)

    try:
        on_loop(probe, body)
    finally:
        for sock in (*pair, selves["timeout"]):
            sock.close()


# -- the to_thread path's guards (CallGuard) -------------------------------------------------
def _twins(name: str, original: Any, check: Any) -> tuple[Any, Any]:
    """The Python wrapper and its compiled twin for one ``no_blocking`` target."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(patches, "_call_guards", lambda: None)
        python = patches._function_wrapper(name, original, check)
        mp.setattr(patches, "_call_guards", lambda: _speedups)  # (even under ASYNCBUDGET_PURE_PYTHON)
        compiled = patches._function_wrapper(name, original, check)
    assert type(python) is types.FunctionType and type(compiled) is _speedups.CallGuard
    assert compiled.__wrapped__ is original and compiled.__name__ == original.__name__
    return python, compiled


_MISSING = object()
_BLOCKING = [_MISSING, True, False, 0, 1, None]
_TIMEOUTS = [_MISSING, None, 0, 0.0, -1, -0.5, 0.01, 10**30, -(10**30), "soon"]


@needs_speedups
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    calls=st.lists(
        st.tuples(
            st.booleans(),  # the semaphore has a free slot
            st.sampled_from(_BLOCKING),
            st.sampled_from(_TIMEOUTS),
            st.sampled_from(["positional", "keyword", "mixed", "stray keyword"]),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_compiled_semaphore_guard_matches_the_python_wrapper(probe: Any, calls: list[tuple[Any, ...]]) -> None:
    """``Semaphore.acquire``: same results, same errors, same blocking calls reported."""
    import threading

    python, compiled = _twins("threading.Semaphore.acquire", threading.Semaphore.acquire, patches._semaphore_acquire_blocks)

    def outcome(wrapper: Any, free: bool, blocking: Any, timeout: Any, how: str) -> Any:
        values = [("blocking", blocking), ("timeout", timeout)]
        given_values = [(k, v) for k, v in values if v is not _MISSING]
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        if how == "positional" and (blocking is not _MISSING or timeout is _MISSING):
            args += [v for _, v in given_values]
        elif how == "mixed" and given_values:
            args.append(given_values[0][1])  # (a timeout alone then lands on blocking)
            kwargs.update(given_values[1:])
        else:
            kwargs.update(given_values)
        if how == "stray keyword":
            kwargs["extra"] = 1
        # What the call means once bound: an empty semaphore with no finite timeout would
        # wait for ever, so such a call gets a free slot.
        bound_blocking = args[0] if args else kwargs.get("blocking", True)
        bound_timeout = args[1] if len(args) > 1 else kwargs.get("timeout")
        if bound_blocking and (bound_timeout is None or bound_timeout == 10**30):
            free = True
        args.insert(0, threading.Semaphore(1 if free else 0))
        before = len(probe.calls)
        try:
            result: Any = wrapper(*args, **kwargs)
        except (TypeError, ValueError) as exc:
            result = type(exc)
        return result, probe.calls[before:]

    def body() -> None:
        for call in calls:
            assert outcome(compiled, *call) == outcome(python, *call)

    on_loop(probe, body)


@needs_speedups
@pytest.mark.parametrize("method", ["result", "exception"])
def test_compiled_future_guard_matches_the_python_wrapper(probe: Any, method: str) -> None:
    """``concurrent.futures.Future.result/exception``: a done future goes straight through;
    a pending one is the Python wrapper's, which reports the wait."""
    from concurrent.futures import Future, TimeoutError as FutureTimeout

    original = getattr(Future, method)
    python, compiled = _twins(f"concurrent.futures.Future.{method}", original, patches._future_wait_blocks)

    def futures() -> list[tuple[str, Any]]:
        done, failed, cancelled, pending = Future(), Future(), Future(), Future()
        done.set_result(7)
        failed.set_exception(KeyError("k"))
        cancelled.cancel()
        odd = SimpleNamespace(done=lambda: True)  # no _state: the wrapper asks done()
        return [("done", done), ("failed", failed), ("cancelled", cancelled), ("pending", pending), ("odd", odd)]

    def outcome(wrapper: Any, future: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        before = len(probe.calls)
        try:
            result: Any = wrapper(future, *args, **kwargs)
            if isinstance(result, BaseException):
                result = type(result)
        except BaseException as exc:  # noqa: BLE001 - compared, not swallowed
            result = type(exc)
        return result, probe.calls[before:]

    shapes: list[tuple[tuple[Any, ...], dict[str, Any]]] = [((), {}), ((0,), {}), ((), {"timeout": 0.01}), ((0.01,), {}), ((1, 2), {})]

    def body() -> None:
        for (label, future), (python_future_label, python_future) in zip(futures(), futures()):
            for args, kwargs in shapes:
                if label == "pending" and not args and not kwargs:
                    continue  # no timeout: it would wait for ever
                got = outcome(compiled, future, args, kwargs)
                want = outcome(python, python_future, args, kwargs)
                assert got == want, (label, args, kwargs)
                if label == "pending" and (args == (0.01,) or kwargs):
                    assert got == (FutureTimeout, [f"concurrent.futures.Future.{method}"])

    on_loop(probe, body)


@pytest.mark.parametrize("kind", ["compiled", "python"])
def test_lock_factory_watches_only_the_users_locks(probe: Any, kind: str) -> None:
    """The RLock factory (its compiled guard, and the Python factory it falls back to): a
    lock made by the standard library (a Condition) is the real one; a lock made here, in
    the user's code, is watched."""
    import threading

    if kind == "compiled" and _speedups is None:
        pytest.skip("the C extension is not built here")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(patches, "_call_guards", lambda: _speedups if kind == "compiled" else None)
        factory = patches._lock_factory("threading.RLock.acquire", patches._real_rlock)
    expected = _speedups.CallGuard if kind == "compiled" else types.FunctionType
    assert type(factory) is expected and factory.__wrapped__ is patches._real_rlock
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(threading, "RLock", factory)
        condition = threading.Condition()  # makes its lock in threading.py
        assert type(condition._lock) is type(patches._real_rlock())
        mine = factory()
        again = factory()
    assert type(mine) is patches.WatchedLock and type(again) is patches.WatchedLock
    assert patches._user_file_cache[threading.__file__] is False  # the guard answers it in C from now on
    with mine:
        assert mine._is_owned()


def test_an_extension_without_callguard_falls_back_to_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """An extension built from an older checkout (an editable install keeps it) has no
    CallGuard: the to_thread path's wrappers are then the Python ones, not an error."""
    import threading

    monkeypatch.setattr(patches, "speedups", lambda: SimpleNamespace(SocketGuard=None))
    assert patches._call_guards() is None
    assert type(patches._lock_factory("threading.RLock.acquire", patches._real_rlock)) is types.FunctionType
    wrapper = patches._function_wrapper("threading.Semaphore.acquire", threading.Semaphore.acquire, patches._semaphore_acquire_blocks)
    assert type(wrapper) is types.FunctionType


@pytest.mark.parametrize("kind", ["compiled", "python", "lock type (3.13+)"])
def test_lock_factory_called_with_no_python_frame(probe: Any, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """A lock asked for from C with no Python frame at all (here: the factory is a
    thread's own target, called by the interpreter's thread bootstrap) is the real one,
    not an error."""
    import _thread
    import sys
    import time

    if kind == "compiled" and _speedups is None:
        pytest.skip("the C extension is not built here")
    if kind == "lock type (3.13+)" and not isinstance(patches._real_lock, type):
        pytest.skip("threading.Lock is a function before 3.13")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(patches, "_call_guards", lambda: _speedups if kind == "compiled" else None)
        original = _thread.RLock if kind != "lock type (3.13+)" else patches._real_lock
        factory = patches._lock_factory("threading.RLock.acquire", original)
    errors: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", errors.append)  # where such a thread's error goes
    before = _thread._count()
    _thread.start_new_thread(factory, ())
    # Nothing can tell when the thread has run (any wrapper would be a Python frame):
    # wait until it has come and gone, or for a second if it was too quick to be seen.
    seen, deadline = False, time.monotonic() + 1
    while time.monotonic() < deadline and not errors:
        running = _thread._count() > before
        seen = seen or running
        if seen and not running:
            break
        time.sleep(0.001)
    assert [e.exc_value for e in errors] == []


# -- no_blocking's per-test patching loops: _speedups.swap_in/swap_out against
# -- patches._apply_rows/_restore_rows (the reference) -----------------------------------
_SWAP_ATTRS = ("m0", "m1", "m2", "c0", "c1", "i0", "i1")  # module / class's own / inherited
_BEFORE = st.sampled_from(["as is", "foreign", "wrapper", "refuse"])
_BETWEEN = st.sampled_from(["as is", "foreign", "refuse"])


def _swap_world(before: dict[str, str]) -> tuple[Any, ...]:
    """A module and a class to patch, the rows for them, and a way to read their state."""
    refuse: set[str] = set()

    class Meta(type):
        def __setattr__(cls, name: str, value: Any) -> None:
            if name in refuse:
                raise _Boom(f"set {name}")
            super().__setattr__(name, value)

        def __delattr__(cls, name: str) -> None:
            if name in refuse:
                raise _Boom(f"del {name}")
            super().__delattr__(name)

    def original(name: str) -> Any:
        def function() -> str:
            return name

        return function

    module = types.ModuleType("swap_world")

    class Base(metaclass=Meta):
        pass

    class Child(Base):
        pass

    originals = {name: original(name) for name in _SWAP_ATTRS}
    wrappers = {name: original(f"wrapped {name}") for name in _SWAP_ATTRS}
    foreign = {name: original(f"foreign {name}") for name in _SWAP_ATTRS}
    rows = []  # made as patches.py makes them
    for name in _SWAP_ATTRS:
        if name.startswith("m"):
            setattr(module, name, originals[name])
            owner, had_own = module, True
        elif name.startswith("c"):
            type.__setattr__(Child, name, originals[name])
            owner, had_own = Child, True
        else:  # inherited: patched on Child, deleted from it again at restore
            type.__setattr__(Base, name, originals[name])
            owner, had_own = Child, False
        target = patches.Target("swap_world", "" if owner is module else "Child", name, name)
        rows.append(patches._Patch(target, owner, originals[name], wrappers[name], had_own).row)
    owner = {name: module if name.startswith("m") else Child for name in _SWAP_ATTRS}

    def interfere(plan: dict[str, str]) -> None:
        for name, what in plan.items():
            if what == "foreign":
                (type.__setattr__ if owner[name] is Child else setattr)(owner[name], name, foreign[name])
            elif what == "wrapper":
                (type.__setattr__ if owner[name] is Child else setattr)(owner[name], name, wrappers[name])
            elif what == "refuse" and owner[name] is Child:
                refuse.add(name)

    def state() -> dict[str, str]:
        out = {}
        for name in _SWAP_ATTRS:
            value = vars(owner[name]).get(name, patches._MISSING)
            tags = {id(originals[name]): "original", id(wrappers[name]): "wrapper",
                    id(foreign[name]): "foreign", id(patches._MISSING): "not its own"}
            out[name] = tags[id(value)]
        return out

    interfere(before)
    return rows, interfere, state, refuse


def _swap_run(apply: Any, restore: Any, before: dict[str, str], between: dict[str, str]) -> dict[str, Any]:
    rows, interfere, state, refuse = _swap_world(before)
    applied: list[Any] = []
    seen: dict[str, Any] = {}
    try:
        apply(rows, applied, patches._MISSING)
        seen["apply raised"] = None
    except _Boom as exc:
        seen["apply raised"] = str(exc)
    seen["applied"] = [row[1] for row in applied]
    seen["after apply"] = state()
    refuse.clear()
    interfere(between)
    try:
        restore(applied, patches._MISSING)
        seen["restore raised"] = None
    except _Boom as exc:
        seen["restore raised"] = str(exc)
    seen["left in applied"] = len(applied)
    refuse.clear()
    seen["after restore"] = state()
    return seen


@needs_speedups
@settings(max_examples=300, deadline=None)
@given(
    before=st.fixed_dictionaries({name: _BEFORE for name in _SWAP_ATTRS}),
    between=st.fixed_dictionaries({name: _BETWEEN for name in _SWAP_ATTRS}),
)
def test_compiled_swaps_match_the_python_loops(before: dict[str, str], between: dict[str, str]) -> None:
    """Same rows applied, same values left everywhere, same first error, list emptied."""
    reference = _swap_run(patches._apply_rows, patches._restore_rows, before, between)
    compiled = _swap_run(_speedups.swap_in, _speedups.swap_out, before, between)
    assert compiled == reference
    assert reference["left in applied"] == 0
    # and what the reference itself promises:
    for name in _SWAP_ATTRS:
        if reference["apply raised"] is None and before[name] == "as is" and between[name] == "as is":
            assert reference["after apply"][name] == "wrapper"
            assert reference["after restore"][name] == ("not its own" if name.startswith("i") else "original")
        if before[name] == "foreign":
            assert reference["after restore"][name] == "foreign"  # someone else's: never touched


def test_patching_uses_the_compiled_swaps_where_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patches, "_swap_pair", None)
    compiled = accel.speedups()  # None with ASYNCBUDGET_PURE_PYTHON=1 or where not built
    expected = (compiled.swap_in, compiled.swap_out) if compiled is not None else (patches._apply_rows, patches._restore_rows)
    assert patches._swaps() == expected
    monkeypatch.setattr(patches, "_swap_pair", None)
    monkeypatch.setattr(accel, "_MODULE", False)  # ASYNCBUDGET_PURE_PYTHON=1, or not built
    assert patches._swaps() == (patches._apply_rows, patches._restore_rows)
