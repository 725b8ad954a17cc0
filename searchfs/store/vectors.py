"""The vector index: CLIP embeddings by catalog content id, searched by cosine similarity.

The index is DERIVED data. SQLite holds every vector; this module keeps a fast copy, saves it next to
the catalog with a stamp (store/vector_files.py), and refuses (returns None from `open`) anything whose
stamp does not match, so the caller rebuilds it from SQLite. Nothing here is ever the only copy.

Layout in memory
----------------
* *Segments*: the table of vectors, in immutable pieces. A saved segment is a read-only memory map of
  its file (page cache the kernel can drop, not process memory), rows in list order (one list = one
  slice, store/vector_lists.py). Rows are never changed: a replaced or removed row is marked dead in
  its segment's alive mask (a new mask is published; readers keep the one they started with).
* The *tail*: rows added since the last save, in RAM, in no order; every query scans it whole. A save
  writes the tail as a new segment and maps it, so RAM holds only what changed since the last save. A
  loaded table is never copied into RAM to take an add.
* The *lists* (only from `exact_below` vectors on): centroids that say which slices of each segment a
  query reads. Below `exact_below`, and for `allowed` sets small enough to gather, every row is scored.

Every answer is scored exactly in float32 from the table (what is read is ranked exactly; what is
missed is a list left unread). Readers take no lock: a writer prepares new rows, masks and id maps
aside, then publishes a new immutable `_State` by swapping one attribute. Writers (add, remove, save)
are serialized by a lock of their own, so a save never holds up a search.

Memory for 1M x 512: the segments' 2 GB stay page cache (resident while queries read them, counted in
RSS as file pages, dropped by the kernel under pressure), plus 8 bytes an id in RAM for the id map, the
tail (2 KB a row added since the last save) and 1 byte a row of alive mask. No second copy of the
vectors exists anywhere; saves stream rows in chunks.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import vector_files as files
from .vector_lists import Lists, nlist_for, sample_rows

log = logging.getLogger(__name__)

# Below this many vectors every query scores every row (exact 0.5 ms at 10k, 2.5 ms at 50k on 2 cores):
# lists save little there. Measured with benchmarks/bench_vectors.py and bench_scale.py.
DEFAULT_EXACT_BELOW = 50_000
# What a query reads (vector_lists.Lists.probe): at least PROBE_SHARE of the rows and PROBE_ROWS_PER_HIT
# rows for every result asked for, at most PROBE_MAX_SHARE (measured at 1M in bench_scale.py: ...).
PROBE_SHARE = 0.04
PROBE_ROWS_PER_HIT = 300
PROBE_MAX_SHARE = 0.1
# An `allowed` set of at most this many rows is gathered and scored exactly; a larger one reads the lists
# (more of them the smaller its share), scoring only its rows.
FILTER_EXACT_ROWS = 8192
COMPACT_DEAD_FRACTION = 0.2  # a save rewrites a segment with this share of dead rows
MAX_SEGMENTS = 8  # a save merges the smaller segments into one past this many
RETRAIN_GROWTH = 4  # lists are trained again (everything rewritten) once the index grows 4x past them
MIN_TAIL = 1024
NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class _Segment:
    """Rows readers see. Immutable: writers publish a new one."""

    ids: np.ndarray  # (n,) content id of each row
    vectors: np.ndarray  # (n, dim) float32, read-only (a memory map, or RAM)
    offsets: np.ndarray | None  # (nlist + 1,) where each list starts; None: rows in no order
    alive: np.ndarray | None  # (n,) bool; None: every row alive
    name: str | None = None  # its files' name once saved; None: in RAM only
    files: dict | None = None  # {file name: {size, crc32}} once saved
    lists: np.ndarray | None = None  # (n,) each row's list, for the tail (sorted by it when saved)

    @property
    def live(self) -> int:
        return len(self.ids) if self.alive is None else int(np.count_nonzero(self.alive))

    def live_rows(self) -> np.ndarray:
        return np.arange(len(self.ids)) if self.alive is None else np.flatnonzero(self.alive)

    def killed(self, rows: np.ndarray) -> _Segment:
        alive = np.ones(len(self.ids), bool) if self.alive is None else self.alive.copy()
        alive[rows] = False
        return replace(self, alive=_readonly(alive))


@dataclass(frozen=True)
class _Map:
    """Content id -> (segment, row) of its live row. Saved segments share one sorted map built at load
    and save; the tail has a small one of its own, consulted first."""

    base_ids: np.ndarray  # sorted ids of the rows of the saved segments that were alive when it was built
    base_seg: np.ndarray
    base_row: np.ndarray
    tail_ids: np.ndarray  # sorted ids in the tail
    tail_row: np.ndarray


@dataclass(frozen=True)
class _State:
    segments: tuple[_Segment, ...]
    tail: _Segment
    lists: Lists | None
    rows_per_list: np.ndarray | None  # rows of each list over the segments (what a probe reads)
    where: _Map
    count: int  # live rows

    def find(self, content_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(present ids, sorted and unique; their segments, where len(segments) is the tail; their rows)."""
        wanted = np.unique(np.asarray(content_ids, dtype=np.int64).ravel())
        seg = np.full(len(wanted), -1, np.int64)
        row = np.zeros(len(wanted), np.int64)
        _lookup(self.where.tail_ids, self.where.tail_row, wanted, seg, row, len(self.segments), self.tail)
        for s, segment in enumerate(self.segments):
            mine = self.where.base_seg == s
            _lookup(self.where.base_ids[mine], self.where.base_row[mine], wanted, seg, row, s, segment)
        hit = seg >= 0
        return wanted[hit], seg[hit], row[hit]

    def segment(self, s: int) -> _Segment:
        return self.tail if s == len(self.segments) else self.segments[s]

    def all_segments(self) -> tuple[_Segment, ...]:
        return (*self.segments, self.tail)


