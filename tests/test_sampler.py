"""Unit tests of the stack sampler's watchdog: it looks when a stretch could first cross
the threshold, not on a fixed cycle, and still samples a stretch that does cross it."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from pytest_asyncbudget import sampler as sampler_module
from pytest_asyncbudget.accel import speedups
from pytest_asyncbudget.sampler import StackSampler


class Target:
    """A fake lag probe: counts how often the watchdog looks, keeps the samples."""

    def __init__(self, since: float | None) -> None:
        self.since = since
        self.looks = 0
        self.samples: list[tuple[float, list]] = []

    @property
    def busy_since(self) -> float | None:
        self.looks += 1
        return self.since

    def on_sample(self, when: float, frames: list) -> None:
        self.samples.append((when, frames))


def _wait_until(done, timeout: float = 5.0) -> None:
    """Sleep in small steps until done() is true or *timeout* seconds have passed."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_an_idle_loop_is_looked_at_once_per_threshold_not_every_few_ms():
    sampler = StackSampler()
    target = Target(since=None)  # the loop waits for I/O the whole time
    try:
        sampler.watch(target, threshold=1.0, interval=0.001)
        time.sleep(0.3)
    finally:
        sampler.park()
    # one look when watching starts, the next not before a second has passed (a fixed
    # 10 ms cycle would have looked about 30 times)
    assert 1 <= target.looks <= 2
    assert target.samples == []


def test_a_stretch_is_sampled_when_it_crosses_the_threshold():
    sampler = StackSampler()
    start = time.perf_counter()
    target = Target(since=start)  # busy from now on: this thread "blocks the loop"
    try:
        sampler.watch(target, threshold=0.05, interval=0.001)
        deadline = time.monotonic() + 5
        while not target.samples and time.monotonic() < deadline:
            time.sleep(0.01)  # the blocking line the sample must name (so not in a helper)
    finally:
        sampler.park()
    assert len(target.samples) == 1, "one sample per stretch"
    when, frames = target.samples[0]
    assert when - start >= 0.05
    assert frames[0][2] == "test_a_stretch_is_sampled_when_it_crosses_the_threshold"
    assert sampler.error is None


def test_a_new_target_with_a_smaller_threshold_cuts_the_nap_short():
    sampler = StackSampler()
    idle = Target(since=None)
    try:
        sampler.watch(idle, threshold=30.0, interval=0.001)  # the watchdog naps 30 s
        time.sleep(0.05)
        busy = Target(since=time.perf_counter())
        sampler.watch(busy, threshold=0.02, interval=0.001)
        _wait_until(lambda: busy.samples)
    finally:
        sampler.park()
    assert busy.samples, "the watchdog kept napping for the old threshold"


def test_a_mocked_time_sleep_or_event_wait_does_not_make_the_watchdog_spin(monkeypatch):
    """Tests often mock time.sleep; the watchdog waits on raw locks, not on either."""
    calls = []
    monkeypatch.setattr(time, "sleep", lambda s: calls.append(s))
    monkeypatch.setattr(threading.Event, "wait", lambda self, timeout=None: calls.append(timeout) or True)
    sampler = StackSampler()
    target = Target(since=None)
    try:
        sampler.watch(target, threshold=1.0, interval=0.001)
        deadline = time.perf_counter() + 0.3
        while time.perf_counter() < deadline:
            pass  # wait without time.sleep (mocked)
    finally:
        sampler.park()
    assert calls == []
    assert 1 <= target.looks <= 2


# -- the watchdog's own file-descriptor table --------------------------------------------
# While two threads share a descriptor table, Linux takes and drops a reference on the file
# in every system call given a descriptor; the watchdog therefore detaches its own table
# (sampler._private_fd_table). benchmarks/thread_cost.py measures the cost this removes.

detachable = pytest.mark.skipif(
    not sys.platform.startswith("linux") or (not hasattr(os, "unshare") and speedups() is None),
    reason="needs Linux, and os.unshare (3.12+) or the compiled helpers",
)


def _started_watchdog() -> StackSampler:
    sampler = StackSampler()
    sampler.watch(Target(since=None), threshold=30.0, interval=0.001)
    _wait_until(lambda: sampler.fd_table is not None)
    return sampler


def _fds_of_each_thread() -> dict[int, set[int]]:
    tasks = Path("/proc/self/task")
    return {int(t.name): {int(fd.name) for fd in (t / "fd").iterdir()} for t in tasks.iterdir()}


