"""searchfs: search a photo library from any file manager, shell or script.

import searchfs
lib = searchfs.open_library(create=True)  # the "default" library under SEARCHFS_HOME
lib.index(["~/Pictures"])                # scan, read EXIF, embed with CLIP
for hit in lib.search("red flower", where=["year=2019..2021"], limit=10):
    print(hit.rank, hit.score, hit.path)
"""

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
