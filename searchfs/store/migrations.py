"""The catalog's schema versions and the ladder of steps between them (rclip's db.py, sqlite-utils).

`PRAGMA user_version` says which schema a catalog file has. A new catalog is made from schema.sql at
the latest version at once; an older one climbs the ladder one named step at a time, each in its own
transaction (a crash mid-step leaves the catalog at the step before, and the next open redoes it).

Steps:
  1 -> 2  facets as columns of `contents` and texts stored once (`names`, `content_texts`), files by
          folder (`dirs`), models by id, content hashes as 20-byte blobs, and the `vector_log` change
          feed that replaces the `vectors_generation` counter. About 5 KB a photo -> about 300 bytes.
  2 -> 3  what keeps the daemon's per-change work proportional to the change at a million photos: an
          index on `meta_version` (metadata still to read), partial indexes on quarantined contents and
          unreadable files, `embed_todo` (contents still to embed) and `roots.files` (file counts), both
          kept by triggers. The counts are filled here; `embed_todo` is filled by the first
          Catalog.track_model. The page size of an existing catalog stays as it is (changing it takes a
          VACUUM, a rewrite of the whole file); new catalogs get 16 KiB pages.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from importlib import resources

from .. import content_hash
from ..errors import SearchfsError

log = logging.getLogger(__name__)

LATEST = 4
# Objects schema 3 added (schema.sql marks them "(v3)"): the 1 -> 2 step leaves them to the 2 -> 3 step.
_ADDED_IN_V3 = frozenset(
    (
        "contents_meta",
        "contents_errors",
        "files_unreadable",
        "embed_todo",
        "contents_todo",
        "contents_todo_gone",
        "contents_todo_error",
        "embeddings_todo_done",
        "embeddings_todo_again",
        "files_counted",
        "files_uncounted",
        "files_recounted",
        "dirs_uncounted",
    )
)


class SchemaError(SearchfsError):
    """The catalog's schema is newer than this searchfs, or a migration step failed."""


def statements(script: str) -> Iterator[str]:
    """The statements of a SQL script, triggers' BEGIN ... END bodies kept whole. (executescript would
    commit the transaction a step runs in.)"""
    pending = ""
    for line in script.splitlines(keepends=True):
        if not pending and (not line.strip() or line.lstrip().startswith("--")):
            continue
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if pending.strip():
        yield pending.strip()


def latest_schema() -> str:
    return resources.files("searchfs.store").joinpath("schema.sql").read_text(encoding="utf-8")


def object_name(statement: str) -> str:
    """The name a CREATE TABLE / INDEX / TRIGGER statement creates."""
    return statement.split("(", 1)[0].split()[2]


