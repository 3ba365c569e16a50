"""Tests of the ``max_rss`` budget: end to end with pytester, and its parts alone.

Allocations are a few hundred MB at most, touched so the pages are resident, and freed
right away: budgets are 100 MB against 150-300 MB, so the verdicts hold whatever the
baseline noise (a first test creating its loop costs a few MB). Hypothesis examples are
cheap, so they run without a deadline: a loaded machine must not make them flaky.
"""

from __future__ import annotations

import os
import sys
import types

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pytest_asyncbudget.budgets import rss as rss_budget
from pytest_asyncbudget.probes import rss as rss_probe
from pytest_asyncbudget.units import UnitError, format_size, parse_size

EXACT = isinstance(rss_probe.meter(), rss_probe.ClearRefsMeter)
needs_exact = pytest.mark.skipif(not EXACT, reason="no resettable high-water mark here")

HEADLINE = "*max_rss exceeded: RSS grew * MiB > budget 100 MB (95.4 MiB) ({phase})"
BREAKDOWN = "*peak * MiB during {phase} = baseline * MiB (RSS when setup started) + growth * MiB"


#: For suites of sync tests only: the loop does not matter, so run them once.
loop_irrelevant = pytest.mark.parametrize("loop", ["asyncio"])


def _exactness_line() -> list[str]:
    return ["*exact: kernel high-water mark, reset when setup started"] if EXACT else []


# -- what must be caught -------------------------------------------------------------


def test_held_buffer_fails(suite):
    suite.write(
        source="""
        import pytest

        @pytest.fixture
        def holder():
            kept = []
            yield kept
            kept.clear()

        @pytest.mark.asyncio
        @pytest.mark.max_rss("100 MB")
        async def test_hold(holder):
            holder.append(bytearray(200_000_000))
        """
    )
    result = suite.run()
    result.assert_outcomes(failed=1)  # failed in call only: no second report in teardown
    result.stdout.fnmatch_lines(
        [
            HEADLINE.format(phase="call"),
            BREAKDOWN.format(phase="call"),
            "*still held at the end of call: RSS * MiB, 1* MiB over baseline",
            *_exactness_line(),
            "*no culprit line: RSS is counted by the OS*",
        ]
    )
    result.stdout.no_fnmatch_line("*(teardown)*")


@needs_exact
def test_short_spike_fails(suite):
    suite.write(
        source="""
        import pytest

        @pytest.mark.asyncio
        @pytest.mark.max_rss("100 MB")
        async def test_spike():
            spike = bytearray(300_000_000)  # zero-filled, so every page is resident
            del spike                       # and gone again right away
        """
    )
    result = suite.run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*max_rss exceeded: RSS grew 2* MiB > budget 100 MB (95.4 MiB) (call)",
            BREAKDOWN.format(phase="call"),
            "*a spike: freed again by the end of call (RSS back to * MiB)",
            "*exact: kernel high-water mark, reset when setup started",
        ]
    )


@needs_exact
def test_many_tiny_spikes_in_a_loop_fail(suite):
    """A spike that lasts microseconds, repeated: no sampler could be sure to see it."""
    suite.write(
        source="""
        import asyncio, mmap, pytest

        def spike(size=130 * 2**20):
            block = mmap.mmap(-1, size)
            for offset in range(0, size, mmap.PAGESIZE):
                block[offset] = 1  # every page resident, for a couple of milliseconds
            block.close()

        @pytest.mark.asyncio
        @pytest.mark.max_rss("100 MiB")
        async def test_spikes():
            for _ in range(3):
                spike()
                await asyncio.sleep(0)
        """
    )
    result = suite.run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*max_rss exceeded: RSS grew 1[23]* MiB > budget 100 MiB (call)", "*a spike*"])


@pytest.mark.parametrize(
    "how",
    [
        "await asyncio.to_thread(allocate)",
        "await asyncio.get_running_loop().run_in_executor(None, allocate)",
    ],
)
def test_worker_thread_allocation_counts(suite, how):
    suite.write(
        source=f"""
        import asyncio, time, pytest

        def allocate():
            block = bytearray(200_000_000)
            time.sleep(0.05)
            return len(block)

        @pytest.mark.asyncio
        @pytest.mark.max_rss("100 MB")
        async def test_thread():
            {how}
        """
    )
    result = suite.run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([HEADLINE.format(phase="call"), "*a spike: freed again by the end of call*"])


@loop_irrelevant
def test_sync_tests_are_judged_too(suite):
    suite.write(
        source="""
        import threading, pytest

        @pytest.mark.max_rss("100 MB")
        def test_sync_spike():
            block = bytearray(250_000_000)
            del block

        @pytest.mark.max_rss("100 MB")
        def test_sync_thread():
            worker = threading.Thread(target=lambda: bytearray(250_000_000))
            worker.start()
            worker.join()

        @pytest.mark.max_rss("100 MB")
        def test_sync_small():
            block = bytearray(10_000_000)
        """
    )
    result = suite.run("-v")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*test_sync_small PASSED*"])
    result.stdout.fnmatch_lines([HEADLINE.format(phase="call"), "*a spike*"] * 2)


def test_spike_in_setup_is_an_error_of_setup(suite):
    suite.write(
        source="""
        import pytest, pytest_asyncio

        @pytest_asyncio.fixture
        async def big():
            block = bytearray(250_000_000)
            del block
            yield

        @pytest.mark.asyncio
        @pytest.mark.max_rss("100 MB")
        async def test_uses_big(big):
            pass
        """
    )
    result = suite.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_uses_big*", HEADLINE.format(phase="setup")])
    result.stdout.no_fnmatch_line("*(teardown)*")


def test_spike_in_teardown_is_an_error_of_teardown(suite):
    suite.write(
        source="""
        import pytest, pytest_asyncio

        @pytest_asyncio.fixture
        async def cleanup():
            yield
            block = bytearray(250_000_000)
            del block

        @pytest.mark.asyncio
        @pytest.mark.max_rss("100 MB")
        async def test_body(cleanup):
            pass
        """
    )
    result = suite.run()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_body*", HEADLINE.format(phase="teardown")])


# -- what must not be flagged --------------------------------------------------------


def test_under_budget_passes(suite):
    suite.write(
        source="""
        import asyncio, pytest

        @pytest.mark.asyncio
        @pytest.mark.max_rss("100 MB")
        async def test_small():
            block = bytearray(20_000_000)
            await asyncio.to_thread(lambda: len(bytearray(20_000_000)))
            del block

        @pytest.mark.asyncio
        @pytest.mark.max_rss("30 MiB")
        async def test_nothing():
            await asyncio.sleep(0.01)

        @pytest.mark.max_rss(150_000_000)
        def test_sync_under():
            block = bytearray(100_000_000)
        """
    )
    result = suite.run("-v")
    result.assert_outcomes(passed=3)
    result.stdout.no_fnmatch_line("*max_rss exceeded*")


def test_memory_allocated_before_the_test_or_freed_in_it_is_not_growth(suite):
    suite.write(
        source="""
        import pytest

        EARLY = [bytearray(250_000_000)]  # at import: part of every test's baseline

        @pytest.mark.asyncio
        @pytest.mark.max_rss("50 MB")
        async def test_reads_early():
            assert len(EARLY[0]) == 250_000_000

        @pytest.mark.asyncio
        @pytest.mark.max_rss("50 MB")
        async def test_frees_early():
            EARLY.clear()  # shrinking never fails a budget
        """
    )
    result = suite.run("-v")
    result.assert_outcomes(passed=2)


