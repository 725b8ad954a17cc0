"""CLIP-like synthetic embeddings for the scale benchmarks: deterministic, in chunks, dim 512.

Uniform random directions are the wrong test data for a vector index: their top k are near-ties in a
space with no structure, which real photo libraries never are. These vectors have the shape CLIP gives a
library instead (measured shapes, not CLIP itself):

- a common direction every image shares (CLIP's image embeddings sit in a narrow cone: two unrelated
  photos score ~0.1-0.2, not 0);
- topics of very different sizes (a family library has thousands of photos of its children and a few of
  most other things: topic sizes follow a power law), each with sub-topics (the same scene, a burst);
- per-photo detail in a low-dimensional subspace (CLIP embeddings have an intrinsic dimension of a few
  dozen) plus a little isotropic noise.

Same topic ~0.6-0.7, same sub-topic ~0.75, unrelated ~0.15 cosine. Queries:

- image-like: a library photo plus noise (cosine ~0.9 to it), as `similar/` and image queries are;
- text-like: a topic centre seen from the text side of CLIP's modality gap: mostly a direction no image
  shares, plus the topic centre and noise, so the best photos score ~0.3-0.4 and the top k are the
  photos nearest the centre, many of them nearly tied. This is the hard case for a graph index: the
  query is far from every photo.

Photo i's vector depends only on (seed, i), so a library can be rebuilt or extended in chunks.
"""

from __future__ import annotations

import numpy as np

DIM = 512
TOPICS = 2000
SUBTOPICS = 16
LATENT = 48
CHUNK = 65_536
# weights of the parts of an image vector (before normalizing)
W_COMMON, W_TOPIC, W_SUB, W_DETAIL, W_ISO = 0.6, 1.0, 0.55, 0.7, 0.25


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class World:
    """The fixed parts: directions shared by every photo of a library of this seed."""

    def __init__(self, seed: int = 0, dim: int = DIM):
        rng = np.random.default_rng([seed, 0xC11])
        self.dim, self.seed = dim, seed
        self.common = _unit(rng.standard_normal(dim))
        self.text_side = _unit(rng.standard_normal(dim))  # the modality gap: no image has this
        self.topics = _unit(rng.standard_normal((TOPICS, dim)))
        self.subtopics = _unit(rng.standard_normal((TOPICS, SUBTOPICS, dim)))
        self.detail = (rng.standard_normal((LATENT, dim)) / np.sqrt(LATENT)).astype(np.float32)
        sizes = 1.0 / np.arange(1, TOPICS + 1) ** 0.8  # power law: topic 0 is the biggest
        self.topic_share = sizes / sizes.sum()

    def topic_of(self, start: int, count: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, start])
        return rng.choice(TOPICS, size=count, p=self.topic_share)

    def photos(self, start: int, count: int) -> np.ndarray:
        """Unit vectors of photos start ... start + count - 1 (any start; generated per CHUNK)."""
        out = np.empty((count, self.dim), np.float32)
        done = 0
        while done < count:
            first = start + done
            chunk_start = first - first % CHUNK
            block = self._chunk(chunk_start)
            take = min(count - done, chunk_start + CHUNK - first)
            out[done : done + take] = block[first - chunk_start : first - chunk_start + take]
            done += take
        return out

    def _chunk(self, chunk_start: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 2, chunk_start])
        topic = self.topic_of(chunk_start, CHUNK)
        sub = rng.integers(0, SUBTOPICS, CHUNK)
        detail = rng.standard_normal((CHUNK, LATENT), dtype=np.float32) @ self.detail
        iso = rng.standard_normal((CHUNK, self.dim), dtype=np.float32) / np.sqrt(self.dim)
        x = W_COMMON * self.common + W_TOPIC * self.topics[topic] + W_SUB * self.subtopics[topic, sub]
        x += W_DETAIL * _unit(detail) + W_ISO * iso
        return _unit(x)

    def image_queries(self, photos: np.ndarray, seed: int = 1) -> np.ndarray:
        """Near these photos' vectors (cosine ~0.95 to each)."""
        rng = np.random.default_rng([self.seed, 3, seed])
        return _unit(photos + 0.3 * _unit(rng.standard_normal((len(photos), self.dim))))

    def text_queries(self, count: int, seed: int = 1) -> np.ndarray:
        """Near a topic centre (topics picked by size, as people search for what they photograph)."""
        rng = np.random.default_rng([self.seed, 4, seed])
        topic = rng.choice(TOPICS, size=count, p=self.topic_share)
        noise = _unit(rng.standard_normal((count, self.dim)))
        return _unit(1.2 * self.text_side + 0.6 * self.common + 0.45 * self.topics[topic] + 0.3 * noise)
