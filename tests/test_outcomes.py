"""Each test counts once in pytest's tally, whichever phase a budget broke in."""

from __future__ import annotations

import pytest

_SUITE = """
import asyncio, pytest

@pytest.mark.asyncio
@pytest.mark.no_leaked_tasks
async def test_leaks_a_task():
    asyncio.create_task(asyncio.sleep(30), name="forgotten")

@pytest.mark.asyncio
@pytest.mark.no_leaked_tasks
async def test_clean():
    await asyncio.sleep(0)
"""


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_teardown_leak_counts_as_one_failed_test(suite, xdist):
    suite.write(source=_SUITE)
    result = suite.run("-v", *xdist)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*1 failed, 1 passed*"])
    assert "error" not in result.stdout.lines[-1]
    result.stdout.fnmatch_lines(["*no_leaked_tasks failed: 1 task leaked*"])
