"""The library: one catalog with its roots, model, vector index and search engine, behind one object.

This is the Python API (`searchfs.open_library`), and what the CLI and the mount are built on. It sits
above ingest/, store/ and search/ and wires them together; nothing below it imports it.

Heavy parts load lazily: opening a library reads no model, and a search whose text is in the text cache
never loads torch at all.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .config import Settings, ensure_private_dir, load_settings
from .errors import LibraryBusy, NotFound, QueryError
from .records import FACET_BY_KEY, Hit, IndexReport, LibraryStatus, Root, RootStatus
from .search.engine import Engine, image_query_vector
from .search.query import Query
from .store.catalog import Catalog
from .store.protocol import CatalogStore
from .store.vector_store import VectorStore

if TYPE_CHECKING:
    from .ingest.embed import Embedder

log = logging.getLogger(__name__)

ORPHAN_GRACE_SECONDS = 7 * 24 * 3600  # keep a vanished photo's vector this long, in case it comes back


class WriterLock:
    """An exclusive, non-blocking lock on the library for the one process that writes it."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LibraryBusy(
                f"library {self.path.parent.name!r} is being written by pid {holder} "
                "(a running `searchfs index`, `watch` or `mount`); wait for it or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def root_path(path: os.PathLike | str | bytes) -> bytes:
    """A folder as the catalog records roots: ~ expanded, absolute, symlinks resolved, bytes."""
    return os.path.realpath(os.fsencode(os.path.expanduser(os.fsdecode(path))))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:120]


