"""Plain data that crosses module boundaries, and the facet vocabulary.

Paths inside a root are kept as bytes (`os.fsencode`) from the scan to the catalog and back, so that
names that are not valid UTF-8 round-trip unchanged. They become `str` (surrogate-escaped) only at the
edges: CLI output, JSON, and the FUSE layer, which hands bytes back to the kernel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum


class TextEnum(str, Enum):
    """An enum whose members are their text: it prints, compares and serialises as the plain string."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class FacetSpec:
    """One key of the metadata vocabulary, as `exif/<key>/` shows it."""

    key: str
    kind: str  # "text" (case-insensitive), "match" (case-insensitive substring), "number", "date", "bool"
    help: str


# The vocabulary: what extract.py produces, what filters accept, what exif/ lists. Order is display order.
FACETS: tuple[FacetSpec, ...] = (
    FacetSpec("camera", "match", 'make and model without repetition, e.g. "Canon EOS 40D"'),
    FacetSpec("make", "match", 'camera maker as written in EXIF, e.g. "Canon"'),
    FacetSpec("model", "match", 'camera model as written in EXIF, e.g. "Canon EOS 40D"'),
    FacetSpec("lens", "match", 'lens model, e.g. "EF-S18-55mm f/3.5-5.6"'),
    FacetSpec("date", "date", "day the photo was taken, YYYY-MM-DD (DateTimeOriginal, else CreateDate)"),
    FacetSpec("year", "number", "year the photo was taken"),
    FacetSpec("month", "number", "month the photo was taken, 1-12"),
    FacetSpec("hour", "number", "hour of day the photo was taken, 0-23"),
    FacetSpec("timeofday", "text", "night (0-5h), morning (6-11h), afternoon (12-17h), evening (18-23h)"),
    FacetSpec("iso", "number", "ISO speed"),
    FacetSpec("fnumber", "number", "aperture f-number, e.g. 2.8"),
    FacetSpec("exposure", "number", "exposure time in seconds, e.g. 0.004"),
    FacetSpec("focal", "number", "focal length in mm"),
    FacetSpec("width", "number", "image width in pixels"),
    FacetSpec("height", "number", "image height in pixels"),
    FacetSpec("orientation", "number", "EXIF orientation, 1-8"),
    FacetSpec("format", "text", "file type as exiftool names it: JPEG, PNG, HEIC, ..."),
    FacetSpec("has_gps", "bool", "yes when the photo has GPS coordinates"),
    FacetSpec("lat", "number", "GPS latitude in degrees, north positive"),
    FacetSpec("lon", "number", "GPS longitude in degrees, east positive"),
    FacetSpec("keyword", "text", "one keyword or subject tag (a photo may have several)"),
    FacetSpec("title", "match", "title (XMP Title, IPTC ObjectName)"),
    FacetSpec("description", "match", "description or caption"),
    FacetSpec("text", "match", "free text: matches keyword, title or description"),
)
FACET_BY_KEY = {spec.key: spec for spec in FACETS}
# `text` is not stored: a filter on it searches these keys.
TEXT_FIELDS = ("keyword", "title", "description")


def format_number(value: float) -> str:
    """Display form of a number: "100", "2.8", "0.004"; no ".0", no exponent."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    text = f"{value:.10f}".rstrip("0").rstrip(".")
    return text if text not in ("0", "-0") else f"{value:.6g}"  # smaller than 1e-10: keep it visible


def display_number(key: str, value: float) -> str:
    """How a number of facet `key` is shown (folder names, manifests) and compared by `key=value`.
    Exposures below a quarter second read as photographers (and exiftool) write them: "1/60", not
    "0.0166666667"; longer ones in seconds ("0.5", "30")."""
    if key == "exposure" and 0 < value < 0.25001:
        return f"1/{int(0.5 + 1 / value)}"
    return format_number(value)


def display_span(key: str, value: float) -> tuple[float, float]:
    """The numbers that display as `value` does: what `key=value` matches. An exposure shown "1/60"
    covers 1/60.5 .. 1/59.5; any other number itself, give or take a rounding error."""
    if key == "exposure" and 0 < value < 0.25001:
        n = int(0.5 + 1 / value)
        return 1 / (n + 0.5), (1 / (n - 0.5) if n > 1 else 1.0)
    tolerance = 1e-9 * max(1.0, abs(value))
    return value - tolerance, value + tolerance


Bound = float | str | None


@dataclass(frozen=True)
class Filter:
    """One parsed `key=value` filter (search/filters.py parses them; the catalog turns them into SQL)."""

    key: str
    op: str  # "eq" | "match" | "range"
    value: str | float | None = None
    lo: Bound = None
    hi: Bound = None

    def __str__(self) -> str:
        if self.op == "range":
            return f"{self.key}={_fmt(self.lo)}..{_fmt(self.hi)}"
        if isinstance(self.value, float):
            return f"{self.key}={display_number(self.key, self.value)}"
        return f"{self.key}={_fmt(self.value)}"


def _fmt(value: Bound) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class Facet:
    """One stored metadata value. `text` is the display form; `num` is set for numbers and dates."""

    key: str
    text: str
    num: float | None = None


@dataclass(frozen=True)
class FileStat:
    """What the scan learns of a file from one stat call."""

    relpath: bytes
    size: int
    mtime_ns: int
    inode: int


@dataclass(frozen=True)
class Root:
    id: int
    path: bytes
    name: str
    online: bool = True
    last_scan_at: float | None = None

    @property
    def display(self) -> str:
        return os.fsdecode(self.path)


@dataclass(frozen=True)
class Hit:
    """One search result: a file, its rank (1-based) and cosine similarity (None for metadata-only)."""

    rank: int
    score: float | None
    root: str
    relpath: bytes
    abspath: bytes
    file_id: int
    content_id: int

    @property
    def path(self) -> str:
        return os.fsdecode(self.abspath)

    def to_json(self) -> dict:
        return {"rank": self.rank, "score": self.score, "path": self.path, "root": self.root}


@dataclass
class IndexReport:
    """What one indexing pass did. Counts are of files unless the name says otherwise."""

    scanned: int = 0
    unchanged: int = 0
    new: int = 0
    changed: int = 0
    removed: int = 0
    reused: int = 0  # new or changed files whose content was already known (moves, copies)
    embedded: int = 0  # contents sent through the model
    quarantined: int = 0  # files put in quarantine by this pass (copies and unreadable files included)
    pending: int = 0  # waiting for the model (e.g. weights unavailable)
    offline_roots: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    deferred: list[bytes] = field(default_factory=list)  # relpaths too fresh to read yet (being written?)

    def to_json(self) -> dict:
        data = dict(self.__dict__)
        data["deferred"] = [os.fsdecode(path) for path in self.deferred]
        return data


@dataclass
class RootStatus:
    name: str
    path: str
    online: bool
    files: int
    last_scan_at: float | None


@dataclass
class LibraryStatus:
    library: str
    catalog: str
    roots: list[RootStatus]
    files: int
    indexed: int
    pending: int
    quarantined: int
    model: str
    vectors: dict
    generation: int
    quarantine: list[dict] = field(default_factory=list)
    watcher: dict | None = None

    def to_json(self) -> dict:
        data = dict(self.__dict__)
        data["roots"] = [dict(r.__dict__) for r in self.roots]
        return data
