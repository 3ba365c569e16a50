"""Unit tests of the stack sampler's watchdog: it looks when a stretch could first cross
the threshold, not on a fixed cycle, and still samples a stretch that does cross it."""

from __future__ import annotations

import threading
import time

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
            time.sleep(0.01)  # the blocking line the sample must name
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
        deadline = time.monotonic() + 5
        while not busy.samples and time.monotonic() < deadline:
            time.sleep(0.01)
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