def test_session_fixture_counts_where_it_is_set_up(suite):
    """A shared fixture is set up in its first test's setup: that test pays, not the next."""
    suite.write(
        source="""
        import pytest

        @pytest.fixture(scope="session")
        def cache():
            return bytearray(200_000_000)

        @pytest.mark.asyncio
        @pytest.mark.max_rss("100 MB")
        async def test_first(cache):
            pass

        @pytest.mark.asyncio
        @pytest.mark.max_rss("100 MB")
        async def test_second(cache):
            pass
        """
    )
    result = suite.run("-v")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_first*", HEADLINE.format(phase="setup")])
    result.stdout.fnmatch_lines(["*test_second PASSED*"])


# -- absolute=True -------------------------------------------------------------------


def test_absolute_limits_the_process_peak(suite):
    suite.write(
        source="""
        import pytest

        EARLY = bytearray(200_000_000)  # already resident before any test starts

        @pytest.mark.asyncio
        @pytest.mark.max_rss("100 MB")
        async def test_growth_only():
            pass

        @pytest.mark.asyncio
        @pytest.mark.max_rss("8 GiB", absolute=True)
        async def test_absolute_large():
            block = bytearray(50_000_000)

        @pytest.mark.asyncio
        @pytest.mark.max_rss("100 MB", absolute=True)
        async def test_absolute_small():
            pass
        """
    )
    result = suite.run("-v")
    # Over an absolute budget before the test even began: it breaks in setup.
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*test_growth_only PASSED*",
            "*test_absolute_large PASSED*",
            "*test_absolute_small ERROR*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_absolute_small*",
            "*max_rss exceeded: peak RSS 2* MiB > budget absolute 100 MB (95.4 MiB) (setup)",
            "*peak 2* MiB during setup = baseline 2* MiB (RSS when setup started) + growth *",
            "*the process was already over this absolute budget when the test's setup started",
        ]
    )


def test_absolute_catches_a_spike_in_the_test_body(suite):
    suite.write(
        source="""
        import pytest

        @pytest.mark.asyncio
        @pytest.mark.max_rss("250 MB", absolute=True)
        async def test_spike():
            block = bytearray(300_000_000)
            del block
        """
    )
    result = suite.run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*max_rss exceeded: peak RSS 3* MiB > budget absolute 250 MB (238.4 MiB) (call)", "*a spike*"]
    )


# -- defaults from the ini file and the command line -----------------------------------


def test_ini_default_applies_to_sync_and_async_and_none_opts_out(suite):
    suite.ini(extra="asyncbudget_max_rss = 100MB\n")
    suite.write(
        source="""
        import pytest

        def spike():
            block = bytearray(250_000_000)
            del block

        @pytest.mark.asyncio
        async def test_async_default():
            spike()

        def test_sync_default():
            spike()

        @pytest.mark.asyncio
        @pytest.mark.max_rss(None)
        async def test_opted_out():
            spike()

        @pytest.mark.asyncio
        @pytest.mark.max_rss("1 GB")
        async def test_marker_overrides():
            spike()
        """
    )
    result = suite.run("-v")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_async_default FAILED*",
            "*test_sync_default FAILED*",
            "*test_opted_out PASSED*",
            "*test_marker_overrides PASSED*",
        ]
    )


def test_cli_overrides_ini(suite):
    suite.ini(extra="asyncbudget_max_rss = 100MB\n")
    suite.write(
        source="""
        import pytest

        @pytest.mark.asyncio
        async def test_spike():
            block = bytearray(250_000_000)
            del block
        """
    )
    suite.run().assert_outcomes(failed=1)
    suite.run("--asyncbudget-max-rss=1GiB").assert_outcomes(passed=1)
    suite.run("--asyncbudget-max-rss=None").assert_outcomes(passed=1)
    result = suite.run("--asyncbudget-max-rss", "50 MiB")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*RSS grew * MiB > budget 50 MiB (call)"])


# -- bad input: usage errors naming the test and the marker ---------------------------


