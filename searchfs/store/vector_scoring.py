"""Scoring rows of the vector index's segments exactly in float32: whole segments, runs of lists, picked
rows; merging the segments' best; gathering rows in list order for a (re)organisation."""

from __future__ import annotations

import numpy as np

from . import vector_files as files
from .vector_lists import Lists, nlist_for, sample_rows
from .vector_state import Segment


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest scores, best first."""
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
    else:
        part = np.arange(len(scores))
    return part[np.argsort(-scores[part], kind="stable")]


def runs(offsets: np.ndarray, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def skipped(skip, i: int) -> np.ndarray | None:
    if skip is None:
        return None
    rows = skip[1][skip[0] == i]
    return rows if len(rows) else None


def _finish(segment: Segment, scores: np.ndarray, rows: np.ndarray, k: int, skip, mask) -> tuple:
    if segment.alive is not None:
        scores[~segment.alive[rows]] = -np.inf
    if mask is not None:
        scores[~mask[rows]] = -np.inf
    if skip is not None:
        scores[np.isin(rows, skip)] = -np.inf
    best = _top(scores, min(k, len(scores)))
    best = best[np.isfinite(scores[best])]
    return segment.ids[rows[best]], scores[best]


def score_all(segment: Segment, q: np.ndarray, k: int, skip=None, mask=None) -> tuple:
    if not len(segment.ids):
        return np.empty(0, np.int64), np.empty(0, np.float32)
    return _finish(segment, segment.vectors @ q, np.arange(len(segment.ids)), k, skip, mask)


def score_runs(segment: Segment, q: np.ndarray, k: int, runs, skip=None, mask=None) -> tuple:
    starts, ends = runs
    if not len(starts):
        return np.empty(0, np.int64), np.empty(0, np.float32)
    scores = np.concatenate([segment.vectors[a:b] @ q for a, b in zip(starts.tolist(), ends.tolist())])
    return _finish(segment, scores, _rows_of_runs(starts, ends), k, skip, mask)


def score_rows(segment: Segment, q: np.ndarray, k: int, rows: np.ndarray) -> tuple:
    if not len(rows):
        return np.empty(0, np.int64), np.empty(0, np.float32)
    rows = np.sort(rows)
    return _finish(segment, segment.vectors[rows] @ q, rows, k, None, None)


def merge(parts: list[tuple], k: int) -> list[tuple[int, float]]:
    """The best k of the segments' best k, best first (ties broken by content id for a stable order)."""
    ids = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
    scores = np.concatenate([p[1] for p in parts]).astype(np.float64) if parts else np.empty(0)
    order = np.lexsort((ids, -scores))[:k]
    return list(zip(ids[order].tolist(), scores[order].tolist()))


def gather_rows(parts: list[tuple], picks: np.ndarray, dim: int) -> np.ndarray:
    """Rows `picks` (positions in the concatenation of the parts' live rows) as one array."""
    out = np.empty((len(picks), dim), np.float32)
    start = done = 0
    for _, vectors, rows in parts:
        mine = picks[(picks >= start) & (picks < start + len(rows))] - start
        out[done : done + len(mine)] = files.take_rows(vectors, rows[mine])
        done += len(mine)
        start += len(rows)
    return out


def live_parts(segments) -> list[tuple]:
    """(ids, vectors, rows) of each segment's live rows, the parts that gather_rows and friends read."""
    return [(s.ids[rows], s.vectors, rows) for s in segments for rows in [s.live_rows()]]


def train_lists(parts: list[tuple], count: int, dim: int) -> Lists:
    """Lists for `count` live rows (the parts' concatenation), trained on a sample of them: the sample
    (48 rows a list, 390 MB at a million) is the only copy of vectors this makes."""
    nlist = nlist_for(count)
    return Lists.train(gather_rows(parts, sample_rows(count, nlist), dim), nlist, trained_on=count)


def assign_rows(vectors: np.ndarray, rows: np.ndarray, lists: Lists) -> np.ndarray:
    """The list of each of `rows` of `vectors` (a memory map, say), read a chunk at a time."""
    out = np.empty(len(rows), np.int32)
    for start in range(0, len(rows), files.CHUNK_ROWS):
        out[start : start + files.CHUNK_ROWS] = lists.assign(
            files.take_rows(vectors, rows[start : start + files.CHUNK_ROWS])
        )
    return out


def sorted_by_list(parts: list[tuple], lists: Lists, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every live row of the parts, in list order: (ids, vectors in RAM, offsets)."""
    assigned = np.concatenate([lists.assign(vectors[rows]) for _, vectors, rows in parts])
    ids = np.concatenate([part_ids for part_ids, _, _ in parts])
    order = np.argsort(assigned, kind="stable")
    vectors = np.empty((len(ids), dim), np.float32)
    for start in range(0, len(order), files.CHUNK_ROWS):
        chunk = order[start : start + files.CHUNK_ROWS]
        vectors[start : start + len(chunk)] = gather_rows(parts, np.sort(chunk), dim)[np.argsort(np.argsort(chunk))]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(assigned, minlength=lists.count))]).astype(np.int64)
    return ids[order], vectors, offsets
