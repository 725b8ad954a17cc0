"""Metadata filters: parsing `key=value` words into Filter values (records.Filter). The catalog turns
them into SQL (store/facets.py); nothing here knows how metadata is stored.

Grammar of one filter (the same in `--where`, in `exif/` path segments and in the Python API):
    key=value        text keys: case-insensitive equality; camera/lens/make/model/title/description/text:
                     case-insensitive substring; numbers: equality (fractions like 1/250 allowed);
                     dates: a day, a month (2019-05) or a year (2019)
    key=lo..hi       inclusive range for numbers and dates; either end may be left open (`..hi`, `lo..`)
    has_gps=yes|no   booleans
"""

from __future__ import annotations

import calendar
import re
from fractions import Fraction

from ..config import parse_bool
from ..errors import QueryError
from ..records import FACET_BY_KEY, Bound, Filter

__all__ = ["Filter", "parse_filter"]


def parse_filter(word: str) -> Filter:
    """Parse one `key=value` word; raise QueryError with the reason and the known keys."""
    key, sep, value = word.partition("=")
    key = key.strip().lower()
    if not sep or not key:
        raise QueryError(f"filter {word!r} is not key=value (e.g. camera=Canon, year=2019..2021)")
    spec = FACET_BY_KEY.get(key)
    if spec is None:
        raise QueryError(f"unknown metadata key {key!r}; known: {', '.join(FACET_BY_KEY)}")
    value = value.strip()
    if value == "":
        raise QueryError(f"filter {word!r} has no value")
    if ".." in value and spec.kind in ("number", "date"):
        lo, _, hi = value.partition("..")
        return _range(key, spec.kind, lo.strip(), hi.strip(), word)
    if spec.kind == "number":
        return Filter(key, "eq", value=_number(value, word))
    if spec.kind == "date":
        lo_day, hi_day = _date_span(value, word)
        return Filter(key, "range", lo=lo_day, hi=hi_day)
    if spec.kind == "bool":
        return Filter(key, "eq", value="yes" if _yes(value, word) else "no")
    if spec.kind == "match":
        return Filter(key, "match", value=value)
    return Filter(key, "eq", value=value)


def _range(key: str, kind: str, lo: str, hi: str, word: str) -> Filter:
    if not lo and not hi:
        raise QueryError(f"filter {word!r}: a range needs at least one end")
    low: Bound
    high: Bound
    if kind == "number":
        low, high = (_number(lo, word) if lo else None), (_number(hi, word) if hi else None)
    else:
        low, high = (_date_span(lo, word)[0] if lo else None), (_date_span(hi, word)[1] if hi else None)
    if low is not None and high is not None and low > high:  # type: ignore[operator]
        raise QueryError(f"filter {word!r}: the range is empty ({lo} is after {hi}); write it low..high")
    return Filter(key, "range", lo=low, hi=high)


def _number(text: str, word: str) -> float:
    try:
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise QueryError(f"filter {word!r}: {text!r} is not a number") from None


_DATE = re.compile(r"^(\d{4})(?:[-:](\d{1,2})(?:[-:](\d{1,2}))?)?$")


def _date_span(text: str, word: str) -> tuple[str, str]:
    """The first and last day (YYYY-MM-DD) covered by a year, a month or a day."""
    match = _DATE.match(text)
    if not match:
        raise QueryError(f"filter {word!r}: {text!r} is not a date (YYYY, YYYY-MM or YYYY-MM-DD)")
    year = int(match.group(1))
    month, day = (int(g) if g else None for g in match.groups()[1:])
    if month is not None and not 1 <= month <= 12:
        raise QueryError(f"filter {word!r}: month {month} is not 1-12")
    if month is None:
        return f"{year:04d}-01-01", f"{year:04d}-12-31"
    last = calendar.monthrange(year, month)[1]
    if day is None:
        return f"{year:04d}-{month:02d}-01", f"{year:04d}-{month:02d}-{last:02d}"
    if not 1 <= day <= last:
        raise QueryError(f"filter {word!r}: day {day} does not exist in {year:04d}-{month:02d}")
    return (f"{year:04d}-{month:02d}-{day:02d}",) * 2


def _yes(text: str, word: str) -> bool:
    try:
        return parse_bool(text)
    except ValueError:
        raise QueryError(f"filter {word!r}: expected yes or no") from None