@pytest.mark.parametrize(
    ("args", "why"),
    [
        ('"100 XB"', "*unknown size unit 'XB'*"),
        ("-1", "*must not be negative*"),
        ('"-5 MB"', "*must not be negative*"),
        ("[100]", "*expected a size*got list*"),
        ("1.5", "*whole number*"),
        ('"100 MB", absolute="yes"', "*absolute must be True or False, got str 'yes'*"),
        ('"100 MB", True', "*too many positional arguments; the marker's signature is max_rss(limit*, *, absolute*"),
        ("", "*missing a required argument: 'limit'*"),
    ],
)
@loop_irrelevant
def test_bad_marker_is_a_usage_error(suite, args, why):
    suite.write(
        source=f"""
        import pytest

        @pytest.mark.max_rss({args})
        def test_bad():
            pass
        """
    )
    result = suite.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*test_suite.py::test_bad: @pytest.mark.max_rss(*){why}"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


@pytest.mark.parametrize("option", ["ini", "cli"])
@loop_irrelevant
def test_bad_default_is_a_usage_error(suite, option):
    suite.write(source="def test_ok():\n    pass\n")
    if option == "ini":
        suite.ini(extra="asyncbudget_max_rss = 100 parsecs\n")
        result = suite.run()
        where = "asyncbudget_max_rss='100 parsecs'"
    else:
        result = suite.run("--asyncbudget-max-rss=lots")
        where = "--asyncbudget-max-rss='lots'"
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{where}: *"])
    assert "Traceback" not in result.stderr.str()


# -- pytest-xdist: each worker measures its own process ----------------------------------


def test_under_xdist_each_worker_measures_itself(suite):
    suite.write(
        source="""
        import os, pytest

        @pytest.mark.asyncio
        @pytest.mark.max_rss("100 MB")
        @pytest.mark.parametrize("n", range(4))
        async def test_spike(n):
            block = bytearray(200_000_000)
            del block

        @pytest.mark.asyncio
        @pytest.mark.max_rss("100 MB")
        @pytest.mark.parametrize("n", range(4))
        async def test_small(n):
            block = bytearray(10_000_000)

        @pytest.mark.max_rss("100 MB")
        @pytest.mark.parametrize("n", range(2))
        def test_sync_spike(n):
            block = bytearray(200_000_000)
        """
    )
    result = suite.run("-n", "2")
    result.assert_outcomes(passed=4, failed=6)
    result.stdout.fnmatch_lines(["*2 workers*"])
    result.stdout.fnmatch_lines([HEADLINE.format(phase="call")])
    result.stdout.no_fnmatch_line("*test_small*FAILED*")


# -- the fallback where the high-water mark cannot be reset -------------------------------

_FORCE_FALLBACK = """
import os
from pytest_asyncbudget.probes import rss

rss._METER = (os.getpid(), rss.FallbackMeter())
"""


def test_fallback_is_exact_when_the_lifetime_peak_rises_and_a_lower_bound_otherwise(suite):
    suite.conftest(_FORCE_FALLBACK)
    suite.write(
        source="""
        import time, pytest

        @pytest.mark.asyncio
        @pytest.mark.max_rss("100 MB")
        async def test_1_new_process_peak():
            block = bytearray(300_000_000)  # the process never was this big: exact
            del block

        @pytest.mark.asyncio
        @pytest.mark.max_rss("100 MB")
        async def test_2_below_the_old_peak():
            block = bytearray(200_000_000)  # held long enough for the sampler
            time.sleep(0.1)
            del block

        @pytest.mark.asyncio
        @pytest.mark.max_rss("100 MB")
        async def test_3_small():
            block = bytearray(10_000_000)
        """
    )
    result = suite.run("-v")
    result.assert_outcomes(passed=1, failed=2)
    text = result.stdout.str()
    first = text[text.index("__ test_1_new_process_peak __") : text.index("__ test_2_below_the_old_peak __")]
    second = text[text.index("__ test_2_below_the_old_peak __") :]
    assert "RSS grew 2" in first and "exact: sampled every 2 ms" in first, first
    assert "RSS grew at least 1" in second, second
    assert "lower bound: sampled every 2 ms" in second, second
    assert "a shorter spike can be missed" in second, second
    result.stdout.fnmatch_lines(["max_rss: 2 of 3 peaks are lower bounds (sampled every 2 ms*"])