def migrate(conn: sqlite3.Connection, where: str) -> None:
    """Bring the catalog on `conn` (autocommit mode) to the latest schema."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > LATEST:
        raise SchemaError(
            f"catalog {where} has schema {version}, newer than this searchfs ({LATEST}): upgrade searchfs"
        )
    if version == LATEST:
        return
    if version == 0:
        _run(conn, _create_latest, LATEST)
        return
    for target in range(version + 1, LATEST + 1):
        log.info("catalog %s: schema %d -> %d", where, target - 1, target)
        _run(conn, STEPS[target], target)


def _run(conn: sqlite3.Connection, step: Callable[[sqlite3.Connection], None], target: int) -> None:
    conn.execute("PRAGMA foreign_keys = OFF")  # a step rebuilds tables; the check below runs at its end
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            step(conn)
            broken = conn.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise SchemaError(f"schema step to {target} left {len(broken)} rows pointing at nothing")
            conn.execute(f"PRAGMA user_version = {int(target)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.execute("PRAGMA foreign_keys = ON")


def _create_latest(conn: sqlite3.Connection) -> None:
    for statement in statements(latest_schema()):
        conn.execute(statement)
    conn.executemany("INSERT INTO meta(key, value) VALUES (?, '0')", [("generation",)])
    conn.execute("INSERT INTO meta(key, value) VALUES ('content_hash', ?)", (content_hash.NEW,))


# ------------------------------------------------------------------------------------------ 1 -> 2

_V1_TABLES = ("contents", "files", "facets", "embeddings")
_V1_INDEXES = (
    "files_content",
    "files_dir",
    "files_inode",
    "facets_content",
    "facets_key_fold",
    "facets_key_num",
    "facets_key_text",
)
_NAME_KEYS = ("camera", "make", "model", "lens", "format")
_TEXT_KINDS = {"keyword": 1, "title": 2, "description": 3}
_NUMBER_KEYS = ("hour", "iso", "fnumber", "exposure", "focal", "width", "height", "orientation", "lat", "lon")


def _v1_to_v2(conn: sqlite3.Connection) -> None:
    conn.create_function("unhex_hash", 1, lambda text: bytes.fromhex(text), deterministic=True)
    for index in _V1_INDEXES:
        conn.execute(f"DROP INDEX IF EXISTS {index}")
    for table in _V1_TABLES:
        conn.execute(f"ALTER TABLE {table} RENAME TO old_{table}")
    tables, triggers = _split_schema()
    for statement in tables:
        if not statement.startswith(("CREATE TABLE meta", "CREATE TABLE roots", "CREATE TABLE saved_queries")):
            conn.execute(statement)
    _copy_contents(conn)
    _copy_files(conn)
    conn.execute("INSERT INTO models(name) SELECT DISTINCT model FROM old_embeddings")
    conn.execute(
        "INSERT INTO embeddings(model_id, content_id, vector) SELECT m.id, e.content_id, e.vector"
        " FROM old_embeddings e JOIN models m ON m.name = e.model"
    )
    for table in _V1_TABLES:
        conn.execute(f"DROP TABLE old_{table}")
    for statement in triggers:  # after the copies: they are not changes of searchability
        conn.execute(statement)
    _carry_counters(conn)


def _split_schema() -> tuple[list[str], list[str]]:
    parts = [s for s in statements(latest_schema()) if object_name(s) not in _ADDED_IN_V3]
    return [s for s in parts if not s.startswith("CREATE TRIGGER")], [
        s for s in parts if s.startswith("CREATE TRIGGER")
    ]


def _copy_contents(conn: sqlite3.Connection) -> None:
    conn.execute(
        """INSERT INTO names(text, fold) SELECT text, min(fold) FROM old_facets
           WHERE key IN ('camera', 'make', 'model', 'lens', 'format', 'keyword', 'title', 'description')
           GROUP BY text"""
    )
    conn.execute(
        """INSERT INTO contents(id, hash, size, meta_version, meta_error, error, orphaned_at)
           SELECT id, unhex_hash(hash), size, CASE meta_state WHEN 'pending' THEN 0 ELSE 1 END, meta_error, error,
                  orphaned_at FROM old_contents"""
    )
    for key in _NAME_KEYS:
        conn.execute(
            f"""UPDATE contents SET {key} = (SELECT n.id FROM old_facets f JOIN names n ON n.text = f.text
                WHERE f.content_id = contents.id AND f.key = '{key}' LIMIT 1)"""
        )
    conn.execute(
        """UPDATE contents SET date = (SELECT min(f.text) FROM old_facets f
           WHERE f.content_id = contents.id AND f.key = 'date')"""
    )
    for key in _NUMBER_KEYS:
        conn.execute(
            f"""UPDATE contents SET {key} = (SELECT f.num FROM old_facets f
                WHERE f.content_id = contents.id AND f.key = '{key}' LIMIT 1)"""
        )
    for key, kind in _TEXT_KINDS.items():
        conn.execute(
            f"""INSERT OR IGNORE INTO content_texts(content_id, kind, name_id)
                SELECT f.content_id, {kind}, n.id FROM old_facets f JOIN names n ON n.text = f.text
                WHERE f.key = '{key}'"""
        )


def _copy_files(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO dirs(root_id, path) SELECT DISTINCT root_id, dir FROM old_files")
    conn.execute(
        """INSERT INTO files(id, dir_id, name, size, mtime_ns, inode, content_id, error)
           SELECT f.id, d.id, CASE WHEN length(f.dir) = 0 THEN f.relpath ELSE substr(f.relpath, length(f.dir) + 2) END,
                  f.size, f.mtime_ns, f.inode, f.content_id, f.error
           FROM old_files f JOIN dirs d ON d.root_id = f.root_id AND d.path = f.dir"""
    )


def _carry_counters(conn: sqlite3.Connection) -> None:
    """The vectors generation continues from the old counter, so vector files saved by the previous
    release are still recognised as up to date (their contents and vectors did not change)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'vectors_generation'").fetchone()
    conn.execute("DELETE FROM sqlite_sequence WHERE name = 'vector_log'")
    conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('vector_log', ?)", (int(row[0]) if row else 0,))
    conn.execute("DELETE FROM meta WHERE key IN ('vectors_generation', 'scan_token')")
    conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('generation', '0')")


# ------------------------------------------------------------------------------------------ 2 -> 3


def _v2_to_v3(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE roots ADD COLUMN files INTEGER NOT NULL DEFAULT 0")
    for statement in statements(latest_schema()):
        if object_name(statement) in _ADDED_IN_V3:
            conn.execute(statement)
    recount(conn)


def recount(conn: sqlite3.Connection) -> None:
    """Fill what the v3 triggers keep from what the catalog holds (after this step, or a repair that copied
    rows with its triggers off): the file counts now, the embedding queue at the next track_model."""
    conn.execute(
        "UPDATE roots SET files ="
        " (SELECT count(*) FROM files f JOIN dirs d ON d.id = f.dir_id WHERE d.root_id = roots.id)"
    )
    conn.execute("DELETE FROM embed_todo")
    conn.execute("DELETE FROM meta WHERE key = 'todo_model'")


# ------------------------------------------------------------------------------------------ 3 -> 4


def _v3_to_v4(conn: sqlite3.Connection) -> None:
    """New catalogs hash with SHA-256 (content_hash.py); this one keeps the BLAKE2b it was made with, so
    that nothing is hashed (or embedded) again."""
    conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('content_hash', ?)", (content_hash.LEGACY,))


STEPS: dict[int, Callable[[sqlite3.Connection], None]] = {2: _v1_to_v2, 3: _v2_to_v3, 4: _v3_to_v4}
