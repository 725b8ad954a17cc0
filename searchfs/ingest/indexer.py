"""The indexer: keeps the catalog in step with the roots.

Three stages, each restartable because every step is committed as it goes:
1. files: walk (or a watch event) + stat; new or changed files are read once to hash them, and linked to a
   content row. Known content (a move, a copy, a touch) keeps its metadata and embedding. Each listed
   folder is compared with what the catalog holds for it: files it no longer shows leave, unchanged ones
   cost nothing (not even a write); folders the walk no longer reaches leave at the end, never those of
   a root that is offline or under a folder that could not be listed.
2. metadata: contents without metadata, then contents read by an older extractor (EXTRACTOR_VERSION),
   go through exiftool in batches; the second never costs an embedding.
3. embeddings: contents without a vector for the current model go through CLIP in batches, committed
   per model batch so results grow while a round runs; a file that cannot be decoded is quarantined
   with the reason.
A whole index (`index`) runs the embeddings on a thread of their own, alongside stages 1 and 2: the model
takes each batch of files as soon as its hashes commit, so the hashing and exiftool cost no wall time
beside the model (on two cores, 12 MP photos: stages 1 and 2 were a fifth of a run).
The daemon's rounds (`process`) run the stages one after another on its writer thread.
Only one process writes (the library's writer lock sees to that); inside it, the catalog's own lock
serializes the two threads' transactions, and one lock keeps exiftool to one caller at a time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from ..content_hash import hash_file
from ..errors import ImageError, ModelUnavailable
from ..paths import is_under
from ..records import Facet, FileStat, IndexReport, Root
from ..store.protocol import CatalogStore
from ..store.rows import ContentPath
from .embed import ImageResult
from .scan import (
    Folder,
    ScanProblem,
    ScanRules,
    is_raw_name,
    resolves_inside,
    root_state,
    stat_photo,
    walk,
)
from .tags import EXTRACTOR_VERSION

log = logging.getLogger(__name__)

HASH_BATCH = 256  # files hashed per write transaction
FIRST_HASH_BATCH = 16  # ... but a scan commits its first files sooner, so embedding starts early
WORK_BATCH = 256  # contents per metadata / embedding round
STALE_BATCH = 1024  # contents read again (older extractor) per `process` call: the daemon stays responsive

Progress = Callable[[str, int, int | None], None]  # (phase, done, total or None)


class Extractor(Protocol):
    def extract(self, paths: Sequence[bytes]) -> dict[bytes, list[Facet] | str]: ...

    def preview(self, path: bytes) -> bytes | None: ...


class ImageEmbedder(Protocol):
    @property
    def model_id(self) -> str: ...

    def embed_images(
        self, paths: Sequence[bytes], on_batch: Callable | None = None, then: Callable[[], Sequence[bytes]] = list
    ) -> list[ImageResult]: ...

    def embed_bytes(self, data: bytes, orientation: int | None = None) -> ImageResult: ...


class Indexer:
    def __init__(
        self,
        catalog: CatalogStore,
        rules: ScanRules,
        extractor: Extractor,
        embedder: ImageEmbedder | None,
        progress: Progress = lambda phase, done, total: None,
        defer_fresh: float = 0.0,
        after_embedding: Callable[[], object] | None = None,
    ):
        self.catalog = catalog
        self.rules = rules
        self.extractor = extractor
        self.embedder = embedder
        self.progress = progress
        # A scan leaves alone files modified less than this many seconds ago: while a daemon runs they
        # may still be being written, and the watcher (or a re-check) takes them once complete.
        self.defer_fresh = defer_fresh
        # Called after each committed batch of embeddings: the daemon publishes them to ranked folders.
        self.after_embedding = after_embedding
        self._read = 0
        self._exiftool = threading.Lock()  # extract() and preview() share one exiftool process
        self._linked: _Work | None = None  # set during `index`: told when hashed files commit

    # -- whole roots -------------------------------------------------------------------------------

    def index(self, roots: Sequence[Root], report: IndexReport | None = None) -> IndexReport:
        """Scan the roots and bring metadata and embeddings up to date, embedding while the scan and
        exiftool run (see the module's docstring)."""
        report = report or IndexReport()
        started = time.monotonic()
        work = self._linked = _Work()
        embedding = threading.Thread(target=work.run, args=(self._embed_all, report), name="searchfs-embed")
        embedding.start()
        try:
            for root in roots:
                self.scan_root(root, report)
            self._extract(report, new_only=True)
        except BaseException:
            work.cancel()
            raise
        finally:
            work.finish()
            embedding.join()
            self._linked = None
        work.raise_failure()
        self._extract(report, new_only=False)
        self._count_leftovers(report)
        report.seconds = round(time.monotonic() - started, 3)
        return report

    def scan_root(self, root: Root, report: IndexReport, start: bytes = b"") -> None:
        """Bring one root (or the folder `start` inside it) in step with what is on disk."""
        absent = root_state(root.path)
        if absent is None and not start and self._looks_unmounted(root):
            absent = "folder is empty but the catalog has photos in it (an unmounted disk?)"
        if absent:
            self._go_offline(root, absent, report)
            return
        if not root.online:
            self.catalog.set_online(root.id, True)
        problems: list[ScanProblem] = []
        seen: set[bytes] = set()
        pending: list[FileStat] = []
        batch = FIRST_HASH_BATCH
        for folder in walk(root.path, self.rules, problems, start):
            seen.add(folder.relpath)
            self._sort_folder(root, folder, problems, pending, report)
            while len(pending) >= batch:
                self._hash_and_link(root, pending[:batch], report)
                del pending[:batch]
                batch = min(HASH_BATCH, 2 * batch)  # 16, 32, ...: the embedding thread starts on the first
        self._hash_and_link(root, pending, report)
        self._finish_scan(root, start, seen, problems, report)

    def _looks_unmounted(self, root: Root) -> bool:
        """An empty root whose catalog entry has files is treated as offline rather than emptied."""
        try:
            empty = not any(True for _ in os.scandir(root.path))
        except OSError:
            return False
        return empty and self.catalog.count_files(root.id) > 0

    def _go_offline(self, root: Root, reason: str, report: IndexReport) -> None:
        log.warning("root %s is offline (%s): its photos are kept, not deleted", root.display, reason)
        self.catalog.set_online(root.id, False)
        report.offline_roots.append(root.name)
        report.errors.append(f"{root.display}: {reason}; kept its {self.catalog.count_files(root.id)} photos")

    def _sort_folder(self, root: Root, folder: Folder, problems, pending: list[FileStat], report) -> None:
        """Compare one listed folder with the catalog: new and changed files to read, gone ones to drop."""
        known = self.catalog.folder_files(root.id, folder.relpath)
        fresh_after = time.time_ns() - int(self.defer_fresh * 1e9) if self.defer_fresh else None
        listed = {os.path.basename(p.relpath) for p in problems if os.path.dirname(p.relpath) == folder.relpath}
        for st in folder.files:
            report.scanned += 1
            name = os.path.basename(st.relpath)
            listed.add(name)
            row = known.get(name)
            if row and row.size == st.size and row.mtime_ns == st.mtime_ns and row.content_id is not None:
                report.unchanged += 1
            elif fresh_after is not None and st.mtime_ns > fresh_after:
                report.deferred.append(st.relpath)  # kept as it was until the re-check
            else:
                pending.append(st)
                report.changed += row is not None
                report.new += row is None
        gone = [name for name in known if name not in listed]
        if gone:
            with self.catalog.transaction() as tx:
                report.removed += tx.delete_files(root.id, folder.relpath, gone)
        self.progress("scan", report.scanned, None)

    def _finish_scan(self, root: Root, start: bytes, seen: set[bytes], problems, report: IndexReport) -> None:
        gone = root_state(root.path)
        if gone:  # vanished mid-scan: what we did not see is not deleted
            self._go_offline(root, gone, report)
            return
        for problem in problems:
            where = os.fsdecode(os.path.join(root.path, problem.relpath))
            log.warning("%s: %s", where, problem.reason)
            report.errors.append(f"{where}: {problem.reason}")
        unlisted = [p.relpath for p in problems]  # what is below a folder we could not list stays
        unseen = [
            folder
            for folder in self.catalog.folders(root.id, under=start)
            if folder not in seen and not any(is_under(folder, top) for top in unlisted)
        ]
        with self.catalog.transaction() as tx:
            if unseen:
                report.removed += tx.delete_dirs(root.id, unseen)
            tx.set_scanned(root.id)

    # -- hashing -----------------------------------------------------------------------------------

    def _hash_and_link(self, root: Root, pending: list[FileStat], report: IndexReport) -> None:
        if not pending:
            return
        linked = [(st, *self._identify(root, st)) for st in pending]
        with self.catalog.transaction() as tx:
            for st, digest, size, error in linked:
                content_id = None
                if digest is not None:
                    content, known = tx.content_for_hash(digest, size)
                    report.reused += known
                    report.quarantined += bool(known and content.error)  # a copy of a file already quarantined
                    content_id = content.id
                elif size < 0:
                    continue  # vanished between stat and read: the next scan or event settles it
                report.quarantined += bool(error)  # unreadable: in quarantine with its reason, as status counts
                if error:
                    report.errors.append(f"{os.fsdecode(os.path.join(root.path, st.relpath))}: {error}")
                tx.upsert_file(root.id, st, content_id, error)
        self._read += len(linked)
        self.progress("read", self._read, None)
        if self._linked is not None:
            self._linked.more()

    def _identify(self, root: Root, st: FileStat) -> tuple[str | None, int, str | None]:
        """(hash, size, error). A file moved within the root (same inode, size, mtime) is not read again."""
        if not resolves_inside(root.path, st.relpath):
            return None, -1, None  # swapped for a link out of the root since the scan: as if it had vanished
        moved = self.catalog.content_by_inode(root.id, st)
        if moved is not None:
            return moved.hash, moved.size, None
        try:
            digest, size = hash_file(os.path.join(root.path, st.relpath), self.catalog.content_hash())
            return digest, size, None
        except FileNotFoundError:
            return None, -1, None
        except OSError as exc:
            return None, st.size, f"cannot read: {exc.strerror or exc}"

    # -- watch events ------------------------------------------------------------------------------

    def upsert_path(self, root: Root, relpath: bytes, report: IndexReport) -> None:
        """A file or folder appeared or changed (a watch event)."""
        abspath = os.path.join(root.path, relpath)
        if os.path.isdir(abspath):
            self.scan_root(root, report, start=relpath)
            return
        st = stat_photo(root.path, relpath, self.rules)
        if st is None:
            self.remove_path(root, relpath, report)
            return
        row = self.catalog.file_at(root.id, relpath)
        if row and row.size == st.size and row.mtime_ns == st.mtime_ns and row.content_id is not None:
            return
        report.new += row is None
        report.changed += row is not None
        self._hash_and_link(root, [st], report)

    def remove_path(self, root: Root, relpath: bytes, report: IndexReport) -> None:
        with self.catalog.transaction() as tx:
            report.removed += tx.delete_paths(root.id, relpath)

    def move_path(self, root: Root, src: bytes, dest: bytes, report: IndexReport) -> None:
        """A rename inside one root: the catalog rows follow, nothing is read or embedded again."""
        with self.catalog.transaction() as tx:
            moved = tx.move_paths(root.id, src, dest)
        if not moved:
            self.upsert_path(root, dest, report)

    # -- metadata and embeddings ---------------------------------------------------------------------

    def process(self, report: IndexReport, stale_limit: int | None = STALE_BATCH) -> None:
        """Metadata for new contents, embeddings, then metadata read again for contents an older extractor
        read (at most `stale_limit` of them per call; None: all)."""
        self._extract(report, new_only=True)
        self._embed_all(report)
        self._extract(report, new_only=False, limit=stale_limit)
        self._count_leftovers(report)

    def _extract(self, report: IndexReport, new_only: bool, limit: int | None = None) -> None:
        version = 1 if new_only else EXTRACTOR_VERSION  # meta_version < 1: never read
        done, total = 0, self.catalog.count_needing_meta(version)
        while (limit is None or done < limit) and (batch := self.catalog.contents_needing_meta(version, WORK_BATCH)):
            inside = [item.path for item in self._inside_the_roots(batch)]
            with self._exiftool:
                results = self.extractor.extract(inside) if inside else {}
            with self.catalog.transaction() as tx:
                for item in batch:
                    result = results.get(item.path, "exiftool returned nothing for this file")
                    if item.path not in inside:
                        result = "its path now leads out of the root (a symlink swapped in): not read"
                    if isinstance(result, str):
                        tx.store_meta_error(item.content_id, result, EXTRACTOR_VERSION)
                    else:
                        tx.store_facets(item.content_id, result, EXTRACTOR_VERSION)
            done += len(batch)
            self.progress("metadata", done, total)

    def _embed_all(self, report: IndexReport, work: _Work | None = None) -> None:
        """Embed every content still without a vector, in the order of their ids: each batch starts after
        the last id of the one before, so a content that failed this round (moved, now outside the roots)
        is tried again only in the next. With `work`, more contents may come while this runs: it waits for
        them until `work` says the scan is over."""
        if self.embedder is None:
            return
        model, after, done = self.embedder.model_id, 0, 0
        with self.catalog.transaction() as tx:
            tx.track_model(model)  # the queue of what is left to embed follows this model (store/work.py)
        total = self.catalog.count_needing_embedding(model) if work is None else None

        def store(positions, results) -> None:  # after each model batch: searchable at once
            nonlocal done
            if work is not None and work.cancelled:
                raise _Cancelled  # the scan failed (or ^C): stop at this batch, not at the end of the round
            rows = [batch[i] for i in positions]
            found = [self._rescue_raw(item, results[i]) for i, item in zip(positions, rows)]
            self._store_embeddings(model, rows, found, report)
            done += len(rows)
            self.progress("embed", done, total)

        upcoming: list[ContentPath] = []  # the next batch, as the embedder last asked for it (then())
        while work is None or not work.cancelled:
            last_call = work is None or work.finished  # read before the query: then it saw all the work
            batch = upcoming or self.catalog.contents_needing_embedding(model, WORK_BATCH, after=after)
            if not batch:
                if last_call or work is None:
                    return
                work.wait()
                continue
            if total is None and work is not None and work.finished:
                total = done + self.catalog.count_needing_embedding(model)
            if not upcoming:  # else then() checked them, just before the embedder opened them, and moved `after`
                after = batch[-1].content_id
                batch = self._inside_the_roots(batch)  # the others: the watcher or a scan drops them
            upcoming = []

            def then(start: int = after) -> list[bytes]:  # the next batch, decoded as this one ends (asked again)
                nonlocal upcoming, after
                rows = self.catalog.contents_needing_embedding(model, WORK_BATCH, after=start)
                after = rows[-1].content_id if rows else start
                upcoming = self._inside_the_roots(rows)
                return [row.path for row in upcoming]

            try:
                self.embedder.embed_images([item.path for item in batch], on_batch=store, then=then)
            except ModelUnavailable as exc:
                report.errors.append(str(exc))
                return

    def _inside_the_roots(self, rows: list[ContentPath]) -> list[ContentPath]:
        """The last check before files are opened: those whose path still resolves inside an online root."""
        roots = [os.path.realpath(root.path) for root in self.catalog.roots() if root.online]
        return [row for row in rows if any(is_under(os.path.realpath(row.path), root) for root in roots)]

    def _rescue_raw(self, item: ContentPath, result):
        """A camera RAW file Pillow cannot decode is embedded from the JPEG preview it carries, turned
        upright by the RAW's own orientation (the preview carries none)."""
        if result.ok or not is_raw_name(item.path) or not os.path.exists(item.path):
            return result
        with self._exiftool:
            data = self.extractor.preview(item.path)
        assert self.embedder is not None
        rescued = self.embedder.embed_bytes(data, self._orientation(item)) if data else None
        if rescued is not None and rescued.ok:
            return rescued
        why = f": {rescued.error}" if rescued is not None else ""
        return ImageResult(error=ImageError(f"{result.error}; and no usable embedded preview (camera RAW){why}"))

    def _orientation(self, item: ContentPath) -> int | None:
        """The EXIF orientation of a content: from the catalog, or from exiftool when its metadata is not
        read yet (a whole index embeds while exiftool still works through the files)."""
        known = self.catalog.orientation(item.content_id)
        if known is not None:
            return known
        with self._exiftool:
            facets = self.extractor.extract([item.path]).get(item.path)
        if not isinstance(facets, list):
            return None
        found = [facet.num for facet in facets if facet.key == "orientation" and facet.num]
        return int(found[0]) if found else None

    def _store_embeddings(self, model: str, batch, results, report: IndexReport) -> None:
        """Vectors go to the catalog; the vector index catches up from its change feed."""
        embedded = 0
        with self.catalog.transaction() as tx:
            for item, result in zip(batch, results):
                if result.ok:
                    tx.store_embedding(model, item.content_id, result.vector)
                    embedded += 1
                elif not os.path.exists(item.path):
                    pass  # moved or deleted since it was listed: not the file's fault; a new path is tried next round
                else:
                    reason = str(result.error) or type(result.error).__name__
                    log.info("quarantined %s: %s", os.fsdecode(item.path), reason)
                    report.quarantined += tx.quarantine(item.content_id, reason)  # files, as status counts
            report.embedded += embedded  # under the catalog's lock, as the scan's own counts
        if self.after_embedding is not None:
            self.after_embedding()

    def _count_leftovers(self, report: IndexReport) -> None:
        if self.embedder is not None:
            report.pending = self.catalog.count_needing_embedding(self.embedder.model_id)


class _Cancelled(Exception):
    """Raised inside a model round to end it when the scan beside it failed."""


class _Work:
    """Between a whole index's scan (the producer) and its embedding thread: "more files committed", "no
    more will come", "stop" (the scan failed), and what the embedding thread raised, for the caller."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._more = False
        self.finished = False
        self.cancelled = False
        self._failure: BaseException | None = None

    def more(self) -> None:
        with self._changed:
            self._more = True
            self._changed.notify_all()

    def finish(self) -> None:
        with self._changed:
            self.finished = True
            self._changed.notify_all()

    def cancel(self) -> None:
        self.cancelled = True
        self.finish()

    def wait(self, timeout: float = 1.0) -> None:
        with self._changed:
            if not self._more and not self.finished:
                self._changed.wait(timeout)
            self._more = False

    def run(self, embed_all: Callable[[IndexReport, _Work], None], report: IndexReport) -> None:
        try:
            embed_all(report, self)
        except _Cancelled:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread by raise_failure
            self._failure = exc

    def raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure
