"""Unit and property tests of the no_blocking machinery (``patches.py``, the allowlist parser).

These run in-process with a fake probe: they check that every patch is undone, that the
watched ``open`` is the real ``open`` in every observable way, and that the "try the
non-blocking form first" checks leave locks, semaphores and queues exactly as the
original calls do.
"""

from __future__ import annotations

import asyncio
import io
import os
import queue
import socket
import sys
import threading
import time
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_asyncbudget import patches
from pytest_asyncbudget.budgets.blocking import parse_allow
from pytest_asyncbudget.patches import FUNCTION_NAMES, NO_LOOP
from pytest_asyncbudget.probes.blocking import BlockingProbe

# In a dict: module globals bound to a patched function are rebound during phases (that is
# the point: ``from time import sleep`` in the user's code), so keep the originals out of reach.
REAL = {"sleep": time.sleep, "open": io.open}


class FakeProbe:
    """A Watcher that records every call of the user's code (the real probe's frame filter)."""

    def __init__(self) -> None:
        self.loop = NO_LOOP
        self.depth = 0
        self.thread = threading.get_ident()
        self.calls: list[str] = []
        self.failed: list[str] = []

    def enter(self, name, caller):
        if BlockingProbe._user_frame(caller) is None:
            return None
        self.calls.append(name)
        return name

    def leave(self, token, elapsed):
        pass

    def watchable(self, caller):
        return True

    def check_failed(self, name):
        self.failed.append(name)


@pytest.fixture
def probe():
    fake = FakeProbe()
    patches.install(fake)
    try:
        yield fake
    finally:
        patches.uninstall(fake)
    assert patches.installed() == [] and patches._probe is None
    assert fake.failed == []


def on_loop(probe, body):
    """Run *body()* on a running loop that *probe* watches."""

    async def main():
        probe.loop = asyncio.get_running_loop()
        try:
            return body()
        finally:
            probe.loop = NO_LOOP

    return asyncio.run(main())


# -- install / uninstall --------------------------------------------------------------------
def test_install_and_uninstall_restore_everything():
    fake = FakeProbe()
    before_sock = dict(socket.socket.__dict__)
    patches.install(fake)
    try:
        assert time.sleep is not REAL['sleep'] and time.sleep.__wrapped__ is REAL['sleep']
        assert "recv" in socket.socket.__dict__ and open is not REAL['open']
        assert "time.sleep" in patches.installed()
    finally:
        patches.uninstall(fake)
    assert time.sleep is REAL['sleep'] and open is REAL['open'] and io.open is REAL['open']
    assert dict(socket.socket.__dict__) == before_sock
    assert patches.installed() == []


def test_an_attribute_replaced_by_someone_else_is_left_alone():
    fake = FakeProbe()
    mine = lambda seconds: None  # noqa: E731
    patches.install(fake)
    try:
        time.sleep = mine  # e.g. monkeypatch during the phase
    finally:
        patches.uninstall(fake)
    try:
        assert time.sleep is mine  # ours to restore? no: theirs
    finally:
        time.sleep = REAL['sleep']
    # and one replaced before the phase is not patched over
    time.sleep = mine
    try:
        patches.install(fake)
        assert time.sleep is mine
        patches.uninstall(fake)
    finally:
        time.sleep = REAL['sleep']


def test_a_wrapper_left_behind_passes_through_and_is_cleaned_up_next_time():
    fake = FakeProbe()
    patches.install(fake)
    wrapper = time.sleep
    patches.uninstall(fake)
    time.sleep = wrapper  # a monkeypatch undo that restored what it saw during the phase
    try:
        assert patches._probe is None
        wrapper(0)  # pass-through, no probe
        patches.install(fake)
        assert time.sleep is wrapper
        patches.uninstall(fake)
        assert time.sleep is REAL['sleep']
    finally:
        time.sleep = REAL['sleep']


def test_nested_install_keeps_the_patches_until_the_outer_one_ends():
    outer, inner = FakeProbe(), FakeProbe()
    patches.install(outer)
    patches.install(inner)
    assert patches._probe is inner
    patches.uninstall(inner)
    assert patches._probe is outer and time.sleep is not REAL['sleep']
    patches.uninstall(outer)
    assert time.sleep is REAL['sleep'] and patches._probe is None