def _lookup(ids, rows, wanted, seg, row, s, segment) -> None:
    """Fill seg/row for the wanted ids found alive in one sorted (ids, rows) map, where not found yet."""
    if not len(ids):
        return
    pos = np.searchsorted(ids, wanted)
    pos[pos == len(ids)] = 0
    hit = (ids[pos] == wanted) & (seg < 0)
    if segment.alive is not None:
        hit &= segment.alive[rows[pos]]
    seg[hit], row[hit] = s, rows[pos[hit]]


def _readonly(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def _normalized(vectors: np.ndarray, dim: int) -> np.ndarray:
    """float32 C-contiguous (m, dim) rows of unit length; a copy only when the input needs one."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"expected vectors of dimension {dim}, got shape {np.shape(vectors)}")
    norms = np.sqrt(np.einsum("ij,ij->i", array, array))
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("vectors must be finite and non-zero")
    if np.any(np.abs(norms - 1) > NORM_TOLERANCE):
        array = array / norms[:, None]
    return array


def _checked_ids(ids: np.ndarray, count: int) -> np.ndarray:
    array = np.asarray(ids).ravel()
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError("content ids must be integers")
    array = array.astype(np.int64)
    if len(array) != count:
        raise ValueError(f"{len(array)} ids for {count} vectors")
    if len(np.unique(array)) != len(array):
        raise ValueError("content ids must be unique")
    return array


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest scores, best first."""
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
    else:
        part = np.arange(len(scores))
    return part[np.argsort(-scores[part], kind="stable")]


def _runs(offsets: np.ndarray, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the row slices holding the chosen lists (sorted), adjacent ones joined."""
    starts, ends = offsets[chosen], offsets[chosen + 1]
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if not len(starts):
        return starts, ends
    joined = np.flatnonzero(starts[1:] != ends[:-1]) + 1
    return starts[np.r_[0, joined]], ends[np.r_[joined - 1, len(starts) - 1]]


def _rows_of_runs(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    lengths = ends - starts
    shift = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(int(lengths.sum())) + shift


class VectorIndex:
    """Cosine search over (content id, vector) pairs. Any number of threads may search while one at a time
    adds, removes or saves."""

    def __init__(self, dim: int, model_id: str, exact_below: int = DEFAULT_EXACT_BELOW):
        if dim <= 0:
            raise ValueError("dim must be positive")
        self.dim, self.model_id, self.exact_below = int(dim), model_id, int(exact_below)
        self._write = threading.RLock()
        self._generation: int | None = None
        self._folder: Path | None = None  # where the named segments' files are
        self._stamp: dict | None = None  # what was last saved or loaded there
        # The tail's writer-side buffers: rows past _used are invisible to readers and free to fill.
        self._tail_vectors = np.empty((0, self.dim), np.float32)
        self._tail_ids = np.empty(0, np.int64)
        self._tail_lists = np.empty(0, np.int32)
        self._used = 0
        empty = _Map(*(np.empty(0, np.int64) for _ in range(5)))
        self._state = _State((), self._tail_view(None), None, None, empty, 0)

    # ---------------------------------------------------------------- construction

    @classmethod
    def build(
        cls, ids: np.ndarray, vectors: np.ndarray, model_id: str, exact_below: int = DEFAULT_EXACT_BELOW
    ) -> VectorIndex:
        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise ValueError("vectors must be a 2-d array")
        index = cls(vectors.shape[1], model_id, exact_below)
        index.add(ids, vectors)
        return index

    # ---------------------------------------------------------------- reading

    def __len__(self) -> int:
        return self._state.count

    def __contains__(self, content_id: object) -> bool:
        if isinstance(content_id, bool) or not isinstance(content_id, (int, np.integer)):
            return False
        if not -(2**63) <= int(content_id) < 2**63:
            return False
        return len(self._state.find(np.array([content_id], dtype=np.int64))[0]) == 1

    def ids(self) -> np.ndarray:
        """Sorted live content ids (a read-only array)."""
        state = self._state
        return _readonly(np.sort(np.concatenate([s.ids[s.live_rows()] for s in state.all_segments()])))

    def vector(self, content_id: int) -> np.ndarray | None:
        state = self._state
        found, seg, row = state.find(np.array([content_id], dtype=np.int64))
        return np.array(state.segment(int(seg[0])).vectors[row[0]]) if len(found) else None

    def search(
        self,
        query: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        min_score: float | None = None,
        exclude: np.ndarray | None = None,
    ) -> list[tuple[int, float]]:
        """Up to k (content id, cosine similarity), best first."""
        q = _normalized(query, self.dim)
        if len(q) != 1:
            raise ValueError("search takes one query vector")
        state = self._state  # one consistent snapshot for the whole search
        if k <= 0 or not state.count:
            return []
        skip = state.find(exclude)[1:] if exclude is not None else None
        if allowed is not None:
            hits = self._search_allowed(state, q[0], k, allowed, skip)
        elif self._reads_everything(state, k):
            hits = _merge([_score_all(s, q[0], k, _skipped(skip, i)) for i, s in enumerate(state.all_segments())], k)
        else:
            hits = self._search_lists(state, q[0], k, skip)
        return [(int(i), float(v)) for i, v in hits if min_score is None or v >= min_score]

    def _reads_everything(self, state: _State, k: int) -> bool:
        return state.lists is None or state.count < self.exact_below or self._min_rows(state, k) >= state.count // 2

    def _min_rows(self, state: _State, k: int, share: float = 1.0) -> int:
        return int(max(PROBE_SHARE * state.count, PROBE_ROWS_PER_HIT * k) / share)

    def _search_lists(self, state: _State, q: np.ndarray, k: int, skip, allowed=None, share: float = 1.0) -> list:
        assert state.lists is not None and state.rows_per_list is not None
        most = max(int(PROBE_MAX_SHARE * state.count / share), self._min_rows(state, k, share))
        chosen = state.lists.probe(q, state.rows_per_list, self._min_rows(state, k, share), most)
        parts = []
        for i, segment in enumerate(state.all_segments()):
            mask = None if allowed is None else allowed[i]
            if segment.offsets is None:  # the tail: all of it
                parts.append(_score_all(segment, q, k, _skipped(skip, i), mask))
            else:
                parts.append(_score_runs(segment, q, k, _runs(segment.offsets, chosen), _skipped(skip, i), mask))
        return _merge(parts, k)

    def _search_allowed(self, state: _State, q: np.ndarray, k: int, allowed: np.ndarray, skip) -> list:
        found, seg, row = state.find(allowed)
        if skip is not None:
            keep = np.ones(len(found), bool)
            for s in np.unique(skip[0]):
                keep[seg == s] &= ~np.isin(row[seg == s], skip[1][skip[0] == s])
            seg, row = seg[keep], row[keep]
        if not len(row):
            return []
        groups = [row[seg == s] for s in range(len(state.segments) + 1)]
        if len(row) <= FILTER_EXACT_ROWS or self._reads_everything(state, k):
            return _merge([_score_rows(s, q, k, rows) for s, rows in zip(state.all_segments(), groups)], k)
        masks = []
        for s, rows in zip(state.all_segments(), groups):
            mask = np.zeros(len(s.ids), bool)
            mask[rows] = True
            masks.append(mask)
        return self._search_lists(state, q, k, None, masks, share=len(row) / state.count)

    # ---------------------------------------------------------------- writing

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert new ids, replace the vectors of known ones (their old rows die)."""
        vectors = _normalized(vectors, self.dim)
        ids = _checked_ids(ids, len(vectors))
        if not len(ids):
            return
        with self._write:
            state = self._kill(self._state, ids)
            lists = state.lists.assign(vectors) if state.lists is not None else np.zeros(len(ids), np.int32)
            self._append(ids, vectors, lists)
            self._state = self._with_tail(state, len(ids))
            if state.lists is None and self._state.count >= self.exact_below:
                self._organize()  # readers scan every row meanwhile (the state they hold)

    def remove(self, ids: np.ndarray) -> None:
        """Forget these ids; unknown ones are ignored."""
        with self._write:
            state = self._kill(self._state, np.asarray(ids, dtype=np.int64))
            self._state = state

    def _kill(self, state: _State, ids: np.ndarray) -> _State:
        """`state` with the live rows of these ids dead."""
        found, seg, row = state.find(ids)
        if not len(found):
            return state
        segments = list(state.all_segments())
        for s in np.unique(seg):
            segments[s] = segments[s].killed(row[seg == s])
        return replace(state, segments=tuple(segments[:-1]), tail=segments[-1], count=state.count - len(found))

    def _append(self, ids: np.ndarray, vectors: np.ndarray, lists: np.ndarray) -> None:
        """Write rows past what any published tail shows (invisible to readers until published)."""
        end = self._used + len(ids)
        if end > len(self._tail_ids):  # grow: copies the tail only, what changed since the last save
            capacity, used = max(2 * end, MIN_TAIL), self._used
            vectors_, ids_, lists_ = (
                np.empty((capacity, self.dim), np.float32),
                np.empty(capacity, np.int64),
                np.empty(capacity, np.int32),
            )
            vectors_[:used], ids_[:used], lists_[:used] = (
                self._tail_vectors[:used],
                self._tail_ids[:used],
                self._tail_lists[:used],
            )
            self._tail_vectors, self._tail_ids, self._tail_lists = vectors_, ids_, lists_
        self._tail_vectors[self._used : end] = vectors
        self._tail_ids[self._used : end] = ids
        self._tail_lists[self._used : end] = lists
        self._used = end

    def _tail_view(self, alive: np.ndarray | None) -> _Segment:
        used = self._used
        return _Segment(
            _readonly(self._tail_ids[:used]),
            _readonly(self._tail_vectors[:used]),
            None,
            alive,
            lists=_readonly(self._tail_lists[:used]),
        )

    def _with_tail(self, state: _State, added: int) -> _State:
        """Publish the tail with its `added` new rows (alive), and a tail map that finds them."""
        old = state.tail
        alive = None
        if old.alive is not None:
            alive = np.ones(self._used, bool)
            alive[: len(old.alive)] = old.alive
        tail = self._tail_view(None if alive is None else _readonly(alive))
        live = tail.live_rows()  # an id has one live row; its dead ones must not shadow it in the map
        order = np.argsort(tail.ids[live], kind="stable")
        where = replace(state.where, tail_ids=_readonly(tail.ids[live][order]), tail_row=_readonly(live[order]))
        return replace(state, tail=tail, where=where, count=state.count + added)

    def _organize(self) -> None:
        """Train lists on the rows held, and put every row in list order: one RAM segment, written whole by
        the next save. Runs when the index first reaches exact_below (or grows RETRAIN_GROWTH times past
        its lists), with the writer lock held; searches keep the state they read and scan every row."""
        state = self._state
        parts = [(s.ids[rows], s.vectors, rows) for s in state.all_segments() for rows in [s.live_rows()]]
        count = state.count
        nlist = nlist_for(count)
        picks = sample_rows(count, nlist)
        sample = _gather_rows(parts, picks, self.dim)
        lists = Lists.train(sample, nlist, trained_on=count)
        ids, vectors, offsets = _sorted_by_list(parts, lists, self.dim)
        segment = _Segment(_readonly(ids), _readonly(vectors), offsets, None)
        self._used = 0
        self._tail_vectors, self._tail_ids, self._tail_lists = (
            np.empty((0, self.dim), np.float32), np.empty(0, np.int64), np.empty(0, np.int32))  # fmt: skip
        self._state = _published((segment,), self._tail_view(None), lists)
        log.info("vector index: %d vectors in %d lists", count, nlist)

    # ---------------------------------------------------------------- files

    def save(self, folder: Path, generation: int) -> dict:
        """Write what changed since the last save to `folder` (new segment files, the dead rows, the
        stamp last), then read the new segments through memory maps. Returns what was written."""
        from .vector_save import save_index  # the save's steps, in a module of their own

        with self._write:
            return save_index(self, Path(folder), int(generation))

    @classmethod
    def open(
        cls, folder: Path, model_id: str, exact_below: int = DEFAULT_EXACT_BELOW
    ) -> tuple[VectorIndex, int] | None:
        """The saved index and the vectors generation it was saved at, or None when it is missing, of
        another model, or its files are not what the stamp says (sizes: the checksums are for `verify`).
        A saved index older than the catalog is the caller's to catch up (store/vector_store.py)."""
        from .vector_save import open_index

        try:
            return open_index(cls, Path(folder), model_id, exact_below)
        except Exception as exc:  # noqa: BLE001 - any failure means "rebuild", never a crash
            log.info("vector index in %s not usable, will rebuild: %s", folder, exc)
            return None

    def verify(self) -> list[str]:
        """What is wrong with the files this index was loaded from or saved to (crc32 of every byte, ~1 GB/s;
        the caller runs it in the background after a load): empty when they are sound."""
        if self._folder is None or self._stamp is None:
            return []
        return files.checksum_problems(self._folder, self._stamp)

    @staticmethod
    def read_stamp(folder: Path, model_id: str) -> tuple[dict, list[str]]:
        """The saved stamp and why it cannot be used (empty: it can). Raises OSError or ValueError when
        there is no readable stamp. Cheap: the data files are not read."""
        stamp = files.read_stamp(Path(folder))
        expected = {"format": files.FORMAT_VERSION, "model_id": model_id}
        problems = [f"stamp {k} is {stamp.get(k)!r}, expected {v!r}" for k, v in expected.items() if stamp.get(k) != v]
        if not problems:
            rows = sum(int(s["rows"]) for s in stamp.get("segments", []))
            if rows - int(stamp.get("dead_rows", 0)) != stamp.get("count"):
                problems.append(f"stamp count is {stamp.get('count')!r}, its segments hold {rows} rows")
        return stamp, problems

    # ---------------------------------------------------------------- status

    @property
    def stats(self) -> dict:
        state = self._state
        mapped = all(isinstance(s.vectors.base, np.memmap) or isinstance(s.vectors, np.memmap) for s in state.segments)
        return {
            "count": state.count,
            "dim": self.dim,
            "kind": "exact" if state.lists is None or state.count < self.exact_below else "ivf",
            "model_id": self.model_id,
            "exact_below": self.exact_below,
            "lists": None if state.lists is None else state.lists.count,
            "lists_trained_on": None if state.lists is None else state.lists.trained_on,
            "probe": {"share": PROBE_SHARE, "rows_per_hit": PROBE_ROWS_PER_HIT, "max_share": PROBE_MAX_SHARE},
            "segments": len(state.segments),
            "tail_rows": len(state.tail.ids),
            "dead_rows": sum(len(s.ids) for s in state.all_segments()) - state.count,
            "generation": self._generation,
            "table_bytes": int(sum(s.vectors.nbytes + s.ids.nbytes for s in state.all_segments())),
            "tail_bytes": int(self._tail_vectors.nbytes + self._tail_ids.nbytes),
            "table_mapped": bool(state.segments) and mapped,
        }


def _skipped(skip, i: int) -> np.ndarray | None:
    if skip is None:
        return None
    rows = skip[1][skip[0] == i]
    return rows if len(rows) else None


def _finish(segment: _Segment, scores: np.ndarray, rows: np.ndarray, k: int, skip, mask) -> tuple:
    if segment.alive is not None:
        scores[~segment.alive[rows]] = -np.inf
    if mask is not None:
        scores[~mask[rows]] = -np.inf
    if skip is not None:
        scores[np.isin(rows, skip)] = -np.inf
    best = _top(scores, min(k, len(scores)))
    best = best[np.isfinite(scores[best])]
    return segment.ids[rows[best]], scores[best]


def _score_all(segment: _Segment, q: np.ndarray, k: int, skip=None, mask=None) -> tuple:
    if not len(segment.ids):
        return np.empty(0, np.int64), np.empty(0, np.float32)
    return _finish(segment, segment.vectors @ q, np.arange(len(segment.ids)), k, skip, mask)


def _score_runs(segment: _Segment, q: np.ndarray, k: int, runs, skip=None, mask=None) -> tuple:
    starts, ends = runs
    if not len(starts):
        return np.empty(0, np.int64), np.empty(0, np.float32)
    scores = np.concatenate([segment.vectors[a:b] @ q for a, b in zip(starts.tolist(), ends.tolist())])
    return _finish(segment, scores, _rows_of_runs(starts, ends), k, skip, mask)


def _score_rows(segment: _Segment, q: np.ndarray, k: int, rows: np.ndarray) -> tuple:
    if not len(rows):
        return np.empty(0, np.int64), np.empty(0, np.float32)
    rows = np.sort(rows)
    return _finish(segment, segment.vectors[rows] @ q, rows, k, None, None)


def _merge(parts: list[tuple], k: int) -> list[tuple[int, float]]:
    """The best k of the segments' best k, best first (ties broken by content id for a stable order)."""
    ids = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
    scores = np.concatenate([p[1] for p in parts]).astype(np.float64) if parts else np.empty(0)
    order = np.lexsort((ids, -scores))[:k]
    return list(zip(ids[order].tolist(), scores[order].tolist()))


def _published(segments: tuple[_Segment, ...], tail: _Segment, lists: Lists | None) -> _State:
    """A state with a fresh id map over its segments' live rows."""
    ids, seg, rows = [], [], []
    for s, segment in enumerate(segments):
        live = segment.live_rows()
        ids.append(segment.ids[live])
        seg.append(np.full(len(live), s, np.int64))
        rows.append(live)
    all_ids = np.concatenate(ids) if ids else np.empty(0, np.int64)
    order = np.argsort(all_ids, kind="stable")
    cat = (lambda parts: np.concatenate(parts)[order]) if ids else (lambda parts: np.empty(0, np.int64))
    tail_order = np.argsort(tail.ids[tail.live_rows()], kind="stable")
    where = _Map(
        _readonly(all_ids[order]), _readonly(cat(seg)), _readonly(cat(rows)),
        _readonly(tail.ids[tail.live_rows()][tail_order]), _readonly(tail.live_rows()[tail_order]),
    )  # fmt: skip
    per_list = None
    if lists is not None:
        per_list = np.zeros(lists.count, np.int64)
        for segment in segments:
            if segment.offsets is not None:
                per_list += np.diff(segment.offsets)
    count = len(all_ids) + tail.live
    return _State(segments, tail, lists, per_list, where, count)


def _gather_rows(parts: list[tuple], picks: np.ndarray, dim: int) -> np.ndarray:
    """Rows `picks` (positions in the concatenation of the parts' live rows) as one array."""
    out = np.empty((len(picks), dim), np.float32)
    start = done = 0
    for _, vectors, rows in parts:
        mine = picks[(picks >= start) & (picks < start + len(rows))] - start
        out[done : done + len(mine)] = vectors[rows[mine]]
        done += len(mine)
        start += len(rows)
    return out


def _sorted_by_list(parts: list[tuple], lists: Lists, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every live row of the parts, in list order: (ids, vectors in RAM, offsets)."""
    assigned = np.concatenate([lists.assign(vectors[rows]) for _, vectors, rows in parts])
    ids = np.concatenate([part_ids for part_ids, _, _ in parts])
    order = np.argsort(assigned, kind="stable")
    vectors = np.empty((len(ids), dim), np.float32)
    for start in range(0, len(order), files.CHUNK_ROWS):
        chunk = order[start : start + files.CHUNK_ROWS]
        vectors[start : start + len(chunk)] = _gather_rows(parts, np.sort(chunk), dim)[np.argsort(np.argsort(chunk))]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(assigned, minlength=lists.count))]).astype(np.int64)
    return ids[order], vectors, offsets
