"""Is a lower-precision image tower good enough? A fixed probe set, embedded both ways, compared.

The catalog stores one set of vectors per model id, whatever precision made them, so a bf16 (or fp16)
tower is used only when its vectors are interchangeable with fp32 ones: on every probe picture the two
agree to cosine >= MIN_COSINE, and for each of the first QUERIES probes the ten nearest other probes are
the same ten (the ranking a search would show). The probes are synthetic and fixed (seeded gradients,
stripes, checkerboards, disks, blurred noise, rings), so the check needs no files and gives the same
verdict for the same weights on the same hardware.

The fp32 side depends only on the weights, so it is computed once per model id and stored next to the
exported text tower (`probe_reference.npy`, stamped with the model id); later loads run only the
low-precision side (24 pictures, a fraction of a second in bf16) and never hold the fp32 image tower.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import ensure_private_dir

log = logging.getLogger(__name__)

PROBES = 24
QUERIES = 8
TOP = 10
MIN_COSINE = 0.99
REFERENCE, REFERENCE_STAMP = "probe_reference.npy", "probe_reference.json"
FORMAT = 1


def probe_pictures(side: int, count: int = PROBES) -> list[Image.Image]:
    """The fixed probe set: `count` RGB pictures of `side` x `side` pixels, the same every time."""
    rng = np.random.default_rng(1234)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    pictures = []
    for i in range(count):
        shade = _pattern(i % 6, x, y, rng)[..., None]
        one, two = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        pixels = shade * one + (1 - shade) * two + rng.normal(0, 4, (side, side, 3))
        pictures.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    return pictures


def _pattern(kind: int, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 0..1 shading of the unit square: one of six kinds of picture structure."""
    angle = rng.uniform(0, np.pi)
    along = np.cos(angle) * x + np.sin(angle) * y
    if kind == 0:  # gradient
        return (along - along.min()) / (np.ptp(along) + 1e-6)
    if kind == 1:  # stripes
        return 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 30) * along)
    if kind == 2:  # checkerboard
        cells = int(rng.integers(2, 16))
        return (np.floor(x * cells) + np.floor(y * cells)) % 2
    if kind == 3:  # disks
        shade = np.zeros_like(x)
        for _ in range(int(rng.integers(1, 6))):
            cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.3)
            shade = np.maximum(shade, ((x - cx) ** 2 + (y - cy) ** 2 < r * r).astype(np.float32))
        return shade
    if kind == 4:  # blurred noise
        coarse = Image.fromarray((rng.uniform(0, 1, (8, 8)) * 255).astype(np.uint8))
        return np.asarray(coarse.resize(x.shape[::-1], Image.Resampling.BICUBIC), np.float32) / 255
    return 0.5 + 0.5 * np.cos(2 * np.pi * rng.uniform(2, 20) * np.hypot(x - 0.5, y - 0.5))  # rings


@dataclass(frozen=True)
class Verdict:
    ok: bool
    min_cosine: float
    same_top: int  # queries whose top-TOP neighbours are the same set
    queries: int

    def __str__(self) -> str:
        return f"min cosine {self.min_cosine:.5f}, same top-{TOP} for {self.same_top}/{self.queries} probe queries"


def compare(reference: np.ndarray, candidate: np.ndarray) -> Verdict:
    """Both (PROBES, dim), L2-normalized: does `candidate` agree with the fp32 `reference`?"""
    cosine = float(np.min(np.sum(reference * candidate, axis=1)))
    queries = min(QUERIES, len(reference))
    same = 0
    for q in range(queries):
        wanted = _nearest(reference @ reference[q], q)
        found = _nearest(candidate @ reference[q], q)  # the fp32 query against the candidate's gallery
        same += wanted == found
    ok = bool(np.isfinite(cosine)) and cosine >= MIN_COSINE and same == queries
    return Verdict(ok, cosine, same, queries)


def _nearest(scores: np.ndarray, skip: int) -> set[int]:
    order = [int(i) for i in np.argsort(-scores, kind="stable") if i != skip]
    return set(order[:TOP])


# ---------------------------------------------------------------------------------------------- stored reference


def load_reference(folder: Path | None, model_id: str, input_size: int) -> np.ndarray | None:
    if folder is None:
        return None
    try:
        stamp = json.loads((folder / REFERENCE_STAMP).read_text())
        if stamp != _stamp(model_id, input_size):
            return None
        vectors = np.load(folder / REFERENCE)
    except (OSError, ValueError):
        return None
    return vectors if vectors.ndim == 2 and len(vectors) == PROBES else None


def save_reference(folder: Path | None, model_id: str, input_size: int, vectors: np.ndarray) -> None:
    """Stored best effort: without it the next load computes the fp32 side again."""
    if folder is None:
        return
    try:
        ensure_private_dir(folder)
        tmp = f".{os.getpid()}.tmp"
        for name, data in ((REFERENCE, None), (REFERENCE_STAMP, json.dumps(_stamp(model_id, input_size)).encode())):
            path = folder / (name + tmp)
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
                if data is None:
                    np.save(handle, np.asarray(vectors, np.float32))
                else:
                    handle.write(data)
            os.replace(path, folder / name)
    except OSError as exc:
        log.info("could not store the precision self-check's reference in %s: %s", folder, exc)


def _stamp(model_id: str, input_size: int) -> dict:
    return {"format": FORMAT, "model_id": model_id, "input_size": input_size, "probes": PROBES}
