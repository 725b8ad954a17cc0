"""The mounted tree, without FUSE: a path (bytes) in, an answer out.

This module never imports mfusepy; `fs/fuse_ops.py` adapts it to FUSE and `fs/mount.py` mounts it.
Everything here works on bytes paths, so names that are not UTF-8 round-trip unchanged.

Path grammar
============
::

    /README.txt                      short help (this grammar, with examples)
    /query/                          saved queries and the last 20 listed ones
    /query/<text>/                   photos ranked by similarity to <text> (any name works, no mkdir needed)
    /exif/                           the metadata keys (camera, lens, year, ...)
    /exif/<key>/                     the values present, as folders named <key>=<value>
    /exif/<key>=<value>/             photos whose metadata matches (also /exif/<key>/<key>=<value>/)
    /similar/                        the source roots
    /similar/<root>/<dir>/...        mirror of the source tree: folders and indexed photos
    /similar/<root>/<dir>/<photo>/   photos most like <photo> (the photo itself is left out)

<key>=<value> follows the filter grammar of search/filters.py: text keys are case-insensitive, camera,
lens, make, model, title, description and text match substrings, numbers and dates take ranges
(year=2019..2021, iso=..400, date=2020-05). A "/" in a value is shown as "∕" (U+2215); "%2F" is
accepted too; "%" is written "%25" (see fs/names.py).

Folders that hold results (the three `<...>/` forms above) are "result folders". Inside one, these
segments nest, each one narrowing the results (AND), and may be chained in any order:

    <key>=<value>/                   another metadata filter            query/dog/camera=Canon/
    exif/<key>=<value>/              the same, spelled as at the top    query/dog/exif/year=2020/
    query/<text>/                    rank by text (if nothing ranks yet) exif/year=2020/query/dog/
    similar/<root>/.../<photo>/      rank by likeness (idem)            exif/year=2020/similar/R/a.jpg/
    limit=<N>/                       at most N results (default: search.limit)
    min=<S>/                         drop results with a score below S (default: search.min_score)

Only one of text and likeness can rank a folder; a second one does not exist (ENOENT). The nested
names resolve on lookup but are not listed, so `cp folder/* dest/` copies exactly the photos.

A result folder holds:
    <rank>_<basename>                symlink to the photo (absolute path); rank zero-padded to the width
                                     of the limit, so names sort in rank order; long names are cut in
                                     the middle of the stem, the extension is kept
    .results.tsv                     header "rank<TAB>score<TAB>path", one row per result; score with 4
                                     decimals, empty for metadata-only results; path as raw bytes, with
                                     backslash, tab, CR and newline written as \\\\, \\t, \\r, \\n
    .results.json                    the same as a JSON list of {rank, score, path, root, name}

Costs: looking up or stat-ing any folder never searches. Listing a result folder searches once; the
answer is cached per (query, library generation) and shared by concurrent listers, by later listings
and by lookups of its entries; a new generation (the library changed) searches again. Names that
file managers probe on their own (dot-names other than the manifests, .Trash*, desktop.ini,
autorun.inf, Thumbs.db, folder.jpg, ...) answer ENOENT at once outside the mirror tree.

Saving queries: every `query/<text>` exists already, so the kernel answers a plain
`mkdir query/<text>` with EEXIST without asking us. `mkdir query/+<text>` saves <text> (the name
`query/+<text>` exists only once <text> is saved); `rmdir query/<text>` forgets a saved or recent
query (a no-op for others). `ls query/` lists the saved queries, then the last 20 listed ones.
Everything else is read-only: every other write answers EROFS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import Generic, Protocol, TypeVar

from ..config import Settings
from ..errors import NotFound, QueryError, ReadOnly
from ..records import FACET_BY_KEY, FACETS, Hit
from ..search.filters import Filter, parse_filter
from ..search.query import Query
from . import names as N

log = logging.getLogger(__name__)

MANIFEST_TSV = b".results.tsv"
MANIFEST_JSON = b".results.json"
MANIFESTS = (MANIFEST_TSV, MANIFEST_JSON)
README_NAME = b"README.txt"
RECENT_MAX = 20
MAX_LIMIT = 100_000


class Backend(Protocol):
    """What the view needs from the library (searchfs.library.Library implements it).

    Every method may be called from several threads at once.
    """

    settings: Settings

    def generation(self) -> int: ...  # changes whenever any result could change; the cache key

    def root_names(self) -> list[str]: ...

    def root_path(self, name: str) -> bytes: ...

    def list_tree(self, root: str, relpath: bytes) -> list[tuple[bytes, bool]]: ...

    def is_photo(self, root: str, relpath: bytes) -> bool: ...

    def search(self, query: Query) -> list[Hit]: ...

    def facet_values(self, key: str) -> list[tuple[str, int]]: ...

    def saved_queries(self) -> list[str]: ...

    def save_query(self, text: str) -> None: ...

    def forget_query(self, text: str) -> None: ...


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


# ------------------------------------------------------------------------------------------- answers

DIR, FILE, LINK = "dir", "file", "link"
_MODES = {DIR: stat.S_IFDIR | 0o555, FILE: stat.S_IFREG | 0o444, LINK: stat.S_IFLNK | 0o777}


@dataclass(frozen=True)
class Attr:
    """What stat shows. Directories have nlink 1, so `find` never assumes a leaf optimisation."""

    kind: str
    ino: int
    size: int = 0
    mtime_ns: int = 0

    @property
    def mode(self) -> int:
        return _MODES[self.kind]

    @property
    def nlink(self) -> int:
        return 1


@dataclass(frozen=True)
class Entry:
    name: bytes
    kind: str
    ino: int

    @property
    def mode(self) -> int:
        return _MODES[self.kind]


# ------------------------------------------------------------------------------------------ the cache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Flight:
    __slots__ = ("done", "value", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value = None
        self.error: BaseException | None = None


class SingleFlightLRU(Generic[K, V]):
    """A bounded LRU whose misses are computed once even when many threads ask at the same time."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._lock = threading.Lock()
        self._data: OrderedDict[K, V] = OrderedDict()
        self._flights: dict[K, _Flight] = {}

    def peek(self, key: K) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def get(self, key: K, compute: Callable[[], V]) -> V:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value  # type: ignore[return-value]
        try:
            value = compute()
        except BaseException as exc:
            flight.error = exc
            with self._lock:
                del self._flights[key]
            flight.done.set()
            raise
        flight.value = value
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
            del self._flights[key]
        flight.done.set()
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


# --------------------------------------------------------------------------------------- path states


@dataclass(frozen=True)
class Spec:
    """The query a path has accumulated so far."""

    text: str | None = None
    similar_to: tuple[str, bytes] | None = None
    filters: tuple[Filter, ...] = ()
    limit: int | None = None
    min_score: float | None = None

    @property
    def ranked(self) -> bool:
        return self.text is not None or self.similar_to is not None

    def add_filter(self, flt: Filter) -> Spec:
        if flt in self.filters:
            return self
        return replace(self, filters=self.filters + (flt,))


@dataclass(frozen=True)
class Node:
    kind: str  # root readme querydir exifdir exifkey similardir tree result entry manifest
    spec: Spec = field(default_factory=Spec)
    key: str = ""  # exifkey: the facet key
    root: str = ""  # tree
    relpath: bytes = b""  # tree
    name: bytes = b""  # entry, manifest


_ROOT = Node("root")
_DIR_KINDS = frozenset({"root", "querydir", "exifdir", "exifkey", "similardir", "tree", "result"})


@dataclass
class Results:
    """One listed result folder: entry names, their hits and the manifests."""

    query: Query
    names: list[bytes]
    by_name: dict[bytes, Hit]
    tsv: bytes
    json: bytes
    seconds: float


def _tsv_path(path: bytes) -> bytes:
    return path.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n").replace(b"\r", b"\\r")


