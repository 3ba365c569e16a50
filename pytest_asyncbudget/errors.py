"""Failures of the plugin itself: caught, reported once, never turned into a test result.

A probe that raises must not fail or pass the user's test in its place. :class:`PluginErrors`
runs each probe hook under a guard; the first error of each probe hook is kept with its
traceback and shown once in the terminal summary, and the budget it belongs to is marked
"not measured" for that test instead of being judged on broken data.
"""

from __future__ import annotations

import traceback
from typing import Any

__all__ = ["PluginErrors"]


class PluginErrors:
    def __init__(self) -> None:
        #: (where, formatted traceback), first occurrence of each place only.
        self.reported: list[tuple[str, str]] = []
        self._places: set[str] = set()
        #: Names of budgets whose probe failed during the current test.
        self.failed_budgets: set[str] = set()

    def guard(self, probe: Any, method: str, *args: Any) -> Any:
        """Call ``probe.method(*args)``; on an exception, record it and return None."""
        try:
            return getattr(probe, method)(*args)
        except Exception:  # noqa: BLE001 - reported below, and the budget is skipped
            self.failed(probe, method)
            return None

    def failed(self, probe: Any, method: str, where: str | None = None) -> None:
        """``probe.method`` just raised: keep the traceback, skip its budget for this test.

        Call it from the ``except`` block (the hot paths in :mod:`..core` and the manager
        inline :meth:`guard`'s ``try`` rather than pay for a call by name). *where* names
        the place when it is not the probe's own method (a budget module's ``judge``).
        """
        self.record(where or f"{type(probe).__name__}.{method}", traceback.format_exc())
        self.failed_budgets.add(getattr(probe, "budget", type(probe).__name__))

    def record(self, where: str, text: str) -> None:
        if where not in self._places:
            self._places.add(where)
            self.reported.append((where, text))
