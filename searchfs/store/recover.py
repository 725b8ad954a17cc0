"""Rebuilding a damaged catalog from what SQLite can still read (`searchfs doctor --repair`).

The catalog is the durable truth, but a disk can still damage it (a bad sector, a crash of a file system
that lies about fsync). Deleting the library would cost a full re-embedding; instead:

1. salvage every row SQLite can still read, through SQL in key ranges, halving a range that fails until
   the damaged rows are isolated (everything on an undamaged page is kept);
2. copy the salvaged rows into a fresh catalog made by the current schema, keeping only rows that hang
   together (a file's root exists, an embedding has the model's length and unit norm, ...); photos whose
   metadata rows were lost go back to "metadata pending", so exiftool reads them again;
3. keep the damaged file beside the new one (`catalog.sqlite.damaged-<time>`), never delete it.

The caller then rescans the roots: files the salvage lost are found again, and every embedding that
survived is reused (a vector belongs to the content hash), so only the lost ones are embedded again.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import content_hash
from ..config import ensure_private_dir
from .catalog import Catalog
from .migrations import recount

log = logging.getLogger(__name__)

# Copied parents first, so that each child's foreign key finds its row.
TABLES = (
    "meta",
    "roots",
    "dirs",
    "names",
    "contents",
    "content_texts",
    "files",
    "models",
    "embeddings",
    "saved_queries",
)
# Tables without rowid: walked by the first column of their key.
_KEYED = {"content_texts": "content_id", "embeddings": "content_id"}
_NAME_COLUMNS = ("camera", "make", "model", "lens", "format")
_CHUNK = 4096  # keys per range read
EMPTY_RANGES_TO_STOP = 256  # when a table's largest key cannot be read: stop ~1M keys past the last row


@dataclass
class Recovery:
    damaged_copy: str
    method: str
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows kept in the new catalog
    dropped_embeddings: int = 0
    metadata_again: int = 0  # contents whose metadata rows were lost: exiftool reads them again

    def summary(self) -> str:
        kept = ", ".join(f"{count} {table}" for table, count in self.rows.items() if table != "meta")
        return (
            f"rebuilt the catalog from what was readable ({self.method}): kept {kept}; "
            f"{self.dropped_embeddings} unusable embeddings dropped, {self.metadata_again} photos' metadata "
            f"to read again; the damaged file is kept as {self.damaged_copy}"
        )


def integrity_problem(path: Path) -> str | None:
    """What `PRAGMA quick_check` says is wrong with the catalog file, or None when it is sound."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            rows = [" ".join(r[0].split()) for r in conn.execute("PRAGMA quick_check(3)")]
    except sqlite3.DatabaseError as exc:
        return str(exc)
    return None if rows == ["ok"] else "; ".join(rows)


def recover(path: Path) -> Recovery:
    """Replace the catalog at `path` by one rebuilt from its readable rows. No process may have it open
    for writing (the caller holds the library's writer lock)."""
    path = Path(path)
    work = ensure_private_dir(path.parent / "recovery")
    salvaged = work / "salvaged.sqlite"
    fresh = work / "catalog.sqlite"
    for leftover in (salvaged, fresh):
        _remove_with_sidecars(leftover)
    method = _salvage(path, salvaged)
    recovery = Recovery(damaged_copy="", method=method)
    _rebuild(salvaged, fresh, recovery)
    recovery.damaged_copy = str(_set_aside(path))
    os.replace(fresh, path)
    _remove_with_sidecars(salvaged)
    shutil.rmtree(work, ignore_errors=True)
    log.warning("catalog %s: %s", path, recovery.summary())
    return recovery


# ------------------------------------------------------------------------------------------ salvaging


def _salvage(damaged: Path, into: Path) -> str:
    """Every readable row of `damaged`, as tables of the same names in a new file `into`.

    (The sqlite3 shell's `.recover` would read damaged pages more cleverly, but the one Debian 12 ships
    answers "SQL logic error" and recovers nothing, even from a sound file: SQL it is.)"""
    source = sqlite3.connect(f"file:{damaged}?mode=ro", uri=True)
    target = sqlite3.connect(into)
    try:
        for table in TABLES:
            try:
                create = source.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()
            except sqlite3.DatabaseError:
                create = None
            if not create:
                continue
            target.execute(create[0])
            if table == "embeddings":
                _copy_embeddings(source, target)
            else:
                key = _KEYED.get(table, "rowid")
                _copy_ranges(source, target, table, f"SELECT * FROM {{table}} WHERE {key} BETWEEN ? AND ?", key=key)
        _name_the_hash(source, target)
        target.commit()
    finally:
        source.close()
        target.close()
    return "row by row"


