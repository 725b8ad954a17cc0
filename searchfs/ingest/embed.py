"""CLIP embeddings for image files and query texts: the part of searchfs that runs a model.

* `Embedder` embeds images through a runtime (runtime.py; `TorchRuntime` today), decoding files in a
  small thread pool one batch ahead of the model, and answers texts from the text cache, else the numpy
  text tower (no torch), else the runtime. The runtime loads lazily, or in the background from
  `start_loading()` (indexing calls it before its scan, so imports and loading overlap the scan,
  hashing and exiftool).
* `embed_query_text(settings, text)` is the one entry point for a query text outside a library's
  engine (a service answering the CLI): cache, numpy tower, torch, in that order.

What a setting names and where its weights are is `weights.py`'s business; decoding files is `decode.py`'s.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ImageError, ModelUnavailable, one_line
from ..store.textcache import TextCache, TextVectors
from . import text_tower, vit_tower
from .decode import PathLike, decode_image, load_image, to_rgb
from .runtime import Runtime, TextEncoder, choose_batch_size
from .weights import input_size_hint, model_id, resolve_weights, weights_status

__all__ = [
    "Embedder",
    "ImageResult",
    "TextCache",
    "embed_query_text",
    "model_id",
    "resolve_weights",
    "weights_status",
]

log = logging.getLogger(__name__)

# Pictures decoded ahead while the model loads, kept small as the load peaks then: 48 MiB is 20 12 MP
# photos drafted for a 224 px model, or 330 fitted to its input (when the plain-torch tower's transform is
# known before the load: vit_tower.planned), about 6 s of decoding on 2 cores, more than any load.
AHEAD_BYTES = 48 * (1 << 20)
Then = Sequence[PathLike] | Callable[[], Sequence[PathLike]]  # embed_images's `then`
ASK_EVERY = 0.05  # seconds between looks for more files to decode while the model loads
DECODE_NICENESS = 10  # the decode threads' niceness, above the process's own (_yield_to_the_model)


@dataclass(frozen=True)
class ImageResult:
    """One image's outcome: its normalized float32 vector, or the ImageError that says why there is none."""

    vector: np.ndarray | None = None
    error: ImageError | None = None

    @property
    def ok(self) -> bool:
        return self.vector is not None


@dataclass(frozen=True)
class _Decoded:
    """A picture decoded before the model was loaded, for the model's input side `target`; when `fitted`,
    also fitted to that input (vit_tower.fit) for the plain-torch tower of that config."""

    picture: Image.Image
    target: int
    fitted: vit_tower.VitConfig | None = None

    def usable_by(self, runtime: Runtime) -> bool:
        if self.fitted is not None:
            return runtime.fit_config == self.fitted
        return self.target == runtime.input_size

    def prepare(self, runtime: Runtime):
        try:
            return runtime.prepare(self.picture)
        except Exception as exc:  # noqa: BLE001 - as in Embedder._decode
            return ImageError(f"cannot preprocess: {one_line(exc)}")


def _yield_to_the_model() -> None:
    """Decode threads run DECODE_NICENESS nicer than they were born (up to 19): on a CPU the model's
    threads get a core whenever they can run, and decoding takes what they leave. In fp32, where the
    model is the bottleneck, that indexed 3% faster here (alternating runs; +19: 4.5%); in bf16, where
    decoding is, it changed nothing. The mount's FUSE threads keep their priority over decoding too.
    Linux sets one thread's niceness this way; elsewhere the call fails and nothing changes."""
    with contextlib.suppress(OSError, AttributeError):
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me) + DECODE_NICENESS))