@detachable
def test_the_watchdog_keeps_only_stdio_in_a_table_of_its_own():
    before = _fds_of_each_thread()
    sampler = _started_watchdog()
    try:
        assert sampler.fd_table == "private"
        r, w = os.pipe()  # opened by this thread after the watchdog detached
        try:
            tables = _fds_of_each_thread()
        finally:
            os.close(r)
            os.close(w)
    finally:
        sampler.park()
    (watchdog,) = set(tables) - set(before)
    assert tables[watchdog] <= {0, 1, 2}, "the watchdog kept copies of the process's files"
    assert {0, 1, 2} <= tables[watchdog], "stdio must stay open for the watchdog's own tracebacks"
    assert {r, w} <= tables[threading.get_native_id()]
    assert sampler.error is None


@detachable
def test_a_socket_closed_after_the_watchdog_started_is_really_closed():
    a, b = socket.socketpair()  # in the table the watchdog copies
    try:
        sampler = _started_watchdog()
        try:
            assert sampler.fd_table == "private"
            a.close()
            b.settimeout(5)
            assert b.recv(1) == b"", "the peer did not see EOF: a copy kept the socket open"
        finally:
            sampler.park()
    finally:
        a.close()
        b.close()


def _in_a_thread(fn):
    """Run *fn* in a throwaway thread: _private_fd_table changes its caller's table."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(10)
    return out[0]


def test_where_unshare_is_refused_the_table_stays_shared_and_untouched(monkeypatch):
    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(sampler_module, "_LINUX", True)
    monkeypatch.setattr(sampler_module.os, "unshare", refuse, raising=False)
    monkeypatch.setattr(sampler_module.os, "CLONE_FILES", 0x400, raising=False)  # < 3.12
    r, w = os.pipe()
    try:
        assert _in_a_thread(sampler_module._private_fd_table).startswith("shared (unshare: ")
        os.write(w, b"x")  # the descriptors were not closed
        assert os.read(r, 1) == b"x"
    finally:
        os.close(r)
        os.close(w)


def test_without_unshare_or_the_compiled_helpers_the_table_is_shared(monkeypatch):
    monkeypatch.setattr(sampler_module, "_LINUX", True)
    monkeypatch.delattr(sampler_module.os, "unshare", raising=False)
    monkeypatch.setattr(sampler_module, "speedups", lambda: None)
    assert _in_a_thread(sampler_module._private_fd_table) == (
        "shared (Python < 3.12 without the compiled helpers)"
    )


def test_not_linux_shares_the_table(monkeypatch):
    monkeypatch.setattr(sampler_module, "_LINUX", False)
    assert _in_a_thread(sampler_module._private_fd_table) == "shared (not Linux)"


def test_a_failing_fd_table_set_up_leaves_a_working_watchdog(monkeypatch):
    def broken() -> str:
        raise ValueError("unexpected")

    monkeypatch.setattr(sampler_module, "_private_fd_table", broken)
    sampler = StackSampler()
    target = Target(since=time.perf_counter())  # busy from now on
    try:
        sampler.watch(target, threshold=0.02, interval=0.001)
        _wait_until(lambda: target.samples)
    finally:
        sampler.park()
    assert sampler.fd_table == "shared (ValueError: unexpected)"
    assert target.samples, "the watchdog died with its fd-table set-up"
    assert sampler.error is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork() with threads
def test_a_forked_child_starts_a_watchdog_of_its_own():
    """fork() copies the sampler, active and all, but not its thread: the child's first
    watch() starts a watchdog that samples the child's stretches (pytest-forked, say)."""
    sampler = StackSampler()
    try:
        sampler.watch(Target(since=None), threshold=30.0, interval=0.001)  # active in the parent
        _wait_until(lambda: sampler.fd_table is not None)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report through the pipe, never return into pytest
            code = 1
            try:
                os.close(r)
                target = Target(since=time.perf_counter())
                sampler.watch(target, threshold=0.02, interval=0.001)
                deadline = time.monotonic() + 5
                while not target.samples and time.monotonic() < deadline:
                    time.sleep(0.005)  # the line the sample must name
                sampler.park()
                sampled = bool(target.samples) and target.samples[0][1][0][2] == (
                    "test_a_forked_child_starts_a_watchdog_of_its_own"
                )
                os.write(w, b"sampled" if sampled else b"no sample")
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as pipe:
            said = pipe.read()
        _, status = os.waitpid(pid, 0)
    finally:
        sampler.park()
    assert os.waitstatus_to_exitcode(status) == 0
    assert said == b"sampled", "the forked child had no watchdog"
    assert sampler.error is None
