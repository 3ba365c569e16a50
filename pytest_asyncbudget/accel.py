"""The optional compiled helpers (``_speedups.c``), when built and not switched off.

Each helper there is the twin of a Python wrapper in the module that uses it, which
stays the reference and the fallback: with ``ASYNCBUDGET_PURE_PYTHON=1`` in the
environment, or where the package was installed without a C compiler, the plugin uses
the Python wrappers, with the same results.
"""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["speedups"]

#: The module once looked for; False when there is none to use.
_MODULE: ModuleType | bool | None = None


def speedups() -> ModuleType | None:
    """``pytest_asyncbudget._speedups``, or None (not built, or switched off)."""
    global _MODULE
    if _MODULE is None:
        _MODULE = False
        if not os.environ.get("ASYNCBUDGET_PURE_PYTHON"):
            try:
                from . import _speedups
            except ImportError:
                pass
            else:
                _MODULE = _speedups
    return _MODULE or None
