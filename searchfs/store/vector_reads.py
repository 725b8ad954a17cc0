"""The catalog's reads for the vector index (store/vector_store.py): every live vector, a chunk at a time,
for a rebuild; what changed since a sequence number, for a catch-up; one content's vector. Part of the
Catalog (a mixin of its read methods, like work.py's)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

import numpy as np

from .rows import VectorChanges
from .work import _FILES, _USABLE
from .writes import _chunks

LIVE_CHUNK = 16_384  # vectors per chunk of live_vectors (32 MB at 512 dimensions)
# The one definition of a searchable vector `e`: some usable file holds its content.
_LIVE = (
    f"EXISTS (SELECT 1 FROM {_FILES} JOIN contents c ON c.id = f.content_id"
    f" WHERE f.content_id = e.content_id AND {_USABLE})"
)


class VectorReads:
    def _one(self, sql: str, params: Sequence = ()) -> tuple | None:
        raise NotImplementedError

    def _all(self, sql: str, params: Sequence = ()) -> list[tuple]:
        raise NotImplementedError

    def reader(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _damaged(self, exc: sqlite3.DatabaseError) -> Exception:
        raise NotImplementedError

    def vectors_generation(self) -> int:
        raise NotImplementedError

    def _model(self, model: str) -> int | None:
        raise NotImplementedError

    @contextmanager
    def live_vectors(self, model: str, dim: int, rows: int = LIVE_CHUNK) -> Iterator[tuple[int, Iterator]]:
        """(how many, chunks of (content ids, vectors) in id order) of every embedded content that a usable
        file on an online root holds, read in one snapshot. A chunk at a time: a rebuild at a million
        photos never holds the catalog's 2 GB of vectors as Python bytes beside the index's copy."""
        model_id = self._model(model)
        live = f"FROM embeddings e WHERE e.model_id = ? AND {_LIVE}"
        with self.reader() as conn:
            try:
                conn.execute("BEGIN")  # one snapshot for the count and every chunk
                count = conn.execute(f"SELECT count(*) {live}", (model_id,)).fetchone()[0]
                cursor = conn.execute(f"SELECT e.content_id, e.vector {live} ORDER BY e.content_id", (model_id,))
            except sqlite3.DatabaseError as exc:
                raise self._damaged(exc) from exc

            def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
                try:
                    while found := cursor.fetchmany(rows):
                        ids = np.fromiter((r[0] for r in found), dtype=np.int64, count=len(found))
                        vectors = np.frombuffer(b"".join(r[1] for r in found), dtype=np.float32)
                        yield ids, vectors.reshape(len(found), dim)
                except sqlite3.DatabaseError as exc:
                    raise self._damaged(exc) from exc

            yield count, chunks()

    def live_count(self, model: str) -> int:
        row = self._one(f"SELECT count(*) FROM embeddings e WHERE e.model_id = ? AND {_LIVE}", (self._model(model),))
        return row[0] if row else 0

    def vector_changes(self, model: str, since: int, dim: int) -> VectorChanges:
        """What the vector index must do to catch up from sequence number `since`: the contents logged since
        then that are live now (their vectors), and those that are not. Costs what changed."""
        upto = self.vectors_generation()
        model_id = self._model(model)
        changed = [r[0] for r in self._all("SELECT DISTINCT content_id FROM vector_log WHERE seq > ?", (since,))]
        ids: list[int] = []
        blobs: list[bytes] = []
        for chunk in _chunks(changed):
            marks = ",".join("?" * len(chunk))
            for content_id, blob in self._all(
                f"SELECT e.content_id, e.vector FROM embeddings e WHERE e.model_id = ? AND e.content_id IN ({marks})"
                f" AND {_LIVE}",
                (model_id, *chunk),
            ):
                ids.append(content_id)
                blobs.append(blob)
        vectors = (
            np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dim)
            if ids
            else np.zeros((0, dim), np.float32)
        )
        removed = np.setdiff1d(np.asarray(changed, dtype=np.int64), np.asarray(ids, dtype=np.int64))
        return VectorChanges(upto, np.asarray(ids, dtype=np.int64), vectors, removed)

    def oldest_logged(self) -> int:
        """The smallest sequence number still in the change feed (catching up from before it is not possible)."""
        row = self._one("SELECT min(seq) FROM vector_log")
        return int(row[0]) - 1 if row and row[0] is not None else self.vectors_generation()

    def vector_of(self, model: str, content_id: int) -> np.ndarray | None:
        row = self._one(
            "SELECT vector FROM embeddings WHERE model_id = ? AND content_id = ?", (self._model(model), content_id)
        )
        return np.frombuffer(row[0], dtype=np.float32).copy() if row else None

    def embedding_dim(self, model: str) -> int | None:
        row = self._one("SELECT length(vector) FROM embeddings WHERE model_id = ? LIMIT 1", (self._model(model),))
        return row[0] // 4 if row else None
