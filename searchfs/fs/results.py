"""Result folders: what a folder of search results shows, and its manifests.

A result folder never shows more than `max_entries` ([mount] max_entries) entries:

- a folder with at most that many matches shows them all: `<rank>_<name>` entries and the manifests;
- a metadata-only folder with more is split by date: `2019/`, `2020/`, ..., `undated/`, each the same
  query narrowed to that year; a year still over the cap splits into months (`01/` ... `12/`), a month
  into days; a day (or `undated/`) still over the cap shows `page=1/`, `page=2/`, ...;
- a ranked folder (or one with `limit=N/`) with more shows `page=1/`, `page=2/`, ... of max_entries
  entries each, ranks counting on across pages (page=2/ starts at max_entries + 1).

The manifests `.results.tsv` and `.results.json` of a folder always list every match of that folder. For a
folder that shows its entries they are built from them (exact sizes); for a split or paged folder they are
generated while they are read, from a streamed query, and show size 0 (like /proc files; read them to the
end). Their `name` column is the entry's path inside the folder (`2019/05/0012_IMG_1.jpg`).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

from ..errors import NotFound
from ..records import Hit
from ..search.filters import parse_filter
from ..search.query import Query
from . import names as N
from .cache import SingleFlightCache
from .nodes import Node, Period

log = logging.getLogger(__name__)

MANIFEST_TSV = b".results.tsv"
MANIFEST_JSON = b".results.json"
MANIFESTS = (MANIFEST_TSV, MANIFEST_JSON)
PROGRESS_NAME = b".searchfs-indexing"
UNDATED = b"undated"
MAX_LIMIT = 100_000  # the largest limit=N/; a ranked search holds its hits in memory
CHUNK = 64 * 1024  # bytes per piece of a streamed manifest
_DATE_WIDTH = {0: 4, 1: 7, 2: 10}  # period depth -> characters of YYYY-MM-DD its subfolders differ in


def tsv_path(path: bytes) -> bytes:
    return path.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n").replace(b"\r", b"\\r")


def entry_names(hits: list[Hit], width: int, base: int = 0) -> list[bytes]:
    return N.result_names([(h.rank - base, os.path.basename(h.abspath)) for h in hits], width)


def manifest_rows(kind: bytes, rows: Iterable[tuple[int, Hit, bytes]]) -> Iterator[bytes]:
    """The manifest `kind` for (rank, hit, name) rows, in pieces of about CHUNK bytes."""
    tsv = kind == MANIFEST_TSV
    out = [b"rank\tscore\tpath\n" if tsv else b"["]
    size, first = 0, True
    for rank, hit, name in rows:
        if tsv:
            score = b"" if hit.score is None else f"{hit.score:.4f}".encode()
            line = b"%d\t%s\t%s\n" % (rank, score, tsv_path(hit.abspath))
        else:
            item = hit.to_json()
            item["rank"], item["name"] = rank, N.fsdecode(name)
            line = (b"\n" if first else b",\n") + json.dumps(item).encode("ascii")
        first = False
        out.append(line)
        size += len(line)
        if size >= CHUNK:
            yield b"".join(out)
            out, size = [], 0
    if not tsv:
        out.append(b"]\n" if first else b"\n]\n")
    yield b"".join(out)


@dataclass
class Shown:
    """What one result folder shows: its entries, or (over max_entries) its by-date or page subfolders."""

    hits: list[Hit]  # the entries, in rank order
    names: list[bytes]
    folders: list[tuple[bytes, int]] = field(default_factory=list)  # (subfolder, its matches)
    base: int = 0  # hit.rank - base = the rank shown here (undated/ and pages of metadata folders)
    _by_name: dict[bytes, Hit] | None = None
    _manifests: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """The entries are all the folder's matches (its manifests are built from them)."""
        return not self.folders

    def hit(self, name: bytes) -> Hit | None:
        if self._by_name is None:
            self._by_name = dict(zip(self.names, self.hits))
        return self._by_name.get(name)

    def manifest(self, kind: bytes) -> bytes:
        data = self._manifests.get(kind)
        if data is None:
            rows = ((h.rank - self.base, h, n) for h, n in zip(self.hits, self.names))
            data = self._manifests[kind] = b"".join(manifest_rows(kind, rows))
        return data

    @property
    def weight(self) -> int:
        return 512 + sum(3 * len(h.abspath) + 2 * len(n) + 300 for h, n in zip(self.hits, self.names))


