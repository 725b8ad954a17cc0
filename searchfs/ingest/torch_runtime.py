"""The open_clip runtime: one model on one device, the image tower in the precision the self-check allows.

Loading (torch_load.py) maps the checkpoint instead of copying it. Then, in this order, so that the peak
memory holds the fp32 weights of at most one tower at a time:
1. the text tower is exported for numpy (text_tower.py) when its export is missing or stale, checked
   against torch on a few texts, and its pages given back: indexing itself never runs the text tower;
2. the image tower moves to its precision: each weight is converted and its fp32 pages given back (or,
   for a plain-torch tower checked at an earlier load, its stored low-precision tensors are mapped
   instead, vit_tower.py), then the fixed probe set is embedded and compared with fp32 (selfcheck.py);
   on failure the fp32 weights come back from the file and the tower stays fp32.
CUDA and MPS take the same path (fp16 instead of bf16); only the device and the batch size differ.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelUnavailable
from . import selfcheck, text_tower, torch_import, torch_load, vit_tower
from .runtime import choose_precision, resolve_device, torch_dtype
from .torch_describe import describe_image_tower, describe_text_tower, file_holds, own_tensors
from .weights import model_id, model_source, resolve_weights

log = logging.getLogger(__name__)

# torch's OpenMP threads spin after each parallel region by default, waiting for the next one. Beside the
# decoding threads, hashing and exiftool that an index runs at the same time, that spinning takes the
# cores they need: on two cores a 12 MP index ran 18% faster with waiting threads that sleep
# (benchmarks/bench_index.py). Read by OpenMP when torch loads it, so set before any import of torch;
# a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

VERIFY_TEXTS = ("a photo of a dog", "red flower", "AC/DC poster, 1979!", "straße café 東京 2019")
MIN_TEXT_COSINE = 0.9999


class TorchRuntime:
    """The Runtime protocol over open_clip. `models_dir` holds what is derived from the weights (the
    numpy text tower, the self-check's fp32 reference); None keeps nothing."""

    def __init__(self, settings, models_dir: Path | None = None):
        self.settings = settings
        self.model_id = model_id(settings)
        self.models_dir = models_dir if text_tower.exportable(self.model_id) else None
        self.device = "cpu"
        self.precision = "fp32"
        self.dim = 0
        self.input_size = 224
        self.verdict: selfcheck.Verdict | None = None
        self.fit_config: vit_tower.VitConfig | None = None  # set when prepare() is vit_tower.prepare(config, .)
        self.exported = False  # this load wrote the numpy text tower
        self._model: Any = None
        self._transform: Any = None
        self._tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()
        self._precision_lock = threading.Lock()
        self._dtype: Any = None  # the image tower's dtype; None until its precision is set
        self._mapped: Any = None
        self._text_model: Any = None  # who answers encode_texts (the model, or open_clip's beside a ViT tower)
        self._low_stored = False  # the image tower's tensors came in the precision to check (vit_tower.load_low)
        self._tower_source: tuple[vit_tower.VitConfig, str] | None = None  # a plain-torch tower's config, file

    # ---------------------------------------------------------------- loading

    def load(self, images: bool = True) -> None:
        """Load the model; `images=False` (a text query torch must answer) leaves the image tower's
        precision step to its first use. For images alone, a model whose plain-torch image tower was
        verified at an earlier load (vit_tower.py) loads without open_clip."""
        torch = torch_import.import_torch()  # the first import of a process, as a rule: its other threads go on

        s, started = self.settings, time.monotonic()
        self.device = resolve_device(s.model_device)
        if s.model_threads > 0:
            torch.set_num_threads(s.model_threads)
        built = self._build_image_tower() if images else None
        if built is None:
            checkpoint, overrides = resolve_weights(s)
            log.debug("resolved weights after %.2fs", time.monotonic() - started)
            model, mapped = torch_load.build(model_source(s), checkpoint, overrides)
            self._transform = _image_transform(model)
            self._export_text(model, mapped)
            self._export_image_tower(model, checkpoint)
        else:
            model, mapped = built
        log.debug("built after %.2fs", time.monotonic() - started)
        self.input_size = _input_size(model)
        if self.device != "cpu":
            model = model.to(self.device)
        self._model, self._mapped = model, mapped
        self.dim = _output_dim(model) or 0
        log.info("loaded %s on %s in %.1fs", self.model_id, self.device, time.monotonic() - started)
        if images or not self.dim:
            self._images_ready()

    def _images_ready(self) -> None:
        """The image tower in its precision (once): converted and self-checked."""
        with self._precision_lock:
            if self._dtype is not None:
                return
            started = time.monotonic()
            wanted = choose_precision(self.settings.model_precision, self.device)
            self.precision = self._set_precision(self._model, self._mapped, wanted)
            self._mapped = None  # nothing more to give back
            if not self.dim:  # fp32 from the start: no probe ran
                probe = self.prepare(selfcheck.probe_pictures(self.input_size, 1)[0])
                self.dim = _output_dim(self._model) or self._encode_images(probe[None]).shape[1]
            check = f", self-check: {self.verdict}" if self.verdict else ""
            log.info("image tower in %s (%.1fs%s)", self.precision, time.monotonic() - started, check)

    def _export_text(self, model, mapped) -> None:
        """Write the numpy text tower once per model id; never fails the load (torch stays the fallback).
        The file's text pages are given back before the export is checked, so that the torch and the
        numpy copies of the tower are never resident together."""
        if self.models_dir is None or self.settings.model_text_tower != "numpy":
            return
        if text_tower.is_current(self.models_dir, self.model_id):
            return
        described = describe_text_tower(model, self._torch_tokenizer())
        if described is None:
            log.info("text tower of %s has no numpy version: text queries use torch", self.model_id)
            return
        config, arrays, tensors = described
        try:
            expected = self._encode_texts_torch(model, list(VERIFY_TEXTS))
            text_tower.write(self.models_dir, self.model_id, config, arrays)
        except OSError as exc:
            log.warning("could not export the text tower to %s: %s", self.models_dir, exc)
            return
        finally:
            del arrays
            self._tokenizer = None  # open_clip's tokenizer tables: rebuilt if torch ever answers a text
            if mapped is not None:
                mapped.release(tensors)
        self.exported = self._verify_export(expected)

    def _verify_export(self, expected: np.ndarray) -> bool:
        assert self.models_dir is not None
        tower = text_tower.NumpyTextTower.open(self.models_dir, self.model_id)
        cosine = float(np.min(np.sum(expected * tower.encode_texts(VERIFY_TEXTS), axis=1))) if tower else 0.0
        if cosine >= MIN_TEXT_COSINE:
            return True
        log.warning("numpy text tower disagrees with torch (cosine %.6f): text queries use torch", cosine)
        (self.models_dir / text_tower.STAMP).unlink(missing_ok=True)
        return False

    # ---------------------------------------------------------------- the plain-torch image tower

    def _build_image_tower(self):
        """(ImageModel, mapped file) from a verified stamp and the checkpoint file it names, or None
        (open_clip's route). The model id covers the weights (a checkpoint file's own fingerprint, a tag's
        name), so a stamp of this id names these weights. Only when the numpy text tower needs no export
        either: that takes open_clip."""
        found = vit_tower.planned(self.settings, self.models_dir, self.model_id)
        if found is None:
            return None
        config, checkpoint = found
        low = choose_precision(self.settings.model_precision, self.device)  # the self-check still decides
        weights = vit_tower.load_low(self.models_dir, self.model_id, config, low) if low != "fp32" else None
        self._low_stored, self._tower_source = weights is not None, (config, checkpoint)
        weights = weights or vit_tower.load_weights(config, checkpoint)
        if weights is None:
            return None
        self._transform = functools.partial(vit_tower.prepare, config)
        self.fit_config = config
        log.debug("image tower of %s built without open_clip", self.model_id)
        return vit_tower.build(config, weights), torch_load.MappedFile(checkpoint)

    def _export_image_tower(self, model, checkpoint: str | None) -> None:
        """After an open_clip load: stamp the plain-torch tower when it and its preprocessing agree with
        open_clip's on the probe pictures (fp32), so that the next load can skip open_clip."""
        if self.models_dir is None or not checkpoint or vit_tower.read(self.models_dir, self.model_id) is not None:
            return
        config = describe_image_tower(model)
        own = own_tensors(model, config) if config is not None else None
        if config is None or own is None or not file_holds(checkpoint, config, own):
            return  # another architecture, or weights open_clip converted at load: it keeps loading them
        import torch

        ours = vit_tower.build(config, own)  # over the model's own tensors: no second copy in memory
        pictures = selfcheck.probe_pictures(config.image_size, 4)
        odd = [p.resize((p.width * 3 // 2, p.height)) for p in pictures[:2]]  # both orientations, odd sizes
        odd += [p.resize((p.width, p.height * 2 + 1)) for p in pictures[2:]]
        theirs_in = torch.stack([self._transform(p) for p in odd])
        ours_in = torch.stack([vit_tower.prepare(config, p) for p in odd])
        pixel_error = float((theirs_in - ours_in).abs().max())
        with torch.inference_mode():
            expected = _normalized(model.encode_image(theirs_in.float()))
            got = _normalized(ours.encode_image(theirs_in.float()))
        cosine = float(np.min(np.sum(expected * got, axis=1)))
        if pixel_error > vit_tower.MAX_PIXEL_ERROR or cosine < vit_tower.MIN_COSINE:
            why = f"pixels {pixel_error:.2g}, cosine {cosine:.6f}"
            log.info("plain-torch image tower disagrees with open_clip's (%s): open_clip loads it", why)
            return
        try:
            vit_tower.write(self.models_dir, self.model_id, config, checkpoint)
        except OSError as exc:
            log.warning("could not write %s: %s", self.models_dir / vit_tower.STAMP, exc)

    # ---------------------------------------------------------------- precision

    def _set_precision(self, model, mapped, wanted: str) -> str:
        """Convert the image tower to `wanted` if the self-check agrees; returns the precision in use."""
        import torch

        if wanted == "fp32":
            self._dtype = torch.float32
            return "fp32"
        probes = torch.stack([self._transform(p) for p in selfcheck.probe_pictures(self.input_size)])
        reference = selfcheck.load_reference(self.models_dir, self.model_id, self.input_size)
        self._dtype = torch.float32
        if reference is None:  # a few probes at a time: the fp32 tower's activations add to its weights
            if self._low_stored:  # the reference needs the fp32 weights: the checkpoint's, converted below
                model = self._model = self._fp32_tower()
                self._low_stored = False
            reference = np.concatenate([self._encode_images(chunk) for chunk in probes.split(8)])
            selfcheck.save_reference(self.models_dir, self.model_id, self.input_size, reference)
        self.dim = reference.shape[1]
        originals = _convert(model.visual, torch_dtype(wanted), mapped)
        self._dtype = torch_dtype(wanted)
        self.verdict = selfcheck.compare(reference, self._encode_images(probes))
        if self.verdict.ok:
            if not self._low_stored:
                self._store_low(model, wanted)
            return wanted
        log.warning("%s image tower failed its self-check (%s): using fp32", wanted, self.verdict)
        for tensor, original in originals:
            tensor.data = original
        if self._low_stored:  # the stored copy was checked: the fp32 weights come from the checkpoint
            self._model = self._fp32_tower()
        self._dtype = torch.float32
        return "fp32"

    def _fp32_tower(self):
        assert self._tower_source is not None  # set with _low_stored
        config, checkpoint = self._tower_source
        weights = vit_tower.load_weights(config, checkpoint)
        if weights is None:
            raise ModelUnavailable(f"cannot read the image tower's weights from {checkpoint} again")
        model = vit_tower.build(config, weights)
        return model.to(self.device) if self.device != "cpu" else model

    def _store_low(self, model, precision: str) -> None:
        """Keep the checked tower's tensors for the next load of a model with a plain-torch tower."""
        found = vit_tower.read(self.models_dir, self.model_id)
        if found is None or self.models_dir is None:
            return  # nothing would map them: open_clip builds this model
        tensors = own_tensors(model, found[0], fp32=False)
        if tensors is not None:
            vit_tower.save_low(self.models_dir, self.model_id, precision, tensors)

    # ---------------------------------------------------------------- the protocol

    def prepare(self, picture) -> Any:
        return self._transform(picture)

    def encode_images(self, prepared: Sequence[Any]) -> np.ndarray:
        import torch

        self._images_ready()
        return self._encode_images(torch.stack(list(prepared)))

    def _encode_images(self, batch) -> np.ndarray:
        import torch

        with torch.inference_mode():
            features = self._model.encode_image(batch.to(self.device, self._dtype, non_blocking=True))
        vectors = _normalized(features)
        self.dim = vectors.shape[1]
        return vectors

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        with self._tokenizer_lock:  # an image-only model (vit_tower.py) has no text tower: open_clip's, once
            if self._text_model is None:
                is_full = not isinstance(self._model, vit_tower.ImageModel)
                self._text_model = self._model if is_full else self._full_model()
        return self._encode_texts_torch(self._text_model, list(texts))

    def _full_model(self):
        checkpoint, overrides = resolve_weights(self.settings)
        model, _mapped = torch_load.build(model_source(self.settings), checkpoint, overrides)
        return model.to(self.device) if self.device != "cpu" else model

    def _encode_texts_torch(self, model, texts: list[str]) -> np.ndarray:
        import torch

        tokens = self._torch_tokenizer()(texts).to(next(model.parameters()).device)
        with torch.inference_mode():
            return _normalized(model.encode_text(tokens))

    def _torch_tokenizer(self):
        with self._tokenizer_lock:
            if self._tokenizer is None:
                import open_clip

                self._tokenizer = open_clip.get_tokenizer(model_source(self.settings))
            return self._tokenizer

    def close(self) -> None:
        self._model = self._transform = None
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()

    @property
    def model(self):
        return self._model


def _convert(module, dtype, mapped) -> list[tuple[Any, Any]]:
    """Every floating weight and buffer of `module` to `dtype`, one at a time, each fp32 original's pages
    given back as soon as its copy exists. Returns (tensor, original) pairs to undo the conversion: the
    originals are views of the file, read back from it if they are needed again."""
    originals = []
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point() and tensor.dtype != dtype:
            original = tensor.data
            tensor.data = original.to(dtype)
            originals.append((tensor, original))
            if mapped is not None:
                mapped.release([original])
    return originals


def _normalized(features) -> np.ndarray:
    import torch.nn.functional as F

    return F.normalize(features.float(), dim=-1).cpu().numpy().astype(np.float32, copy=False)


def _image_transform(model):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)


def _output_dim(model) -> int | None:
    dim = getattr(model.visual, "output_dim", None)
    return int(dim) if isinstance(dim, int) and dim > 0 else None


def _input_size(model) -> int:
    size = getattr(model.visual, "image_size", 224)
    return int(max(size) if isinstance(size, (tuple, list)) else size)
