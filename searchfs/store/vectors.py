"""The vector index: CLIP embeddings by catalog content id, searched by cosine similarity.

The index is DERIVED data. SQLite holds every vector; this module keeps a fast copy, saves it next to
the catalog with a stamp, and refuses (returns None from `load`) anything whose stamp does not match,
so the caller rebuilds it from SQLite. Nothing here is ever the only copy of anything.

Layout in memory
----------------
* The *table*: every vector as a row of one float32 numpy buffer, with the content id of each row.
  Rows are append-only: an add writes new rows past the end readers can see, then publishes a new
  immutable `_Table` (small id/row arrays) by swapping one attribute. A replaced or removed row is only
  marked dead; the table is compacted into a fresh buffer when it must grow or when too many rows are
  dead. Readers therefore never see a row change under them and need no lock for the numpy side.
* The *graph* (hnswlib, space "ip"): only when the index holds `exact_below` vectors or more. hnswlib
  keeps its own copy of the vectors. It is changed in place (add, mark_deleted, resize), which hnswlib
  does not allow during a query, so graph queries take the read side and graph changes the write side
  of a readers-writer lock. It is rebuilt from the table when more than REBUILD_DELETED_FRACTION of
  its nodes are deleted; during that rebuild (and while it is first built) readers scan exactly.

Memory for 1M x 512 (2 GB of float32): the table (2 GB) plus the graph (2 GB of vectors + ~0.13 GB of
links at M=16). We keep the table next to the graph because hnswlib's `get_items` costs ~80 us a row,
and the table is what serves `vector()`, exact scans over small `allowed` sets, rebuilds and saves.
After `load` the table is a read-only memory map of vectors.npy, so it is page cache the kernel can
drop rather than process memory; the first add after a load copies it into RAM (with 50% headroom,
untouched pages cost nothing). No step holds three full copies for long: saves stream the table in
chunks, a graph rebuild unpublishes the old graph before building the new one, and only a table
growth briefly holds the old and the new buffer next to the graph (rare: capacity grows by 1.5x).
Loading verifies a crc32 of every file first (~0.8 GB/s: ~5 s for 1M x 512 with its graph).

Files (in `folder`, 0700; files 0600): ids.npy (sorted int64), vectors.npy (float32, rows aligned with
ids.npy), hnsw.bin (graph, kind "hnsw" only) and stamp.json, written last: {format, model_id, dim,
count, generation, kind, space, M, ef_construction, files: {name: {size, crc32}}}. Each file is written to a
temp file in the same folder, fsynced, renamed, then the folder is fsynced. A crash mid-save leaves the
old complete set or new data files with the old stamp, whose checksums then fail => rebuild.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np

from ..config import ensure_private_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
IDS_FILE = "ids.npy"
VECTORS_FILE = "vectors.npy"
HNSW_FILE = "hnsw.bin"
STAMP_FILE = "stamp.json"
TEMP_MARK = ".tmp-"

# Measured with benchmarks/bench_vectors.py (2 shared cores, dim 512). An exact query costs ~0.05-0.08
# us per vector whatever k (10k: 0.5 ms, 50k: 2.5 ms, 100k: 6.7 ms, 300k: 23 ms; 2-3x that when other
# jobs load the cores), a graph query 0.3-2.4 ms at any of those sizes. The graph wins per query from
# ~10k vectors at k=10 and ~25k at k=200, but until ~50k it saves at most ~2 ms a query while costing
# a build (~0.2 ms per vector on 2 cores: 9 s at 50k, 130 s at 300k), twice the memory and approximate
# answers. Past 50k the exact scan grows linearly (~75 ms at 1M) and the graph does not. So: 50k.
DEFAULT_EXACT_BELOW = 50_000
# Graph shape. M=16 already gives recall >= 0.997 on image- and text-like queries at the ef below;
# M=32 built 1.5x slower (20k x 512: 6.8 s vs 4.5 s) with twice the links. ef_construction=200 is
# hnswlib's usual quality point.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
# Query breadth: ef = max(EF_FACTOR * k, EF_FLOOR). Measured at 100k and 300k: max(3k, 128) keeps
# recall >= 0.997 for image-like and text-like queries at k = 10/50/200; max(2k, 64) dropped to
# 0.981-0.991 (text-like, k=10, 300k, two runs). Costs 0.5-2.5 ms a query. (Random directions, whose top k
# are near-ties, stay far below 0.98 at any affordable ef; real queries are not like that.)
EF_FACTOR = 3
EF_FLOOR = 128
# Rebuild the graph when this share of its nodes are deleted (deleted nodes still cost search time).
REBUILD_DELETED_FRACTION = 0.2
# Compact the table when this share of its rows are dead (replaced or removed).
COMPACT_DEAD_FRACTION = 0.2
# With a graph, an `allowed` set is scanned exactly when it has at most FILTER_EXACT_ROWS ids (~5 ms to
# gather and score) or is at most FILTER_EXACT_SHARE of the index: a selective hnswlib filter walks
# much of the graph calling back into Python for every node (measured, k=50: at 300k, 1% allowed is
# 35 ms through the graph vs 8 ms exact, 5% is 12 vs 22 ms, 20% is 14 vs 141 ms; at 50k, 1% is
# 19 vs 0.3 ms and 20% is 4.4 vs 5.3 ms).
FILTER_EXACT_ROWS = 8192
FILTER_EXACT_SHARE = 0.02
TABLE_GROWTH = 1.5
MIN_CAPACITY = 1024
CHUNK_ROWS = 16_384  # rows per copy / file write / graph build step: bounds the temporary copies
GRAPH_ADD_CHUNK = 1024  # rows per write-locked add to a live graph
NORM_TOLERANCE = 1e-3


class _RWLock:
    """Many readers or one writer; a waiting writer holds back new readers so it cannot starve."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