def _hits_weight(hits: list[Hit]) -> int:
    return 256 + sum(2 * len(h.abspath) + 200 for h in hits)


class ResultFolders:
    """Listings and manifests of result folders over one backend, cached by (folder, generation)."""

    def __init__(self, backend, cache: SingleFlightCache, max_entries: int, concurrency: int = 4) -> None:
        self.backend = backend
        self.cache = cache
        self.cap = max_entries
        self._hints: SingleFlightCache[tuple, int] = SingleFlightCache(4096)  # matches known from a parent
        self._busy = threading.BoundedSemaphore(concurrency)  # searches at once: a crawler's threads wait
        self.searches = 0  # backend searches and counts run (for tests and stats)

    # ---------------------------------------------------------------------------------------- queries

    def query(self, node: Node) -> Query:
        """The query a result folder runs: defaults applied, its period as a date filter."""
        settings = self.backend.settings
        query = node.query.with_defaults(settings.search_limit, settings.search_min_score)
        period = node.period
        if period is not None and not period.undated:
            flt = parse_filter(f"date={period.word()}")
            if flt not in query.filters:
                query = replace(query, filters=tuple(sorted(query.filters + (flt,), key=str)))
        return query

    def splits(self, node: Node) -> bool:
        """Whether a folder too big to show splits by date (metadata-only, no limit) rather than by pages."""
        return not node.query.ranked and node.query.limit is None and not node.page

    def hint(self, query: Query, matches: int, generation: int) -> None:
        """Remember how many photos a child folder holds (known from its parent's listing)."""
        self._hints.put((query, generation), matches)

    def _run(self, fn: Callable, *args):
        """Every search or count the mount runs, one debug line each (what a file manager cost us)."""
        with self._busy:
            self.searches += 1
            started = time.perf_counter()
            result = fn(*args)
        size = len(result) if isinstance(result, list) else "?"
        log.debug("search %r: %s hits in %.3fs (%s)", args[0], size, time.perf_counter() - started, fn.__name__)
        return result

    def search(self, query: Query, generation: int) -> list[Hit]:
        def run() -> list[Hit]:
            try:
                return self._run(self.backend.search, query)
            except NotFound as exc:
                if query.similar_to is None:
                    raise
                # a photo of the mirror not embedded yet: its folder exists (stat said so) and is empty
                # until its vector arrives (a new generation), rather than vanishing when listed
                log.info("similar/ of %s: %s; listing it empty", os.fsdecode(query.similar_to[1]), exc)
                return []

        return self.cache.get(("search", query, generation), run)

    def buckets(self, query: Query, width: int, generation: int) -> list[tuple[str | None, int]]:
        def run() -> list[tuple[str | None, int]]:
            return self._run(self.backend.date_counts, replace(query, limit=None, offset=0), width)

        return self.cache.get(("buckets", query, width, generation), run)

    def count(self, query: Query, generation: int) -> int:
        return sum(n for _, n in self.buckets(query, 4, generation))

    # ---------------------------------------------------------------------------------------- listing

    def shown(self, node: Node, generation: int) -> Shown:
        key = ("shown", node.query, node.period, node.page, generation)
        return self.cache.get(key, lambda: self._compute(node, generation))

    def _compute(self, node: Node, generation: int) -> Shown:
        query = self.query(node)
        if node.page:
            return self._page(node, query, generation)
        if not self.splits(node):
            return self._ranked(query, generation)
        if node.period is not None and node.period.undated:
            return self._undated_folder(node, query, generation)
        return self._by_date(node, query, generation)

    def _ranked(self, query: Query, generation: int) -> Shown:
        """A ranked (or limited) folder: its hits, or pages of them."""
        hits = self.search(query, generation)
        if len(hits) > self.cap:
            return self._pages(len(hits))
        return self._plain(hits, N.rank_width(max(query.limit or 1, len(hits))))

    def _undated_folder(self, node: Node, query: Query, generation: int) -> Shown:
        """undated/: the last matches of its parent's order (no filter says "no date"), or pages of them."""
        dated, count = self._undated(node, generation)
        if count > self.cap:
            return self._pages(count)
        hits = self.search(replace(query, offset=dated, limit=count), generation) if count else []
        return self._plain(hits, N.rank_width(count), base=dated)

    def _by_date(self, node: Node, query: Query, generation: int) -> Shown:
        """A metadata folder: its matches, or (over max_entries) its years, months, days or pages."""
        known = self._hints.peek((query, generation))
        if known is not None and known <= self.cap:  # small, says the parent (a lower bound): one query
            hits = self.search(replace(query, limit=self.cap + 1), generation)
            if len(hits) <= self.cap:
                return self._plain(hits, N.rank_width(len(hits)))
        depth = 0 if node.period is None else node.period.depth
        buckets = self.buckets(query, _DATE_WIDTH.get(depth, 4), generation)
        total = sum(n for _, n in buckets)
        if total <= self.cap:
            hits = self.search(replace(query, limit=self.cap), generation) if total else []
            return self._plain(hits, N.rank_width(len(hits)))
        if depth >= 3:
            return self._pages(total)
        return self._split(node, query, depth, generation)

    def _plain(self, hits: list[Hit], width: int, base: int = 0) -> Shown:
        return Shown(hits=hits, names=entry_names(hits, width, base), base=base)

    def _pages(self, total: int) -> Shown:
        pages = math.ceil(total / self.cap)
        sizes = [min(self.cap, total - i * self.cap) for i in range(pages)]
        return Shown(hits=[], names=[], folders=[(b"page=%d" % (i + 1), n) for i, n in enumerate(sizes)])

    def _split(self, node: Node, query: Query, depth: int, generation: int) -> Shown:
        folders = []
        for period, count in self.buckets(query, _DATE_WIDTH[depth], generation):
            if period is None:
                name = UNDATED
            else:
                name = period[-4:].encode() if depth == 0 else period[-2:].encode()
            folders.append((name, count))
            child = self.child_period(node, name)
            if child is not None:
                self.hint(self.query(child), count, generation)
        return Shown(hits=[], names=[], folders=folders)

    def _undated(self, node: Node, generation: int) -> tuple[int, int]:
        """(dated matches, undated matches) of an undated/ folder's parent: its window in the parent's order."""
        parent = self.query(replace(node, period=None))
        counts = self.buckets(parent, 4, generation)
        undated = sum(n for period, n in counts if period is None)
        return sum(n for _, n in counts) - undated, undated

    def _page(self, node: Node, query: Query, generation: int) -> Shown:
        start = (node.page - 1) * self.cap
        if not self.splits(replace(node, page=0)):
            hits = self.search(query, generation)
            total = len(hits)
            return self._plain(hits[start : start + self.cap], N.rank_width(max(query.limit or 1, total)))
        base = 0
        if node.period is not None and node.period.undated:
            base, total = self._undated(node, generation)
        else:
            total = self.count(query, generation)
        if start >= total:
            return self._plain([], N.rank_width(total), base)
        window = replace(query, offset=base + start, limit=min(self.cap, total - start))
        return self._plain(self.search(window, generation), N.rank_width(total), base)

    # ------------------------------------------------------------------------------------ subfolders

    def child_period(self, node: Node, seg: bytes) -> Node | None:
        """The by-date subfolder `seg` of a metadata folder, or None when `seg` is not one."""
        if not self.splits(node):
            return None
        period = node.period or Period()
        if seg == UNDATED:
            return replace(node, period=Period(undated=True)) if node.period is None else None
        if not seg.isdigit() or period.undated or period.depth >= 3:
            return None
        value = int(seg)
        try:
            if period.depth == 0 and len(seg) == 4:
                parse_filter(f"date={value:04d}")
                return replace(node, period=Period(value))
            if period.depth == 1 and len(seg) <= 2:
                parse_filter(f"date={period.year:04d}-{value:02d}")
                return replace(node, period=Period(period.year, value))
            if period.depth == 2 and len(seg) <= 2 and value > 0:
                parse_filter(f"date={period.year:04d}-{period.month:02d}-{value:02d}")
                return replace(node, period=Period(period.year, period.month, value))
        except Exception:  # noqa: BLE001 - QueryError: not a real month or day
            return None
        return None

    # ------------------------------------------------------------------------------------- manifests

    def manifest_source(self, node: Node, kind: bytes, generation: int) -> Callable[[], Iterator[bytes]]:
        """For a split or paged folder: a function that starts generating the manifest `kind`."""
        query = self.query(node)
        if not self.splits(node):
            hits = self.search(query, generation)
            leaves = list(self._leaves(node, len(hits), generation))
            return lambda: manifest_rows(kind, _rows(iter(hits), leaves, 0))
        base = 0
        if node.period is not None and node.period.undated:
            base, total = self._undated(node, generation)
            query = replace(query, offset=base, limit=total)
        else:
            total = self.count(query, generation)
        leaves = list(self._leaves(node, total, generation))
        return lambda: manifest_rows(kind, _rows(self.backend.iter_search(query), leaves, base))

    def _leaves(self, node: Node, count: int, generation: int) -> Iterator[tuple[bytes, int, int, int]]:
        """(prefix, entries, rank width, first rank - 1) of each folder that shows entries, in order."""
        query = self.query(node)
        if count <= self.cap:
            width = N.rank_width(max(query.limit or 1, count) if not self.splits(node) else count)
            yield b"", count, width, 0
            return
        depth = 0 if node.period is None else node.period.depth
        if not self.splits(node) or depth >= 3:
            width = N.rank_width(max(query.limit or 1, count) if not self.splits(node) else count)
            for i in range(math.ceil(count / self.cap)):
                yield b"page=%d/" % (i + 1), min(self.cap, count - i * self.cap), width, i * self.cap
            return
        for name, matches in self._split(node, query, depth, generation).folders:
            child = self.child_period(node, name)
            assert child is not None
            for prefix, entries, width, skip in self._leaves(child, matches, generation):
                yield name + b"/" + prefix, entries, width, skip


