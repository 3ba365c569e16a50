"""The duration and size parsers, checked with hypothesis."""

from __future__ import annotations

import datetime
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_asyncbudget.units import UnitError, format_duration, parse_duration, parse_size

DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0}
SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}

amounts = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(amounts, st.sampled_from(sorted(DURATION_UNITS)), st.sampled_from(["", " ", "  "]), st.booleans())
def test_duration_with_unit(amount, unit, space, upper):
    text = f"{amount!r}{space}{unit.upper() if upper and unit != 'µs' else unit}"
    assert math.isclose(parse_duration(text), amount * DURATION_UNITS[unit], rel_tol=1e-9, abs_tol=1e-15)


@given(amounts)
def test_duration_plain_numbers_and_timedeltas_are_seconds(amount):
    assert parse_duration(amount) == amount
    assert parse_duration(str(amount)) == pytest.approx(amount)
    assert parse_duration(datetime.timedelta(seconds=amount)) == pytest.approx(amount, abs=1e-6)


@given(st.floats(max_value=-1e-12, allow_nan=False, allow_infinity=False))
def test_negative_durations_are_rejected(amount):
    with pytest.raises(UnitError, match="must not be negative"):
        parse_duration(amount)
    with pytest.raises(UnitError, match="must not be negative"):
        parse_duration(f"{amount!r}ms")


@given(st.text().filter(lambda s: s.strip().lower().lstrip("+").replace(".", "", 1).isdigit() is False))
def test_garbage_durations_raise_unit_error_only(text):
    try:
        value = parse_duration(text)
    except UnitError:
        return
    assert value >= 0 and math.isfinite(value)


@pytest.mark.parametrize("bad", [True, None, [1], {"ms": 1}, float("nan"), float("inf"), "inf", "50 parsecs", "ms", ""])
def test_bad_durations(bad):
    with pytest.raises(UnitError):
        parse_duration(bad)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(SIZE_UNITS)), st.sampled_from(["", " "]), st.sampled_from([str.lower, str.upper, str]))
def test_size_units_any_case(amount, unit, space, case):
    assert parse_size(f"{amount}{space}{case(unit)}") == amount * SIZE_UNITS[unit]


def test_mb_is_decimal_and_mib_is_binary():
    assert parse_size("100 MB") == 100_000_000
    assert parse_size("100MiB") == 100 * 1024 * 1024
    assert parse_size("1.5 GiB") == 3 * 2**29
    assert parse_size(4096) == 4096


@pytest.mark.parametrize("bad", [-1, "-5 MB", "5 parsecs", 1.5, True, None, "MB", [100]])
def test_bad_sizes(bad):
    with pytest.raises(UnitError):
        parse_size(bad)


@given(st.floats(min_value=1e-6, max_value=1e4, allow_nan=False))
def test_format_duration_round_trips_within_display_precision(seconds):
    shown = format_duration(seconds)
    assert parse_duration(shown.replace(" ", "")) == pytest.approx(seconds, rel=0.06, abs=1e-6)

