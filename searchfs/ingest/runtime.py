"""What the embedder needs from a model, and the choices every runtime shares: device, precision, batch size.

A runtime is anything with this small surface (`TorchRuntime` in torch_runtime.py is the one that embeds
images; `NumpyTextTower` in text_tower.py answers texts without torch), so a faster one (ONNX, another
precision) is one more class, not edits through the embedder. Vectors come back L2-normalized float32.

Precision. CPUs with native bf16 (AVX512-BF16 or AMX on x86, the BF16 extension on ARM) run the image
tower about 2-4x faster in bf16 than in fp32; GPUs run it in fp16. Either is used only after the runtime's
self-check (selfcheck.py) has shown it agrees with fp32 on a fixed probe set; otherwise fp32. The text
tower always runs in fp32 (it is cheap, and its vectors are cached). `[model] precision` overrides auto.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from ..errors import ModelUnavailable

log = logging.getLogger(__name__)


class TextEncoder(Protocol):
    model_id: str
    dim: int

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


class Runtime(TextEncoder, Protocol):
    device: str
    precision: str  # what the image tower runs in after load: fp32, bf16 or fp16
    input_size: int  # the model's input side, for the decoder's draft scale
    # The plain-torch tower's config when prepare() is vit_tower.prepare(config, .), else None: pictures
    # fitted with vit_tower.fit(config, .) while the model loaded go through prepare() as they are.
    fit_config: Any

    def load(self, images: bool = True) -> None: ...

    def prepare(self, picture) -> Any:
        """A decoded RGB picture -> the model's input (runs in the decode threads)."""

    def encode_images(self, prepared: Sequence[Any]) -> np.ndarray: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------- device


def resolve_device(requested: str) -> str:
    import torch

    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if (requested == "cuda" and not cuda) or (requested == "mps" and not mps):
        raise ModelUnavailable(
            f"model.device = {requested} but torch sees no {requested} device; set [model] device = auto or cpu"
        )
    return requested


def choose_precision(requested: str, device: str) -> str:
    """The image tower's precision to try (the self-check still decides): auto -> fp16 on a GPU, bf16 on
    a CPU with native bf16, else fp32. An explicit setting is tried as asked."""
    if requested != "auto":
        return requested
    if device in ("cuda", "mps"):
        return "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic: without it torch emulates bf16 and is slower than fp32."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    if any(getattr(torch.cpu, name, lambda: False)() for name in checks):
        return True
    return "bf16" in _cpu_flags()  # aarch64 lists the BF16 extension as "bf16" in /proc/cpuinfo


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith(("flags", "features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def choose_batch_size(setting: int, device: str) -> int:
    """Images per forward pass: the setting when given (> 0), else what suits the device. CPUs gain
    little beyond 16 and a smaller batch makes results appear sooner; GPUs want large batches (decoding
    then sets the pace), sized by memory."""
    if setting > 0:
        return setting
    if device == "cuda":
        import torch

        memory = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        return 256 if memory >= 16 << 30 else 64
    return 64 if device == "mps" else 16


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
