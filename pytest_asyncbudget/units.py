"""Parsing and formatting of the two kinds of quantity budgets use: durations and sizes.

Parsers raise :class:`UnitError` with a short message; the caller adds which test and
which marker or option the value came from.
"""

from __future__ import annotations

import datetime
import math
import re

__all__ = [
    "UnitError",
    "format_duration",
    "format_size",
    "parse_duration",
    "parse_size",
]


class UnitError(ValueError):
    """A budget value that cannot be understood."""


# Seconds per unit. Keys are lower-case; "µs" and "us" are the same unit.
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,  # Greek mu, which some keyboards produce instead of the micro sign
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
}

# Bytes per unit. "MB" is 10**6 and "MiB" is 2**20, whatever the case.
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}

_NUMBER_WITH_UNIT = re.compile(
    r"^\s*(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>[^\d\s.+-][^\s]*)?\s*$"
)


def _check_number(value: float, what: str) -> float:
    if math.isnan(value) or math.isinf(value):
        raise UnitError(f"{what} must be a finite number, got {value!r}")
    if value < 0:
        raise UnitError(f"{what} must not be negative, got {value!r}")
    return value


def parse_duration(value: object) -> float:
    """Return *value* as seconds.

    Accepts a number of seconds (int or float), a :class:`datetime.timedelta`, or a
    string such as ``"50ms"``, ``"50 ms"``, ``"0.05s"``, ``"250us"`` or ``"0.05"``
    (a bare number in a string is seconds).
    """
    if isinstance(value, bool):
        raise UnitError(f"expected a duration, got the boolean {value!r}")
    if isinstance(value, datetime.timedelta):
        return _check_number(value.total_seconds(), "a duration")
    if isinstance(value, (int, float)):
        return _check_number(float(value), "a duration")
    if isinstance(value, str):
        match = _NUMBER_WITH_UNIT.match(value)
        if match is None:
            raise UnitError(
                f"cannot read {value!r} as a duration; write e.g. '50ms', '0.05s' or '250us'"
            )
        number = float(match["number"])
        unit = (match["unit"] or "s").lower()
        if unit not in _DURATION_UNITS:
            raise UnitError(
                f"unknown duration unit {match['unit']!r} in {value!r}; "
                f"use one of ns, us, ms, s, min"
            )
        return _check_number(number * _DURATION_UNITS[unit], "a duration")
    raise UnitError(
        f"expected a duration (seconds as a number, a string like '50ms', or a timedelta), "
        f"got {type(value).__name__} {value!r}"
    )


def parse_size(value: object) -> int:
    """Return *value* as a whole number of bytes.

    Accepts an int of bytes or a string such as ``"100 MB"`` (10**6-based),
    ``"100MiB"`` (2**20-based), ``"1.5 GiB"`` or ``"4096"``. Units are read in any case.
    """
    if isinstance(value, bool):
        raise UnitError(f"expected a size, got the boolean {value!r}")
    if isinstance(value, int):
        return int(_check_number(value, "a size"))
    if isinstance(value, float):
        if not value.is_integer():
            raise UnitError(f"a size in bytes must be a whole number, got {value!r}")
        return int(_check_number(value, "a size"))
    if isinstance(value, str):
        match = _NUMBER_WITH_UNIT.match(value)
        if match is None:
            raise UnitError(f"cannot read {value!r} as a size; write e.g. '100 MB' or '256MiB'")
        number = _check_number(float(match["number"]), "a size")
        unit = (match["unit"] or "b").lower()
        if unit not in _SIZE_UNITS:
            raise UnitError(
                f"unknown size unit {match['unit']!r} in {value!r}; "
                f"use B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"
            )
        return int(round(number * _SIZE_UNITS[unit]))
    raise UnitError(
        f"expected a size (bytes as an int, or a string like '100 MB'), "
        f"got {type(value).__name__} {value!r}"
    )


def format_duration(seconds: float) -> str:
    """A short human form: ``203.4 ms``, ``50 ms``, ``1.2 s``, ``250 us``."""
    if seconds >= 1.0:
        text, unit = f"{seconds:.2f}", "s"
    elif seconds >= 1e-3:
        text, unit = f"{seconds * 1e3:.1f}", "ms"
    else:
        text, unit = f"{seconds * 1e6:.0f}", "us"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} {unit}"


def format_size(n: float) -> str:
    """A short human form in powers of 1024: ``12.0 MiB``; negative growth keeps its sign."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
