"""FHIR date values as UTC ranges (R4 search.html#date): precision, time zones, periods."""

from __future__ import annotations

from datetime import datetime

import pytest

from nara.fhir.dates import MAX_DT, MIN_DT, instant, parse_instant, parse_range, period_range

US = 1  # microseconds


def dt(*args: int) -> datetime:
    return datetime(*args)  # type: ignore[arg-type]


def test_year_month_and_day_precision_in_local_time_winter() -> None:
    # Europe/Stockholm is UTC+1 in winter
    assert parse_range("2026-01-15") == (dt(2026, 1, 14, 23), dt(2026, 1, 15, 22, 59, 59, 999999))
    assert parse_range("2026-01") == (dt(2025, 12, 31, 23), dt(2026, 1, 31, 22, 59, 59, 999999))
    assert parse_range("2025") == (dt(2024, 12, 31, 23), dt(2025, 12, 31, 22, 59, 59, 999999))


def test_local_time_follows_daylight_saving() -> None:
    # UTC+2 in summer
    assert parse_range("2026-07-01") == (dt(2026, 6, 30, 22), dt(2026, 7, 1, 21, 59, 59, 999999))


def test_explicit_offsets_and_utc() -> None:
    assert parse_range("2026-11-01T08:00:00+01:00") == (dt(2026, 11, 1, 7), dt(2026, 11, 1, 7, 0, 0, 999999))
    assert parse_range("2026-11-01T08:00:00Z") == (dt(2026, 11, 1, 8), dt(2026, 11, 1, 8, 0, 0, 999999))
    assert parse_range("2026-11-01T08:00:00-05:30") == (dt(2026, 11, 1, 13, 30), dt(2026, 11, 1, 13, 30, 0, 999999))


def test_minute_hour_and_fraction_precision() -> None:
    assert parse_range("2026-11-01T08:00Z") == (dt(2026, 11, 1, 8), dt(2026, 11, 1, 8, 0, 59, 999999))
    assert parse_range("2026-11-01T08:00:00.5Z") == (dt(2026, 11, 1, 8, 0, 0, 500000), dt(2026, 11, 1, 8, 0, 0, 599999))
    assert parse_range("2026-11-01T08:00:00.123456Z") == (
        dt(2026, 11, 1, 8, 0, 0, 123456),
        dt(2026, 11, 1, 8, 0, 0, 123456),
    )


def test_month_ends_and_leap_years() -> None:
    assert parse_range("2024-02")[1] == dt(2024, 2, 29, 22, 59, 59, 999999)  # type: ignore[index]
    assert parse_range("2026-12")[1] == dt(2026, 12, 31, 22, 59, 59, 999999)  # type: ignore[index]
    assert parse_range("2024-02-29") is not None


@pytest.mark.parametrize(
    "bad", ["2026-13-01", "2026-02-30", "26-01-01", "2026-1-1", "yesterday", "", "2026-01-01T25:00Z"]
)
def test_invalid_dates_do_not_parse(bad: str) -> None:
    assert parse_range(bad) is None


def test_extreme_years_are_clamped() -> None:
    lo, hi = parse_range("0001")  # type: ignore[misc]
    assert lo == MIN_DT
    lo, hi = parse_range("9999")  # type: ignore[misc]
    assert hi == MAX_DT


def test_period_with_open_ends() -> None:
    assert period_range({"start": "2026-01-01T00:00:00Z"}) == (dt(2026, 1, 1), MAX_DT)
    assert period_range({"end": "2026-01-01T00:00:00Z"}) == (MIN_DT, dt(2026, 1, 1, 0, 0, 0, 999999))
    assert period_range({}) is None
    assert period_range({"start": "2026-01-01", "end": "2026-01-31"}) == (
        dt(2025, 12, 31, 23),
        dt(2026, 1, 31, 22, 59, 59, 999999),
    )


def test_instant_round_trip() -> None:
    assert instant(dt(2026, 1, 2, 3, 4, 5, 6)) == "2026-01-02T03:04:05.000006Z"
    assert parse_instant("2026-01-02T03:04:05.000006Z") == dt(2026, 1, 2, 3, 4, 5, 6)
    assert parse_instant("garbage") is None


def test_inverted_period_spans_both_values() -> None:
    assert period_range({"start": "2026-02-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}) == (
        dt(2026, 1, 1),
        dt(2026, 2, 1, 0, 0, 0, 999999),
    )


def test_a_period_starting_the_year_after_it_ends_spans_both_years() -> None:
    """start 2026, end 2025: the start begins the instant the end's year is over, and is still after it."""
    assert period_range({"start": "2026", "end": "2025"}) == (
        dt(2024, 12, 31, 23),
        dt(2026, 12, 31, 22, 59, 59, 999999),
    )
