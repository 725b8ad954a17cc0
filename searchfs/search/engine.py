"""Answering a Query: metadata filters by the catalog, ranking by the vector index, results as files.

Ranking is over contents (a copy of a photo shares its vector); results are usable files on online
roots, so one content can give several hits. Ties are broken by content id, then root and path, so the
same query gives the same ranking from the CLI, the Python API and the mount. This module holds no SQL:
it asks the catalog (store/catalog.py) by name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np

from ..content_hash import hash_file
from ..errors import NotFound, QueryError
from ..records import Hit
from ..store.protocol import CatalogStore
from ..store.rows import FileHit
from .query import Query


class Engine:
    def __init__(
        self,
        catalog: CatalogStore,
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
        query = query.with_defaults(self.default_limit, self.default_min_score)
        if not query.ranked:
            return self._filtered(query)
        return self._ranked(query)

    # -- metadata only -----------------------------------------------------------------------------

    def _filtered(self, query: Query) -> list[Hit]:
        """Files matching the filters, oldest photo first (undated last), then by root and path. No default
        limit: a metadata search finds every match."""
        rows = self.catalog.matching_files(query.filters, query.limit, query.offset)
        return [_hit(query.offset + i + 1, None, row) for i, row in enumerate(rows)]

    def iter_filtered(self, query: Query) -> Iterator[Hit]:
        """The hits of a metadata-only search one by one (a million matches never sit in memory at once).
        Same rows, order and ranks as `search`."""
        rows = self.catalog.iter_matching_files(query.filters, query.offset)
        for rank, row in enumerate(rows, start=query.offset + 1):
            if query.limit and rank > query.offset + query.limit:
                return
            yield _hit(rank, None, row)

    def date_counts(self, query: Query, width: int) -> list[tuple[str | None, int]]:
        """Matches of the query's filters per period: (the first `width` characters of the date, count),
        in date order, undated (None) last."""
        return self.catalog.count_by_date(query.filters, width)

    def allowed_contents(self, query: Query) -> np.ndarray | None:
        return self.catalog.matching_contents(query.filters) if query.filters else None

    # -- ranked ------------------------------------------------------------------------------------

    def _ranked(self, query: Query) -> list[Hit]:
        limit = (query.limit or self.default_limit) + query.offset
        vector, own_file = self._query_vector(query)
        index = self.vectors()
        if index is None:
            return []
        allowed = self.allowed_contents(query)
        if allowed is not None and len(allowed) == 0:
            return []
        # For similar/, the photo's own content ranks first: ask for one more, and leave out only the
        # photo's own file, so that its copies elsewhere (duplicates) show first.
        scored = index.search(vector, limit + (own_file is not None), allowed=allowed, min_score=query.min_score)  # type: ignore[attr-defined]
        return self._files_for(scored, limit, skip_file=own_file)[query.offset :]

    def _query_vector(self, query: Query) -> tuple[np.ndarray, int | None]:
        """The query's vector, and for similar/ the file id of the photo itself."""
        if query.text is not None:
            return self.embed_text(query.text), None
        if query.image is not None:
            return self.embed_image(query.image), None
        assert query.similar_to is not None
        root, relpath = query.similar_to
        found = self.catalog.file_by_path(root, relpath)
        if found is None:
            raise NotFound(f"{os.fsdecode(relpath)} is not a photo in {root}")
        file_id, content_id = found
        vector = self.catalog.vector_of(self.model_id(), content_id) if content_id is not None else None
        if vector is None:
            raise NotFound(f"{os.fsdecode(relpath)} in {root} is not indexed yet")
        return vector, file_id

    def _files_for(self, scored: list[tuple[int, float]], limit: int, skip_file: int | None) -> list[Hit]:
        if not scored:
            return []
        by_content: dict[int, list[FileHit]] = {}
        for row in self.catalog.files_of_contents([content_id for content_id, _ in scored]):
            if row.file_id != skip_file:
                by_content.setdefault(row.content_id, []).append(row)
        hits: list[Hit] = []
        for content_id, score in scored:
            for row in by_content.get(content_id, ()):
                if len(hits) == limit:
                    return hits
                hits.append(_hit(len(hits) + 1, round(float(score), 6), row))
        return hits


def _hit(rank: int, score: float | None, row: FileHit) -> Hit:
    abspath = os.path.join(row.root_path, row.relpath)
    return Hit(rank, score, row.root_name, row.relpath, abspath, row.file_id, row.content_id)


def image_query_vector(catalog: CatalogStore, model: str, path: bytes, embed: Callable) -> np.ndarray:
    """An image file as a query: its stored vector when its content is indexed, else embed it now."""
    try:
        digest, _ = hash_file(path, catalog.content_hash())
    except OSError as exc:
        raise QueryError(f"cannot read query image {os.fsdecode(path)}: {exc.strerror or exc}") from exc
    content_id = catalog.content_by_hash(digest)
    if content_id is not None:
        vector = catalog.vector_of(model, content_id)
        if vector is not None:
            return vector
    result = embed([path])[0]
    if not result.ok:
        raise QueryError(f"cannot use {os.fsdecode(path)} as a query image: {result.error}")
    return result.vector