def test_names_bound_in_user_modules_are_rebound_for_the_phase(tmp_path):
    module = types.ModuleType("user_mod_for_rebinding")
    module.__file__ = str(tmp_path / "user_mod_for_rebinding.py")
    module.sleep = time.sleep
    module.getaddrinfo = socket.getaddrinfo
    module.unrelated = len
    sys.modules[module.__name__] = module
    fake = FakeProbe()
    try:
        patches.install(fake)
        try:
            assert module.sleep is time.sleep and module.sleep is not REAL['sleep']
            assert module.getaddrinfo.__wrapped__.__name__ == "getaddrinfo"
            assert module.unrelated is len
        finally:
            patches.uninstall(fake)
        assert module.sleep is REAL['sleep'] and module.getaddrinfo is socket.getaddrinfo
    finally:
        del sys.modules[module.__name__]


def test_the_table_names_what_it_patches():
    names = {t.name for t in patches.TARGETS}
    for expected in ("time.sleep", "os.stat", "socket.socket.recv", "socket.getaddrinfo", "ssl.SSLSocket.do_handshake",
                     "subprocess.run", "sqlite3.connect", "threading.Event.wait", "queue.Queue.get",
                     "concurrent.futures.Future.result", "threading.Thread.join", "builtins.input", "builtins.open"):
        assert expected in names
    assert {"io.FileIO.read", "io.FileIO.write", "sqlite3.Cursor.fetchall"} <= FUNCTION_NAMES


# -- calls on the loop -----------------------------------------------------------------------
def test_only_calls_on_the_watched_loop_thread_are_judged(probe, tmp_path):
    def body():
        time.sleep(0.001)
        os.stat(tmp_path)
        time.sleep(0)  # not blocking
        done = threading.Event()
        threading.Thread(target=lambda: (time.sleep(0.001), os.stat(tmp_path), done.set())).start()
        while not done.is_set():
            pass  # busy-wait: Event.wait would itself be a blocking call
        return list(probe.calls)

    assert on_loop(probe, body) == ["time.sleep", "os.stat"]
    time.sleep(0.001)  # outside the loop
    assert probe.calls == ["time.sleep", "os.stat"]


def test_nested_calls_are_one_call(probe, tmp_path):
    src = tmp_path / "a"
    src.write_text("x")
    on_loop(probe, lambda: __import__("shutil").copy(src, tmp_path / "b"))
    assert probe.calls == ["shutil.copy"]


def test_files_are_watched_only_for_real_system_calls(probe, tmp_path):
    path = tmp_path / "f.txt"
    f = open(path, "w")  # outside the loop: watched, not reported
    assert type(f) is io.TextIOWrapper and type(f.buffer.raw) is patches.WatchedFileIO

    def body():
        f.write("x" * 10)  # fills the buffer only
        before = list(probe.calls)
        f.flush()
        return before

    assert on_loop(probe, body) == []
    assert probe.calls == ["io.FileIO.write"]
    f.close()
    assert path.read_text() == "x" * 10


def test_open_by_descriptor_is_not_a_blocking_open(probe):
    r, w = os.pipe()
    try:
        on_loop(probe, lambda: (open(r, "rb", closefd=False), open(w, "wb", closefd=False)))
        assert "builtins.open" not in probe.calls
    finally:
        os.close(r)
        os.close(w)