class _Decodes:
    """One embed_images call's decodes: its own paths in order, then the caller's next ones (`then`), for
    the next call. Decodes an earlier call started for these paths are taken as they are. A callable
    `then` is asked again whenever its paths are all decoding (while the model loads, more files commit)."""

    def __init__(self, embedder: Embedder, paths: Sequence[PathLike], then: Then):
        self.embedder, self.paths = embedder, paths
        self.more = then if callable(then) else None
        self.then = [] if callable(then) else list(then)
        self.asked = 0.0  # when `more` was last asked
        self.pool = embedder._decode_pool()
        self.ahead = embedder._swap_ahead({})
        self.queue: collections.deque[tuple[int, Future]] = collections.deque()
        self.handed: dict[PathLike, Future] = {}
        self.submitted = 0

    @property
    def pending(self) -> bool:
        return bool(self.queue) or self.submitted < len(self.paths)

    def submit(self, up_to: int, target: int, fit) -> None:
        """Keep up to `up_to` decodes going: this call's paths first, then the next call's."""
        while self.submitted < len(self.paths) and len(self.queue) < up_to:
            self.queue.append((self.submitted, self._start(self.paths[self.submitted], target, fit)))
            self.submitted += 1
        while self.submitted == len(self.paths) and len(self.queue) + len(self.handed) < up_to:
            if not self.then and not self._ask():
                return
            path = self.then.pop(0)
            if path not in self.handed:
                self.handed[path] = self._start(path, target, fit)

    def _ask(self) -> bool:
        """Refill `then` from the callable, at most every ASK_EVERY seconds; whether anything new came."""
        if self.more is None or time.monotonic() - self.asked < ASK_EVERY:
            return False
        self.asked = time.monotonic()
        self.then = [p for p in self.more() if p not in self.handed]
        return bool(self.then)

    def _start(self, path: PathLike, target: int | None, fit) -> Future:
        started = self.ahead.pop(path, None)
        return started if started is not None else self.pool.submit(self.embedder._decode, path, target, fit)

    def take(self, count: int) -> list[tuple[int, Future]]:
        return [self.queue.popleft() for _ in range(min(count, len(self.queue)))]

    def hand_over(self) -> None:
        for future in self.ahead.values():  # started for paths this call did not ask for
            future.cancel()
        for future in self.embedder._swap_ahead(self.handed).values():  # another caller's, meanwhile
            future.cancel()

    def cancel(self) -> None:
        for future in [f for _, f in self.queue] + list(self.handed.values()) + list(self.ahead.values()):
            future.cancel()


