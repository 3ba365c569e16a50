"""The lag probe's pulse on uvloop: a compiled thread writing to an eventfd every 1 ms.

On loops without a selector seam the lag probe times busy stretches from the gaps
between 1 ms beats (``probes/lag.py``). Where the compiled helpers are built on Linux the
beat is a reader on an eventfd that the pulse thread writes to; elsewhere, and whenever
the pulse cannot be used, it is a ``call_later`` timer. These tests check that the pulse
is what runs where it can, that it is armed only while a measured loop runs, that its
thread keeps a descriptor table of its own, and that the timer takes over, with the same
verdicts, when the pulse is missing or has lost its eventfd.
"""

from __future__ import annotations

import sys

import pytest

from conftest import HAVE_UVLOOP

try:
    from pytest_asyncbudget import _speedups
except ImportError:  # no C compiler where the package was installed
    _speedups = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop not installed"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pulse is Linux only"),
    pytest.mark.parametrize("loop", ["uvloop"]),
]

needs_pulse = pytest.mark.skipif(
    _speedups is None or not hasattr(_speedups, "pulse_start"), reason="the C extension is not built here"
)

_BLOCKING_TEST = """
        @pytest.mark.asyncio
        @pytest.mark.max_loop_lag("50ms")
        async def test_blocks():
            await asyncio.sleep(0.01)
            time.sleep(0.15)
"""


@needs_pulse
def test_uvloop_beats_from_the_pulse_armed_only_while_the_loop_runs(suite, monkeypatch):
    monkeypatch.delenv("ASYNCBUDGET_PURE_PYTHON", raising=False)
    suite.write(
        source="""
        import asyncio, os, threading, time, pytest
        from pytest_asyncbudget import _speedups
        from pytest_asyncbudget.probes import lag

        def _fd_tables():
            '''Each thread of this process -> what its descriptor table holds.'''
            tables = {}
            for tid in os.listdir("/proc/self/task"):
                fd_dir = f"/proc/self/task/{tid}/fd"
                try:
                    tables[tid] = sorted(os.readlink(f"{fd_dir}/{fd}") for fd in os.listdir(fd_dir))
                except OSError:
                    pass
            return tables

        @pytest.mark.asyncio
        @pytest.mark.max_loop_lag("50ms")
        async def test_a_running_loop_is_pulsed():
            await asyncio.sleep(0.02)
            assert isinstance(lag._PULSE, lag._Pulse)
            assert _speedups.pulse_state() == (True, True)
            # the pulse thread's table holds its eventfd and nothing else
            assert ["anon_inode:[eventfd]"] in _fd_tables().values()
        """
        + _BLOCKING_TEST
        + """
        def test_zz_parked_after_the_tests():
            assert _speedups.pulse_state() == (True, False)
            assert [t.name for t in threading.enumerate()] == ["MainThread"]
        """
    )
    result = suite.run("-v")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*max_loop_lag exceeded: loop blocked 1[45]?.? ms > budget 50 ms (call)",
            "*culprit: test_suite.py:29 in test_blocks",
        ]
    )


@pytest.mark.parametrize("how", ["pure Python", "pulse cannot start"])
def test_timer_heartbeat_when_there_is_no_pulse(suite, monkeypatch, how):
    if how == "pure Python":
        monkeypatch.setenv("ASYNCBUDGET_PURE_PYTHON", "1")
    else:
        if _speedups is None or not hasattr(_speedups, "pulse_start"):
            pytest.skip("the C extension is not built here")
        monkeypatch.delenv("ASYNCBUDGET_PURE_PYTHON", raising=False)
        suite.conftest(
            """
            from pytest_asyncbudget import _speedups

            def _forbidden(fd, interval):
                raise PermissionError(1, "unshare forbidden here")

            _speedups.pulse_start = _forbidden
            """
        )
    suite.write(
        source="""
        import asyncio, time, pytest
        from pytest_asyncbudget.probes import lag

        @pytest.mark.asyncio
        @pytest.mark.max_loop_lag("50ms")
        async def test_no_pulse():
            await asyncio.sleep(0.02)
            assert lag._PULSE is None
            assert not any(type(o).__name__ == "_PulseTicks" for o in __import__("gc").get_objects())
        """
        + _BLOCKING_TEST
    )
    result = suite.run("-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*max_loop_lag exceeded: loop blocked 1[45]?.? ms > budget 50 ms (call)",
            "*culprit: test_suite.py:15 in test_blocks",
        ]
    )


@needs_pulse
def test_a_closed_eventfd_hands_over_to_the_timer(suite, monkeypatch):
    """A test that closes a descriptor it does not own cannot make the probe read from
    whatever file takes that number next: the probe checks the eventfd at each loop start."""
    monkeypatch.delenv("ASYNCBUDGET_PURE_PYTHON", raising=False)
    suite.write(
        source="""
        import asyncio, gc, os, time, pytest
        from pytest_asyncbudget.probes import lag

        def _pulse_ticks():
            return [o for o in gc.get_objects() if type(o).__name__ == "_PulseTicks" and o._loop is not None]

        @pytest.mark.asyncio
        @pytest.mark.max_loop_lag("50ms")
        async def test_a_pulsed():
            assert len(_pulse_ticks()) == 1

        def test_b_closes_a_descriptor_it_does_not_own():
            fd = lag._PULSE.fd
            os.close(fd)
            r, w = os.pipe()  # most likely takes the number again
            os.write(w, b"user data")
            test_b_closes_a_descriptor_it_does_not_own.pipe = (r, w)

        @pytest.mark.asyncio
        @pytest.mark.max_loop_lag("50ms")
        async def test_c_blocks():
            assert _pulse_ticks() == []
            await asyncio.sleep(0.01)
            time.sleep(0.15)

        def test_d_user_data_untouched():
            r, w = test_b_closes_a_descriptor_it_does_not_own.pipe
            assert os.read(r, 100) == b"user data"
        """
    )
    result = suite.run("-v")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*max_loop_lag exceeded: loop blocked 1[45]?.? ms > budget 50 ms (call)",
            "*culprit: test_suite.py:24 in test_c_blocks",
        ]
    )