def _rows(hits: Iterator[Hit], leaves: list[tuple[bytes, int, int, int]], base: int):
    """(rank in the folder, hit, entry path inside the folder) for streamed hits laid out in `leaves`."""
    for prefix, entries, width, skip in leaves:
        for i, hit in enumerate(itertools.islice(hits, entries), start=1):
            name = N.fit_name(f"{skip + i:0{width}d}_", os.path.basename(hit.abspath))
            yield hit.rank - base, hit, prefix + name


class Stream:
    """A file generated while it is read, front to back. It keeps the pieces the last read touched (and the
    one before, for readers a little out of order); a read further back starts it again from the top."""

    def __init__(self, start: Callable[[], Iterator[bytes]]) -> None:
        self._start = start
        self._lock = threading.RLock()
        self._pieces: Iterator[bytes] | None = None
        self._kept: list[tuple[int, bytes]] = []  # (offset, piece)
        self._end = 0  # offset after the last piece generated
        self._done = False

    def read(self, size: int, offset: int) -> bytes:
        with self._lock:
            floor = self._kept[0][0] if self._kept else self._end
            if self._pieces is None or offset < floor:
                self._restart()
            while offset + size > self._end and not self._done:
                self._next(offset)
            out = bytearray()
            for start, piece in self._kept:
                lo, hi = max(offset, start), min(offset + size, start + len(piece))
                if lo < hi:
                    out += piece[lo - start : hi - start]
            return bytes(out)

    def _restart(self) -> None:
        self.close()
        self._pieces = self._start()
        self._kept, self._end, self._done = [], 0, False

    def _next(self, reading_from: int) -> None:
        assert self._pieces is not None
        piece = next(self._pieces, None)
        if piece is None:
            self._done = True
            self.close()
            self._pieces = iter(())
            return
        self._kept.append((self._end, piece))
        self._end += len(piece)
        # drop pieces that end before the one holding `reading_from`, keeping one of them
        while len(self._kept) > 2 and self._kept[1][0] + len(self._kept[1][1]) <= reading_from:
            self._kept.pop(0)

    def close(self) -> None:
        """Stop generating (closes the query behind it); a later read starts again."""
        with self._lock:
            pieces, self._pieces = self._pieces, None
            close = getattr(pieces, "close", None)
            if close is not None:
                close()


def weigh(value: object) -> int:
    """Roughly the bytes a cached value holds."""
    if isinstance(value, Shown):
        return value.weight
    if isinstance(value, list) and value and isinstance(value[0], Hit):
        return _hits_weight(value)
    return 256
