"""The values the mounted tree is made of: what a path resolved to (Node), what stat and readdir show
(Attr, Entry), and the path-level errors that fs/fuse_ops.py turns into errnos."""

from __future__ import annotations

import stat
from dataclasses import dataclass, replace
from enum import Enum

from ..search.filters import Filter
from ..search.query import Query

# ------------------------------------------------------------------------------------------------ errors


class ViewError(Exception):
    """A path-level failure; fs/fuse_ops.py maps each subclass to one errno."""


class NoEntry(ViewError):
    """The path names nothing (ENOENT)."""


class NotADir(ViewError):
    """A path component is a file or link (ENOTDIR)."""


class IsADir(ViewError):
    """A file operation on a folder (EISDIR)."""


class Exists(ViewError):
    """mkdir of something that is already there (EEXIST)."""


class NameTooLong(ViewError):
    """A path segment longer than 255 bytes (ENAMETOOLONG)."""


class Denied(ViewError):
    """An original that resolves outside its root, or is not a regular file (EACCES)."""


# ------------------------------------------------------------------------------------------- answers


class Type(Enum):
    """What an entry is, as stat shows it."""

    DIR = stat.S_IFDIR | 0o555
    FILE = stat.S_IFREG | 0o444
    LINK = stat.S_IFLNK | 0o777

    @property
    def mode(self) -> int:
        return self.value


DIR, FILE, LINK = Type.DIR, Type.FILE, Type.LINK


@dataclass(frozen=True)
class Attr:
    """What stat shows. Folders have nlink 1, so `find` never assumes a leaf optimisation."""

    kind: Type
    ino: int
    size: int = 0
    mtime_ns: int = 0

    @property
    def mode(self) -> int:
        return self.kind.mode

    @property
    def nlink(self) -> int:
        return 1


@dataclass(frozen=True)
class Entry:
    name: bytes
    kind: Type
    ino: int

    @property
    def mode(self) -> int:
        return self.kind.mode


@dataclass(frozen=True)
class Opened:
    """An open file: the handle reads name, and whether the kernel must pass every read through
    (a manifest generated as it is read has no size to cache by)."""

    fh: int = 0
    direct_io: bool = False


# ------------------------------------------------------------------------------------------ path states


class Kind(Enum):
    """What a path names. Folder kinds have an entry in fs/kinds.py's FOLDERS."""

    ROOT = "root"
    QUERIES = "query/"
    EXIF = "exif/"
    EXIF_KEY = "exif/<key>/"
    SIMILAR = "similar/"
    TREE = "similar/<root>/<folders>/"
    DATES = "date/"
    YEAR = "date/<year>/"
    RESULT = "result folder"
    README = "README.txt"
    MARKER = "indexer marker"
    MANIFEST = "manifest"
    PROGRESS = ".searchfs-indexing"
    ENTRY = "result entry"


@dataclass(frozen=True)
class Period:
    """The by-date subfolder a metadata folder is narrowed to: a year, month or day, or its undated
    photos."""

    year: int = 0
    month: int = 0
    day: int = 0
    undated: bool = False

    @property
    def depth(self) -> int:
        return 3 if self.undated else (self.year > 0) + (self.month > 0) + (self.day > 0)

    def word(self) -> str:
        """As a `date=` filter value."""
        parts = [f"{self.year:04d}"] + [f"{n:02d}" for n in (self.month, self.day) if n]
        return "-".join(parts)


@dataclass(frozen=True)
class Node:
    """What a path resolved to. `query` is what the path has asked for so far, defaults not applied."""

    kind: Kind
    query: Query = Query()
    key: str = ""  # EXIF_KEY: the facet key
    root: str = ""  # TREE
    relpath: bytes = b""  # TREE
    name: bytes = b""  # ENTRY, MANIFEST
    period: Period | None = None  # RESULT (and YEAR): a by-date subfolder
    page: int = 0  # RESULT: page=<N>/ of a folder too big to show at once; 0: the whole folder

    def narrowed(self, flt: Filter) -> Query:
        """This node's query with one more filter (filters kept sorted, so equal folders share a cache key)."""
        if flt in self.query.filters:
            return self.query
        return replace(self.query, filters=tuple(sorted(self.query.filters + (flt,), key=str)))


ROOT = Node(Kind.ROOT)
