"""What a search asks for. The engine that answers it lives in search/engine.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..errors import QueryError
from .filters import Filter, parse_filter


@dataclass(frozen=True)
class Query:
    """One search. At most one of `text`, `image` and `similar_to` ranks the results; with none of them
    the results are the files matching `filters`, oldest photo first (undated last, then by root and path),
    without scores.

    text:       words to embed with the CLIP text encoder
    image:      path (bytes) of any image file, inside the roots or not
    similar_to: (root name, path inside the root) of an indexed file; the file itself is left out
    filters:    metadata filters, all of which must hold (AND)
    limit:      at most this many results (None: the configured default)
    min_score:  drop results whose cosine similarity is below this
    offset:     skip this many results first (pages of a long listing); ranks still count from the top
    """

    text: str | None = None
    image: bytes | None = None
    similar_to: tuple[str, bytes] | None = None
    filters: tuple[Filter, ...] = ()
    limit: int | None = None
    min_score: float | None = None
    offset: int = 0

    def __post_init__(self) -> None:
        rankers = [x for x in (self.text, self.image, self.similar_to) if x is not None]
        if len(rankers) > 1:
            raise QueryError("a query ranks by one of text, image or similar, not several")
        if self.text is not None and not self.text.strip():
            raise QueryError("the query text is empty")
        if self.limit is not None and self.limit < 1:
            raise QueryError("limit must be at least 1")
        if self.min_score is not None and not -1.0 <= self.min_score <= 1.0:
            raise QueryError("min score must be between -1 and 1")
        if self.offset < 0:
            raise QueryError("offset must not be negative")

    @property
    def ranked(self) -> bool:
        return self.text is not None or self.image is not None or self.similar_to is not None

    def with_defaults(self, limit: int, min_score: float | None) -> Query:
        """This query with the configured defaults filled in (the one place they are applied): a ranked
        query gets `limit` results and `min_score` unless it says otherwise; a metadata-only query has
        no default limit (every match) and no score."""
        if not self.ranked:
            return self
        return replace(
            self,
            limit=self.limit or limit,
            min_score=self.min_score if self.min_score is not None else min_score,
        )

    @classmethod
    def build(cls, where: Sequence[str] = (), **fields) -> Query:
        """Query from filter words, as the CLI and the Python API take them."""
        return cls(filters=tuple(parse_filter(w) for w in where), **fields)