# -- the plugin must never harm the suite ---------------------------------------------------

_BROKEN_METER = """
import os
from pytest_asyncbudget.probes import rss

class Broken(rss.ClearRefsMeter):
    def peak(self, since_rss, mark):
        raise RuntimeError("meter broke")

rss._METER = (os.getpid(), Broken())
"""


def test_a_broken_meter_is_reported_once_and_changes_no_result(suite):
    suite.conftest(_BROKEN_METER)
    suite.write(
        source="""
        import pytest

        @pytest.mark.asyncio
        @pytest.mark.max_rss("100 MB")
        async def test_spike():
            block = bytearray(200_000_000)

        @pytest.mark.max_rss("100 MB")
        def test_sync():
            pass

        @pytest.mark.asyncio
        @pytest.mark.max_rss("100 MB")
        async def test_fails_on_its_own():
            assert False
        """
    )
    result = suite.run()
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*internal error in RssProbe.phase_stopped*", "*RuntimeError: meter broke"])
    assert result.stdout.str().count("internal error in RssProbe.phase_stopped") == 1


# -- the parts alone -------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_clear_refs_check_matches_the_meter_in_use():
    assert rss_probe.ClearRefsMeter.check()[0] is EXACT


@needs_exact
@pytest.mark.parametrize("populate", [True, False], ids=["MAP_POPULATE", "touching each page"])
def test_clear_refs_check_catches_a_reset_that_does_nothing(monkeypatch, populate):
    """The check must never pass a reset that leaves the mark alone: every test would
    then look as big as the process's worst moment. Both ways of making the block
    resident (MAP_POPULATE where it exists, else touching each page) are checked."""
    if not populate:
        monkeypatch.delattr(rss_probe.mmap, "MAP_POPULATE", raising=False)
    elif not hasattr(rss_probe.mmap, "MAP_POPULATE"):
        pytest.skip("no MAP_POPULATE here")
    assert rss_probe.ClearRefsMeter.check()[0]
    monkeypatch.setattr(rss_probe.ClearRefsMeter, "start", lambda self: 0)  # the reset does nothing
    assert not rss_probe.ClearRefsMeter.check()[0]


@needs_exact
def test_probe_sees_a_spike_between_phase_boundaries():
    probe = rss_probe.RssProbe(budgeted=True)
    probe.phase_started("setup")
    probe.phase_stopped("setup")
    probe.phase_started("call")
    block = bytearray(64 * 2**20)
    del block
    probe.phase_stopped("call")
    setup, call = probe.measurement("setup"), probe.measurement("call")
    assert setup is not None and call is not None
    assert setup.earlier_peak is None and call.earlier_peak == setup.peak
    assert call.growth >= 60 * 2**20 and call.peak_phase == "call" and call.exact
    assert call.end < call.peak - 32 * 2**20  # freed again: a spike
    assert probe.measurement("teardown") is None


@needs_exact
def test_the_mark_read_through_getrusage_agrees_with_proc_status():
    """Past its first reading, the meter takes the mark from ``ru_maxrss``: the same
    kernel counter as ``VmHWM``, so the two agree on a fresh spike (to a few pages)."""
    meter = rss_probe.ClearRefsMeter(rusage=True)
    try:
        meter.start()
        meter.peak(0, 0)  # the first reading also reads /proc/self/status
        meter.start()
        block = bytearray(48 * 2**20)
        del block
        peak, end, exact = meter.peak(0, 0)
        hwm, rss = meter._hwm_and_rss()
        assert exact and peak >= 48 * 2**20 and end < peak - 32 * 2**20
        assert abs(peak - hwm) < 2**20 and abs(end - rss) < 2**20
    finally:
        meter.close()