@dataclass(frozen=True)
class _Table:
    """What readers see of the numpy side. Immutable: writers publish a new one."""

    vectors: np.ndarray  # (rows, dim) float32, read-only view of the writer's buffer; dead rows included
    row_ids: np.ndarray  # (rows,) content id of each row
    alive: np.ndarray | None  # (rows,) bool, None when every row is alive
    ids: np.ndarray  # (n,) sorted live content ids
    rows: np.ndarray  # (n,) row of each of `ids`

    def find(self, content_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(present ids, sorted and unique; their rows)."""
        wanted = np.unique(np.asarray(content_ids, dtype=np.int64).ravel())
        pos = np.searchsorted(self.ids, wanted)
        pos[pos == len(self.ids)] = 0
        hit = (self.ids[pos] == wanted) if len(self.ids) else np.zeros(len(wanted), bool)
        return wanted[hit], self.rows[pos[hit]]


@dataclass(frozen=True)
class _State:
    table: _Table
    graph: hnswlib.Index | None  # None: readers scan exactly


def _readonly(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def _ef(k: int) -> int:
    return max(EF_FACTOR * k, EF_FLOOR)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest scores, best first."""
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
    else:
        part = np.arange(len(scores))
    return part[np.argsort(-scores[part], kind="stable")]


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
    if len(array) and array.min() < 0:
        raise ValueError("content ids must not be negative")  # hnswlib labels are unsigned
    return array


class VectorIndex:
    """Cosine search over (content id, vector) pairs: exact below `exact_below` vectors, HNSW above.

    Thread safety: any number of threads may search while one thread at a time adds, removes or saves
    (writers are serialized by an internal lock anyway).
    """

    def __init__(self, dim: int, model_id: str, exact_below: int = DEFAULT_EXACT_BELOW):
        if dim <= 0:
            raise ValueError("dim must be positive")
        self.dim = int(dim)
        self.model_id = model_id
        self.exact_below = int(exact_below)
        self._write = threading.RLock()  # serializes writers (add, remove, save)
        self._graph_lock = _RWLock()  # graph queries (read) vs. in-place graph changes (write)
        self._generation: int | None = None
        self._mapped = False  # table buffer is a memory map of vectors.npy
        # Writer-side buffers: rows past _used are invisible to readers and free to fill.
        self._buffer = np.empty((0, self.dim), np.float32)
        self._row_ids = np.empty(0, np.int64)
        self._used = 0
        self._state = _State(self._publish_table(None, np.empty(0, np.int64), np.empty(0, np.int64)), None)

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

    def _kind_for(self, count: int) -> str:
        return "hnsw" if count >= self.exact_below else "exact"

    # ---------------------------------------------------------------- reading

    def __len__(self) -> int:
        return len(self._state.table.ids)

    def __contains__(self, content_id: object) -> bool:
        if isinstance(content_id, bool) or not isinstance(content_id, (int, np.integer)):
            return False
        if not -(2**63) <= int(content_id) < 2**63:
            return False
        return len(self._state.table.find(np.array([content_id], dtype=np.int64))[0]) == 1

    def ids(self) -> np.ndarray:
        """Sorted live content ids (a read-only array)."""
        return self._state.table.ids

    def vector(self, content_id: int) -> np.ndarray | None:
        table = self._state.table
        found, rows = table.find(np.array([content_id], dtype=np.int64))
        return np.array(table.vectors[rows[0]]) if len(found) else None

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
        q = q[0]
        state = self._state  # one consistent snapshot for the whole search
        table = state.table
        if k <= 0 or not len(table.ids):
            return []
        excluded, excluded_rows = table.find(exclude if exclude is not None else np.empty(0, np.int64))
        if allowed is not None:
            ids, rows = table.find(allowed)
            keep = ~np.isin(ids, excluded, assume_unique=True)
            hits = self._search_allowed(state, q, k, ids[keep], rows[keep])
        elif state.graph is None:
            hits = self._scan_all(table, q, k, excluded_rows)
        else:
            hits = self._search_graph(state, q, k, excluded)
        return [(int(i), float(s)) for i, s in hits if min_score is None or s >= min_score][:k]

    def _search_allowed(self, state: _State, q: np.ndarray, k: int, ids: np.ndarray, rows: np.ndarray) -> list:
        table = state.table
        small = len(ids) <= max(FILTER_EXACT_ROWS, FILTER_EXACT_SHARE * len(table.ids))
        if state.graph is None or small:
            return self._scan_rows(table, q, k, rows)
        allowed = set(ids.tolist())
        try:
            return self._query_graph(state.graph, q, min(_ef(k), len(ids)), allowed.__contains__)[:k]
        except RuntimeError:  # hnswlib found fewer than asked (sparse filter, deleted nodes)
            return self._scan_rows(table, q, k, rows)

    def _search_graph(self, state: _State, q: np.ndarray, k: int, excluded: np.ndarray) -> list:
        # Ask hnswlib for max(ef, k + excluded) neighbours: it searches with ef = max(its ef, asked
        # count), so the breadth is set per query without calling set_ef, which is global and would
        # race between readers. Excluded ids are then dropped from the over-fetched list.
        table = state.table
        want = max(_ef(k), k + len(excluded))
        if want >= len(table.ids) // 2:  # asking for most of the index: a scan is cheaper and exact
            return self._scan_all(table, q, k, table.find(excluded)[1])
        try:
            hits = self._query_graph(state.graph, q, want)
        except RuntimeError:
            return self._scan_all(table, q, k, table.find(excluded)[1])
        if len(excluded):
            drop = set(excluded.tolist())
            hits = [h for h in hits if h[0] not in drop]
        return hits[:k]

    def _query_graph(self, graph: hnswlib.Index, q: np.ndarray, want: int, keep: Callable | None = None) -> list:
        with self._graph_lock.read():
            labels, distances = graph.knn_query(q, k=want, num_threads=1, filter=keep)
        return list(zip(labels[0].astype(np.int64).tolist(), (1.0 - distances[0]).tolist()))

    @staticmethod
    def _scan_all(table: _Table, q: np.ndarray, k: int, excluded_rows: np.ndarray) -> list:
        scores = table.vectors @ q
        if table.alive is not None:
            scores[~table.alive] = -np.inf
        scores[excluded_rows] = -np.inf
        best = _top(scores, min(k, len(table.ids) - len(excluded_rows)))
        return list(zip(table.row_ids[best].tolist(), scores[best].tolist()))

    @staticmethod
    def _scan_rows(table: _Table, q: np.ndarray, k: int, rows: np.ndarray) -> list:
        scores = table.vectors[rows] @ q
        best = _top(scores, k)
        return list(zip(table.row_ids[rows[best]].tolist(), scores[best].tolist()))

    # ---------------------------------------------------------------- writing

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert new ids, replace the vectors of known ones."""
        vectors = _normalized(vectors, self.dim)
        ids = _checked_ids(ids, len(vectors))
        if not len(ids):
            return
        with self._write:
            self._reserve(len(ids))
            table = self._state.table
            _, old_rows = table.find(ids)  # replaced ids: their old rows die
            new_rows = self._append(ids, vectors)
            self._publish_rows(table, ids, new_rows, dead_rows=old_rows)
            self._add_to_graph(ids, vectors)
            self._maybe_compact()

    def remove(self, ids: np.ndarray) -> None:
        """Forget these ids; unknown ones are ignored."""
        with self._write:
            table = self._state.table
            gone, rows = table.find(np.asarray(ids, dtype=np.int64))
            if not len(gone):
                return
            self._publish_rows(table, np.empty(0, np.int64), np.empty(0, np.int64), dead_rows=rows)
            graph = self._state.graph
            if graph is not None:
                with self._graph_lock.write():
                    for content_id in gone.tolist():
                        _mark_deleted(graph, content_id)
            self._maybe_compact()

    def _reserve(self, more: int) -> None:
        """Make room for `more` rows past _used (a full buffer, or a read-only memory map)."""
        if self._used + more > len(self._buffer):
            self._compact_table(extra=more)

    def _append(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        # These rows are past what any published table shows, so readers cannot see them yet.
        start, end = self._used, self._used + len(ids)
        self._buffer[start:end] = vectors
        self._row_ids[start:end] = ids
        self._used = end
        return np.arange(start, end, dtype=np.int64)

    def _publish_rows(self, table: _Table, ids: np.ndarray, rows: np.ndarray, dead_rows: np.ndarray) -> None:
        """Publish `table` with rows `dead_rows` dead and (ids -> rows) added or pointed elsewhere."""
        keep = np.ones(len(table.ids), bool)
        keep[np.searchsorted(table.ids, table.row_ids[dead_rows])] = False
        all_ids = np.concatenate([table.ids[keep], ids])
        all_rows = np.concatenate([table.rows[keep], rows])
        order = np.argsort(all_ids, kind="stable")
        new_table = self._publish_table(table.alive, all_ids[order], all_rows[order], dead_rows)
        self._state = _State(new_table, self._state.graph)

    def _publish_table(
        self, alive: np.ndarray | None, ids: np.ndarray, rows: np.ndarray, dead_rows: np.ndarray | None = None
    ) -> _Table:
        used = self._used
        if len(ids) == used:
            alive = None  # common case: no dead rows, skip the mask in scans
        else:
            grown = np.ones(used, bool)
            if alive is not None:
                grown[: len(alive)] = alive
            if dead_rows is not None:
                grown[dead_rows] = False
            alive = _readonly(grown)
        return _Table(
            vectors=_readonly(self._buffer[:used]),
            row_ids=_readonly(self._row_ids[:used]),
            alive=alive,
            ids=_readonly(ids),
            rows=_readonly(rows),
        )

    def _compact_table(self, extra: int = 0) -> None:
        """Copy the live rows, in id order, into a new buffer with room for `extra` more and headroom."""
        table = self._state.table
        count = len(table.ids)
        capacity = count + extra + max(int(count * (TABLE_GROWTH - 1)), MIN_CAPACITY)
        buffer = np.empty((capacity, self.dim), np.float32)
        for start in range(0, count, CHUNK_ROWS):
            end = min(start + CHUNK_ROWS, count)
            buffer[start:end] = table.vectors[table.rows[start:end]]
        row_ids = np.empty(capacity, np.int64)
        row_ids[:count] = table.ids
        self._buffer, self._row_ids, self._used, self._mapped = buffer, row_ids, count, False
        new_table = self._publish_table(None, table.ids, np.arange(count, dtype=np.int64))
        self._state = _State(new_table, self._state.graph)

    def _add_to_graph(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        graph = self._state.graph
        if graph is None:
            if self._kind_for(len(self)) == "hnsw":
                self._rebuild_graph()
            return
        for start in range(0, len(ids), GRAPH_ADD_CHUNK):
            # Short write-locked chunks (~0.25 s), so queries get in between during a large add.
            chunk = slice(start, start + GRAPH_ADD_CHUNK)
            with self._graph_lock.write():
                self._reserve_graph(graph, len(ids[chunk]))
                graph.add_items(vectors[chunk], ids[chunk])

    @staticmethod
    def _reserve_graph(graph: hnswlib.Index, more: int) -> None:
        needed = graph.element_count + more  # upper bound: re-added ids reuse their old node
        if needed > graph.max_elements:
            graph.resize_index(max(needed, int(graph.max_elements * TABLE_GROWTH)))

    def _maybe_compact(self) -> None:
        state = self._state
        if state.graph is not None:
            deleted = state.graph.element_count - len(state.table.ids)
            if deleted > REBUILD_DELETED_FRACTION * state.graph.element_count:
                self._rebuild_graph()
                return
        if self._used - len(state.table.ids) > COMPACT_DEAD_FRACTION * max(self._used, 1):
            self._compact_table()

    def _rebuild_graph(self) -> None:
        """Build a graph of the live rows, or drop the graph when the index is small enough to scan.

        The old graph is unpublished first, so readers scan exactly meanwhile and memory never holds
        two graphs plus the table (a reader still inside the old graph keeps it alive until it returns).
        """
        table = self._state.table
        self._state = _State(table, None)
        if self._kind_for(len(table.ids)) == "exact":
            return
        graph = _new_graph(self.dim, len(table.ids) + MIN_CAPACITY)
        for start in range(0, len(table.ids), CHUNK_ROWS):
            chunk = slice(start, start + CHUNK_ROWS)
            graph.add_items(table.vectors[table.rows[chunk]], table.ids[chunk])
        self._state = _State(table, graph)

    # ---------------------------------------------------------------- files

    def save(self, folder: Path, generation: int) -> None:
        """Write the index to `folder` atomically; the stamp goes last."""
        folder = Path(folder)
        with self._write:
            state = self._state
            _make_private_folder(folder)
            _remove_temp_files(folder)
            files = {
                IDS_FILE: _write_file(folder, IDS_FILE, lambda f: np.save(f, np.asarray(state.table.ids))),
                VECTORS_FILE: _write_file(folder, VECTORS_FILE, lambda f: _write_vectors(f, state.table)),
            }
            kind = "exact"
            if state.graph is not None:
                kind = "hnsw"
                files[HNSW_FILE] = _write_file(folder, HNSW_FILE, path_writer=state.graph.save_index)
            _fsync_folder(folder)
            stamp = {
                "format": FORMAT_VERSION,
                "model_id": self.model_id,
                "dim": self.dim,
                "count": len(state.table.ids),
                "generation": int(generation),
                "kind": kind,
                "space": "ip",
                "M": HNSW_M if kind == "hnsw" else None,
                "ef_construction": HNSW_EF_CONSTRUCTION if kind == "hnsw" else None,
                "files": files,
            }
            _write_file(folder, STAMP_FILE, lambda f: f.write(json.dumps(stamp, indent=1).encode()))
            _fsync_folder(folder)
            if kind == "exact":
                (folder / HNSW_FILE).unlink(missing_ok=True)  # stale graph of an earlier save
            self._generation = int(generation)

    @classmethod
    def open(
        cls, folder: Path, model_id: str, exact_below: int = DEFAULT_EXACT_BELOW
    ) -> tuple[VectorIndex, int] | None:
        """The saved index and the vectors generation it was saved at, or None when it is missing, damaged or
        of another model (then rebuild from SQLite). A saved index older than the catalog is the caller's
        to catch up (store/vector_store.py); nothing here compares it with the catalog."""
        try:
            return cls._open(Path(folder), model_id, exact_below)
        except Exception as exc:  # noqa: BLE001 - any failure means "rebuild", never a crash
            log.info("vector index in %s not usable, will rebuild: %s", folder, exc)
            return None

    @staticmethod
    def read_stamp(folder: Path, model_id: str) -> tuple[dict, list[str]]:
        """The saved stamp and why it cannot be used (empty: it can). Raises OSError or ValueError when
        there is no readable stamp. Cheap: the data files are not read."""
        stamp = json.loads((Path(folder) / STAMP_FILE).read_text())
        if not isinstance(stamp, dict):
            raise ValueError("the stamp is not a JSON object")
        expected = {"format": FORMAT_VERSION, "model_id": model_id, "count": _rows_in(Path(folder) / IDS_FILE)}
        problems = [f"stamp {k} is {stamp.get(k)!r}, expected {v!r}" for k, v in expected.items() if stamp.get(k) != v]
        return stamp, problems

    @classmethod
    def _open(cls, folder: Path, model_id: str, exact_below: int) -> tuple[VectorIndex, int]:
        stamp, mismatches = cls.read_stamp(folder, model_id)
        if mismatches:
            raise ValueError("; ".join(mismatches))
        dim, kind, count, generation = int(stamp["dim"]), stamp["kind"], int(stamp["count"]), int(stamp["generation"])
        names = [IDS_FILE, VECTORS_FILE] + ([HNSW_FILE] if kind == "hnsw" else [])
        for name in names:
            _verify_file(folder / name, stamp["files"][name])  # before any parser sees the bytes
        ids = np.load(folder / IDS_FILE, allow_pickle=False)
        vectors = np.load(folder / VECTORS_FILE, mmap_mode="r", allow_pickle=False)
        if ids.dtype != np.int64 or ids.shape != (count,) or np.any(np.diff(ids) <= 0):
            raise ValueError("ids.npy is not the sorted unique ids the stamp promises")
        if vectors.dtype != np.float32 or vectors.shape != (count, dim):
            raise ValueError("vectors.npy does not have the shape the stamp promises")
        index = cls(dim, model_id, exact_below)
        index._adopt(ids, vectors)
        if index._kind_for(count) == "hnsw":
            index._adopt_graph(folder, kind)
        index._generation = generation
        return index, generation

    def _adopt(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Use loaded arrays as the table without copying (the vectors stay memory-mapped)."""
        self._buffer, self._row_ids, self._used, self._mapped = vectors, ids, len(ids), True
        table = self._publish_table(None, ids, np.arange(len(ids), dtype=np.int64))
        self._state = _State(table, None)

    def _adopt_graph(self, folder: Path, kind: str) -> None:
        if kind != "hnsw":  # saved exact, but exact_below has dropped since: build the graph now
            self._rebuild_graph()
            return
        graph = hnswlib.Index(space="ip", dim=self.dim)
        graph.load_index(str(folder / HNSW_FILE))
        graph.set_ef(1)  # see _new_graph
        if graph.element_count < len(self):
            raise ValueError("hnsw.bin holds fewer nodes than the stamp's count")
        self._state = _State(self._state.table, graph)

    # ---------------------------------------------------------------- status

    @property
    def stats(self) -> dict:
        state = self._state
        graph = state.graph
        table_bytes = int(self._buffer.nbytes + self._row_ids.nbytes)
        graph_nodes = graph_bytes = 0
        if graph is not None:
            with self._graph_lock.read():  # hnswlib may be resizing under a concurrent add
                graph_nodes, graph_bytes = graph.element_count, graph.index_file_size()
        return {
            "count": len(state.table.ids),
            "dim": self.dim,
            "kind": "exact" if graph is None else "hnsw",
            "model_id": self.model_id,
            "exact_below": self.exact_below,
            "ef": None if graph is None else {"factor": EF_FACTOR, "floor": EF_FLOOR},
            "M": None if graph is None else HNSW_M,
            "ef_construction": None if graph is None else HNSW_EF_CONSTRUCTION,
            "deleted": max(graph_nodes - len(state.table.ids), 0),
            "dead_rows": self._used - len(state.table.ids),
            "generation": self._generation,
            "table_bytes": table_bytes,
            "table_mapped": self._mapped,
            "graph_bytes": int(graph_bytes),
        }


def _new_graph(dim: int, capacity: int) -> hnswlib.Index:
    graph = hnswlib.Index(space="ip", dim=dim)  # vectors are unit length: inner product = cosine
    graph.init_index(max_elements=capacity, M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION, random_seed=100)
    # hnswlib searches with breadth max(ef, results asked for). The breadth is chosen per query by
    # asking for _ef(k) results instead, so the index-wide ef (which set_ef would race on) stays 1.
    graph.set_ef(1)
    return graph


def _mark_deleted(graph: hnswlib.Index, content_id: int) -> None:
    try:
        graph.mark_deleted(content_id)
    except RuntimeError:  # not in the graph (an add that failed half way): nothing to delete
        log.warning("vector index: id %d was not in the graph", content_id)


# -------------------------------------------------------------------- file helpers


def _make_private_folder(folder: Path) -> None:
    if not folder.exists():
        ensure_private_dir(folder)


def _remove_temp_files(folder: Path) -> None:
    """Leftovers of a save that crashed; no other save can run (writers are serialized)."""
    for path in folder.iterdir():
        if path.name.startswith(".") and TEMP_MARK in path.name:
            path.unlink(missing_ok=True)


def _write_file(folder: Path, name: str, writer: Callable | None = None, path_writer: Callable | None = None) -> dict:
    """Write `name` atomically (temp file, fsync, rename); return its size and crc32 for the stamp.

    `writer(f)` writes to a file object; `path_writer(path)` writes the file itself (hnswlib). The
    temp file is created 0600 first either way, so the data is never readable by others, not even
    briefly.
    """
    temp = folder / f".{name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
        with os.fdopen(fd, "wb") as file:
            if writer is not None:
                writer(file)
        if path_writer is not None:
            path_writer(str(temp))  # truncates and rewrites the file, keeping its mode
        with open(temp, "rb+") as file:
            os.fsync(file.fileno())
        info = _file_checksum(temp)
        os.replace(temp, folder / name)
        return info
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _write_vectors(file, table: _Table) -> None:
    """The live vectors in id order as an .npy, in chunks: no full gathered copy in memory."""
    count, dim = len(table.ids), table.vectors.shape[1]
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
        "fortran_order": False,
        "shape": (count, dim),
    }
    np.lib.format.write_array_header_1_0(file, header)
    for start in range(0, count, CHUNK_ROWS):
        file.write(np.ascontiguousarray(table.vectors[table.rows[start : start + CHUNK_ROWS]]))


def _rows_in(path: Path) -> int | None:
    """The row count an .npy file's header declares (its first few hundred bytes only); None if unreadable."""
    try:
        return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])  # a map reads no data
    except (OSError, ValueError, IndexError):
        return None


def _file_checksum(path: Path) -> dict:
    crc, size = 0, 0
    with open(path, "rb") as file:
        while block := file.read(1 << 22):
            crc = zlib.crc32(block, crc)
            size += len(block)
    return {"size": size, "crc32": f"{crc:08x}"}


def _verify_file(path: Path, expected: dict) -> None:
    if path.stat().st_size != expected["size"]:
        raise ValueError(f"{path.name} has the wrong size")
    if _file_checksum(path) != expected:
        raise ValueError(f"{path.name} fails its checksum")


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
