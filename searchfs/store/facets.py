"""Where each metadata key (records.FACETS) lives in the catalog, and how a filter on it becomes SQL.

This is the only module that knows the storage of facets; search/filters.py only parses filter words
into `Filter` values, and the catalog turns those into SQL here. Storage (schema.sql, version 2):

- camera, make, model, lens, format: a column of `contents` holding a `names` id (texts stored once);
- date (TEXT 'YYYY-MM-DD'), hour, iso, fnumber, exposure, focal, width, height, orientation, lat, lon:
  columns of `contents`;
- year, month: parts of `date`; timeofday: from `hour`; has_gps: whether `lat` is known;
- keyword, title, description: rows of `content_texts` (several per photo); `text`: any of the three.

SQL conditions are written against the alias `c` for `contents`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from ..records import FACET_BY_KEY, TEXT_FIELDS, Facet, Filter, display_number, display_span

NAME_COLUMNS = ("camera", "make", "model", "lens", "format")
NUMBER_COLUMNS = ("hour", "iso", "fnumber", "exposure", "focal", "width", "height", "orientation", "lat", "lon")
TEXT_KINDS = {"keyword": 1, "title": 2, "description": 3}
FACET_COLUMNS = NAME_COLUMNS + ("date",) + NUMBER_COLUMNS

_TIMEOFDAY = (
    "CASE WHEN c.hour IS NULL THEN NULL WHEN c.hour < 6 THEN 'night' WHEN c.hour < 12 THEN 'morning'"
    " WHEN c.hour < 18 THEN 'afternoon' ELSE 'evening' END"
)
# A value expression per derived or plain key: (SQL for the value as text, SQL for it as a number or None).
_DERIVED = {
    "year": ("CAST(substr(c.date, 1, 4) AS INTEGER)", "CAST(substr(c.date, 1, 4) AS INTEGER)"),
    "month": ("CAST(substr(c.date, 6, 2) AS INTEGER)", "CAST(substr(c.date, 6, 2) AS INTEGER)"),
    "timeofday": (_TIMEOFDAY, None),
    "has_gps": ("CASE WHEN c.lat IS NOT NULL THEN 'yes' WHEN c.meta_version > 0 THEN 'no' END", None),
}


@dataclass(frozen=True)
class Condition:
    """A SQL condition on `c` and its parameters."""

    sql: str
    params: tuple

    @staticmethod
    def all_of(conditions: Sequence[Condition]) -> Condition:
        if not conditions:
            return Condition("1", ())
        return Condition(" AND ".join(f"({c.sql})" for c in conditions), tuple(p for c in conditions for p in c.params))


# ------------------------------------------------------------------------------------------------ filters


def condition(flt: Filter) -> Condition:
    """The SQL condition on `c` that holds when the content matches `flt`."""
    key = flt.key
    if key in ("text",) + tuple(TEXT_KINDS):
        return _text_condition(flt)
    if key in NAME_COLUMNS:
        return _name_condition(f"c.{key}", flt)
    if key == "has_gps":
        return Condition("c.lat IS NOT NULL" if flt.value == "yes" else "c.lat IS NULL AND c.meta_version > 0", ())
    if key == "timeofday":
        return Condition(f"{_TIMEOFDAY} = ?", (str(flt.value).casefold(),))
    if key == "year" and flt.op == "eq" and float(flt.value).is_integer():  # type: ignore[arg-type]
        return _date_condition(Filter("year", "range", lo=flt.value, hi=flt.value))
    if key == "date" or (key == "year" and flt.op == "range" and _whole(flt)):
        return _date_condition(flt)
    number = _DERIVED[key][1] if key in _DERIVED else None
    return _number_condition(number or f"c.{key}", flt)


def _name_condition(column: str, flt: Filter) -> Condition:
    if flt.op == "match":
        return Condition(f"{column} IN (SELECT id FROM names WHERE fold LIKE ? ESCAPE '\\')", (_like(flt.value),))
    return Condition(f"{column} IN (SELECT id FROM names WHERE fold = ?)", (str(flt.value).casefold(),))


def _text_condition(flt: Filter) -> Condition:
    kinds = tuple(TEXT_KINDS[k] for k in (TEXT_FIELDS if flt.key == "text" else (flt.key,)))
    marks = ",".join("?" * len(kinds))
    if flt.op == "match":
        names, value = "fold LIKE ? ESCAPE '\\'", _like(flt.value)
    else:
        names, value = "fold = ?", str(flt.value).casefold()
    return Condition(
        f"c.id IN (SELECT content_id FROM content_texts WHERE kind IN ({marks})"
        f" AND name_id IN (SELECT id FROM names WHERE {names}))",
        (*kinds, value),
    )


def _whole(flt: Filter) -> bool:
    return all(b is None or float(b).is_integer() for b in (flt.lo, flt.hi))


def _date_condition(flt: Filter) -> Condition:
    """Dates compare as text ('YYYY-MM-DD'); a year range becomes the days it covers (index on date)."""
    lo, hi = flt.lo, flt.hi
    if flt.key == "year":
        lo = f"{int(float(lo)):04d}-01-01" if lo is not None else None
        hi = f"{int(float(hi)):04d}-12-31" if hi is not None else None
    parts, params = ["c.date IS NOT NULL"], []
    if lo is not None:
        parts.append("c.date >= ?")
        params.append(lo)
    if hi is not None:
        parts.append("c.date <= ?")
        params.append(hi)
    return Condition(" AND ".join(parts), tuple(params))


def _number_condition(column: str, flt: Filter) -> Condition:
    if flt.op == "range":
        parts, params = [f"{column} IS NOT NULL"], []
        if flt.lo is not None:
            parts.append(f"{column} >= ?")
            params.append(flt.lo)
        if flt.hi is not None:
            parts.append(f"{column} <= ?")
            params.append(flt.hi)
        return Condition(" AND ".join(parts), tuple(params))
    low, high = display_span(flt.key, float(flt.value))  # type: ignore[arg-type]
    return Condition(f"{column} BETWEEN ? AND ?", (low, high))


def _like(value: object) -> str:
    text = str(value).casefold()
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


# ------------------------------------------------------------------------------------------------ values


def values_sql(key: str) -> tuple[str, str]:
    """(FROM/JOIN clause adding the value, the value expression) for listing the values of `key`, over
    `files f` joined to `contents c`. Name keys give the name's text; numbers their number."""
    if key in NAME_COLUMNS:
        return f"JOIN names n ON n.id = c.{key}", "n.text"
    if key in TEXT_KINDS or key == "text":
        kinds = ",".join(str(TEXT_KINDS[k]) for k in (TEXT_FIELDS if key == "text" else (key,)))
        joins = f"JOIN content_texts t ON t.content_id = c.id AND t.kind IN ({kinds}) JOIN names n ON n.id = t.name_id"
        return joins, "n.text"
    if key in _DERIVED:
        return "", _DERIVED[key][0]
    return "", f"c.{key}"