class Library:
    def __init__(self, settings: Settings, create: bool = False):
        """Open the library `settings.library`. Only `create=True` (what `index`, `watch` and `mount` pass)
        makes a library that does not exist yet; anything else says which libraries there are, so a
        mistyped name never silently becomes a new empty library."""
        self.settings = settings
        if not create and not settings.catalog_path.exists():
            raise NotFound(missing_library_message(settings))
        ensure_private_dir(settings.home)
        ensure_private_dir(settings.library_dir)
        self.catalog: CatalogStore = Catalog(settings.catalog_path)  # the one place that picks the implementation
        self._embedder: Embedder | None = None
        self._embedder_lock = threading.Lock()
        self.vectors = VectorStore(
            self.catalog, lambda: self.vectors_dir, lambda: self.model_id, settings.search_exact_below
        )
        self._progress: tuple[int, tuple[int, int]] | None = None  # (generation, indexing_progress())
        self._values: dict[str, tuple[int, list[tuple[str, int]]]] = {}  # key -> (generation, facet values)
        self.engine = Engine(
            self.catalog,
            vectors=self.vectors.current,
            embed_text=lambda text: self.embedder.embed_text([text])[0],
            embed_image=lambda path: image_query_vector(self.catalog, self.model_id, path, self.embedder.embed_images),
            model_id=lambda: self.model_id,
            default_limit=settings.search_limit,
            default_min_score=settings.search_min_score,
        )

    # -- parts -------------------------------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        with self._embedder_lock:
            if self._embedder is None:
                from .ingest.embed import Embedder

                self._embedder = Embedder(self.settings, cache_path=self.settings.library_dir / "textcache.sqlite")
            return self._embedder

    @property
    def model_id(self) -> str:
        from .ingest.embed import model_id

        if self._embedder is not None:
            return self._embedder.model_id
        return model_id(self.settings)

    def writer_lock(self) -> WriterLock:
        return WriterLock(self.settings.library_dir / "writer.lock")

    def check_not_busy(self) -> None:
        """Raise LibraryBusy (naming the pid) when another process holds the writer lock."""
        with self.writer_lock():
            pass

    def extractor(self):
        from .ingest.extract import ExifExtractor

        return ExifExtractor(
            self.settings.exiftool_path,
            timeout=self.settings.exiftool_timeout,
            batch=self.settings.exiftool_batch,
            scratch_dir=self.settings.library_dir / "scratch",
        )

    def scan_rules(self):
        from .ingest.scan import ScanRules

        return ScanRules(self.settings.index_exclude, self.settings.index_hidden)

    def indexer(self, extractor, progress=None, defer_fresh: float = 0.0, after_embedding=None):
        from .ingest.indexer import Indexer

        return Indexer(
            self.catalog,
            self.scan_rules(),
            extractor,
            self.embedder,
            progress=progress or (lambda phase, done, total: None),
            defer_fresh=defer_fresh,
            after_embedding=after_embedding,
        )

    # -- roots and indexing ------------------------------------------------------------------------

    def add_roots(self, paths: Iterable[os.PathLike | str | bytes]) -> list[Root]:
        roots = []
        for path in paths:
            absolute = root_path(path)
            if not os.path.isdir(absolute):
                raise NotFound(f"not a folder: {os.fsdecode(absolute)}")
            roots.append(self.catalog.add_root(absolute))
        return roots

    def roots(self) -> list[Root]:
        return self.catalog.roots()

    def forget_root(self, name_or_path: os.PathLike | str | bytes) -> Root:
        """Stop indexing a root and drop its photos from the catalog (their vectors stay for the orphan
        grace period, so adding the folder back soon costs no embedding). Nothing on disk is touched."""
        wanted = os.fsencode(name_or_path)
        as_path = root_path(wanted)
        for root in self.roots():
            if wanted == os.fsencode(root.name) or as_path == root.path:
                with self.writer_lock():
                    self.catalog.remove_root(root.name)
                return root
        known = ", ".join(f"{r.name} ({r.display})" for r in self.roots()) or "none"
        raise NotFound(f"no root {os.fsdecode(wanted)!r}; roots: {known}")

    def index(
        self,
        paths: Sequence[os.PathLike | str | bytes] = (),
        progress: Callable[[str, int, int | None], None] | None = None,
        retry_quarantined: bool = False,
    ) -> IndexReport:
        """Add `paths` as roots (if given) and bring the catalog in step with every named root (all roots
        when none is named). Takes the library's writer lock for the duration."""
        with self.writer_lock():
            roots = self.add_roots(paths) if paths else self.roots()
            if not roots:
                raise NotFound("no folders to index: name one, e.g. `searchfs index ~/Pictures`")
            if retry_quarantined:
                with self.catalog.transaction() as tx:
                    tx.retry_quarantined()
            self.embedder.start_loading()  # imports and loading overlap the scan, hashing and exiftool
            with self.extractor() as extractor:
                report = self.indexer(extractor, progress).index(roots)
            with self.catalog.transaction() as tx:
                tx.collect_orphans(ORPHAN_GRACE_SECONDS)
            self.vectors.catch_up()
            self.vectors.save()
        return report

    # -- vectors -----------------------------------------------------------------------------------

    @property
    def vectors_dir(self) -> Path:
        return self.settings.library_dir / "vectors" / _slug(self.model_id)

    def vector_index(self):
        """The vector index for the current model, in step with the catalog (None: nothing embedded)."""
        return self.vectors.current()

    def save_vectors(self, force: bool = False) -> None:
        """Write the vector index when worth it (for the library's writer: `index`, the daemon)."""
        self.vectors.catch_up()
        self.vectors.save(force=force)

    # -- search ------------------------------------------------------------------------------------

    def search(
        self,
        text: str | Query | None = None,
        *,
        image: os.PathLike | str | bytes | None = None,
        similar_to: tuple[str, bytes | str] | None = None,
        where: Sequence[str] = (),
        limit: int | None = None,
        min_score: float | None = None,
        query: Query | None = None,
    ) -> list[Hit]:
        """Search by text, by an image file, or for photos like an indexed one; filter by metadata.

        >>> lib.search("red flower", where=["camera=Canon", "year=2019..2021"], limit=20)
        """
        if isinstance(text, Query):  # the mount's backend protocol: search(query)
            query, text = text, None
        if query is None:
            image_path = os.fsencode(os.path.abspath(os.fsdecode(image))) if image is not None else None
            similar = (similar_to[0], os.fsencode(similar_to[1])) if similar_to else None
            query = Query.build(
                where, text=text, image=image_path, similar_to=similar, limit=limit, min_score=min_score
            )
        return self.engine.search(query)

    def compare(self, a: os.PathLike | str | bytes, b: os.PathLike | str | bytes) -> float:
        """Cosine similarity of two image files (indexed or not)."""
        vectors = [
            image_query_vector(self.catalog, self.model_id, os.fsencode(os.fsdecode(p)), self.embedder.embed_images)
            for p in (a, b)
        ]
        return round(float(np.dot(vectors[0], vectors[1])), 6)

    # -- status ------------------------------------------------------------------------------------

    def status(self, quarantine_limit: int = 50) -> LibraryStatus:
        model = self.model_id
        counts = self.catalog.counts(model)
        roots = [
            RootStatus(r.name, r.display, r.online, counts.per_root.get(r.id, 0), r.last_scan_at) for r in self.roots()
        ]
        files = sum(counts.per_root.values())
        return LibraryStatus(
            library=self.settings.library,
            catalog=str(self.settings.catalog_path),
            roots=roots,
            files=files,
            indexed=counts.indexed,
            pending=files - counts.indexed - counts.quarantined,
            quarantined=counts.quarantined,
            model=model,
            vectors=self.vectors.health(),
            generation=self.catalog.generation(),
            quarantine=self.quarantine(quarantine_limit),
        )

    def quarantine(self, limit: int = 50) -> list[dict]:
        return [{"path": os.fsdecode(q.path), "reason": q.reason} for q in self.catalog.quarantined(limit)]

    # -- the mount's backend -----------------------------------------------------------------------

    def generation(self) -> int:
        return self.catalog.generation()

    def root_names(self) -> list[str]:
        return [root.name for root in self.roots()]

    def root_path(self, name: str) -> bytes:
        return self.catalog.root(name).path

    def list_tree(self, root: str, relpath: bytes) -> list[tuple[bytes, bool]]:
        """Children of a folder of `root` that hold indexed photos: (name, is_dir)."""
        relpath = relpath.strip(b"/")
        children = self.catalog.tree_children(self.catalog.root(root).id, relpath)
        if children is None:
            if relpath:
                raise NotFound(f"{os.fsdecode(relpath)} is not a folder of photos in {root}")
            return []
        return children

    def facet_values(self, key: str) -> list[tuple[str, int]]:
        """The values of a metadata key with how many photos have each; computed once per generation
        (a file manager lists exif/year/ again and again)."""
        if key not in FACET_BY_KEY:
            raise QueryError(f"unknown metadata key {key!r}")
        generation = self.catalog.generation()
        cached = self._values.get(key)
        if cached is None or cached[0] != generation:
            cached = self._values[key] = (generation, self.catalog.facet_values(key))
        return cached[1]

    def saved_queries(self) -> list[str]:
        return self.catalog.saved_queries()

    def save_query(self, text: str) -> None:
        with self.catalog.transaction() as tx:
            tx.save_query(text)

    def forget_query(self, text: str) -> None:
        with self.catalog.transaction() as tx:
            if not tx.forget_query(text):
                raise NotFound(f"no saved query {text!r}")

    def date_counts(self, query: Query, width: int) -> list[tuple[str | None, int]]:
        """Matches of `query`'s filters per date period: (first `width` characters of YYYY-MM-DD, count),
        in date order, undated (None) last. The mount splits a big folder by these."""
        return self.engine.date_counts(query, width)

    def iter_search(self, query: Query) -> Iterator[Hit]:
        """The hits of `query` one by one: a metadata-only query streams from SQLite without holding its
        matches (a folder matching a million photos); a ranked one is at most its limit long."""
        if query.ranked:
            yield from self.search(query)
        else:
            yield from self.engine.iter_filtered(query)

    def indexing_progress(self) -> tuple[int, int]:
        """(searchable, waiting) photos for the current model, counted once per catalog generation."""
        generation = self.catalog.generation()
        cached = self._progress
        if cached is None or cached[0] != generation:
            cached = self._progress = (generation, self.catalog.embedding_progress(self.model_id))
        return cached[1]

    def changed_at(self) -> float:
        """When anything that could change a result last changed (the mount's folder mtimes)."""
        return self.catalog.changed_at()

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
        self.catalog.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_library(
    name: str | None = None, settings: Settings | None = None, *, create: bool = False, **overrides
) -> Library:
    """Open a named library (default: $SEARCHFS_LIBRARY, else "default") with settings from config,
    environment and `overrides`. A library that does not exist yet raises NotFound, naming the libraries
    there are, unless `create=True`.

    >>> import searchfs
    >>> lib = searchfs.open_library(create=True)
    >>> lib.index(["~/Pictures"])
    >>> [hit.path for hit in lib.search("red flower", limit=5)]
    """
    if settings is None:
        settings = load_settings(library=name, **overrides)
    elif name is not None or overrides:
        settings = settings.replace(**({"library": name} if name else {}), **overrides)
    return Library(settings, create=create)