def build_results(query: Query, hits: list[Hit], limit: int, seconds: float = 0.0) -> Results:
    width = N.rank_width(max(limit, len(hits)))
    names = N.result_names([(h.rank, os.path.basename(h.abspath)) for h in hits], width)
    rows = [b"rank\tscore\tpath\n"]
    items = []
    for name, hit in zip(names, hits):
        score = b"" if hit.score is None else f"{hit.score:.4f}".encode()
        rows.append(b"%d\t%s\t%s\n" % (hit.rank, score, _tsv_path(hit.abspath)))
        item = hit.to_json()
        item["name"] = N.fsdecode(name)
        items.append(item)
    return Results(
        query=query,
        names=names,
        by_name=dict(zip(names, hits)),
        tsv=b"".join(rows),
        json=(json.dumps(items, indent=1) + "\n").encode("utf-8", "surrogateescape"),
        seconds=seconds,
    )


README = """searchfs: search your photos from any file manager, shell or script.

Every folder here is a search; it runs when you open (list) it.

  query/<text>/                 photos most like the words, e.g. query/dog on a beach/
  exif/                         metadata keys; exif/camera/ lists the cameras
  exif/<key>=<value>/           photos by metadata, e.g. exif/camera=Canon/  exif/year=2019..2021/
  similar/<root>/<path>/        your folders; every photo there is a folder of the photos like it

Narrow any result folder by adding more segments (all must hold):
  query/dog/year=2020/                 exif/camera=Canon/query/dog/
  query/dog/exif/lens=f∕2.8/           similar/Photos/2019/a.jpg/exif/year=2020/
  query/dog/limit=200/                 query/dog/min=0.25/

Result folders hold symlinks named <rank>_<original name> (best first), and .results.tsv
(rank, score, path) for scripts. A "/" in a value is written "∕" (or %2F).
`mkdir query/+<text>` keeps <text> in query/ (plain `mkdir query/<text>` says "File exists":
every query folder exists already); `rmdir query/<text>` forgets it. All else is read-only.
"""


