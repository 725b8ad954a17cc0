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
    /date/                           the years photos were taken in
    /date/<YYYY>/                    the months of that year that have photos
    /date/<YYYY>/<MM>/               photos taken that month
    /similar/                        the source roots
    /similar/<root>/<dir>/...        mirror of the source tree: folders and indexed photos
    /similar/<root>/<dir>/<photo>/   photos most like <photo> (the photo itself is left out)

<key>=<value> follows the filter grammar of search/filters.py; a "/" in a value is shown as "∕" (U+2215),
"%2F" is accepted too, "%" is written "%25" (see fs/names.py).

The folders that hold results are "result folders" (fs/kinds.py has the whole table). Inside one,
`<key>=<value>/`, `exif/<key>=<value>/`, `query/<text>/`, `similar/<root>/.../<photo>/`,
`date/<YYYY>/<MM>/`, `limit=<N>/` and `min=<S>/` narrow it (AND), resolved when named but never listed,
so `cp folder/* dest/` copies exactly the photos. One of text and likeness ranks a folder; a second one
does not exist (ENOENT). A folder with more matches than [mount] max_entries is split by date or into
pages (fs/results.py).

Costs: looking up or stat-ing a folder never searches. Listing a result folder searches once (bounded by
max_entries); the answer is cached per (folder, library generation) in a cache bounded by bytes, shared
by concurrent listers, later listings and lookups of its entries. Names file managers probe on their own
(dot-names other than ours, .Trash*, desktop.ini, Thumbs.db, folder.jpg, ...) answer ENOENT at once
outside the mirror tree. Folder mtimes are the time of the library's last change, so they stay the same
across mounts and an indexer's crawl is not redone on every mount.

Saving queries: every `query/<text>` exists already, so the kernel answers a plain `mkdir query/<text>`
with EEXIST without asking us. `mkdir query/+<text>` saves <text>; `rmdir query/<text>` forgets a saved
or recent query. Everything else is read-only: every other write answers EROFS.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from ..config import Settings
from ..errors import ConfigError, NotFound, QueryError, ReadOnly
from ..records import Hit
from ..search.filters import parse_filter
from ..search.query import Query
from . import names as N
from .cache import SingleFlightCache
from .files import Originals
from .kinds import FOLDERS, is_marked
from .nodes import (
    DIR,
    FILE,
    LINK,
    ROOT,
    Attr,
    Denied,
    Entry,
    Exists,
    IsADir,
    Kind,
    NameTooLong,
    Node,
    NoEntry,
    NotADir,
    Opened,
    Period,
    ViewError,
)
from .readme import readme_text
from .results import MANIFESTS, PROGRESS_NAME, ResultFolders, Shown, Stream, weigh

__all__ = [
    "DIR",
    "FILE",
    "LINK",
    "Attr",
    "Backend",
    "Denied",
    "Entry",
    "Exists",
    "IsADir",
    "NameTooLong",
    "NoEntry",
    "NotADir",
    "View",
    "ViewError",
]

log = logging.getLogger(__name__)

RECENT_MAX = 20
CACHE_BYTES = 64 << 20  # listings and search results kept, all folders together
MAX_STREAMS = 8  # manifests being generated at once; the least recently read one restarts if read again


class Backend(Protocol):
    """What the view needs from the library (searchfs.library.Library implements it).

    Every method may be called from several threads at once.
    """

    settings: Settings

    def generation(self) -> int: ...  # changes whenever any result could change; the cache key

    def changed_at(self) -> float: ...  # when the generation last changed (folder mtimes)

    def root_names(self) -> list[str]: ...

    def root_path(self, name: str) -> bytes: ...

    def list_tree(self, root: str, relpath: bytes) -> list[tuple[bytes, bool]]: ...

    def search(self, query: Query) -> list[Hit]: ...

    def iter_search(self, query: Query): ...  # the same hits, streamed

    def date_counts(self, query: Query, width: int) -> list[tuple[str | None, int]]: ...

    def facet_values(self, key: str) -> list[tuple[str, int]]: ...

    def indexing_progress(self) -> tuple[int, int]: ...  # (searchable, waiting to be embedded)

    def saved_queries(self) -> list[str]: ...

    def save_query(self, text: str) -> None: ...

    def forget_query(self, text: str) -> None: ...


class View:
    """The whole tree over one backend. Thread-safe; every method takes and returns bytes paths.

    Public API (what fs/fuse_ops.py calls): getattr, readdir, readlink, open, read, release, mkdir, rmdir,
    statfs. Errors: ViewError subclasses and searchfs.errors classes (QueryError, NotFound,
    ModelUnavailable, ReadOnly, ...), never an errno.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        uid: int | None = None,
        gid: int | None = None,
        cache_bytes: int = CACHE_BYTES,
        recent_max: int = RECENT_MAX,
    ) -> None:
        settings = backend.settings
        if settings.mount_entries not in ("links", "files"):
            raise ConfigError(f'mount.entries must be "links" or "files", not {settings.mount_entries!r}')
        if settings.mount_max_entries < 1:
            raise ConfigError("mount.max_entries must be at least 1")
        self.backend = backend
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.files_mode = settings.mount_entries == "files"
        self.entry_type = FILE if self.files_mode else LINK
        self._cache: SingleFlightCache = SingleFlightCache(cache_bytes, weigh)
        self.results = ResultFolders(backend, self._cache, settings.mount_max_entries)
        self._recent: deque[str] = deque(maxlen=recent_max)
        self._recent_lock = threading.Lock()
        self._originals = Originals()
        self._streams: dict[int, Stream] = {}
        self._streams_lock = threading.Lock()
        self._handles = itertools.count(1)
        # told of every link served, with the generation it was served for: fs/fuse_ops.py lets the kernel
        # cache link targets and takes them back when the generation moves on
        self.on_readlink: Callable[[bytes, int], None] | None = None

    @property
    def searches(self) -> int:
        """How many searches and counts ran (for tests and stats)."""
        return self.results.searches

    # ---------------------------------------------------------------------------------- public API

    def getattr(self, path: bytes) -> Attr:
        node = self._resolve(path)
        ino, mtime = self.ino(path), self._mtime_ns()
        if node.kind in FOLDERS:
            return Attr(DIR, ino, 0, mtime)
        if node.kind is Kind.ENTRY:
            hit = self._hit(node)
            if self.files_mode:
                try:
                    st = os.stat(hit.abspath)
                except FileNotFoundError:
                    raise NoEntry(node.name) from None
                return Attr(FILE, ino, st.st_size, st.st_mtime_ns)
            return Attr(LINK, ino, len(hit.abspath), mtime)
        if node.kind is Kind.MANIFEST and not self.shown(node).complete:
            return Attr(FILE, ino, 0, mtime)  # generated as it is read
        return Attr(FILE, ino, len(self._content(node)), mtime)

    def readdir(self, path: bytes) -> list[Entry]:
        """The listing, without "." and ".."."""
        node = self._resolve(path)
        folder = FOLDERS.get(node.kind)
        if folder is None:
            raise NotADir(path)
        base = path.rstrip(b"/") + b"/"
        items = folder.list(self, node)
        if folder.paged:
            items = self._page_of(items, node.page)
        return [Entry(name, kind, self.ino(base + name)) for name, kind in items]

    def readlink(self, path: bytes) -> bytes:
        generation = self.generation()
        node = self._resolve(path)
        if node.kind is not Kind.ENTRY or self.files_mode:
            raise ViewError(f"not a symlink: {path!r}")  # EINVAL, as readlink(2) says
        target = self._hit(node).abspath
        if self.on_readlink is not None:
            self.on_readlink(path, generation)
        return target

    def open(self, path: bytes, flags: int) -> Opened:
        node = self._resolve(path)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise ReadOnly("searchfs is read-only")
        if node.kind in FOLDERS:
            raise IsADir(path)
        if node.kind is Kind.ENTRY:
            if not self.files_mode:
                raise ViewError(f"cannot open a link: {path!r}")
            hit = self._hit(node)
            real_root = os.path.realpath(self.backend.root_path(hit.root))
            return Opened(self._originals.open(hit.abspath, real_root))
        if node.kind is Kind.MANIFEST and not self.shown(node).complete:
            source = self.results.manifest_source(node, node.name, self.generation())
            return Opened(self._add_stream(Stream(source)), direct_io=True)
        self._content(node)  # fail at open, not at read, when the search fails
        return Opened()

    def read(self, path: bytes, size: int, offset: int, fh: int = 0) -> bytes:
        if fh in self._streams:
            return self._stream(fh).read(size, offset)
        if fh:
            return self._originals.read(fh, size, offset)
        node = self._resolve(path)
        if node.kind in FOLDERS:
            raise IsADir(path)
        if node.kind not in (Kind.README, Kind.MARKER, Kind.PROGRESS, Kind.MANIFEST):
            raise ViewError(f"cannot read {path!r}")
        return self._content(node)[offset : offset + size]

    def release(self, fh: int) -> None:
        with self._streams_lock:
            stream = self._streams.pop(fh, None)
        if stream is not None:
            stream.close()
        elif fh:
            self._originals.release(fh)

    def mkdir(self, path: bytes) -> None:
        """Save the query `query/<text>`. Any other mkdir is ReadOnly.

        The kernel looks a name up before mkdir and answers EEXIST itself when the lookup succeeds;
        since every `query/<text>` exists, a plain `mkdir query/<text>` never reaches here in a real
        mount. `mkdir query/+<text>` does: `query/+<text>` resolves only once <text> is saved.
        """
        text = self._query_text_of(path, for_mkdir=True)
        if text in set(self.backend.saved_queries()):
            raise Exists(path)
        self.backend.save_query(text)
        self.remember(text)

    def rmdir(self, path: bytes) -> None:
        """Forget the query `query/<text>` (saved or recent; a no-op for others). Any other rmdir is
        ReadOnly."""
        text = self._query_text_of(path, for_mkdir=False)
        with self._recent_lock:
            if text in self._recent:
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

    # ------------------------------------------------------------------ what fs/kinds.py asks for

    def result(self, query: Query, period: Period | None = None) -> Node:
        return Node(Kind.RESULT, query, period=period)

    def shown(self, node: Node) -> Shown:
        return self.results.shown(node, self.generation())

    def remember(self, text: str) -> None:
        with self._recent_lock:
            if text in self._recent:
                self._recent.remove(text)
            self._recent.append(text)

    def query_names(self) -> list[bytes]:
        texts = list(self.backend.saved_queries()) + list(reversed(self.recent()))
        seen: set[bytes] = set()
        out = []
        for text in texts:
            name = N.fsencode(N.escape_segment(text))
            if name in seen or not text.strip() or text.startswith("+") or N.is_probe(name):
                continue
            if len(name) <= N.NAME_MAX:
                seen.add(name)
                out.append(name)
        return out

    def value_names(self, key: str, counts: bool = False) -> list[bytes]:
        """The folders of exif/<key>/; with `counts`, what each holds is remembered for its listing."""
        generation = self.generation()
        out: list[bytes] = []
        seen: set[bytes] = set()
        for value, count in self._cached(("values", key), lambda: self.backend.facet_values(key)):
            name = N.fsencode(f"{key}={N.escape_segment(value)}")
            if name in seen or len(name) > N.NAME_MAX:
                continue
            try:
                flt = parse_filter(f"{key}={value}")
            except QueryError:
                continue
            seen.add(name)
            out.append(name)
            if counts:  # a lower bound for substring keys: only used to skip a probe when it is big
                self.results.hint(Query(filters=(flt,)), count, generation)
        return out

    def periods(self, query: Query, width: int) -> list[tuple[str | None, int]]:
        return self.results.buckets(query, width, self.generation())

    def root_names(self) -> list[str]:
        return self._cached(("roots",), self.backend.root_names)

    def tree(self, root: str, relpath: bytes) -> list[tuple[bytes, bool]]:
        try:
            return self._cached(("tree", root, relpath), lambda: list(self.backend.list_tree(root, relpath)))
        except NotFound:
            raise NoEntry(relpath) from None

    def tree_map(self, root: str, relpath: bytes) -> dict[bytes, bool]:
        return self._cached(("treemap", root, relpath), lambda: dict(self.tree(root, relpath)))

    def indexing_line(self) -> str:
        """One line saying how far embedding has come, or "" once every photo is searchable."""
        searchable, waiting = self._cached(("progress",), self.backend.indexing_progress)
        if not waiting:
            return ""
        return (
            f"Still indexing: {searchable} of {searchable + waiting} photos are searchable by text and likeness "
            f"so far; the other {waiting} are waiting to be embedded. Ranked folders fill up as they are.\n"
        )

    # ---------------------------------------------------------------------------------- resolution

    def _resolve(self, path: bytes) -> Node:
        segments = [seg for seg in path.split(b"/") if seg]
        for seg in segments:
            if len(seg) > N.NAME_MAX:
                raise NameTooLong(f"a name is {len(seg)} bytes long; the longest is {N.NAME_MAX}")
        node = ROOT
        for seg in segments:
            folder = FOLDERS.get(node.kind)
            if folder is None:
                raise NotADir(seg)
            if folder.probes and N.is_probe(seg) and not _ours(node, seg):
                raise NoEntry(seg)
            if seg in N.INDEXER_MARKERS and is_marked(node):
                node = Node(Kind.MARKER, name=seg)
                continue
            node = self._child(folder, node, seg)
        return node

    def _child(self, folder, node: Node, seg: bytes) -> Node:
        if not folder.paged:
            return folder.child(self, node, seg, N.unescape_segment(N.fsdecode(seg)))
        whole = replace(node, page=0)
        try:
            return folder.child(self, whole, seg, N.unescape_segment(N.fsdecode(seg)))
        except NoEntry:
            number = _page_number(seg)
            if number and not node.page:
                return replace(node, page=number)  # a slice of a long listing (real names come first)
            raise

    def _page_of(self, items: list, page: int) -> list:
        cap = self.results.cap
        if page:
            return items[(page - 1) * cap : page * cap]
        if len(items) <= cap:
            return items
        return [(b"page=%d" % (i + 1), DIR) for i in range((len(items) + cap - 1) // cap)]

    def _query_text_of(self, path: bytes, for_mkdir: bool) -> str:
        parts = [p for p in path.split(b"/") if p]
        if any(len(p) > N.NAME_MAX for p in parts):
            raise NameTooLong(f"a name is longer than {N.NAME_MAX} bytes")
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

    def generation(self) -> int:
        return self.backend.generation()

    def _cached(self, key: tuple, compute):
        return self._cache.get(key + (self.generation(),), compute)

    def _mtime_ns(self) -> int:
        return int(self._cached(("changed_at",), self.backend.changed_at) * 1e9)

    def _hit(self, node: Node) -> Hit:
        folder = replace(node, kind=Kind.RESULT, name=b"")
        hit = self.shown(folder).hit(node.name)
        if hit is None:
            raise NoEntry(node.name)
        return hit

    def _content(self, node: Node) -> bytes:
        if node.kind is Kind.README:
            return self.readme()
        if node.kind is Kind.MARKER:
            return b""
        if node.kind is Kind.PROGRESS:
            return self.indexing_line().encode()
        return self.shown(replace(node, kind=Kind.RESULT, name=b"")).manifest(node.name)

    def readme(self) -> bytes:
        settings = self.backend.settings
        return (self.indexing_line() + readme_text(settings.mount_max_entries, self.files_mode)).encode()

    def _add_stream(self, stream: Stream) -> int:
        with self._streams_lock:
            handle = next(self._handles)
            self._streams[handle] = stream
            if len(self._streams) > MAX_STREAMS:  # bound the open queries: the oldest restarts if read again
                for old in list(self._streams)[:-MAX_STREAMS]:
                    self._streams[old].close()
        return handle

    def _stream(self, fh: int) -> Stream:
        with self._streams_lock:
            stream = self._streams.pop(fh, None)
            if stream is None:
                raise NoEntry(f"no open manifest {fh}")
            self._streams[fh] = stream  # most recently read last
        return stream


def _page_number(seg: bytes) -> int:
    if not seg.startswith(b"page=") or not seg[5:].isdigit():
        return 0
    return int(seg[5:])


def _ours(node: Node, seg: bytes) -> bool:
    """Dot-names the tree itself serves (the probe rule would answer ENOENT for them)."""
    if is_marked(node):
        return seg in N.INDEXER_MARKERS
    return node.kind is Kind.RESULT and (seg in MANIFESTS or seg == PROGRESS_NAME)