class Embedder:
    """Thread-safe; model calls are serialized (the runtime already uses every core)."""

    def __init__(self, settings, cache_path: Path | None = None):
        self.settings = settings
        self._model_id: str | None = None
        self._texts = TextVectors(cache_path)
        self._runtime: Runtime | None = None
        self._tower: TextEncoder | None = None
        self._tower_checked = False
        self._failure: ModelUnavailable | None = None
        self._load_lock = threading.Lock()  # held for a whole load
        self._model_lock = threading.Lock()  # held for a torch forward pass (the numpy text tower needs none)
        self._count_lock = threading.Lock()  # for model_calls, counted from any thread
        self._loader_lock = threading.Lock()  # held while starting the background load
        self._loader: threading.Thread | None = None
        self._closed = False
        self.model_calls = 0  # forward passes run (torch or numpy), for tests and stats
        self.decode_workers = max(2, min(4, os.cpu_count() or 2))
        self._pool: ThreadPoolExecutor | None = None  # decode threads, made on first use, kept until close
        self._ahead: dict[PathLike, Future] = {}  # decodes started for the next embed_images (its `then`)
        self._decode_lock = threading.Lock()  # guards _pool and _ahead

    # ---------------------------------------------------------------- loading

    @property
    def model_id(self) -> str:
        if self._model_id is None:
            self._model_id = model_id(self.settings)
        return self._model_id

    @property
    def loaded(self) -> bool:
        """The image runtime (torch) is loaded."""
        return self._runtime is not None

    @property
    def runtime(self) -> Runtime:
        self.load()
        assert self._runtime is not None
        return self._runtime

    @property
    def device(self) -> str:
        return self._runtime.device if self._runtime else self.settings.model_device

    @property
    def precision(self) -> str:
        """The image tower's precision once loaded (the setting until then)."""
        return self._runtime.precision if self._runtime else self.settings.model_precision

    @property
    def dim(self) -> int:
        tower = self._text_tower()
        return tower.dim if tower is not None and not self._runtime else self.runtime.dim

    @property
    def input_size(self) -> int:
        """The model's input side, used to pick the JPEG draft scale."""
        return self.runtime.input_size

    @property
    def batch_size(self) -> int:
        return choose_batch_size(self.settings.model_batch_size, self.runtime.device)

    def start_loading(self) -> None:
        """Load the runtime in a background thread; `load()` (and every embedding call) then waits for it."""
        with self._loader_lock:
            if self._runtime is not None or self._failure is not None or self._loader is not None:
                return
            self._loader = threading.Thread(target=self._load_in_background, name="searchfs-model-load", daemon=True)
            self._loader.start()

    def _load_in_background(self) -> None:
        log.debug("background load starts")
        try:
            self.load()
        except ModelUnavailable:
            pass  # kept in self._failure: the next load() raises it where someone can report it
        except Exception:  # noqa: BLE001 - a thread must not die with a traceback; load() retries in the foreground
            log.debug("background model load failed", exc_info=True)

    def load(self, images: bool = True) -> None:
        """Load the runtime; `images=False` when only a text needs it (images then finish loading on use)."""
        if self._runtime is not None:
            return
        with self._load_lock:
            if self._runtime is not None:
                return
            if self._failure is not None:
                raise self._failure  # a failed load is not retried: it would repeat the same probe/wait
            try:
                runtime = self._new_runtime()
                runtime.load(images=images)
            except ModelUnavailable as exc:
                self._failure = exc
                raise
            self._runtime = runtime
            self._tower_checked = False  # the load may have just exported the numpy text tower
        if self._closed:  # closed while a background load ran: nobody will use this model
            self._drop_runtime()

    def _fit_ahead(self) -> vit_tower.VitConfig | None:
        """The plain-torch tower's config when the load will build it, so that pictures decoded before
        the load ends can be fitted to its input; None when only the load can tell. (A model id that is
        never exported, random weights, has no stamp: the runtime keeps no folder for it.)"""
        try:
            model = self.model_id
        except ModelUnavailable:
            return None
        found = vit_tower.planned(self.settings, text_tower.folder_for(self.settings, model), model)
        return found[0] if found else None

    def _new_runtime(self) -> Runtime:
        from .torch_runtime import TorchRuntime

        return TorchRuntime(self.settings, text_tower.folder_for(self.settings, self.model_id))

    # ---------------------------------------------------------------- images

    def embed_images(
        self, paths: Sequence[PathLike], on_batch: Callable | None = None, then: Then = ()
    ) -> list[ImageResult]:
        """One ImageResult per path. `on_batch(positions, results)`, when given, is called after each
        model batch with the positions it filled, so the caller can store them at once (results then
        grow while a long round runs). `then`: the paths the caller asks for next (the indexer's next
        batch), or a function that says them (asked again as they run out); once these are all
        decoding, those are decoded too, in the same window, and the next call takes them as they are,
        so the decoders never idle between two calls, nor while the model loads.

        Files are decoded in a thread pool, one batch ahead of the model. While the model is still
        loading (in the background, from start_loading), decoding runs further ahead, up to
        AHEAD_BYTES of pictures, so that the wait is spent on work the model needs anyway."""
        self.start_loading()
        decodes = _Decodes(self, paths, then)
        fit = None if self.loaded else self._fit_ahead()
        target = fit.image_size if fit else None if self.loaded else input_size_hint(self.settings)
        if target:
            side = target if fit else 4 * target  # a drafted picture: < 4 x target a side
            ahead = max(1, AHEAD_BYTES // (3 * side**2))
            decodes.submit(ahead, target, fit)
            while not self._wait_loaded(ASK_EVERY):  # files committed meanwhile are decoded as they come
                decodes.submit(ahead, target, fit)
        try:
            runtime = self.runtime  # waits for the load
        except ModelUnavailable:
            decodes.cancel()  # the pictures decoded ahead have no model to go to
            raise
        results: list[ImageResult] = [ImageResult()] * len(paths)
        size = self.batch_size
        try:
            while decodes.pending:
                decodes.submit(2 * size, runtime.input_size, None)  # the next batch, and one decoding behind
                batch = decodes.take(size)
                self._embed_decoded(runtime, batch, paths, results)
                if on_batch is not None:
                    on_batch(range(batch[0][0], batch[-1][0] + 1), results)
            decodes.submit(2 * size, runtime.input_size, None)
        except BaseException:
            decodes.cancel()
            raise
        decodes.hand_over()
        return results

    def _wait_loaded(self, timeout: float) -> bool:
        """Whether the background load has ended (loaded or failed), waiting up to `timeout` for it."""
        loader = self._loader
        if self._runtime is not None or self._failure is not None or loader is None:
            return True
        loader.join(timeout)
        return not loader.is_alive()

    def _decode_pool(self) -> ThreadPoolExecutor:
        with self._decode_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.decode_workers, thread_name_prefix="searchfs-decode", initializer=_yield_to_the_model
                )
            return self._pool

    def _swap_ahead(self, handed: dict[PathLike, Future]) -> dict[PathLike, Future]:
        """Decodes started for the next call, in exchange for those this call starts."""
        with self._decode_lock:
            ahead, self._ahead = self._ahead, handed
        return ahead

    def _decode(self, path: PathLike, target: int | None, fit: vit_tower.VitConfig | None = None):
        """Decode (in a worker thread) and, once the model is loaded, preprocess one file; errors come
        back as values. Before the load ends the picture comes back as decoded (and fitted, with `fit`)."""
        runtime = self._runtime
        if target is None:  # called once the model is loaded
            assert runtime is not None
            target = runtime.input_size
        try:
            picture = load_image(path, self.settings.index_max_pixels, target)
            if runtime is None or runtime.input_size != target:
                return _Decoded(vit_tower.fit(fit, picture), target, fit) if fit else _Decoded(picture, target)
            return runtime.prepare(picture)
        except ImageError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - the transform itself should not fail, but one file must not sink a batch
            return ImageError(f"cannot preprocess: {one_line(exc)}")

    def _embed_decoded(self, runtime: Runtime, batch: list[tuple[int, Future]], paths, results: list) -> None:
        prepared, slots = [], []
        for slot, future in batch:
            item = future.result()
            if isinstance(item, _Decoded):  # decoded while the model loaded
                item = item.prepare(runtime) if item.usable_by(runtime) else self._decode(paths[slot], None)
            if isinstance(item, ImageError):
                results[slot] = ImageResult(error=item)
            else:
                prepared.append(item)
                slots.append(slot)
        if prepared:
            for slot, vector in zip(slots, self._encode_images(runtime, prepared)):
                results[slot] = ImageResult(vector=vector)

    def embed_bytes(self, data: bytes, orientation: int | None = None) -> ImageResult:
        """A picture held in memory (a camera RAW's embedded preview)."""
        runtime = self.runtime
        try:
            image = decode_image(data, self.settings.index_max_pixels, runtime.input_size, orientation)
        except ImageError as exc:
            return ImageResult(error=exc)
        return ImageResult(vector=self.embed_pil([image])[0])

    def embed_pil(self, images: Sequence[Image.Image]) -> np.ndarray:
        runtime, size = self.runtime, self.batch_size
        out = [
            self._encode_images(runtime, [runtime.prepare(to_rgb(image)) for image in images[start : start + size]])
            for start in range(0, len(images), size)
        ]
        return np.concatenate(out) if out else np.zeros((0, runtime.dim), np.float32)

    def _encode_images(self, runtime: Runtime, prepared: list) -> np.ndarray:
        with self._model_lock:
            self._count_call()
            return runtime.encode_images(prepared)

    def _count_call(self) -> None:
        with self._count_lock:
            self.model_calls += 1

    # ---------------------------------------------------------------- texts

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Normalized vectors for query texts; cached texts never touch (or even load) a model."""
        tower = self._tower if self._tower_checked else None
        known_dim = (self._runtime.dim if self._runtime else tower.dim if tower else 0) or None
        found = [self._texts.get(self.model_id, text, known_dim) for text in texts]
        missing = sorted({t for t, v in zip(texts, found) if v is None})
        if missing:
            fresh = dict(zip(missing, self._encode_texts(missing)))
            for text, vector in fresh.items():
                self._texts.put(self.model_id, text, vector)
            found = [v if v is not None else fresh[t] for t, v in zip(texts, found)]
        if not found:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([v for v in found if v is not None]).astype(np.float32, copy=False)

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        tower = self._text_tower()
        if tower is not None:
            # Read-only weights and a thread-safe tokenizer: no lock, so a new query text (a mount's
            # query/ folder, a search the daemon answers) never waits behind an image batch, which takes
            # 0.6-1.6 s on a 2-core CPU while a daemon indexes.
            self._count_call()
            return tower.encode_texts(texts)
        self.load(images=False)
        with self._model_lock:
            self._count_call()
            return self.runtime.encode_texts(texts)

    def prepare_texts(self) -> bool:
        """Open the numpy text tower and run it once (nothing is cached), so that a long-lived process's
        first new query text costs only its own encoding, not the tower's opening and first page faults.
        False (and nothing loaded) when new texts would need torch."""
        tower = self._text_tower()
        if tower is None:
            return False
        self._count_call()
        tower.encode_texts(["a photo"])
        return True

    def _text_tower(self) -> TextEncoder | None:
        """The numpy text tower when this model has a current export; looked up once per load."""
        if self.settings.model_text_tower == "torch":
            return None
        if not self._tower_checked:
            self._tower = text_tower.NumpyTextTower.open(
                text_tower.folder_for(self.settings, self.model_id), self.model_id
            )
            self._tower_checked = True
        return self._tower

    # ---------------------------------------------------------------- misc

    def close(self) -> None:
        """Free the model. A background load still running finishes and is then dropped (by load())."""
        self._texts.close()
        self._closed = True
        self._tower = None
        for future in self._swap_ahead({}).values():
            future.cancel()
        with self._decode_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        self._drop_runtime()

    def _drop_runtime(self) -> None:
        with self._model_lock:
            runtime, self._runtime = self._runtime, None
        if runtime is not None:
            runtime.close()


def embed_query_text(settings, text: str) -> np.ndarray:
    """The normalized vector of one query text for `settings`' model and library: the library's text
    cache, else the numpy text tower, else torch (loading the model). The result is cached."""
    cache = Path(settings.library_dir) / "textcache.sqlite" if Path(settings.library_dir).is_dir() else None
    embedder = Embedder(settings, cache_path=cache)
    try:
        return embedder.embed_text([text])[0]
    finally:
        embedder.close()