def shown(key: str, value: object) -> str:
    """A stored value as `exif/<key>/` shows it: numbers in their display form."""
    if isinstance(value, (int, float)) and FACET_BY_KEY[key].kind == "number":
        return display_number(key, float(value))
    return str(value)


# ------------------------------------------------------------------------------------------------ storing


def columns_of(conn: sqlite3.Connection, facets: Sequence[Facet]) -> tuple[dict[str, object], list[tuple[int, int]]]:
    """One content's facets (what tags.normalize produced) as its column values, and its text rows
    (kind, name id). Derived keys (year, month, timeofday, has_gps) need no storage."""
    columns: dict[str, object] = dict.fromkeys(FACET_COLUMNS)
    texts: list[tuple[int, int]] = []
    for facet in facets:
        if facet.key in NAME_COLUMNS:
            columns[facet.key] = _name_id(conn, facet.text)
        elif facet.key == "date":
            columns["date"] = facet.text
        elif facet.key in NUMBER_COLUMNS:
            columns[facet.key] = facet.num
        elif facet.key in TEXT_KINDS:
            texts.append((TEXT_KINDS[facet.key], _name_id(conn, facet.text)))
    return columns, texts


def store(conn: sqlite3.Connection, content_id: int, facets: Sequence[Facet], version: int) -> None:
    """Write one content's facets into its columns and text rows."""
    columns, texts = columns_of(conn, facets)
    assignments = ", ".join(f"{name} = ?" for name in columns)
    conn.execute(
        f"UPDATE contents SET {assignments}, meta_version = ?, meta_error = NULL WHERE id = ?",
        (*columns.values(), version, content_id),
    )
    conn.execute("DELETE FROM content_texts WHERE content_id = ?", (content_id,))
    conn.executemany(
        "INSERT OR IGNORE INTO content_texts(content_id, kind, name_id) VALUES (?, ?, ?)",
        [(content_id, kind, name_id) for kind, name_id in texts],
    )


def _name_id(conn: sqlite3.Connection, text: str) -> int:
    row = conn.execute("SELECT id FROM names WHERE text = ?", (text,)).fetchone()
    if row:
        return row[0]
    cursor = conn.execute("INSERT INTO names(text, fold) VALUES (?, ?)", (text, text.casefold()))
    return int(cursor.lastrowid or 0)
