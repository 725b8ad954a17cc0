"""CLIP's text tower in numpy, from weights exported once by the torch runtime: a cold query without torch.

Why: a new query text from the CLI must be answered in well under a second, and `import torch` alone
takes 1.3 s (open_clip 1.7 s more). CLIP's text tower is small and plain: token + positional embedding,
pre-LN transformer blocks with a causal mask, final LayerNorm, the features at the end-of-text token
times `text_projection`. The torch runtime exports it (the first time the model loads anyway, i.e. while
indexing) to `$SEARCHFS_HOME/models/<model>/`: one flat float32 `.npy` read through mmap, and a stamp
written last that names the model id; a stamp that does not match the configured model id means "use
torch" (and torch exports again). Architectures outside this shape (MobileCLIP's, hf-hub text towers,
SigLIP tokenizers) are never exported and always use torch.

The causal mask makes the end-of-text features depend only on the tokens up to it, so a text is run on
its own tokens only (a few instead of 77 positions): the same numbers, a fraction of the work.
Contract: tests/test_text_tower.py requires cosine >= 0.9999 against the torch model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from ..config import ensure_private_dir
from . import bpe

log = logging.getLogger(__name__)

# threadpool_limits sets a process-wide limit and restores, on leaving, what it found on entering: two
# texts encoded at once (service workers, FUSE threads) could leave each other's limit of 1 behind for
# good, so they take turns here. Only texts do: an image batch never waits for this.
_BLAS_LIMIT = threading.Lock()

FORMAT = 1
WEIGHTS, STAMP = "text_tower.npy", "text_tower.json"
BLOCK = ("ln_1.w", "ln_1.b", "in.w", "in.b", "out.w", "out.b", "ln_2.w", "ln_2.b", "fc.w", "fc.b", "proj.w", "proj.b")


def folder_for(settings, model_id: str) -> Path:
    """Where a model's exported tower lives: under SEARCHFS_HOME, shared by every library."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[:80]
    return Path(settings.home) / "models" / f"{slug}-{hashlib.sha1(model_id.encode()).hexdigest()[:10]}"


def exportable(model_id: str) -> bool:
    """Random-init weights differ in every process: an export of one would not match the next one."""
    return not model_id.endswith("/random")


@dataclass(frozen=True)
class TowerConfig:
    width: int
    heads: int
    layers: int
    context_length: int
    output_dim: int
    eps: float
    activation: str  # "gelu" (exact, erf) or "quick_gelu"
    projection_bias: bool

    def names(self) -> list[str]:
        out = ["token_embedding", "positional_embedding"]
        out += [f"{i}.{part}" for i in range(self.layers) for part in BLOCK]
        out += ["ln_final.w", "ln_final.b", "projection"] + (["projection.b"] if self.projection_bias else [])
        return out


# ---------------------------------------------------------------------------------------------- export


