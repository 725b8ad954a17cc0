"""The inverted lists of the vector index: which part of the table a query reads.

The vectors are split into `nlist` lists by spherical k-means (each vector in the list of its nearest
centroid), and every saved segment of the table keeps its rows in list order, so a list is one
contiguous slice. A query scores the centroids, reads the lists nearest to it whole, in float32, and
ranks what it read exactly: the scores are the true cosines, and the only way to miss a result is to
leave its list unread. Which lists are read (`probe`):

- the nearest lists until at least `min_rows` rows are read: a share of the table, so the answer
  does not depend on how a library happens to be split;
- and every list whose centroid scores within `DELTA` of the best one, up to `max_rows`: a text query
  near a big topic (the thousands of photos of a family's children) has its best photos spread over
  all of that topic's lists, whose centroids score alike, and reading only the first few of them
  misses most of its top k.

Why lists and not a graph (hnswlib, usearch): a graph keeps a second copy of every vector (another 2 GB
at a million) that must be loaded whole before the first query and rewritten whole by every save, and
its misses are unbounded: at a million CLIP-like vectors, HNSW at M=16 and ef = max(3k, 128) left 3 of
200 text-like queries at recall 0 (the issue's measurement; wider searches, ef 300-1000, recovered them
at 1.2-1.9 ms). `benchmarks/bench_scale.py --compare` measures both on the same vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LISTS_PER_SQRT = 4  # nlist = 4 * sqrt(N): ~250 rows a list at a million
MIN_LISTS, MAX_LISTS = 16, 16_384
TRAIN_PER_LIST = 48  # k-means sample: 48 vectors per centroid (at most the whole table)
TRAIN_ROUNDS = 6
ASSIGN_CHUNK = 16_384  # rows scored against the centroids at a time (a 64 MB temporary at 1M / 4k lists)
DELTA = 0.1  # lists whose centroid scores this close to the best one are read too (see above)


def nlist_for(count: int) -> int:
    return int(np.clip(round(LISTS_PER_SQRT * np.sqrt(max(count, 1))), MIN_LISTS, MAX_LISTS))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1
    return (x / norms).astype(np.float32)


@dataclass(frozen=True)
class Lists:
    centroids: np.ndarray  # (nlist, dim) float32, unit rows
    trained_on: int  # how many vectors the index held when these were trained

    @property
    def count(self) -> int:
        return len(self.centroids)

    @classmethod
    def train(cls, sample: np.ndarray, nlist: int, trained_on: int, seed: int = 0) -> Lists:
        """Spherical k-means on `sample` (unit rows). Empty lists are seeded again from random rows."""
        rng = np.random.default_rng(seed)
        nlist = min(nlist, len(sample))
        centroids = np.array(sample[rng.choice(len(sample), nlist, replace=False)], dtype=np.float32)
        for _ in range(TRAIN_ROUNDS):
            assigned = Lists(centroids, trained_on).assign(sample)
            sums = np.zeros_like(centroids)
            np.add.at(sums, assigned, sample)
            empty = np.bincount(assigned, minlength=nlist) == 0
            sums[empty] = sample[rng.choice(len(sample), int(empty.sum()))]
            centroids = _unit_rows(sums)
        return cls(centroids, trained_on)

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """The list of each row (its nearest centroid), as int32."""
        out = np.empty(len(vectors), np.int32)
        for start in range(0, len(vectors), ASSIGN_CHUNK):
            out[start : start + ASSIGN_CHUNK] = np.argmax(vectors[start : start + ASSIGN_CHUNK] @ self.centroids.T, 1)
        return out

    def probe(self, q: np.ndarray, rows_per_list: np.ndarray, min_rows: int, max_rows: int) -> np.ndarray:
        """The lists to read for query `q`, in increasing list order (see the module's docstring)."""
        scores = self.centroids @ q
        order = np.argsort(-scores)
        read = np.cumsum(rows_per_list[order])
        enough = int(np.searchsorted(read, min_rows)) + 1
        alike = int(np.searchsorted(-scores[order], -(scores[order[0]] - DELTA), side="right"))
        cap = int(np.searchsorted(read, max_rows)) + 1
        return np.sort(order[: max(enough, min(alike, cap))])


def sample_rows(count: int, nlist: int, seed: int = 0) -> np.ndarray:
    """Sorted row numbers of a training sample of a table of `count` rows."""
    size = min(count, TRAIN_PER_LIST * nlist)
    return np.sort(np.random.default_rng(seed).choice(count, size, replace=False))
