"""The vector index of a library's model, kept in step with the catalog's change feed.

Who changes it:
- *owned* (a running daemon): only the daemon's writer thread calls `catch_up` and `save`; readers (FUSE
  threads) call `current`, which hands out the index the writer last published and never changes it.
  Readers wait for the first load only (it runs in the writer thread at start, not in a FUSE call).
- *self-serve* (the CLI, the Python API, `searchfs index`): `current` catches up itself, in memory, under
  a lock. Only the library's writer (`searchfs index`, the daemon) saves.

Catching up reads the catalog's vector_log past the sequence number the index is at: it costs what
changed, never a read of every id. A saved index older than the catalog is loaded and caught up, never
rebuilt, as long as the log still reaches back to it (the log is pruned only up to what was saved).
A save writes what changed since the last one (store/vector_save.py), and only once SNAPSHOT_MIN_CHANGES
changes have piled up (or when forced): until then the catalog's log is the write-ahead of the new
vectors. Nothing changed: nothing is written, at unmount either.

Loading checks the files' sizes only; their checksums (a read of every byte, ~1 GB/s) are verified
afterwards in a thread of their own, and a mismatch makes the writer's next catch-up rebuild from the
catalog (the damaged index answers meanwhile: derived data, at worst a wrong ranking for a while).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .protocol import CatalogStore
from .vector_build import build_index
from .vectors import VectorIndex

log = logging.getLogger(__name__)

SNAPSHOT_MIN_CHANGES = 2_000  # a save is worth its files past this many logged changes
FIRST_LOAD_WAIT = 600.0  # seconds a reader waits for the writer's first load of a huge index


class VectorStore:
    def __init__(self, catalog: CatalogStore, folder: Callable[[], Path], model: Callable[[], str], exact_below: int):
        self.catalog = catalog
        self._folder = folder
        self._model = model
        self.exact_below = exact_below
        self._lock = threading.RLock()
        self._index: VectorIndex | None = None
        self._key: tuple[str, int] | None = None  # (model, dim) of the index held
        self._seq = -1  # the catalog's vectors generation the index is caught up to
        self._saved_seq: int | None = None  # what the snapshot on disk is caught up to
        self.owned = False
        self._published = threading.Event()
        self._damaged: VectorIndex | None = None  # an index whose files failed the background checksums
        self.last_load: dict = {}  # how the index was last loaded (for status and benchmarks)

    # -- readers ---------------------------------------------------------------------------------------

    def current(self) -> VectorIndex | None:
        """The index to search (None: nothing embedded yet)."""
        if not self.owned:
            return self.catch_up()
        if not self._published.wait(FIRST_LOAD_WAIT):
            log.warning("the vector index is still loading; searching without it")
        return self._index

    @property
    def seq(self) -> int:
        return self._seq

    # -- the writer ------------------------------------------------------------------------------------

    def own(self) -> None:
        """From now on only the caller's thread (the daemon's writer) changes the index."""
        self.owned = True
        self._published.clear()

    def catch_up(self) -> VectorIndex | None:
        """Bring the index in step with the catalog, loading or building it first if needed."""
        with self._lock:
            try:
                self._catch_up()
            finally:
                self._published.set()
            return self._index

    def _catch_up(self) -> None:
        model = self._model()
        dim = self.catalog.embedding_dim(model)
        if dim is None:
            self._index, self._key, self._seq = None, None, self.catalog.vectors_generation()
            return
        if self._index is not None and self._seq < self.catalog.oldest_logged():
            self._index = None  # the log was pruned past us (a snapshot was saved meanwhile): load that one
        if self._index is not None and self._index is self._damaged:
            log.warning("vector index in %s failed its checksums: rebuilding it from the catalog", self._folder())
            self._index, self._saved_seq = None, None
        if self._index is None or self._key != (model, dim):
            started = time.monotonic()
            self._index, self._seq = self._load_or_build(model, dim)
            self._key = (model, dim)
            self.last_load["load_s"] = round(time.monotonic() - started, 3)
        if self.catalog.vectors_generation() == self._seq:
            return
        started = time.monotonic()
        changes = self.catalog.vector_changes(model, self._seq, dim)
        if len(changes.remove_ids):
            self._index.remove(changes.remove_ids)
        if len(changes.add_ids):
            self._index.add(changes.add_ids, changes.add_vectors)
        self._seq = changes.upto
        self.last_load["caught_up"] = (
            self.last_load.get("caught_up", 0) + len(changes.add_ids) + len(changes.remove_ids)
        )
        log.debug(
            "vector index caught up on %d changes in %.3f s",
            len(changes.add_ids) + len(changes.remove_ids),
            time.monotonic() - started,
        )

    def _load_or_build(self, model: str, dim: int) -> tuple[VectorIndex, int]:
        opened = VectorIndex.open(self._folder(), model, exact_below=self.exact_below)
        if opened is not None:
            index, saved = opened
            if index.dim == dim and self.catalog.oldest_logged() <= saved <= self.catalog.vectors_generation():
                self._saved_seq = saved
                self.last_load = {"loaded": len(index), "saved_at": saved, "rebuilt": False, "caught_up": 0}
                log.info(
                    "vector index: loaded %d vectors saved at %d (catalog at %d)",
                    len(index),
                    saved,
                    self.catalog.vectors_generation(),
                )
                threading.Thread(target=self._verify, args=(index,), name="searchfs-verify", daemon=True).start()
                return index, saved
            log.info("vector index in %s is from another catalog state (%d); rebuilding", self._folder(), saved)
        seq = self.catalog.vectors_generation()  # before reading: later changes are caught up after
        with self.catalog.live_vectors(model, dim) as (count, chunks):
            index = build_index(count, chunks, dim, model, self.exact_below, self._folder().parent)
        self._saved_seq = None
        self.last_load = {"loaded": len(index), "saved_at": None, "rebuilt": True, "caught_up": 0}
        log.info("vector index: built from the catalog (%d vectors)", len(index))
        return index, seq

    def _verify(self, index: VectorIndex) -> None:
        problems = index.verify()
        if problems:
            log.warning("vector index in %s is damaged (%s); it is rebuilt", self._folder(), "; ".join(problems))
            self._damaged = index

    def save(self, force: bool = False) -> bool:
        """Write what changed when SNAPSHOT_MIN_CHANGES changes have piled up (anything, when `force`), then
        prune the catalog's log up to it. True when the index was saved. Readers are not held up: they
        search the state published before, and the new one after."""
        with self._lock:
            index = self._index
            if index is None or self._saved_seq == self._seq:
                return False
            behind = self._seq - (self._saved_seq if self._saved_seq is not None else -(10**12))
            if not force and behind < SNAPSHOT_MIN_CHANGES:
                return False
            started = time.monotonic()
            try:
                written = index.save(self._folder(), self._seq)
            except OSError as exc:  # derived data: a failed save costs a longer catch-up later, nothing more
                log.warning("could not save the vector index to %s: %s", self._folder(), exc)
                return False
            log.info("vector index saved at %d: %s in %.2f s", self._seq, written, time.monotonic() - started)
            self._saved_seq = self._seq
        with self.catalog.transaction() as tx:
            tx.prune_vector_log(self._saved_seq)
        return True

    def health(self) -> dict:
        """What `searchfs status` says of the saved index, without loading it."""
        model = self._model()
        health: dict = {"dir": str(self._folder()), "live_vectors": self.catalog.live_count(model)}
        try:
            stamp, problems = VectorIndex.read_stamp(self._folder(), model)
        except (OSError, ValueError):
            health["state"] = "not built yet" if health["live_vectors"] else "empty"
            return health
        saved = int(stamp.get("generation", -1))
        health.update(kind=stamp.get("kind"), count=stamp.get("count"), generation=saved)
        if problems:
            health["state"] = "stale, rebuilt on next search: " + "; ".join(problems)
        elif saved < self.catalog.oldest_logged() or saved > self.catalog.vectors_generation():
            health["state"] = "stale, rebuilt on next search: the catalog's change log no longer reaches it"
        else:
            behind = self.catalog.vectors_generation() - saved
            health["state"] = "ok" if not behind else f"ok, {behind} logged changes to catch up on load"
        return health
