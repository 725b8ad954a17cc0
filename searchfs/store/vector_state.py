"""The vector index's published state: immutable segments of rows, the id map, and what readers see.

A writer builds a new `State` aside and publishes it by swapping one attribute (store/vectors.py);
readers keep the one they started with. Nothing here is ever changed in place.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .vector_lists import Lists


@dataclass(frozen=True)
class Segment:
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

    def killed(self, rows: np.ndarray) -> Segment:
        alive = np.ones(len(self.ids), bool) if self.alive is None else self.alive.copy()
        alive[rows] = False
        return replace(self, alive=readonly(alive))


@dataclass(frozen=True)
class IdMap:
    """Content id -> (segment, row) of its live row. Saved segments share one sorted map built at load
    and save; the tail has a small one of its own, consulted first."""

    base_ids: np.ndarray  # sorted ids of the rows of the saved segments that were alive when it was built
    base_seg: np.ndarray
    base_row: np.ndarray
    tail_ids: np.ndarray  # sorted ids in the tail
    tail_row: np.ndarray


@dataclass(frozen=True)
class State:
    segments: tuple[Segment, ...]
    tail: Segment
    lists: Lists | None
    rows_per_list: np.ndarray | None  # rows of each list over the segments (what a probe reads)
    where: IdMap
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

    def segment(self, s: int) -> Segment:
        return self.tail if s == len(self.segments) else self.segments[s]

    def all_segments(self) -> tuple[Segment, ...]:
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


def readonly(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def published(segments: tuple[Segment, ...], tail: Segment, lists: Lists | None) -> State:
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
    where = IdMap(
        readonly(all_ids[order]), readonly(cat(seg)), readonly(cat(rows)),
        readonly(tail.ids[tail.live_rows()][tail_order]), readonly(tail.live_rows()[tail_order]),
    )  # fmt: skip
    per_list = None
    if lists is not None:
        per_list = np.zeros(lists.count, np.int64)
        for segment in segments:
            if segment.offsets is not None:
                per_list += np.diff(segment.offsets)
    count = len(all_ids) + tail.live
    return State(segments, tail, lists, per_list, where, count)