def write(folder: Path, model_id: str, config: TowerConfig, arrays: dict[str, np.ndarray]) -> None:
    """Write the weights (matrices as (in, out), so a forward is `x @ w`), then the stamp; files 0600."""
    vocab = bpe.vocab_path()
    if vocab is None:
        raise OSError("open_clip's BPE vocabulary file is not installed")
    ensure_private_dir(folder)
    for stale in folder.glob("*.tmp"):  # left by a process that ended mid-export (`searchfs index` exits at once)
        stale.unlink(missing_ok=True)
    layout, offset = [], 0
    for name in config.names():
        layout.append([name, offset, list(arrays[name].shape)])
        offset += arrays[name].size
    tmp = f".{os.getpid()}.{threading.get_ident()}.tmp"
    weights, stamp = folder / (WEIGHTS + tmp), folder / (STAMP + tmp)
    with _private(weights) as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (offset,)})
        for name in config.names():  # one array at a time: no copy of the whole tower in memory
            np.ascontiguousarray(arrays[name], dtype=np.float32).tofile(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(weights, folder / WEIGHTS)
    info = {
        "format": FORMAT,
        "model_id": model_id,
        "config": config.__dict__,
        "layout": layout,
        "weights_bytes": (folder / WEIGHTS).stat().st_size,
        "vocab_bytes": os.path.getsize(vocab),
    }
    with _private(stamp) as handle:
        handle.write(json.dumps(info, indent=1).encode())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(stamp, folder / STAMP)


def _private(path: Path):
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def is_current(folder: Path, model_id: str) -> bool:
    return _read_stamp(folder, model_id) is not None


def _read_stamp(folder: Path, model_id: str) -> dict | None:
    """The stamp when it names this model id and the files still match it; None means "use torch"."""
    try:
        info = json.loads((folder / STAMP).read_text())
        vocab = bpe.vocab_path()
        ok = (
            info.get("format") == FORMAT
            and info.get("model_id") == model_id
            and vocab is not None
            and os.path.getsize(vocab) == info.get("vocab_bytes")
            and (folder / WEIGHTS).stat().st_size == info.get("weights_bytes")
        )
    except (OSError, ValueError, AttributeError):
        return None
    return info if ok else None


# ---------------------------------------------------------------------------------------------- the tower


class NumpyTextTower:
    """The exported tower: `encode_texts` gives the same normalized vectors as the torch model."""

    def __init__(self, model_id: str, config: TowerConfig, weights: dict[str, np.ndarray], tokenizer):
        self.model_id = model_id
        self.config = config
        self.dim = config.output_dim
        self._w = weights
        self._tokenizer = tokenizer
        self._blocks = [[weights[f"{i}.{part}"] for part in BLOCK] for i in range(config.layers)]

    @classmethod
    def open(cls, folder: Path, model_id: str) -> NumpyTextTower | None:
        info = _read_stamp(folder, model_id)
        if info is None:
            return None
        try:
            config = TowerConfig(**info["config"])
            flat = np.load(folder / WEIGHTS, mmap_mode="r")  # pages are read as the forward touches them
            weights = {
                name: flat[start : start + int(np.prod(shape))].reshape(shape) for name, start, shape in info["layout"]
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.info("text tower in %s unusable (%s): using torch", folder, exc)
            return None
        tokenizer = bpe.tokenizer(config.context_length)
        return cls(model_id, config, weights, tokenizer) if tokenizer is not None else None

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        # A text's matrices are a few rows tall: a threaded BLAS spends far more on waking its threads than
        # on the arithmetic (measured: 7 ms instead of 0.25 ms per product on 2 busy cores).
        with _BLAS_LIMIT, threadpool_limits(1, user_api="blas"):
            out = np.stack([self._encode(self._tokenizer.encode(text)) for text in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    def _encode(self, ids: list[int]) -> np.ndarray:
        """Features of one text at the first of its highest token ids, as open_clip's argmax pooling takes
        them: the end-of-text token, unless the text itself spells one out earlier. Later tokens cannot
        change those features (causal mask), so they are not computed."""
        ids = ids[: ids.index(max(ids)) + 1]
        w, n = self._w, len(ids)
        x = np.asarray(w["token_embedding"][ids], np.float32) + w["positional_embedding"][:n]
        mask = np.triu(np.full((n, n), -np.inf, np.float32), 1)
        for block in self._blocks:
            x = self._block(x, block, mask)
        x = _layer_norm(x[-1:], w["ln_final.w"], w["ln_final.b"], self.config.eps)
        x = x @ w["projection"]
        if self.config.projection_bias:
            x = x + w["projection.b"]
        return x[0]

    def _block(self, x: np.ndarray, block: list[np.ndarray], mask: np.ndarray) -> np.ndarray:
        ln1w, ln1b, inw, inb, outw, outb, ln2w, ln2b, fcw, fcb, projw, projb = block
        n, width, heads = x.shape[0], self.config.width, self.config.heads
        qkv = _layer_norm(x, ln1w, ln1b, self.config.eps) @ inw + inb
        q, k, v = (qkv[:, i * width : (i + 1) * width].reshape(n, heads, -1).transpose(1, 0, 2) for i in range(3))
        scores = q @ k.transpose(0, 2, 1) / np.float32(np.sqrt(q.shape[-1])) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        attended = (scores / scores.sum(axis=-1, keepdims=True)) @ v
        x = x + attended.transpose(1, 0, 2).reshape(n, width) @ outw + outb
        hidden = _layer_norm(x, ln2w, ln2b, self.config.eps) @ fcw + fcb
        hidden = _quick_gelu(hidden) if self.config.activation == "quick_gelu" else _gelu(hidden)
        return x + hidden @ projw + projb


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    centred = x - x.mean(axis=-1, keepdims=True)
    return centred / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + np.float32(eps)) * weight + bias


def _quick_gelu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(np.float32(-1.702) * x))


def _gelu(x: np.ndarray) -> np.ndarray:
    """torch's exact GELU, x * Phi(x), with erf from Numerical Recipes' erfc (relative error < 1.2e-7):
    numpy has no erf, and scipy would be a large import for one function."""
    z = np.abs(x) * np.float32(1 / np.sqrt(2))
    t = 1 / (1 + 0.5 * z)
    poly = np.float32(0.17087277)
    for c in (-0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418, 0.37409196, 1.00002368):
        poly = poly * t + np.float32(c)
    erfc = t * np.exp(-z * z - np.float32(1.26551223) + t * poly)
    erf = np.where(x >= 0, 1 - erfc, erfc - 1)
    return 0.5 * x * (1 + erf)