def test_socket_wrappers_pass_every_argument_through(probe):
    """The socket wrappers spell their positional arguments out (no *args): each arity
    reaches the original, blocking sockets are reported, argument errors stay TypeErrors."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    c, d = socket.socketpair()
    d.setblocking(False)

    def body():
        out = [a.send(b"one"), b.recv(16), a.send(b"two", 0), b.recv(16, 0)]
        out.append(b.recvfrom(16, 0)[0] if a.sendall(b"three", 0) is None else None)
        out.append(a.sendmsg([b"fo", b"ur"], [], 0))
        out.append(b.recvmsg(16, 0, 0)[0])
        buf = bytearray(8)
        out.append(a.sendmsg([b"five"]) and b.recvmsg_into([buf], 0, 0)[0])
        out.append(d.send(b"six"))  # non-blocking: passes through unreported
        out.append(c.recv(3))
        for bad in (lambda: b.recv(bufsize=1), lambda: b.recv(1, 0, 0, 0, 0)):
            with pytest.raises(TypeError, match=r"recv\(\)"):
                bad()
        with pytest.raises(TypeError):
            socket.socket.recv(5, 1)  # not a socket: the original's own error
        return out

    try:
        assert on_loop(probe, body) == [3, b"one", 3, b"two", b"three", 4, b"four", 4, 3, b"six"]
    finally:
        for sock in (a, b, c, d):
            sock.close()
    assert probe.calls == [
        "socket.socket.send", "socket.socket.recv", "socket.socket.send", "socket.socket.recv",
        "socket.socket.sendall", "socket.socket.recvfrom", "socket.socket.sendmsg", "socket.socket.recvmsg",
        "socket.socket.sendmsg", "socket.socket.recvmsg_into", "socket.socket.recv",
    ]


def test_contended_lock_waits_and_is_reported(probe):
    lock = threading.Lock()
    assert isinstance(lock, patches.WatchedLock)
    holder_ready, release = threading.Event(), threading.Event()

    def hold():
        with lock:
            holder_ready.set()
            release.wait()

    thread = threading.Thread(target=hold)
    thread.start()
    holder_ready.wait()

    def body():
        assert lock.acquire(timeout=0.05) is False  # waited, timed out, state unchanged
        assert lock.acquire(False) is False
        release.set()
        assert lock.acquire() is True
        lock.release()

    on_loop(probe, body)
    thread.join()
    assert probe.calls.count("threading.Lock.acquire") == 2  # the two waits; not the try
    assert not lock.locked()


def test_condition_over_a_watched_rlock(probe):
    rlock = threading.RLock()
    cond = threading.Condition(rlock)

    def body():
        with cond:
            with rlock:  # re-entrant: no wait
                cond.wait(0.01)
        return list(probe.calls)

    assert on_loop(probe, body) == ["threading.Condition.wait"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    maxsize=st.integers(0, 3),
    initial=st.lists(st.integers(), max_size=3),
    ops=st.lists(st.tuples(st.sampled_from(["get", "put"]), st.booleans()), max_size=6),
)
def test_queue_checks_leave_the_queue_as_the_original_does(probe, maxsize, initial, ops):
    """A get/put that can finish at once gives the same result and state, watched or not."""

    def replay(q):
        out = []
        for op, block in ops:
            try:
                if op == "get":
                    out.append(q.get(block, 0.001) if block else q.get(False))
                else:
                    q.put(len(out), block, 0.001) if block else q.put(len(out), False)
                    out.append("put")
            except (queue.Empty, queue.Full) as exc:
                out.append(type(exc).__name__)
        return out, list(q.queue)

    def fresh():
        q = queue.Queue(maxsize)
        for item in initial[: maxsize or None]:
            q.put_nowait(item)
        return q

    probe.calls.clear()
    watched = on_loop(probe, lambda: replay(fresh()))
    plain = replay(fresh())
    assert watched == plain
    # only the waits that really waited (an empty get, a full put) were reported
    waits = sum(1 for (op, block), r in zip(ops, watched[0]) if block and r in ("Empty", "Full"))
    assert len(probe.calls) == waits


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=st.integers(0, 3),
    # (blocking, timeout, passed by keyword): a short wait, a try, and the executors'
    # acquire(timeout=0), which the wrapper answers without its check
    acquires=st.lists(st.sampled_from([(True, 0.001, False), (False, None, False), (True, 0, True), (True, 0.0, False)]), max_size=5),
)
def test_semaphore_checks_leave_the_count_as_the_original_does(probe, value, acquires):
    def replay(sem):
        got = [sem.acquire(timeout=t) if kw else sem.acquire(b, t) for b, t, kw in acquires]
        return got, sem._value

    probe.calls.clear()
    watched = on_loop(probe, lambda: replay(threading.Semaphore(value)))
    assert watched == replay(threading.Semaphore(value))
    # only a call that could wait and did (it failed after its timeout) is reported
    assert len(probe.calls) == sum(1 for (b, t, _), got in zip(acquires, watched[0]) if b and t and not got)


# -- the watched open is the real open ------------------------------------------------------
MODES = ["r", "w", "a", "x", "r+", "w+", "a+", "x+", "rb", "wb", "ab", "xb", "rb+", "wb+", "rt", "wt", "at+", "br"]
BAD_MODES = ["", "rw", "rr", "z", "tb", "b", "+", "U", "rU"]


@pytest.mark.filterwarnings("ignore:line buffering:RuntimeWarning")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mode=st.sampled_from(MODES + BAD_MODES),
    buffering=st.sampled_from([-1, 0, 1, 2, 64, 8192]),
    newline=st.sampled_from([None, "", "\n", "\r", "\r\n", "bad"]),
    encoding=st.sampled_from([None, "utf-8", "latin-1", "no-such-codec"]),
    exists=st.booleans(),
    content=st.text(alphabet="ab\r\né", max_size=20),
)
def test_watched_open_matches_open(tmp_path_factory, mode, buffering, newline, encoding, exists, content):
    base = tmp_path_factory.mktemp("open")
    results = []
    for which in ("real", "watched"):
        path = base / which
        if exists:
            path.write_bytes(content.encode("utf-8"))
        kwargs = {"buffering": buffering, "newline": newline, "encoding": encoding}
        if "b" in mode:
            kwargs = {"buffering": buffering}
        try:
            if which == "real":
                f = open(path, mode, **kwargs)
            else:
                f = patches._watched_open(path, mode, **kwargs)
                ordinary = mode in MODES and buffering != 0 and not ("b" in mode and buffering == 1)
                ordinary = ordinary and ("b" in mode or newline != "bad")
                assert (f is not None) == ordinary, "the watched path must be taken for ordinary arguments"
                if f is None:  # unusual arguments: the real open is used instead
                    f = open(path, mode, **kwargs)
                else:
                    raw = f.raw if "b" in mode else f.buffer.raw
                    assert type(raw) is patches.WatchedFileIO
        except Exception as exc:  # noqa: BLE001 - compared below
            results.append(("raised", type(exc), str(exc).replace(str(path), "P")))
            continue
        seen: list = []
        try:
            with f:
                seen += [type(f), f.mode, getattr(f, "encoding", None), getattr(f, "line_buffering", None)]
                if f.writable():
                    f.write(b"xy\r\n" if "b" in mode else "xy\r\nz")
                if f.readable():
                    f.seek(0)
                    seen.append(f.read())
        except Exception as exc:  # noqa: BLE001 - e.g. r+ half-overwrote a UTF-8 char: both must agree
            seen.append(("raised", type(exc), str(exc)))
        seen.append(path.read_bytes())
        results.append(("ok", *seen))
    assert results[0] == results[1]


# -- the allowlist parser ------------------------------------------------------------------------
@given(name=st.sampled_from(sorted(FUNCTION_NAMES)), pad=st.sampled_from(["", " ", "  \t"]))
def test_every_reported_name_can_be_allowed(name, pad):
    (entry,) = parse_allow([pad + name + pad], origin="marker")
    assert name in entry.functions and entry.text == name


@given(st.text(max_size=30))
def test_allow_entries_parse_or_fail_with_a_reason(text):
    try:
        entries = parse_allow([text], origin="marker")
    except (ValueError, TypeError) as exc:
        assert str(exc)
    else:
        assert len(entries) == 1 and (entries[0].functions or entries[0].caller)


def test_prefixes_and_duplicates():
    entries = parse_allow(["socket.socket", "socket.socket", "os"], origin="ini")
    assert [e.text for e in entries] == ["socket.socket", "os"]
    assert "socket.socket.recv" in entries[0].functions and "socket.getaddrinfo" not in entries[0].functions
    assert entries[1].caller == ("os", None) and "os.stat" in entries[1].functions


def test_a_wrapper_of_ours_found_where_an_original_should_be_is_never_wrapped(monkeypatch):
    """_resolve must not wrap one of its own wrappers (a wrapper around a wrapper would
    report every call twice and could never be undone in the right order). The lookup
    is by identity, so an equal-looking function that is not ours is still wrapped."""
    sleep_patch = patches._resolve(next(t for t in patches.TARGETS if t.name == "time.sleep"))
    assert sleep_patch is not None
    ours = sleep_patch.row[3]  # the wrapper of time.sleep
    fake = types.ModuleType("_asyncbudget_fake_module")
    fake.sleep = ours
    fake.other = lambda seconds: None
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    target = patches.Target(fake.__name__, "", "sleep", f"{fake.__name__}.sleep", None)
    assert patches._resolve(target) is None
    other = patches.Target(fake.__name__, "", "other", f"{fake.__name__}.other", None)
    patch = patches._resolve(other)
    try:
        assert patch is not None and patch.row[5] is fake.other and patch.row[3] is not fake.other
    finally:  # leave the session's tables as they were
        patches._patches.pop((fake.__name__, "", "other"), None)
        made = patches._wrappers.pop(id(fake.other), None)
        if made is not None:
            patches._wrappers.pop(id(made[1]), None)
