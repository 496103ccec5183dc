"""FHIR date, dateTime, instant and Period values as UTC ranges, for indexing and search.

A FHIR date value stands for an interval whose width is its precision: ``2026`` is the whole year,
``2026-11-22T08:00`` the whole minute. Values without a time zone are read in the platform's zone
(Europe/Stockholm by default, ``NARA_TIMEZONE``). Ranges are naive UTC datetimes, both ends inclusive
(the upper end is the last microsecond of the interval).
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

MIN_DT = datetime(1, 1, 1)
MAX_DT = datetime(9999, 12, 31, 23, 59, 59, 999999)
ONE_US = timedelta(microseconds=1)

_DATE_RE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2})(?::(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


@cache
def local_zone() -> ZoneInfo:
    return ZoneInfo(os.environ.get("NARA_TIMEZONE", "Europe/Stockholm"))


def _add_months(dt: datetime, months: int) -> datetime:
    total = dt.year * 12 + (dt.month - 1) + months
    year, month = divmod(total, 12)
    if year > 9999:
        raise OverflowError("after year 9999")
    return dt.replace(year=year, month=month + 1)


def parse_range(value: str) -> tuple[datetime, datetime] | None:
    """The UTC interval a FHIR date/dateTime/instant string covers, or None if it does not parse."""
    m = _DATE_RE.fullmatch(value.strip())
    if not m:
        return None
    g = m.groupdict()
    try:
        year = int(g["y"])
        month = int(g["m"] or 1)
        day = int(g["d"] or 1)
        hour = int(g["H"] or 0)
        minute = int(g["M"] or 0)
        second = int(g["S"] or 0)
        frac = g["f"]
        micro = int((frac or "0")[:6].ljust(6, "0"))
        start = datetime(year, month, day, hour, minute, min(second, 59), micro)
    except ValueError:
        return None
    try:
        end = _interval_end(start, g, frac)
    except OverflowError:
        end = None  # the interval reaches the end of year 9999
    tz = g["tz"]
    if tz:
        if tz == "Z":
            offset = timedelta(0)
        else:
            sign = 1 if tz[0] == "+" else -1
            offset = sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
        lo = _shift(start, offset, MIN_DT)
        hi = _shift(end, offset, MAX_DT) - ONE_US if end is not None else MAX_DT
    else:
        lo = _to_utc(start, MIN_DT)
        hi = _to_utc(end, MAX_DT) - ONE_US if end is not None else MAX_DT
    return max(lo, MIN_DT), min(hi, MAX_DT)


def _interval_end(start: datetime, g: dict[str, str | None], frac: str | None) -> datetime:
    """The first instant after the interval a value of this precision stands for."""
    if frac is not None:
        return start + (timedelta(microseconds=10 ** (6 - len(frac))) if len(frac) < 6 else ONE_US)
    if g["S"] is not None:
        return start + timedelta(seconds=1)
    if g["M"] is not None:
        return start + timedelta(minutes=1)
    if g["H"] is not None:
        return start + timedelta(hours=1)
    if g["d"] is not None:
        return start + timedelta(days=1)
    if g["m"] is not None:
        return _add_months(start, 1)
    return _add_months(start, 12)


def _shift(dt: datetime, offset: timedelta, clamp: datetime) -> datetime:
    """``dt`` minus a UTC offset; values pushed outside years 1..9999 become ``clamp``."""
    try:
        return dt - offset
    except OverflowError:
        return clamp


def _to_utc(dt: datetime, clamp: datetime) -> datetime:
    """A local wall-clock time as naive UTC (``clamp`` when outside the representable years)."""
    try:
        return dt.replace(tzinfo=local_zone()).astimezone(UTC).replace(tzinfo=None)
    except (OverflowError, ValueError):
        return clamp


def period_range(period: dict[str, object]) -> tuple[datetime, datetime] | None:
    """The UTC interval of a Period; open ends reach the first or last representable instant.

    A Period whose start lies after its end (which R4 forbids, per-1) is read as the interval that
    spans both values, so that every stored range has lo <= hi.
    """
    start, end = period.get("start"), period.get("end")
    s = parse_range(start) if isinstance(start, str) else None
    e = parse_range(end) if isinstance(end, str) else None
    if s is None and e is None:
        return None
    lo, hi = (s[0] if s else MIN_DT, e[1] if e else MAX_DT)
    if lo > hi and s is not None and e is not None:
        return min(s[0], e[0]), max(s[1], e[1])
    return lo, hi


def utcnow() -> datetime:
    return datetime.now(UTC)


def instant(dt: datetime) -> str:
    """A FHIR instant string in UTC with microseconds, for an aware or naive-UTC datetime."""
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt.isoformat(timespec="microseconds") + "Z"  # (strftime: 2.5 µs, and years before 1000 unpadded)


def parse_instant(value: str) -> datetime | None:
    """The start of a FHIR date/dateTime/instant as naive UTC (for `_since` and `_at`)."""
    rng = parse_range(value)
    return rng[0] if rng else None