@needs_exact
def test_a_getrusage_figure_the_reset_cannot_clear_is_never_taken_for_the_mark(monkeypatch):
    """A process forked from a big one and exec'd keeps that process's peak in
    ``ru_maxrss`` for life: ``max(that, mark)``, which no reset clears. While a reading
    is not above the lowest so far, the meter must read the mark from /proc instead,
    or every test would look as big as the parent."""
    parent = 8 * 2**30  # the parent's peak, far above this process's

    class Usage:
        ru_maxrss = parent // 1024

    monkeypatch.setattr(rss_probe, "_getrusage", lambda who: Usage)
    meter = rss_probe.ClearRefsMeter(rusage=True)
    try:
        for _ in range(3):
            baseline = meter.start()
            peak, end, exact = meter.peak(baseline, 0)
            hwm, _ = meter._hwm_and_rss()
            assert exact and peak < parent and abs(peak - hwm) < 2**20
    finally:
        meter.close()


def _fake_getrusage(monkeypatch, figure):
    """``getrusage`` whose ``ru_maxrss`` is ``figure(VmHWM now)``, in KiB as on Linux."""

    def getrusage(who):
        return types.SimpleNamespace(ru_maxrss=figure(rss_probe._linux_status()[0]) // 1024)

    monkeypatch.setattr(rss_probe, "_getrusage", getrusage)


@needs_exact
def test_getrusage_is_trusted_only_where_it_follows_the_reset(monkeypatch):
    """The once-per-process check: ``ru_maxrss`` must show the check's spike and come
    down with the reset. A kernel or sandbox that keeps it its own way (never coming
    down), or a figure from before exec above the spike, means /proc/self/status only:
    otherwise one big test would make every later one look as big."""
    _fake_getrusage(monkeypatch, lambda hwm: hwm)  # the same counter, as on Linux
    assert rss_probe.ClearRefsMeter.check() == (True, True)

    seen = [0]

    def never_down(hwm):
        seen[0] = max(seen[0], hwm)
        return seen[0]

    _fake_getrusage(monkeypatch, never_down)
    assert rss_probe.ClearRefsMeter.check() == (True, False)
    _fake_getrusage(monkeypatch, lambda hwm: max(hwm, 8 * 2**30))  # a big parent's peak
    assert rss_probe.ClearRefsMeter.check() == (True, False)

    monkeypatch.setattr(rss_probe, "_METER", None)  # the meter this process would choose now
    chosen = rss_probe.meter()
    try:
        assert isinstance(chosen, rss_probe.ClearRefsMeter) and chosen._floor == sys.maxsize
        baseline = chosen.start()
        block = bytearray(48 * 2**20)
        del block
        chosen.start()  # the mark comes down; the big parent's figure does not
        peak, _, exact = chosen.peak(baseline, 0)
        assert exact and peak < baseline + 16 * 2**20
    finally:
        chosen.close()


def _measurement(baseline: int, peak: int, end: int, earlier: int | None, exact: bool = True, phase: str = "call"):
    return rss_probe.RssMeasurement(
        phase=phase, baseline=baseline, peak=peak, peak_phase=phase, earlier_peak=earlier,
        end=end, exact=exact, method="test",
    )


sizes = st.integers(min_value=0, max_value=2**40)


@settings(deadline=None)
@given(baseline=sizes, growth=sizes, limit=sizes, absolute=st.booleans(), exact=st.booleans())
def test_judge_fails_exactly_when_over_the_limit_in_the_first_phase(baseline, growth, limit, absolute, exact):
    budget = rss_budget.RssBudget(limit=limit, absolute=absolute)
    m = _measurement(baseline, baseline + growth, baseline, None, exact, phase="setup")
    verdict = rss_budget.judge(budget, m)
    value = baseline + growth if absolute else growth
    assert verdict.passed is (value <= limit)
    assert verdict.measured == value and verdict.limit == limit
    assert ("exceeded" in verdict.headline) is not verdict.passed
    assert ("at least" in verdict.headline) is (not exact)
    if not verdict.passed:
        (finding,) = verdict.findings
        assert finding.data["growth_bytes"] == growth and finding.data["baseline_bytes"] == baseline
        assert format_size(baseline) in finding.title and format_size(baseline + growth) in finding.title


@settings(deadline=None)
@given(baseline=sizes, earlier=sizes, more=sizes, limit=sizes)
def test_judge_reports_a_breach_once(baseline, earlier, more, limit):
    budget = rss_budget.RssBudget(limit=limit)
    m = _measurement(baseline, baseline + earlier + more, baseline, baseline + earlier)
    verdict = rss_budget.judge(budget, m)
    already_over = earlier > limit
    now_over = earlier + more > limit
    assert verdict.passed is (not now_over or already_over)


def test_judge_without_a_budget_only_measures():
    verdict = rss_budget.judge(None, _measurement(100, 10**9, 100, None))
    assert verdict.passed and verdict.limit is None and verdict.findings == []


# -- the size parser, with hypothesis -------------------------------------------------------

UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
cases = st.sampled_from([str.lower, str.upper, str, str.swapcase])


@settings(deadline=None)
@given(
    amount=st.integers(min_value=0, max_value=10**6),
    unit=st.sampled_from(sorted(UNITS)),
    space=st.sampled_from(["", " ", "  ", "\t"]),
    case=cases,
)
def test_parse_size_any_unit_any_case_any_spacing(amount, unit, space, case):
    assert parse_size(f" {amount}{space}{case(unit)} ") == amount * UNITS[unit]


@settings(deadline=None)
@given(amount=st.integers(min_value=1, max_value=10**4), prefix=st.sampled_from(["K", "M", "G"]))
def test_binary_units_are_bigger_than_decimal_ones(amount, prefix):
    assert parse_size(f"{amount} {prefix}iB") > parse_size(f"{amount} {prefix}B")


@settings(deadline=None)
@given(number=st.decimals(min_value=0, max_value=10**4, places=3), unit=st.sampled_from(sorted(UNITS)))
def test_parse_size_fractions_round_to_whole_bytes(number, unit):
    parsed = parse_size(f"{number}{unit}")
    assert isinstance(parsed, int)
    assert abs(parsed - float(number) * UNITS[unit]) <= 0.5 + 1e-9 * float(number) * UNITS[unit]


@settings(deadline=None)
@given(st.integers(min_value=0, max_value=2**62))
def test_parse_size_ints_are_bytes_exactly(n):
    assert parse_size(n) == n


# Strings go through a float: exact up to 2**53 bytes (8 PiB), far beyond any RSS.
@settings(deadline=None)
@given(st.integers(min_value=0, max_value=2**53))
def test_parse_size_digit_strings_are_bytes_and_format_size_reads_back(n):
    assert parse_size(str(n)) == n
    shown = format_size(n)  # one decimal in the largest unit that fits, GiB at most
    unit = 1
    while unit < 2**30 and n >= unit * 1024:
        unit *= 1024
    assert abs(parse_size(shown) - n) <= 0.05 * unit + 1


@settings(deadline=None)
@given(st.integers(min_value=1, max_value=2**62), st.sampled_from(["", " MB", "MiB", " kb"]))
def test_parse_size_rejects_negative(n, unit):
    with pytest.raises(UnitError, match="must not be negative"):
        parse_size(f"-{n}{unit}")


@settings(deadline=None)
@given(
    st.text(alphabet=st.characters(categories=["Lu", "Ll"]), min_size=1, max_size=4).filter(
        lambda u: u.lower() not in {"b", "kb", "mb", "gb", "tb", "kib", "mib", "gib", "tib"}
    )
)
@example("XB")
@example("megabytes")
def test_parse_size_rejects_unknown_units(unit):
    with pytest.raises(UnitError, match="unknown size unit"):
        parse_size(f"100 {unit}")


@pytest.mark.parametrize("bad", [True, False, None, [1], 1.5, float("nan"), float("inf"), "", "MB", "1 2 MB"])
def test_parse_size_rejects_wrong_types_and_shapes(bad):
    with pytest.raises(UnitError):
        parse_size(bad)


def test_marker_parses_and_keeps_the_spelling():
    budget = rss_budget.marker("  100   MB ", absolute=True)
    assert budget == rss_budget.RssBudget(limit=100_000_000, absolute=True, spelled="100 MB")
    assert budget.describe() == "100 MB (95.4 MiB)"
    assert rss_budget.marker("256MiB").describe() == "256MiB"
    assert rss_budget.marker("1 gb").describe() == "1 gb (953.7 MiB)"
    assert rss_budget.marker(2**20).describe() == "1.0 MiB"
    assert rss_budget.marker(None) is None
    assert rss_budget.marker(None, absolute=True) is None
    with pytest.raises(TypeError):
        rss_budget.marker("1 MB", absolute=1)  # type: ignore[arg-type]


def test_forked_child_chooses_its_own_meter():
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    parent = rss_probe.meter()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            child = rss_probe.meter()
            os.write(write, b"1" if child is not parent and type(child) is type(parent) else b"0")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    os.close(read)


@pytest.mark.skipif(not EXACT, reason="needs /proc/self/clear_refs")
def test_the_meter_does_not_go_through_the_guard_no_blocking_puts_on_os(monkeypatch):
    """no_blocking patches os.pread/os.pwrite for the user's code; the probe's own /proc
    reads and writes use the functions bound at import, never the patched ones."""

    def guarded(*args):
        raise AssertionError("the rss probe called the patched os function")

    meter = rss_probe.ClearRefsMeter()
    try:
        monkeypatch.setattr(os, "pread", guarded)
        monkeypatch.setattr(os, "pwrite", guarded)
        baseline = meter.start()
        peak, end, exact = meter.peak(baseline, 0)
    finally:
        monkeypatch.undo()
        meter.close()
    assert exact and peak >= baseline > 0 and end > 0


def test_fallback_sampler_does_not_spin_when_a_test_mocks_sleep_and_event_wait(suite):
    """The fallback's sampler thread naps on raw locks: a mocked time.sleep or
    Event.wait (common in test suites) neither makes it spin nor stops it sampling."""
    suite.conftest(_FORCE_FALLBACK)
    suite.write(
        source="""
        import threading, time, pytest
        from pytest_asyncbudget.probes import rss

        calls = []

        @pytest.mark.max_rss("1 GB")
        def test_mocked(monkeypatch):
            monkeypatch.setattr(time, "sleep", lambda s: calls.append(s))
            monkeypatch.setattr(threading.Event, "wait", lambda self, timeout=None: calls.append(timeout) or True)
            sampler = rss.meter()._sampler
            sampler.unwatch()  # start a fresh watch with the mocks in place
            sampler.watch()
            block = bytearray(50_000_000)  # resident: written below
            block[::4096] = b"x" * len(block[::4096])
            deadline = time.perf_counter() + 0.3
            while time.perf_counter() < deadline:
                pass  # wait without time.sleep (mocked)
            high = sampler.unwatch()
            assert calls == [], "the sampler thread called a mocked function"
            assert high >= 50_000_000, high  # it kept sampling, every 2 ms
            assert sampler.error is None
        """
    )
    result = suite.run("-v")
    result.assert_outcomes(passed=1)
