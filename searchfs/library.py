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
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from .config import Settings, ensure_private_dir, load_settings
from .errors import LibraryBusy, NotFound, QueryError
from .records import FACETS, Hit, IndexReport, LibraryStatus, Root, RootStatus
from .search.engine import Engine, image_query_vector
from .search.query import Query
from .store.catalog import Catalog

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
        self.catalog = Catalog(settings.catalog_path)
        self._embedder = None
        self._embedder_lock = threading.Lock()
        self._index = None
        self._index_generation = -1
        self._vectors_lock = threading.RLock()
        self.engine = Engine(
            self.catalog,
            vectors=self.vector_index,
            embed_text=lambda text: self.embedder.embed_text([text])[0],
            embed_image=lambda path: image_query_vector(self.catalog, self.model_id, path, self.embedder.embed_images),
            model_id=lambda: self.model_id,
            default_limit=settings.search_limit,
            default_min_score=settings.search_min_score,
        )

    # -- parts -------------------------------------------------------------------------------------

    @property
    def embedder(self):
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

    def indexer(self, extractor, progress=None, defer_fresh: float = 0.0):
        from .ingest.indexer import Indexer

        return Indexer(
            self.catalog,
            self.scan_rules(),
            extractor,
            self.embedder,
            progress=progress or (lambda phase, done, total: None),
            defer_fresh=defer_fresh,
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
                self.catalog.retry_quarantined()
            self.embedder.start_loading()  # imports and loading overlap the scan, hashing and exiftool
            with self.extractor() as extractor:
                report = self.indexer(extractor, progress).index(roots)
            self.catalog.collect_orphans(ORPHAN_GRACE_SECONDS)
            self.save_vectors()
        return report

    # -- vectors -----------------------------------------------------------------------------------

    @property
    def vectors_dir(self) -> Path:
        return self.settings.library_dir / "vectors" / _slug(self.model_id)

    def vector_index(self):
        """The vector index for the current model, in step with the catalog (None: nothing embedded)."""
        from .store.vectors import VectorIndex

        with self._vectors_lock:
            generation = self.catalog.vectors_generation()
            if self._index is not None and self._index_generation == generation:
                return self._index
            model = self.model_id
            dim = self.catalog.embedding_dim(model)
            if dim is None:
                return None
            if self._index is None or self._index.stats.get("dim") not in (None, dim):
                self._index = self._load_or_build(VectorIndex, model, dim, generation)
            else:
                self._catch_up(self._index, model)
            self._index_generation = generation
            return self._index

    def _load_or_build(self, cls, model: str, dim: int, generation: int):
        exact_below = self.settings.search_exact_below
        count = self.catalog.live_count(model)
        index = cls.load(self.vectors_dir, model, generation, count, exact_below=exact_below)
        if index is None:
            ids, vectors = self.catalog.live_vectors(model, dim)
            index = cls.build(ids, vectors, model, exact_below=exact_below)
            self._save(index, generation)
        return index

    def _catch_up(self, index, model: str) -> None:
        """Bring a loaded index in step with the catalog: add new vectors, drop ones no file uses."""
        live = self.catalog.live_ids(model)
        have = index.ids()
        missing = np.setdiff1d(live, have, assume_unique=True)
        extra = np.setdiff1d(have, live, assume_unique=True)
        if len(extra):
            index.remove(extra)
        if len(missing):
            ids, vectors = self.catalog.vectors_for(model, missing)
            index.add(ids, vectors)

    def save_vectors(self) -> None:
        index = self.vector_index()
        if index is not None:
            self._save(index, self._index_generation)

    def _save(self, index, generation: int) -> None:
        try:
            index.save(self.vectors_dir, generation)
        except OSError as exc:  # derived data: a failed save costs a rebuild later, nothing more
            log.warning("could not save the vector index to %s: %s", self.vectors_dir, exc)

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
        read = self.catalog.read()
        model = self.model_id
        per_root = dict(read.execute("SELECT root_id, count(*) FROM files GROUP BY root_id").fetchall())
        roots = [RootStatus(r.name, r.display, r.online, per_root.get(r.id, 0), r.last_scan_at) for r in self.roots()]
        files = sum(per_root.values())
        quarantine = self.quarantine(quarantine_limit)
        quarantined = read.execute(
            "SELECT count(*) FROM files f LEFT JOIN contents c ON c.id = f.content_id"
            " WHERE f.error IS NOT NULL OR c.error IS NOT NULL"
        ).fetchone()[0]
        indexed = read.execute(
            "SELECT count(*) FROM files f JOIN embeddings e ON e.content_id = f.content_id AND e.model = ?", (model,)
        ).fetchone()[0]
        return LibraryStatus(
            library=self.settings.library,
            catalog=str(self.catalog.path),
            roots=roots,
            files=files,
            indexed=indexed,
            pending=files - indexed - quarantined,
            quarantined=quarantined,
            model=model,
            vectors=self.vector_health(model),
            generation=self.catalog.generation(),
            quarantine=quarantine,
        )

    def vector_health(self, model: str) -> dict:
        """The derived vector files against the catalog, without loading them: 'ok' when their stamp
        matches, else why they will be rebuilt on the next search."""
        from .store.vectors import VectorIndex

        live = self.catalog.live_count(model)
        health = {"dir": str(self.vectors_dir), "live_vectors": live}
        try:
            stamp, stale = VectorIndex.read_stamp(self.vectors_dir, model, self.catalog.vectors_generation(), live)
        except (OSError, ValueError):
            health["state"] = "not built yet" if live else "empty"
            return health
        health.update(kind=stamp.get("kind"), count=stamp.get("count"), generation=stamp.get("generation"))
        health["state"] = "ok" if not stale else "stale, rebuilt on next search: " + "; ".join(stale)
        return health

    def quarantine(self, limit: int = 50) -> list[dict]:
        rows = self.catalog.read().execute(
            """SELECT r.path, f.relpath, coalesce(f.error, c.error) FROM files f JOIN roots r ON r.id = f.root_id
               LEFT JOIN contents c ON c.id = f.content_id
               WHERE f.error IS NOT NULL OR c.error IS NOT NULL ORDER BY r.name, f.relpath LIMIT ?""",
            (limit,),
        )
        return [{"path": os.fsdecode(os.path.join(bytes(p), bytes(rel))), "reason": why} for p, rel, why in rows]

    # -- the mount's backend -----------------------------------------------------------------------

    def generation(self) -> int:
        return self.catalog.generation()

    def root_names(self) -> list[str]:
        return [root.name for root in self.roots()]

    def root_path(self, name: str) -> bytes:
        return self.catalog.root(name).path

    def list_tree(self, root: str, relpath: bytes) -> list[tuple[bytes, bool]]:
        """Children of a folder of `root` that hold indexed photos: (name, is_dir)."""
        root_id = self.catalog.root(root).id
        relpath = relpath.strip(b"/")
        prefix = relpath + b"/" if relpath else b""
        rows = (
            self.catalog.read()
            .execute(
                """SELECT DISTINCT f.relpath FROM files f JOIN contents c ON c.id = f.content_id
               WHERE f.root_id = ? AND c.error IS NULL AND f.error IS NULL
                 AND (? = '' OR substr(f.relpath, 1, ?) = ?)""",
                (root_id, prefix, len(prefix), prefix),
            )
            .fetchall()
        )
        if not rows and relpath:
            raise NotFound(f"{os.fsdecode(relpath)} is not a folder of photos in {root}")
        children: dict[bytes, bool] = {}
        for (path,) in rows:
            rest = bytes(path)[len(prefix) :]
            name, sep, _ = rest.partition(b"/")
            children[name] = children.get(name, False) or bool(sep)
        return sorted(children.items())

    def is_photo(self, root: str, relpath: bytes) -> bool:
        try:
            root_id = self.catalog.root(root).id
        except NotFound:
            return False
        row = (
            self.catalog.read()
            .execute(
                """SELECT 1 FROM files f JOIN contents c ON c.id = f.content_id
               WHERE f.root_id = ? AND f.relpath = ? AND c.error IS NULL AND f.error IS NULL""",
                (root_id, relpath.strip(b"/")),
            )
            .fetchone()
        )
        return row is not None

    def facet_values(self, key: str) -> list[tuple[str, int]]:
        if key not in {spec.key for spec in FACETS}:
            raise QueryError(f"unknown metadata key {key!r}")
        keys = ("keyword", "title", "description") if key == "text" else (key,)
        rows = (
            self.catalog.read()
            .execute(
                f"""SELECT fc.text, count(DISTINCT f.id) FROM facets fc
                JOIN files f ON f.content_id = fc.content_id JOIN roots r ON r.id = f.root_id
                WHERE fc.key IN ({",".join("?" * len(keys))}) AND r.online = 1
                GROUP BY fc.text ORDER BY coalesce(min(fc.num), 0), fc.text""",
                keys,
            )
            .fetchall()
        )
        return [(text, count) for text, count in rows]

    def saved_queries(self) -> list[str]:
        return [r[0] for r in self.catalog.read().execute("SELECT text FROM saved_queries ORDER BY text")]

    def save_query(self, text: str) -> None:
        with self.catalog.write() as conn:
            conn.execute("INSERT OR IGNORE INTO saved_queries(text, created_at) VALUES (?, ?)", (text, time.time()))

    def forget_query(self, text: str) -> None:
        with self.catalog.write() as conn:
            if not conn.execute("DELETE FROM saved_queries WHERE text = ?", (text,)).rowcount:
                raise NotFound(f"no saved query {text!r}")

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
        vectors = []
        for path in (a, b):
            result = embedder.embed_images([os.fsencode(os.fsdecode(path))])[0]
            if not result.ok:
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
