"""The one interface every probe implements, in the style of Trio's instruments.

The core (:mod:`pytest_asyncbudget.core`) calls these named events; a probe overrides
only the ones it needs, and each is cheap when it does nothing. A probe never has to know
how the events are produced on stock asyncio or on uvloop.

Lifecycle for one test, per phase ("setup", "call", "teardown")::

    phase_started(phase)
        loop_started(loop)     # zero or more times: each time a loop starts running
        loop_stopped(loop)     # on this thread during the phase
    phase_stopped(phase)
    measurement(phase)         # what was measured in that phase (data, not words)
    test_finished()            # once, after the whole test, even an interrupted one

A probe is created fresh for each test by its budget module (``budgets/<name>.py``),
with the test's budget, which may be None when the test is only measured for the
summary and report. Probes hold no session state; what they share (the stack sampler,
the options) comes in through :class:`ProbeContext`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import pytest

    from ..sampler import StackSampler


@dataclass
class ProbeContext:
    """What a probe may use besides its own budget."""

    item: pytest.Item
    config: pytest.Config
    sampler: StackSampler


class Probe:
    """Base class: every event is a no-op."""

    #: The budget this probe measures, e.g. ``"max_loop_lag"``.
    budget: ClassVar[str] = ""

    def phase_started(self, phase: str) -> None:
        """A test phase begins (before any fixture of that phase runs)."""

    def loop_started(self, loop: asyncio.AbstractEventLoop) -> None:
        """*loop* started running on the test's thread."""

    def loop_stopped(self, loop: asyncio.AbstractEventLoop) -> None:
        """*loop* stopped running (always paired with a loop_started)."""

    def phase_stopped(self, phase: str) -> None:
        """The phase ended; every patch the probe made for it must be undone here."""

    def measurement(self, phase: str) -> Any:
        """What was measured during *phase*, or None if there is nothing to judge."""
        return None

    def test_finished(self) -> None:
        """The test is over, however it ended: undo anything still in place.

        A probe whose patches span the whole test (cheaper than per phase) removes them
        at the end of teardown; this is the safety net for a test that never got there.
        """
