"""CLIP's ViT image tower in plain torch, so that indexing loads without open_clip or torchvision.

Why: importing open_clip costs about 1.5 s of one core (torchvision, and torch._dynamo which torchvision
imports eagerly) on top of torch's own 1.1 s, and that is most of what a fresh `searchfs index` spends
before its first batch. The tower itself is small: patch embedding, class token, positional embedding,
pre-norm, residual attention blocks, post-norm of the class token, projection.

How: the first load of a model goes through open_clip (torch_runtime.py). When its image tower is the
plain ViT this module implements (`describe`), the tower built here from the same tensors is run on the
fixed probe pictures beside open_clip's, and this module's preprocessing beside open_clip's transform;
only when both agree is a small stamp written (`image_tower.json`, beside the numpy text tower): the
tower's shape, the preprocessing, and which checkpoint keys hold each weight. Later loads of that model id
read the weights straight from the checkpoint file (mapped, torch only) into this tower. Anything else
(another architecture, a stamp of another model id or format, a key missing from the file) takes the
open_clip route, which stays the reference.

Once a load's bf16 (or fp16) tower has passed the precision self-check, its tensors are stored too
(`image_tower.bf16.pt`, stamped with the model id): later loads map them instead of reading the fp32
weights and converting them (0.23 s of a core for ViT-B-32, and half the pages). They are derived: the
self-check still runs at every load, and a stored copy that fails it, or cannot be read, is replaced by
the checkpoint's fp32 weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ensure_private_dir

log = logging.getLogger(__name__)

STAMP = "image_tower.json"
FORMAT = 1
LOW_FORMAT = 1  # of the stored low-precision tensors
MIN_COSINE = 0.9999  # this tower vs open_clip's, on the probe pictures, in fp32
MAX_PIXEL_ERROR = 1e-5  # this preprocessing vs open_clip's transform, per value after normalization
BLOCK = (
    *("ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight"),
    *("attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias"),
    *("mlp.c_proj.weight", "mlp.c_proj.bias"),
)
TOP = (
    *("conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight", "ln_pre.bias"),
    *("ln_post.weight", "ln_post.bias", "proj"),
)


@dataclass(frozen=True)
class VitConfig:
    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    output_dim: int
    eps: float
    quick_gelu: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bicubic: bool  # else bilinear

    def keys(self, prefix: str = "visual.") -> list[str]:
        blocks = [f"transformer.resblocks.{i}.{name}" for i in range(self.layers) for name in BLOCK]
        return [prefix + key for key in (*TOP, *blocks)]


# ---------------------------------------------------------------------------------------------- the tower


def _tower_class():
    import torch
    import torch.nn.functional as F

    class VitTower(torch.nn.Module):
        """forward(batch of prepared pictures) -> image features (not normalized), as open_clip's
        VisionTransformer with pool_type "tok", no attentional pool, no patch dropout."""

        def __init__(self, config: VitConfig, weights: dict[str, Any]):
            super().__init__()
            self.config = config
            self.image_size, self.output_dim = config.image_size, config.output_dim
            for name, tensor in weights.items():  # the file's tensors themselves: nothing copied
                self.register_parameter(name.replace(".", "__"), torch.nn.Parameter(tensor, requires_grad=False))

        def _w(self, name: str):
            return getattr(self, name.replace(".", "__"))

        def forward(self, x):
            c, w = self.config, self._w
            x = F.conv2d(x, w("conv1.weight"), stride=c.patch_size)  # (B, width, grid, grid)
            x = x.flatten(2).transpose(1, 2)
            cls = w("class_embedding").to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1) + w("positional_embedding").to(x.dtype)
            x = F.layer_norm(x, (c.width,), w("ln_pre.weight"), w("ln_pre.bias"), c.eps)
            for i in range(c.layers):
                x = self._block(x, f"transformer.resblocks.{i}.")
            x = F.layer_norm(x[:, 0], (c.width,), w("ln_post.weight"), w("ln_post.bias"), c.eps)
            return x @ w("proj")

        def _block(self, x, p: str):
            c, w = self.config, self._w
            h = F.layer_norm(x, (c.width,), w(p + "ln_1.weight"), w(p + "ln_1.bias"), c.eps)
            q, k, v = F.linear(h, w(p + "attn.in_proj_weight"), w(p + "attn.in_proj_bias")).chunk(3, dim=-1)
            heads = [t.unflatten(-1, (c.heads, -1)).transpose(1, 2) for t in (q, k, v)]  # (B, heads, n, d)
            h = F.scaled_dot_product_attention(*heads).transpose(1, 2).flatten(2)
            x = x + F.linear(h, w(p + "attn.out_proj.weight"), w(p + "attn.out_proj.bias"))
            h = F.layer_norm(x, (c.width,), w(p + "ln_2.weight"), w(p + "ln_2.bias"), c.eps)
            h = F.linear(h, w(p + "mlp.c_fc.weight"), w(p + "mlp.c_fc.bias"))
            h = h * torch.sigmoid(1.702 * h) if c.quick_gelu else F.gelu(h)
            return x + F.linear(h, w(p + "mlp.c_proj.weight"), w(p + "mlp.c_proj.bias"))

    return VitTower


class ImageModel:
    """What the runtime needs of a model when only images are embedded: `.visual`, `encode_image`, `to`."""

    def __init__(self, visual):
        self.visual = visual

    def encode_image(self, batch):
        return self.visual(batch)

    def to(self, device) -> ImageModel:
        self.visual = self.visual.to(device)
        return self


def build(config: VitConfig, weights: dict[str, Any]) -> ImageModel:
    """The tower over `weights` (checkpoint keys without the "visual." prefix -> tensors, fp32)."""
    return ImageModel(_tower_class()(config, weights).eval())


# ---------------------------------------------------------------------------------------------- preprocessing


def prepare(config: VitConfig, picture) -> Any:
    """open_clip's inference transform for resize_mode "shortest": the shorter side resized to the input
    size, a centre crop, RGB, scaled to 0..1 and normalized; as a (3, size, size) float32 tensor."""
    import torch

    pixels = np.asarray(fit(config, picture), dtype=np.float32) / np.float32(255.0)
    mean, std = np.asarray(config.mean, dtype=np.float32), np.asarray(config.std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1)))


def fit(config: VitConfig, picture):
    """prepare()'s geometry alone: the RGB picture at the input size. prepare() of a fitted picture leaves
    its pixels as they are, so decoding can fit pictures while torch still loads (a 224 px picture is a
    twentieth of a drafted 12 MP photo) and prepare them once it has."""
    from PIL import Image

    size = config.image_size
    width, height = picture.size
    if width <= height:
        new = (size, int(size * height / width))
    else:
        new = (int(size * width / height), size)
    if new != (width, height):
        picture = picture.resize(new, Image.Resampling.BICUBIC if config.bicubic else Image.Resampling.BILINEAR)
    top, left = int(round((new[1] - size) / 2.0)), int(round((new[0] - size) / 2.0))
    if (left, top, new) != (0, 0, (size, size)):
        picture = picture.crop((left, top, left + size, top + size))
    return picture if picture.mode == "RGB" else picture.convert("RGB")


# ---------------------------------------------------------------------------------------------- the stamp


def read(folder: Path | None, model_id: str) -> tuple[VitConfig, str] | None:
    """This model id's verified tower and the checkpoint file it was verified on, or None (no stamp,
    another model's, another format)."""
    if folder is None:
        return None
    try:
        info = json.loads((folder / STAMP).read_text())
        if info.get("format") != FORMAT or info.get("model_id") != model_id:
            return None
        raw = dict(info["config"])
        raw["mean"], raw["std"] = tuple(raw["mean"]), tuple(raw["std"])
        return VitConfig(**raw), str(info["checkpoint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def planned(settings, folder: Path | None, model_id: str) -> tuple[VitConfig, str] | None:
    """This model id's verified tower and checkpoint file when a load will build this tower: a stamp of
    this id, its checkpoint file still there, and a current numpy text tower (exporting one needs
    open_clip, which then builds the whole model). None: the open_clip route. Reads two small files, no
    torch: the embedder asks before the load, to fit pictures decoded meanwhile."""
    from . import text_tower

    found = read(folder, model_id)
    if found is None or folder is None or not os.path.isfile(found[1]):
        return None
    if settings.model_text_tower != "numpy" or not text_tower.is_current(folder, model_id):
        return None
    return found


def write(folder: Path, model_id: str, config: VitConfig, checkpoint: str) -> None:
    ensure_private_dir(folder)
    tmp = folder / f"{STAMP}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    info = {"format": FORMAT, "model_id": model_id, "checkpoint": checkpoint, "config": asdict(config)}
    with os.fdopen(fd, "w") as handle:
        json.dump(info, handle)
    os.replace(tmp, folder / STAMP)


def load_weights(config: VitConfig, checkpoint: str, convert: bool = True) -> dict[str, Any] | None:
    """The tower's tensors from the checkpoint file, mapped (torch_load.read_state_dict), as fp32 (as
    stored with `convert=False`); None when the file lacks one."""
    import torch

    from .torch_load import read_state_dict

    try:
        state = read_state_dict(checkpoint)
    except Exception as exc:  # noqa: BLE001 - any unreadable file: the open_clip route says what is wrong
        log.debug("image tower: cannot map %s (%s)", checkpoint, exc)
        return None
    weights = {}
    for key in config.keys():
        tensor = state.get(key)
        if tensor is None or not tensor.is_floating_point():
            log.debug("image tower: %s is not in %s", key, checkpoint)
            return None
        weights[key[len("visual.") :]] = tensor if tensor.dtype == torch.float32 or not convert else tensor.float()
    return weights


# ---------------------------------------------------------------------------------------------- low precision


def low_path(folder: Path, precision: str) -> Path:
    return folder / f"image_tower.{precision}.pt"


def load_low(folder: Path | None, model_id: str, config: VitConfig, precision: str) -> dict[str, Any] | None:
    """The tower's tensors in `precision` as an earlier load stored them (mapped, not read yet), or None:
    none stored, another model id or format, a tensor missing or of another dtype, an unreadable file."""
    if folder is None or not low_path(folder, precision).is_file():
        return None
    import torch

    from .runtime import torch_dtype

    try:
        saved = torch.load(low_path(folder, precision), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - a torn or foreign file: the fp32 weights are read instead
        log.info("stored %s image tower unreadable (%s): converting the fp32 weights", precision, exc)
        return None
    if not isinstance(saved, dict) or saved.get("stamp") != _low_stamp(model_id, precision):
        return None
    tensors, dtype = saved.get("tensors"), torch_dtype(precision)
    names = config.keys(prefix="")
    if not isinstance(tensors, dict) or not all(
        isinstance(tensors.get(name), torch.Tensor) and tensors[name].dtype == dtype for name in names
    ):
        return None
    return {name: tensors[name] for name in names}


def save_low(folder: Path, model_id: str, precision: str, tensors: dict[str, Any]) -> None:
    """Store the tower's self-checked tensors (vit names -> tensors in `precision`); best effort: without
    them the next load converts the fp32 weights again."""
    import torch

    path = low_path(folder, precision)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        ensure_private_dir(folder)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
            state = {name: tensor.detach().cpu() for name, tensor in tensors.items()}
            torch.save({"stamp": _low_stamp(model_id, precision), "tensors": state}, handle)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        log.info("could not store the %s image tower in %s: %s", precision, folder, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()


def _low_stamp(model_id: str, precision: str) -> dict[str, Any]:
    return {"format": LOW_FORMAT, "model_id": model_id, "precision": precision}
