"""Building an open_clip model from a checkpoint file without copies of its weights.

The plain route (`open_clip.create_model(pretrained=file)`) initializes every weight at random (0.9 s for
ViT-B-32), reads the whole file into memory (torch.load), then copies it into the model: about three
copies of the weights at the peak. Here the model is built on the meta device (no memory, no init), the
file is opened with `torch.load(mmap=True)` (safetensors maps too), and `load_state_dict(assign=True)`
makes the file's tensors the model's parameters. So a weight costs memory only once it is touched, as
pages of the file; `release` hands such pages back once a tensor has been replaced (the bf16 image
tower, the exported text tower). Non-persistent buffers (CLIP's causal mask) are not in any checkpoint
and are rebuilt. Anything this route does not cover (hf-hub and local-dir models, big_vision .npz files,
random init, a buffer it cannot rebuild) takes open_clip's own route.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
from typing import Any

from ..errors import ModelUnavailable, one_line

log = logging.getLogger(__name__)

_PREPROCESS_KEYS = {
    "image_mean": "mean",
    "image_std": "std",
    "image_interpolation": "interpolation",
    "image_resize_mode": "resize_mode",
}


def build(name: str, checkpoint: str | None, overrides: dict):
    """(model in eval mode, reparameterized; the file's mapping or None). Raises ModelUnavailable."""
    try:
        if checkpoint and not name.startswith(("hf-hub:", "local-dir:")) and not checkpoint.endswith(".npz"):
            try:
                return _build_mapped(name, checkpoint, overrides), MappedFile(checkpoint)
            except _NotMappable as exc:
                log.debug("loading %s the plain way: %s", checkpoint, exc)
        return _build_plain(name, checkpoint, overrides), None
    except ModelUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - open_clip and torch raise anything on a bad file or config
        raise explain_load_error(name, checkpoint or "", exc) from exc


class _NotMappable(Exception):
    """The mapped route does not apply to this model or file; the plain route will."""


def _build_mapped(name: str, checkpoint: str, overrides: dict):
    import open_clip
    import torch

    with torch.device("meta"), _no_random_init_warning():
        model = open_clip.create_model(name, pretrained=None, device="meta", **_create_args(overrides))
    state = _massage(model, read_state_dict(checkpoint))
    model.load_state_dict(state, strict=True, assign=True)
    _rebuild_buffers(model)
    # A checkpoint saved in fp16 (OpenAI's) gives fp16 parameters; the model runs in fp32 unless the
    # runtime's self-check allows less. float() copies only those that are not fp32 already.
    if any(p.dtype != torch.float32 for p in model.parameters() if p.is_floating_point()):
        model.float()
    return reparameterize(model.eval())


def _build_plain(name: str, checkpoint: str | None, overrides: dict):
    import open_clip

    model = open_clip.create_model(name, pretrained=checkpoint, **_create_args(overrides))
    return reparameterize(model.eval())


def _create_args(overrides: dict) -> dict:
    """resolve_weights' overrides (create_model_and_transforms' argument names) as create_model's."""
    from open_clip.transform import merge_preprocess_kwargs

    preprocess = {_PREPROCESS_KEYS[k]: v for k, v in overrides.items() if k in _PREPROCESS_KEYS}
    return {
        "force_quick_gelu": bool(overrides.get("force_quick_gelu")),
        "force_preprocess_cfg": merge_preprocess_kwargs({}, **preprocess),
    }


def read_state_dict(path: str) -> dict:
    """The checkpoint's tensors as views of the file (not read yet), in open_clip's key names."""
    import torch

    checkpoint: Any
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        checkpoint = load_file(path, device="cpu")  # mapped, not read
    else:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # a legacy (pre-zip) torch file cannot be mapped
            raise _NotMappable(one_line(exc)) from exc
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise _NotMappable("not a plain state dict")
    if next(iter(checkpoint)).startswith("module."):  # saved from DistributedDataParallel
        checkpoint = {k[7:]: v for k, v in checkpoint.items()}
    return checkpoint


def _massage(model, state: dict) -> dict:
    """What open_clip 3.x's load_checkpoint does to a state dict before loading it, minus the loading."""
    import torch
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        if key in state and getattr(model, key, None) is not None and model.get_parameter(key).ndim != state[key].ndim:
            state[key] = state[key].reshape(model.get_parameter(key).shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    state.pop("text.transformer.embeddings.position_ids", None)
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    return state


def _rebuild_buffers(model) -> None:
    """Non-persistent buffers stay on the meta device after loading; the causal mask is the only one
    open_clip has. Any other would need its module's own code: the plain route handles that."""
    import torch

    for module in model.modules():
        for key, buffer in list(module._buffers.items()):
            if buffer is None or not buffer.is_meta:
                continue
            if key != "attn_mask" or buffer.ndim != 2 or buffer.shape[0] != buffer.shape[1]:
                raise _NotMappable(f"cannot rebuild buffer {key} of {type(module).__name__}")
            module._buffers[key] = torch.full(tuple(buffer.shape), float("-inf")).triu_(1)


class _no_random_init_warning:
    """open_clip warns "No pretrained weights loaded" through the root logger when we build the empty
    model we are about to fill; that warning is wrong here, so it is filtered out while building."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")

    def __enter__(self):
        logging.getLogger().addFilter(self)

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeFilter(self)


def reparameterize(model):
    """Fold MobileOne/FastViT training branches into single convs (MobileCLIP): same output, faster.

    open_clip 3.x has no helper of its own; timm's walks the module tree and calls each block's
    `reparameterize()` / `fuse()` / `switch_to_deploy()`. Plain ViTs have none of these and are untouched.
    """
    has_branches = any(hasattr(m, "reparameterize") or hasattr(m, "switch_to_deploy") for m in model.modules())
    if not has_branches:
        return model
    try:
        from timm.utils.model import reparameterize_model
    except ImportError:  # pragma: no cover - timm always ships it since 0.9
        return model
    return reparameterize_model(model, inplace=True)


def explain_load_error(name: str, pretrained: str, exc: Exception) -> ModelUnavailable:
    text = one_line(exc)
    shape_words = ("state_dict", "size mismatch", "Missing key", "Unexpected key", "width changed")
    if any(words in text for words in shape_words):
        return ModelUnavailable(
            f"checkpoint {pretrained} does not fit model {name} ({text[:200]}); "
            "set [model] name to the architecture the checkpoint was trained with"
        )
    return ModelUnavailable(f"cannot load model {name} with weights {pretrained or '(none)'}: {text[:300]}")


# ---------------------------------------------------------------------------------------------- pages


class MappedFile:
    """The address ranges where a checkpoint file is mapped into this process, to give pages back.

    Tensors loaded with mmap are private, read-only-in-practice mappings of the file: once the model no
    longer uses one (replaced by a bf16 copy, or exported), MADV_DONTNEED drops its pages from our
    resident memory; if it is read again, the kernel reads it back from the file, so nothing is lost.
    Only pages inside the file's own mappings are ever released (an anonymous page would be zeroed).
    Linux only (/proc/self/maps); elsewhere `release` does nothing.
    """

    def __init__(self, path: str):
        self.path = os.path.realpath(path)

    def _ranges(self) -> list[tuple[int, int]]:
        ranges = []
        try:
            with open("/proc/self/maps") as handle:
                for line in handle:
                    fields = line.split(maxsplit=5)
                    if len(fields) == 6 and fields[5].rstrip("\n") == self.path:
                        start, end = (int(v, 16) for v in fields[0].split("-"))
                        ranges.append((start, end))
        except OSError:
            return []
        return ranges

    def release(self, tensors) -> int:
        """Drop the resident pages of these CPU tensors that lie in the file's mappings; bytes released."""
        ranges = self._ranges()
        if not ranges:
            return 0
        page, released = mmap.PAGESIZE, 0
        for tensor in tensors:
            if tensor.device.type != "cpu" or not tensor.numel():
                continue
            first = tensor.data_ptr()
            last = first + tensor.numel() * tensor.element_size()
            if not any(lo <= first and last <= hi for lo, hi in ranges):
                continue
            start, end = -(-first // page) * page, last // page * page  # whole pages inside the tensor only
            if end > start and _madvise(start, end - start) == 0:
                released += end - start
        return released


_MADV_DONTNEED = 4
_libc = None


def _madvise(address: int, length: int) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return _libc.madvise(ctypes.c_void_p(address), ctypes.c_size_t(length), _MADV_DONTNEED)