def _name_the_hash(source, target) -> None:
    """A catalog from before schema 4 has no 'content_hash' row: its hashes are BLAKE2b (migrations.py),
    which the rebuilt catalog (born with the newest hash) must be told. A v4 catalog that lost the row
    keeps the newest: were its hashes older, a copy added later would merely be embedded once more."""
    try:
        version = source.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError:
        version = 0
    if version >= 4:
        return
    target.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")  # its table may be lost
    target.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('content_hash', ?)", (content_hash.LEGACY,))


def _copy_ranges(source, target, table: str, query: str, *params, key: str = "content_id") -> None:
    """Copy `table` in key ranges, upward from 0. A range that fails is halved until its damaged rows are
    alone (and left out); the walk ends past the largest key, or, when even that cannot be read, after
    EMPTY_RANGES_TO_STOP empty ranges in a row past the last row seen."""
    sql = query.format(table=table)
    try:
        where = " WHERE model_id = ?" if params else ""
        top = source.execute(f"SELECT max({key}) FROM {table}{where}", params).fetchone()[0]
    except sqlite3.DatabaseError:
        top = None
    start, empty = 0, 0
    while (top is not None and start <= top) or (top is None and empty < EMPTY_RANGES_TO_STOP):
        found = _copy_range(source, target, table, sql, params, start, start + _CHUNK - 1)
        empty = 0 if found else empty + 1
        start += _CHUNK


def _copy_range(source, target, table: str, sql: str, params: tuple, low: int, high: int) -> int:
    """Rows copied from [low, high]; a failing range is halved, a failing single key skipped."""
    pending, copied = [(low, high)], 0
    while pending:
        a, b = pending.pop()
        try:
            rows = source.execute(sql, (*params, a, b)).fetchall()
        except sqlite3.DatabaseError:
            if a < b:
                middle = (a + b) // 2
                pending += [(a, middle), (middle + 1, b)]
            continue
        if rows:
            marks = ",".join("?" * len(rows[0]))
            target.executemany(f"INSERT OR IGNORE INTO {table} VALUES ({marks})", rows)
            copied += len(rows)
    return copied


def _copy_embeddings(source, target) -> None:
    """embeddings has no rowid: walk each model's content ids (the models come from the salvaged
    `models` table, copied before; a seek through the embeddings' own pages may hit the damage)."""
    for (model,) in target.execute("SELECT id FROM models").fetchall():
        query = "SELECT * FROM {table} WHERE model_id = ? AND content_id BETWEEN ? AND ?"
        _copy_ranges(source, target, "embeddings", query, model)


# ------------------------------------------------------------------------------------------ rebuilding


