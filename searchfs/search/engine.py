"""Answering a Query: metadata filters in SQL, ranking in the vector index, results as files.

Ranking is over contents (a copy of a photo shares its vector); results are files on online roots, so
one content can give several hits. Ties are broken by content id and path, so the same query gives the
same ranking from the CLI, the Python API and the mount.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from ..errors import NotFound, QueryError
from ..ingest.scan import hash_file
from ..records import Hit
from ..store.catalog import Catalog
from .filters import filter_sql
from .query import Query

_LIVE = "EXISTS (SELECT 1 FROM files f JOIN roots r ON r.id = f.root_id WHERE f.content_id = c.id AND r.online = 1)"


class Engine:
    def __init__(
        self,
        catalog: Catalog,
        vectors: Callable[[], object | None],  # -> VectorIndex or None when nothing is embedded
        embed_text: Callable[[str], np.ndarray],
        embed_image: Callable[[bytes], np.ndarray],
        model_id: Callable[[], str],
        default_limit: int,
        default_min_score: float | None,
    ):
        self.catalog = catalog
        self.vectors = vectors
        self.embed_text = embed_text
        self.embed_image = embed_image
        self.model_id = model_id
        self.default_limit = default_limit
        self.default_min_score = default_min_score

    def search(self, query: Query) -> list[Hit]:
        if not query.ranked:
            return self._filtered(query)
        return self._ranked(query)

    # -- metadata only -----------------------------------------------------------------------------

    def _filtered(self, query: Query) -> list[Hit]:
        """Files matching the filters, oldest photo first (undated last), then by path. No default limit:
        a metadata folder shows every match."""
        where, params = self._filter_clause(query)
        sql = f"""SELECT f.id, f.content_id, r.name, r.path, f.relpath FROM files f
                  JOIN roots r ON r.id = f.root_id JOIN contents c ON c.id = f.content_id
                  LEFT JOIN facets d ON d.content_id = c.id AND d.key = 'date'
                  WHERE r.online = 1 AND f.error IS NULL AND c.error IS NULL AND {where}
                  GROUP BY f.id ORDER BY min(d.text) IS NULL, min(d.text), r.name, f.relpath"""
        if query.limit:
            sql += f" LIMIT {int(query.limit)}"
        rows = self.catalog.read().execute(sql, params).fetchall()
        return [self._hit(i + 1, None, row) for i, row in enumerate(rows)]

    def _filter_clause(self, query: Query) -> tuple[str, list]:
        parts, params = ["1"], []
        for flt in query.filters:
            sql, values = filter_sql(flt)
            parts.append(sql)
            params.extend(values)
        return " AND ".join(parts), params

    def allowed_contents(self, query: Query) -> np.ndarray | None:
        if not query.filters:
            return None
        where, params = self._filter_clause(query)
        rows = self.catalog.read().execute(f"SELECT c.id FROM contents c WHERE {where} AND {_LIVE}", params)
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    # -- ranked ------------------------------------------------------------------------------------

    def _ranked(self, query: Query) -> list[Hit]:
        limit = query.limit or self.default_limit
        min_score = query.min_score if query.min_score is not None else self.default_min_score
        vector, own_file = self._query_vector(query)
        index = self.vectors()
        if index is None:
            return []
        allowed = self.allowed_contents(query)
        if allowed is not None and len(allowed) == 0:
            return []
        # For similar/, the photo's own content ranks first: ask for one more, and leave out only the
        # photo's own file, so that its copies elsewhere (duplicates) show first.
        scored = index.search(vector, limit + (own_file is not None), allowed=allowed, min_score=min_score)
        return self._files_for(scored, limit, skip_file=own_file)

    def _query_vector(self, query: Query) -> tuple[np.ndarray, int | None]:
        """The query's vector, and for similar/ the file id of the photo itself."""
        if query.text is not None:
            return self.embed_text(query.text), None
        if query.image is not None:
            return self.embed_image(query.image), None
        root, relpath = query.similar_to
        row = self._file(root, relpath)
        vector = self.catalog.vector_of(self.model_id(), row[1]) if row[1] is not None else None
        if vector is None:
            raise NotFound(f"{os.fsdecode(relpath)} in {root} is not indexed yet")
        return vector, row[0]

    def _file(self, root: str, relpath: bytes) -> tuple:
        row = (
            self.catalog.read()
            .execute(
                "SELECT f.id, f.content_id FROM files f JOIN roots r ON r.id = f.root_id"
                " WHERE r.name = ? AND f.relpath = ?",
                (root, relpath),
            )
            .fetchone()
        )
        if row is None:
            raise NotFound(f"{os.fsdecode(relpath)} is not a photo in {root}")
        return row

    def _files_for(self, scored: list[tuple[int, float]], limit: int, skip_file: int | None) -> list[Hit]:
        if not scored:
            return []
        ids = [content_id for content_id, _ in scored]
        rows = (
            self.catalog.read()
            .execute(
                f"""SELECT f.id, f.content_id, r.name, r.path, f.relpath FROM files f JOIN roots r ON r.id = f.root_id
                WHERE f.content_id IN ({",".join("?" * len(ids))}) AND r.online = 1 AND f.error IS NULL
                ORDER BY r.name, f.relpath""",
                ids,
            )
            .fetchall()
        )
        by_content: dict[int, list[tuple]] = {}
        for row in rows:
            if row[0] != skip_file:
                by_content.setdefault(row[1], []).append(row)
        hits: list[Hit] = []
        for content_id, score in scored:
            for row in by_content.get(content_id, ()):
                if len(hits) == limit:
                    return hits
                hits.append(self._hit(len(hits) + 1, round(float(score), 6), row))
        return hits

    @staticmethod
    def _hit(rank: int, score: float | None, row: tuple) -> Hit:
        file_id, content_id, root_name, root_path, relpath = row
        relpath = bytes(relpath)
        return Hit(rank, score, root_name, relpath, os.path.join(bytes(root_path), relpath), file_id, content_id)


def image_query_vector(catalog: Catalog, model: str, path: bytes, embed: Callable) -> np.ndarray:
    """An image file as a query: its stored vector when its content is indexed, else embed it now."""
    try:
        digest, _ = hash_file(path)
    except OSError as exc:
        raise QueryError(f"cannot read query image {os.fsdecode(path)}: {exc.strerror or exc}") from exc
    row = catalog.read().execute("SELECT id FROM contents WHERE hash = ?", (digest,)).fetchone()
    if row:
        vector = catalog.vector_of(model, row[0])
        if vector is not None:
            return vector
    result = embed([path])[0]
    if not result.ok:
        raise QueryError(f"cannot use {os.fsdecode(path)} as a query image: {result.error}")
    return result.vector
