"""searchfs: search a photo library from any file manager, shell or script.

import searchfs
lib = searchfs.open_library(create=True)  # the "default" library under SEARCHFS_HOME
lib.index(["~/Pictures"])                # scan, read EXIF, embed with CLIP
for hit in lib.search("red flower", where=["year=2019..2021"], limit=10):
    print(hit.rank, hit.score, hit.path)

The names below load on first use (PEP 562): `python -m searchfs search ...` imports this package first,
and a search a running daemon answers must not pay for numpy, SQLite and the engine it never uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Settings, load_settings
    from .errors import (
        ConfigError,
        ExiftoolError,
        ImageError,
        LibraryBusy,
        ModelUnavailable,
        NotFound,
        QueryError,
        SearchfsError,
    )
    from .library import Library, open_library
    from .records import FACETS, Hit, IndexReport, LibraryStatus
    from .search.query import Query

__version__ = "0.1.0"

_WHERE = {
    "Settings": "config",
    "load_settings": "config",
    "ConfigError": "errors",
    "ExiftoolError": "errors",
    "ImageError": "errors",
    "LibraryBusy": "errors",
    "ModelUnavailable": "errors",
    "NotFound": "errors",
    "QueryError": "errors",
    "SearchfsError": "errors",
    "Library": "library",
    "open_library": "library",
    "FACETS": "records",
    "Hit": "records",
    "IndexReport": "records",
    "LibraryStatus": "records",
    "Query": "search.query",
}
__all__ = [
    "FACETS",
    "ConfigError",
    "ExiftoolError",
    "Hit",
    "ImageError",
    "IndexReport",
    "Library",
    "LibraryBusy",
    "LibraryStatus",
    "ModelUnavailable",
    "NotFound",
    "Query",
    "QueryError",
    "SearchfsError",
    "Settings",
    "load_settings",
    "open_library",
]
assert sorted(__all__) == sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'searchfs' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # once: later lookups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