class View:
    """The whole tree over one backend. Thread-safe; every method takes and returns bytes paths.

    Public API (what fs/fuse_ops.py calls): getattr, readdir, readlink, open, read, mkdir, rmdir,
    statfs. Errors: ViewError subclasses and searchfs.errors classes (QueryError, NotFound,
    ModelUnavailable, ReadOnly, ...), never an errno.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        uid: int | None = None,
        gid: int | None = None,
        results_cache: int = 128,
        tree_cache: int = 2048,
        recent_max: int = RECENT_MAX,
    ) -> None:
        self.backend = backend
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.mtime_ns = time.time_ns()
        self.readme = README.encode("utf-8")
        self._results: SingleFlightLRU[tuple, Results] = SingleFlightLRU(results_cache)
        self._trees: SingleFlightLRU[tuple, object] = SingleFlightLRU(tree_cache)
        self._recent: deque[str] = deque(maxlen=recent_max)
        self._recent_lock = threading.Lock()
        self.searches = 0  # how many times backend.search ran (for tests and stats)

    # ---------------------------------------------------------------------------------- public API

    def getattr(self, path: bytes) -> Attr:
        node = self._resolve(path)
        ino = self.ino(path)
        if node.kind in _DIR_KINDS:
            return Attr(DIR, ino, 0, self.mtime_ns)
        if node.kind == "readme":
            return Attr(FILE, ino, len(self.readme), self.mtime_ns)
        if node.kind == "manifest":
            return Attr(FILE, ino, len(self._content(node)), self.mtime_ns)
        target = self._target(node)
        return Attr(LINK, ino, len(target), self.mtime_ns)

    def readdir(self, path: bytes) -> list[Entry]:
        """The listing, without "." and ".."."""
        node = self._resolve(path)
        base = path.rstrip(b"/") + b"/"
        kind = node.kind
        if kind == "root":
            items = [(b"query", DIR), (b"exif", DIR), (b"similar", DIR), (README_NAME, FILE)]
        elif kind == "querydir":
            items = [(name, DIR) for name in self._query_names()]
        elif kind == "exifdir":
            items = [(spec.key.encode(), DIR) for spec in FACETS]
        elif kind == "exifkey":
            items = [(name, DIR) for name in self._value_names(node.key)]
        elif kind == "similardir":
            items = [(N.fsencode(name), DIR) for name in self._root_names() if _plain_name(N.fsencode(name))]
        elif kind == "tree":
            # photos are folders too: each one holds the photos most like it
            items = [(name, DIR) for name, _is_dir in self._tree(node.root, node.relpath)]
        elif kind == "result":
            results = self._search(node.spec)
            if node.spec.text is not None:
                self._remember(node.spec.text)
            items = [(name, LINK) for name in results.names] + [(m, FILE) for m in MANIFESTS]
        else:
            raise NotADir(path)
        return [Entry(name, k, self.ino(base + name)) for name, k in items]

    def readlink(self, path: bytes) -> bytes:
        node = self._resolve(path)
        if node.kind != "entry":
            raise ViewError(f"not a symlink: {path!r}")  # EINVAL, as readlink(2) says
        return self._target(node)

    def open(self, path: bytes, flags: int) -> None:
        node = self._resolve(path)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise ReadOnly("searchfs is read-only")
        if node.kind in _DIR_KINDS:
            raise IsADir(path)
        if node.kind == "manifest":
            self._content(node)  # fail at open, not at read, when the search fails

    def read(self, path: bytes, size: int, offset: int) -> bytes:
        node = self._resolve(path)
        if node.kind in _DIR_KINDS:
            raise IsADir(path)
        if node.kind not in ("readme", "manifest"):
            raise ViewError(f"cannot read {path!r}")
        data = self._content(node)
        return data[offset : offset + size]

    def mkdir(self, path: bytes) -> None:
        """Save the query `query/<text>`. Any other mkdir is ReadOnly.

        The kernel looks a name up before mkdir and answers EEXIST itself when the lookup succeeds;
        since every `query/<text>` exists, a plain `mkdir query/<text>` never reaches here in a real
        mount. `mkdir query/+<text>` does: `query/+<text>` resolves only once <text> is saved.
        """
        text = self._query_text_of(path, for_mkdir=True)
        saved = set(self.backend.saved_queries())
        if text in saved:
            raise Exists(path)
        self.backend.save_query(text)
        self._remember(text)

    def rmdir(self, path: bytes) -> None:
        """Forget the query `query/<text>` (saved or recent; a no-op for others). Any other rmdir is
        ReadOnly."""
        text = self._query_text_of(path, for_mkdir=False)
        with self._recent_lock:
            was_recent = text in self._recent
            if was_recent:
                self._recent.remove(text)
        try:
            self.backend.forget_query(text)
        except NotFound:
            pass  # nothing kept under that name: forgetting it is a no-op (the folder still "exists")

    def statfs(self) -> dict:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": N.NAME_MAX}

    @staticmethod
    def ino(path: bytes) -> int:
        """A stable inode number for `path`: 62 bits of its hash. No table is kept, so memory does not grow
        with every path ever looked up in a long-running mount; two paths share a number with odds of
        about 1 in 10^5 even after ten million distinct paths (and then only `find` could be confused)."""
        path = path.strip(b"/")
        if not path:
            return 1  # the root
        return max(2, int.from_bytes(hashlib.blake2b(b"/" + path, digest_size=8).digest(), "little") >> 2)

    def recent(self) -> list[str]:
        with self._recent_lock:
            return list(self._recent)

    def to_query(self, spec: Spec) -> Query:
        """The Query a result folder runs (defaults from the backend's settings)."""
        settings = self.backend.settings
        ranked = spec.text is not None or spec.similar_to is not None
        # Ranked folders show the configured top-k; a metadata folder lists every match, as the CLI does.
        default_limit = settings.search_limit if ranked else None
        return Query(
            text=spec.text,
            similar_to=spec.similar_to,
            filters=tuple(sorted(spec.filters, key=str)),
            limit=spec.limit if spec.limit is not None else default_limit,
            min_score=spec.min_score if spec.min_score is not None else settings.search_min_score,
        )

    def resolve(self, path: bytes) -> Node:
        return self._resolve(path)

    # ---------------------------------------------------------------------------------- resolution

    def _resolve(self, path: bytes) -> Node:
        node = _ROOT
        for segment in path.split(b"/"):
            if segment:
                node = self._child(node, segment)
        return node

    def _child(self, node: Node, seg: bytes) -> Node:
        kind = node.kind
        if kind not in _DIR_KINDS:
            raise NotADir(seg)
        if kind == "similardir":
            name = N.fsdecode(seg)
            if name not in self._root_names():
                raise NoEntry(seg)
            return Node("tree", node.spec, root=name, relpath=b"")
        if kind == "tree":
            children = self._tree_map(node.root, node.relpath)
            is_dir = children.get(seg)
            if is_dir is None:
                raise NoEntry(seg)
            relpath = node.relpath + b"/" + seg if node.relpath else seg
            if is_dir:
                return Node("tree", node.spec, root=node.root, relpath=relpath)
            if node.spec.ranked:
                raise NoEntry(seg)  # a folder ranks by one thing only
            return self._result(replace(node.spec, similar_to=(node.root, relpath)))
        if kind == "result" and seg in MANIFESTS:
            return Node("manifest", node.spec, name=seg)
        if N.is_probe(seg):
            raise NoEntry(seg)
        if kind == "root":
            if seg in (b"query", b"exif", b"similar"):
                return Node(seg.decode() + "dir")
            if seg == README_NAME:
                return Node("readme")
            raise NoEntry(seg)
        text = N.unescape_segment(N.fsdecode(seg))
        if kind == "querydir":
            if node.spec.ranked or not text.strip() or _has_surrogates(text):
                raise NoEntry(seg)  # one ranker per folder; words must be text (valid UTF-8)
            if text.startswith("+") and not node.spec.filters and node.spec == Spec():
                # `query/+<text>`: the mkdir spelling; exists once <text> is saved
                saved = text[1:]
                if not saved.strip() or saved not in self.backend.saved_queries():
                    raise NoEntry(seg)
                text = saved
            return self._result(replace(node.spec, text=text))
        if kind == "exifdir":
            if "=" in text:
                return self._result(node.spec.add_filter(_filter(text)))
            if text in FACET_BY_KEY:
                return Node("exifkey", node.spec, key=text)
            raise NoEntry(seg)
        if kind == "exifkey":
            key, sep, _ = text.partition("=")
            if not sep or key.strip().lower() != node.key:
                raise NoEntry(seg)
            return self._result(node.spec.add_filter(_filter(text)))
        # a result folder
        if seg == b"query":
            return Node("querydir", node.spec)
        if seg == b"exif":
            return Node("exifdir", node.spec)
        if seg == b"similar":
            return Node("similardir", node.spec)
        key, sep, value = text.partition("=")
        key = key.strip().lower()
        if sep and key == "limit":
            try:
                limit = int(value.strip())
            except ValueError:
                raise NoEntry(seg) from None
            if not 1 <= limit <= MAX_LIMIT:
                raise NoEntry(seg)
            return self._result(replace(node.spec, limit=limit))
        if sep and key in ("min", "min_score"):
            try:
                score = float(value.strip())
            except ValueError:
                raise NoEntry(seg) from None
            if not -1.0 <= score <= 1.0:
                raise NoEntry(seg)
            return self._result(replace(node.spec, min_score=score))
        if sep and key in FACET_BY_KEY:
            return self._result(node.spec.add_filter(_filter(text)))
        if N.looks_like_entry(seg):
            return Node("entry", node.spec, name=seg)
        raise NoEntry(seg)

    def _result(self, spec: Spec) -> Node:
        self.to_query(spec)  # raises QueryError for contradictions, before anyone lists it
        return Node("result", spec)

    def _query_text_of(self, path: bytes, for_mkdir: bool) -> str:
        parts = [p for p in path.split(b"/") if p]
        if len(parts) != 2 or parts[0] != b"query":
            raise ReadOnly("searchfs is read-only: only query/<text> folders can be made or removed")
        if N.is_probe(parts[1]):
            raise ReadOnly("searchfs is read-only")
        text = N.unescape_segment(N.fsdecode(parts[1]))
        if for_mkdir and text.startswith("+"):
            text = text[1:]
        if not text.strip():
            raise NoEntry(path)
        return text

    # ------------------------------------------------------------------------------------- content

    def _search(self, spec: Spec) -> Results:
        query = self.to_query(spec)
        key = (query, self.backend.generation())

        def run() -> Results:
            started = time.perf_counter()
            hits = self.backend.search(query)
            self.searches += 1
            seconds = time.perf_counter() - started
            log.debug("search %s: %d hits in %.3fs", query, len(hits), seconds)
            return build_results(query, hits, query.limit or 1, seconds)

        return self._results.get(key, run)

    def _target(self, node: Node) -> bytes:
        hit = self._search(node.spec).by_name.get(node.name)
        if hit is None:
            raise NoEntry(node.name)
        return hit.abspath

    def _content(self, node: Node) -> bytes:
        if node.kind == "readme":
            return self.readme
        results = self._search(node.spec)
        return results.tsv if node.name == MANIFEST_TSV else results.json

    def _remember(self, text: str) -> None:
        with self._recent_lock:
            if text in self._recent:
                self._recent.remove(text)
            self._recent.append(text)

    def _query_names(self) -> list[bytes]:
        texts = list(self.backend.saved_queries()) + list(reversed(self.recent()))
        seen: set[bytes] = set()
        out = []
        for text in texts:
            name = N.fsencode(N.escape_segment(text))
            if name in seen or not text.strip() or N.is_probe(name) or len(name) > N.NAME_MAX:
                continue
            if text.startswith("+"):
                continue
            seen.add(name)
            out.append(name)
        return out

    def _value_names(self, key: str) -> list[bytes]:
        out = []
        seen: set[bytes] = set()
        for value, _count in self.backend.facet_values(key):
            text = f"{key}={value}"
            name = N.fsencode(f"{key}={N.escape_segment(value)}")
            if name in seen or len(name) > N.NAME_MAX:
                continue
            try:
                parse_filter(text)
            except QueryError:
                continue
            seen.add(name)
            out.append(name)
        return out

    def _root_names(self) -> list[str]:
        return self._trees.get(("roots", self.backend.generation()), self.backend.root_names)  # type: ignore

    def _tree(self, root: str, relpath: bytes) -> list[tuple[bytes, bool]]:
        key = ("tree", root, relpath, self.backend.generation())
        try:
            return self._trees.get(key, lambda: list(self.backend.list_tree(root, relpath)))  # type: ignore
        except NotFound:
            raise NoEntry(relpath) from None

    def _tree_map(self, root: str, relpath: bytes) -> dict[bytes, bool]:
        key = ("treemap", root, relpath, self.backend.generation())
        return self._trees.get(key, lambda: dict(self._tree(root, relpath)))  # type: ignore


def _filter(text: str) -> Filter:
    return parse_filter(text)  # QueryError -> ENOENT in the adapter


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _plain_name(name: bytes) -> bool:
    return bool(name) and b"/" not in name and name not in (b".", b"..") and len(name) <= N.NAME_MAX