def compare_images(settings: Settings, a: os.PathLike | str | bytes, b: os.PathLike | str | bytes) -> float:
    """Cosine similarity of two image files. Uses the library's stored vectors when it exists; works
    without any library too (comparing two files needs no index)."""
    if settings.catalog_path.exists():
        with Library(settings) as lib:
            return lib.compare(a, b)
    from .ingest.embed import Embedder

    embedder = Embedder(settings)
    try:
        vectors: list[np.ndarray] = []
        for path in (a, b):
            result = embedder.embed_images([os.fsencode(os.fsdecode(path))])[0]
            if result.vector is None:
                raise QueryError(f"cannot use {os.fsdecode(path)} as an image: {result.error}")
            vectors.append(result.vector)
    finally:
        embedder.close()
    return round(float(np.dot(vectors[0], vectors[1])), 6)


def repair_library(settings: Settings) -> str:
    """Rebuild a damaged catalog from its readable rows, then rescan every root: what the salvage lost is
    found again, and every embedding that survived is reused. A sound catalog is left alone."""
    from .store.recover import integrity_problem, recover

    if not settings.catalog_path.exists():
        raise NotFound(missing_library_message(settings))
    with WriterLock(settings.library_dir / "writer.lock"):
        problem = integrity_problem(settings.catalog_path)
        if problem is None:
            return f"catalog {settings.catalog_path} is sound: nothing to repair"
        recovery = recover(settings.catalog_path)
        # Derived from the damaged catalog: rebuilt from the new one on the next search, never trusted.
        shutil.rmtree(settings.library_dir / "vectors", ignore_errors=True)
    with Library(settings) as lib:
        report = lib.index() if lib.roots() else IndexReport()
    return (
        f"{recovery.summary()}. Rescan: {report.new} files found again, {report.reused} reused known content, "
        f"{report.embedded} embedded again, {report.pending} waiting for the model"
    )


def library_names(settings: Settings) -> list[str]:
    base = settings.home / "libraries"
    return sorted(p.name for p in base.iterdir() if (p / "catalog.sqlite").exists()) if base.is_dir() else []


def missing_library_message(settings: Settings) -> str:
    names = library_names(settings)
    there = f"libraries: {', '.join(names)}" if names else f"no library exists yet in {settings.home}"
    return f"no library {settings.library!r} ({there}); `searchfs index FOLDER` creates it"
