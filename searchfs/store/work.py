"""What is left to do and how far it has come: the indexer's work queues and the counts that `searchfs
status` and the mount's progress line show. Part of the Catalog (a mixin of its read methods).

At a million photos a query that reads every content or every file costs a second or more, and the
daemon runs these after every change (the indexer asks what is left after each event; the mount shows
its progress line in every ranked folder listed after a change). So each is answered from what is left,
not from everything:

- metadata still to read: the index on `contents.meta_version`;
- contents still to embed: `embed_todo`, kept by triggers (schema.sql) for the model `track_model` named,
  with every content that has no vector of that model and is not quarantined;
- file counts: `roots.files`, kept by triggers; quarantined files through partial indexes.

"Searchable" is then what is neither waiting nor unusable: files - waiting - unusable ones without a
vector. When the queue tracks another model than the one asked about (a `searchfs status` with other
settings), the plain queries that read everything answer instead: slower, never wrong.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from typing import NamedTuple

from .rows import ContentPath, Counts, Quarantined

_USABLE = "f.error IS NULL AND c.error IS NULL AND r.online = 1"
_FILES = "files f JOIN dirs d ON d.id = f.dir_id JOIN roots r ON r.id = d.root_id"
_UNREADABLE_FILES = _FILES.replace("files f", "files f INDEXED BY files_unreadable", 1)
# CROSS JOIN: SQLite then walks the queue and looks each content up, never the other way round
_QUEUE = "embed_todo t CROSS JOIN contents c ON c.id = t.content_id"
_ITS_FILES = (
    "CROSS JOIN files f ON f.content_id = c.id CROSS JOIN dirs d ON d.id = f.dir_id"
    " CROSS JOIN roots r ON r.id = d.root_id"
)
_RELPATH = "CAST(CASE WHEN length(d.path) = 0 THEN f.name ELSE d.path || x'2f' || f.name END AS BLOB)"
_ABSPATH = f"CAST(r.path || x'2f' || {_RELPATH} AS BLOB)"  # normpath'd in Python (a root of '/')
_NO_VECTOR = "NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.model_id = ? AND e.content_id = c.id)"
_ON_AN_ONLINE_ROOT = f"EXISTS (SELECT 1 FROM {_FILES} WHERE f.content_id = c.id AND r.online = 1 AND f.error IS NULL)"
_A_PATH = f"(SELECT {_ABSPATH} FROM {_FILES} WHERE f.content_id = c.id AND r.online = 1 AND f.error IS NULL LIMIT 1)"


class Census(NamedTuple):
    """Files of some roots, by what became of them for one model."""

    files: int
    waiting: int  # not embedded yet, nothing wrong with them
    unusable: int  # the file or its content quarantined, and no vector
    quarantined: int  # the file or its content quarantined (with a vector or not)

    @property
    def searchable(self) -> int:  # with a vector of the model
        return self.files - self.waiting - self.unusable


class WorkQueries:
    """Mixed into Catalog: uses its `_one`, `_all` and `_model`."""

    def _one(self, sql: str, params: Sequence = ()) -> tuple | None:
        raise NotImplementedError

    def _all(self, sql: str, params: Sequence = ()) -> list[tuple]:
        raise NotImplementedError

    def _model(self, model: str) -> int | None:
        raise NotImplementedError

    def tracks(self, model: str) -> bool:
        """Whether `embed_todo` holds what `model` has left to embed (Transaction.track_model)."""
        model_id = self._model(model)
        row = self._one("SELECT value FROM meta WHERE key = 'todo_model'")
        return model_id is not None and row is not None and int(row[0]) == model_id

    # -- metadata ------------------------------------------------------------------------------------

    def contents_needing_meta(self, version: int, limit: int) -> list[ContentPath]:
        """Contents whose metadata is missing or older than extractor `version` (read again lazily)."""
        return self._content_paths("contents c INDEXED BY contents_meta", "c.meta_version < ?", (version,), limit)

    def count_needing_meta(self, version: int) -> int:
        where = f"c.meta_version < ? AND {_ON_AN_ONLINE_ROOT}"
        return self._count(f"contents c INDEXED BY contents_meta WHERE {where}", (version,))

    # -- embeddings ----------------------------------------------------------------------------------

    def _to_embed(self, model: str) -> str:
        if self.tracks(model):
            return _QUEUE
        return "contents c"

    def contents_needing_embedding(self, model: str, limit: int, after: int = 0) -> list[ContentPath]:
        """The first `limit` contents with an id above `after` that have no vector of `model` yet."""
        where = f"c.id > ? AND c.error IS NULL AND {_NO_VECTOR}"
        return self._content_paths(self._to_embed(model), where, (after, self._model(model)), limit)

    def count_needing_embedding(self, model: str) -> int:
        where = f"c.error IS NULL AND {_NO_VECTOR} AND {_ON_AN_ONLINE_ROOT}"
        return self._count(f"{self._to_embed(model)} WHERE {where}", (self._model(model),))

    def _content_paths(self, source: str, where: str, params: tuple, limit: int) -> list[ContentPath]:
        rows = self._all(
            f"SELECT c.id, {_A_PATH} AS path FROM {source} WHERE {where} AND path IS NOT NULL ORDER BY c.id LIMIT ?",
            (*params, limit),
        )
        return [ContentPath(r[0], os.path.normpath(bytes(r[1]))) for r in rows]

    # -- counts --------------------------------------------------------------------------------------

    def census(self, model: str, online_only: bool) -> Census:
        """The files of every root (or of the online ones) by what became of them for `model`."""
        if not self.tracks(model):
            return self._census_reading_everything(model, online_only)
        model_id = self._model(model)
        online = "AND r.online = 1" if online_only else ""
        row = self._one(f"SELECT coalesce(sum(files), 0) FROM roots r WHERE 1 {online}")
        files = row[0] if row else 0
        waiting = self._count(
            f"""{_QUEUE} {_ITS_FILES} WHERE f.error IS NULL AND c.error IS NULL AND {_NO_VECTOR} {online}""",
            (model_id,),
        )
        waiting += self._count(f"{_FILES} WHERE f.content_id IS NULL AND f.error IS NULL {online}")
        unreadable = f"{_UNREADABLE_FILES} WHERE f.error IS NOT NULL {online}"
        bad_content = f"""contents c INDEXED BY contents_errors {_ITS_FILES}
                          WHERE c.error IS NOT NULL AND f.error IS NULL {online}"""
        quarantined = self._count(unreadable) + self._count(bad_content)
        no_vector = _NO_VECTOR.replace("c.id", "f.content_id")  # the file's content may be NULL: no vector
        vectorless = self._count(f"{unreadable} AND {no_vector}", (model_id,))
        vectorless += self._count(f"{bad_content} AND {_NO_VECTOR}", (model_id,))
        return Census(files, waiting, vectorless, quarantined)

    def _count(self, source: str, params: tuple = ()) -> int:
        row = self._one(f"SELECT count(*) FROM {source}", params)
        return row[0] if row else 0

    def _census_reading_everything(self, model: str, online_only: bool) -> Census:
        row = self._one(
            f"""SELECT count(*),
                       sum(e.content_id IS NULL AND c.error IS NULL AND f.error IS NULL),
                       sum(e.content_id IS NULL AND (c.error IS NOT NULL OR f.error IS NOT NULL)),
                       sum(c.error IS NOT NULL OR f.error IS NOT NULL)
                FROM {_FILES} LEFT JOIN contents c ON c.id = f.content_id
                LEFT JOIN embeddings e ON e.content_id = f.content_id AND e.model_id = ?
                {"WHERE r.online = 1" if online_only else ""}""",
            (self._model(model),),
        )
        return Census(*(int(v or 0) for v in row)) if row else Census(0, 0, 0, 0)

    def embedding_progress(self, model: str) -> tuple[int, int]:
        """(searchable, waiting) files on online roots: with a vector by `model`, and still without one
        (neither the file nor its content quarantined)."""
        census = self.census(model, online_only=True)
        return census.searchable, census.waiting

    def counts(self, model: str) -> Counts:
        per_root = dict(self._all("SELECT id, files FROM roots"))
        census = self.census(model, online_only=False)
        return Counts(per_root, census.searchable, census.quarantined)

    def count_files(self, root_id: int) -> int:
        row = self._one("SELECT files FROM roots WHERE id = ?", (root_id,))
        return row[0] if row else 0

    def quarantined(self, limit: int) -> list[Quarantined]:
        rows = self._all(
            f"""SELECT {_ABSPATH}, coalesce(f.error, c.error) FROM {_FILES}
                LEFT JOIN contents c ON c.id = f.content_id
                WHERE f.error IS NOT NULL OR c.error IS NOT NULL ORDER BY r.name, {_RELPATH} LIMIT ?""",
            (limit,),
        )
        return [Quarantined(os.path.normpath(bytes(path)), reason) for path, reason in rows]


def seed_todo(conn: sqlite3.Connection, model_id: int) -> None:
    """Make `embed_todo` the contents `model_id` has left to embed (a write: Transaction.track_model)."""
    conn.execute("DELETE FROM embed_todo")
    conn.execute(
        f"INSERT INTO embed_todo(content_id) SELECT c.id FROM contents c WHERE c.error IS NULL AND {_NO_VECTOR}",
        (model_id,),
    )
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('todo_model', ?)", (str(model_id),))
