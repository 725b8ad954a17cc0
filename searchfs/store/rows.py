"""Typed rows the catalog hands out: what a caller may rely on, whatever stores them (protocol.py)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class FileRow(NamedTuple):
    """A file as the catalog last saw it."""

    id: int
    size: int
    mtime_ns: int
    inode: int
    content_id: int | None


class KnownContent(NamedTuple):
    id: int
    hash: str  # hex
    size: int
    error: str | None  # its quarantine reason, if any


class ContentPath(NamedTuple):
    """A content to work on, and one absolute path of it on an online root."""

    content_id: int
    path: bytes


class FileHit(NamedTuple):
    """A file that answers a search: where it is, and which content it holds."""

    file_id: int
    content_id: int
    root_name: str
    root_path: bytes
    relpath: bytes


class NewPhoto(NamedTuple):
    """A photo already read elsewhere, for `Transaction.add_photos` (imports, synthetic libraries)."""

    relpath: bytes
    size: int
    mtime_ns: int
    inode: int
    hash: str  # hex, 40 digits
    facets: tuple  # of records.Facet
    vector: np.ndarray | None  # unit-length float32, for the model given to add_photos


class FileState(NamedTuple):
    """Every file the catalog holds, with what became of it."""

    path: bytes  # absolute
    hash: str | None  # its content's hash (hex), None until read
    reason: str | None  # why it is in quarantine, or None
    embedded: bool  # it has a vector for the model asked about


class Quarantined(NamedTuple):
    path: bytes  # absolute
    reason: str


class Counts(NamedTuple):
    """What `searchfs status` counts, in files."""

    per_root: dict[int, int]
    indexed: int  # with a vector for the model
    quarantined: int  # the file or its content cannot be used


class VectorChanges(NamedTuple):
    """What changed for the vector index since a sequence number: vectors to (re)add, ids to drop."""

    upto: int  # the sequence number these changes bring the index to
    add_ids: np.ndarray
    add_vectors: np.ndarray
    remove_ids: np.ndarray

    @property
    def empty(self) -> bool:
        return not len(self.add_ids) and not len(self.remove_ids)