def _rebuild(salvaged: Path, fresh: Path, recovery: Recovery) -> None:
    Catalog(fresh).close()  # the current schema, created 0600 in a private folder
    conn = sqlite3.connect(fresh, isolation_level=None)
    try:
        conn.execute("ATTACH DATABASE ? AS old", (f"file:{salvaged}?mode=ro",))
        conn.execute("BEGIN")
        triggers = conn.execute("SELECT name, sql FROM main.sqlite_master WHERE type = 'trigger'").fetchall()
        for name, _ in triggers:  # the copies are not changes: the change log starts anew, past the old one
            conn.execute(f"DROP TRIGGER {name}")
        present = {r[0] for r in conn.execute("SELECT name FROM old.sqlite_master WHERE type = 'table'")}
        for table in TABLES:
            if table in present:
                _copy_table(conn, table)
        recovery.dropped_embeddings = _drop_unusable_embeddings(conn)
        recovery.metadata_again = _metadata_again(conn)
        _move_generations_past(conn, "sqlite_sequence" in present)
        recount(conn)  # what the triggers keep, for the rows just copied with them off
        for _, sql in triggers:
            conn.execute(sql)
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE old")
        for table in TABLES:
            recovery.rows[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def _columns(conn: sqlite3.Connection, schema: str, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA {schema}.table_info({table})")]


# Rows that no longer hang together are left out: what they point at was lost.
_KEEP_IF = {
    "dirs": " WHERE root_id IN (SELECT id FROM main.roots)",
    # a file whose content row was lost is left out too: the rescan reads it again
    "files": " WHERE dir_id IN (SELECT id FROM main.dirs)"
    " AND (content_id IS NULL OR content_id IN (SELECT id FROM main.contents))",
    "content_texts": " WHERE content_id IN (SELECT id FROM main.contents) AND name_id IN (SELECT id FROM main.names)",
    "embeddings": " WHERE content_id IN (SELECT id FROM main.contents) AND model_id IN (SELECT id FROM main.models)",
}


def _copy_table(conn: sqlite3.Connection, table: str) -> None:
    """The salvaged rows whose columns the current schema knows (OR IGNORE drops duplicates)."""
    shared = [c for c in _columns(conn, "main", table) if c in _columns(conn, "old", table)]
    if not shared:
        return
    names = ", ".join(shared)
    verb = "INSERT OR REPLACE" if table == "meta" else "INSERT OR IGNORE"
    conn.execute(f"{verb} INTO main.{table} ({names}) SELECT {names} FROM old.{table}{_KEEP_IF.get(table, '')}")


def _drop_unusable_embeddings(conn: sqlite3.Connection) -> int:
    """Vectors must have their model's length (the most common one), be finite and of unit length."""
    dropped = 0
    for (model,) in conn.execute("SELECT DISTINCT model_id FROM main.embeddings").fetchall():
        length = conn.execute(
            "SELECT length(vector) FROM main.embeddings WHERE model_id = ? GROUP BY 1 ORDER BY count(*) DESC LIMIT 1",
            (model,),
        ).fetchone()[0]
        bad = []
        for content_id, blob in conn.execute(
            "SELECT content_id, vector FROM main.embeddings WHERE model_id = ?", (model,)
        ).fetchall():
            vector = np.frombuffer(blob, dtype=np.float32) if len(blob) == length and length % 4 == 0 else None
            if vector is None or not np.all(np.isfinite(vector)) or abs(float(np.dot(vector, vector)) - 1) > 1e-3:
                bad.append((model, content_id))
        conn.executemany("DELETE FROM main.embeddings WHERE model_id = ? AND content_id = ?", bad)
        dropped += len(bad)
    return dropped


def _metadata_again(conn: sqlite3.Connection) -> int:
    """A content whose name rows (camera, lens, ...) were lost has its metadata read again."""
    lost = " OR ".join(f"({c} IS NOT NULL AND {c} NOT IN (SELECT id FROM main.names))" for c in _NAME_COLUMNS)
    cleared = ", ".join(f"{c} = NULL" for c in _NAME_COLUMNS)
    return conn.execute(f"UPDATE main.contents SET meta_version = 0, {cleared} WHERE {lost}").rowcount


def _move_generations_past(conn: sqlite3.Connection, had_sequence: bool) -> None:
    """Caches keyed by a generation (vector files, the mount's listings) must not take the new catalog
    for the old one: every counter moves on, and the saved vector index is rebuilt once."""
    conn.execute("UPDATE main.meta SET value = CAST(value AS INTEGER) + 1000 WHERE key = 'generation'")
    old = (
        conn.execute("SELECT seq FROM old.sqlite_sequence WHERE name = 'vector_log'").fetchone()
        if had_sequence
        else None
    )
    conn.execute("DELETE FROM main.sqlite_sequence WHERE name = 'vector_log'")
    conn.execute(
        "INSERT INTO main.sqlite_sequence(name, seq) VALUES ('vector_log', ?)", ((old[0] if old else 0) + 1000,)
    )


# ------------------------------------------------------------------------------------------ files


def _set_aside(path: Path) -> Path:
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        side = Path(str(path) + suffix)
        if side.exists():
            os.replace(side, Path(str(aside) + suffix))
    return aside


def _remove_with_sidecars(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)
