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
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import vector_files as files
from .vector_scoring import (
    live_parts,
    merge,
    runs,
    score_all,
    score_rows,
    score_runs,
    skipped,
    sorted_by_list,
    train_lists,
)
from .vector_state import IdMap, Segment, State, published, readonly

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
        empty = IdMap(*(np.empty(0, np.int64) for _ in range(5)))
        self._state = State((), self._tail_view(None), None, None, empty, 0)

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
        return readonly(np.sort(np.concatenate([s.ids[s.live_rows()] for s in state.all_segments()])))

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
            hits = merge([score_all(s, q[0], k, skipped(skip, i)) for i, s in enumerate(state.all_segments())], k)
        else:
            hits = self._search_lists(state, q[0], k, skip)
        return [(int(i), float(v)) for i, v in hits if min_score is None or v >= min_score]

    def _reads_everything(self, state: State, k: int) -> bool:
        return state.lists is None or state.count < self.exact_below or self._min_rows(state, k) >= state.count // 2

    def _min_rows(self, state: State, k: int, share: float = 1.0) -> int:
        return int(max(PROBE_SHARE * state.count, PROBE_ROWS_PER_HIT * k) / share)

    def _search_lists(self, state: State, q: np.ndarray, k: int, skip, allowed=None, share: float = 1.0) -> list:
        assert state.lists is not None and state.rows_per_list is not None
        most = max(int(PROBE_MAX_SHARE * state.count / share), self._min_rows(state, k, share))
        chosen = state.lists.probe(q, state.rows_per_list, self._min_rows(state, k, share), most)
        parts = []
        for i, segment in enumerate(state.all_segments()):
            mask = None if allowed is None else allowed[i]
            if segment.offsets is None:  # the tail: all of it
                parts.append(score_all(segment, q, k, skipped(skip, i), mask))
            else:
                parts.append(score_runs(segment, q, k, runs(segment.offsets, chosen), skipped(skip, i), mask))
        return merge(parts, k)

    def _search_allowed(self, state: State, q: np.ndarray, k: int, allowed: np.ndarray, skip) -> list:
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
            return merge([score_rows(s, q, k, rows) for s, rows in zip(state.all_segments(), groups)], k)
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

    def _kill(self, state: State, ids: np.ndarray) -> State:
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

    def _tail_view(self, alive: np.ndarray | None) -> Segment:
        used = self._used
        return Segment(
            readonly(self._tail_ids[:used]),
            readonly(self._tail_vectors[:used]),
            None,
            alive,
            lists=readonly(self._tail_lists[:used]),
        )

    def _with_tail(self, state: State, added: int) -> State:
        """Publish the tail with its `added` new rows (alive), and a tail map that finds them."""
        old = state.tail
        alive = None
        if old.alive is not None:
            alive = np.ones(self._used, bool)
            alive[: len(old.alive)] = old.alive
        tail = self._tail_view(None if alive is None else readonly(alive))
        live = tail.live_rows()  # an id has one live row; its dead ones must not shadow it in the map
        order = np.argsort(tail.ids[live], kind="stable")
        where = replace(state.where, tail_ids=readonly(tail.ids[live][order]), tail_row=readonly(live[order]))
        return replace(state, tail=tail, where=where, count=state.count + added)

    def _organize(self) -> None:
        """Train lists on the rows held, and put every row in list order: one RAM segment, written whole by
        the next save. Runs when the index first reaches exact_below (or grows RETRAIN_GROWTH times past
        its lists), with the writer lock held; searches keep the state they read and scan every row."""
        state = self._state
        parts = live_parts(state.all_segments())
        lists = train_lists(parts, state.count, self.dim)
        ids, vectors, offsets = sorted_by_list(parts, lists, self.dim)
        segment = Segment(readonly(ids), readonly(vectors), offsets, None)
        self._used = 0
        self._tail_vectors, self._tail_ids, self._tail_lists = (
            np.empty((0, self.dim), np.float32), np.empty(0, np.int64), np.empty(0, np.int32))  # fmt: skip
        self._state = published((segment,), self._tail_view(None), lists)
        log.info("vector index: %d vectors in %d lists", state.count, lists.count)

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
