"""The indexer: keeps the catalog in step with the roots.

Three stages, each restartable because every step is committed as it goes:
1. files: walk (or a watch event) + stat; new or changed files are read once to hash them, and linked to a
   content row. Known content (a move, a copy, a touch) keeps its metadata and embedding.
2. metadata: contents without facets go through exiftool in batches.
3. embeddings: contents without a vector for the current model go through CLIP in batches; a file that
   cannot be decoded is quarantined with the reason.
Files a completed scan did not see are swept, never those of a root that is offline or a folder that
could not be listed. Only one thread of one process writes (the library's writer lock sees to that).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..errors import ImageError, ModelUnavailable
from ..records import Facet, FileStat, IndexReport, Root
from ..store.catalog import Catalog
from .embed import ImageResult
from .scan import (
    ScanProblem,
    ScanRules,
    hash_file,
    is_raw_name,
    is_under,
    resolves_inside,
    root_state,
    stat_photo,
    walk,
)

log = logging.getLogger(__name__)

HASH_BATCH = 256  # files hashed per write transaction
WORK_BATCH = 256  # contents per metadata / embedding round

Progress = Callable[[str, int, int | None], None]  # (phase, done, total or None)


class Extractor(Protocol):
    def extract(self, paths: Sequence[bytes]) -> dict[bytes, list[Facet] | str]: ...

    def preview(self, path: bytes) -> bytes | None: ...


class ImageEmbedder(Protocol):
    model_id: str

    def embed_images(self, paths: Sequence[bytes], on_batch: Callable | None = None) -> list[ImageResult]: ...

    def embed_bytes(self, data: bytes, orientation: int | None = None) -> ImageResult: ...


@dataclass
class _Pending:
    """Files of one root waiting to be hashed and linked."""

    root: Root
    stats: list[FileStat]


class Indexer:
    def __init__(
        self,
        catalog: Catalog,
        rules: ScanRules,
        extractor: Extractor,
        embedder: ImageEmbedder | None,
        progress: Progress = lambda phase, done, total: None,
        defer_fresh: float = 0.0,
    ):
        self.catalog = catalog
        self.rules = rules
        self.extractor = extractor
        self.embedder = embedder
        self.progress = progress
        # A scan leaves alone files modified less than this many seconds ago: while a daemon runs they
        # may still be being written, and the watcher (or a re-check) takes them once complete.
        self.defer_fresh = defer_fresh
        self._read = 0

    # -- whole roots -------------------------------------------------------------------------------

    def index(self, roots: Sequence[Root], report: IndexReport | None = None) -> IndexReport:
        """Scan the roots, then bring metadata and embeddings up to date."""
        report = report or IndexReport()
        started = time.monotonic()
        for root in roots:
            self.scan_root(root, report)
        self.process(report)
        report.seconds = round(time.monotonic() - started, 3)
        return report

    def scan_root(self, root: Root, report: IndexReport, start: bytes = b"") -> None:
        """Mark-and-sweep one root (or the folder `start` inside it)."""
        absent = root_state(root.path)
        if absent is None and not start and self._looks_unmounted(root):
            absent = "folder is empty but the catalog has photos in it (an unmounted disk?)"
        if absent:
            self._go_offline(root, absent, report)
            return
        if not root.online:
            self.catalog.set_online(root.id, True)
        with self.catalog.write() as conn:
            token = self.catalog.next_scan_token(conn)
        problems: list[ScanProblem] = []
        pending = _Pending(root, [])
        for folder in walk(root.path, self.rules, problems, start):
            self._sort_folder(root, folder.relpath, folder.files, token, pending, report)
            if len(pending.stats) >= HASH_BATCH:
                self._hash_and_link(pending, token, report)
        self._hash_and_link(pending, token, report)
        self._finish_scan(root, start, token, problems, report)

    def _looks_unmounted(self, root: Root) -> bool:
        """An empty root whose catalog entry has files is treated as offline rather than emptied."""
        try:
            empty = not any(True for _ in os.scandir(root.path))
        except OSError:
            return False
        if not empty:
            return False
        row = self.catalog.read().execute("SELECT 1 FROM files WHERE root_id = ? LIMIT 1", (root.id,)).fetchone()
        return row is not None

    def _go_offline(self, root: Root, reason: str, report: IndexReport) -> None:
        log.warning("root %s is offline (%s): its photos are kept, not deleted", root.display, reason)
        self.catalog.set_online(root.id, False)
        report.offline_roots.append(root.name)
        report.errors.append(f"{root.display}: {reason}; kept its {self._count_files(root)} photos")

    def _count_files(self, root: Root) -> int:
        return self.catalog.read().execute("SELECT count(*) FROM files WHERE root_id = ?", (root.id,)).fetchone()[0]

    def _sort_folder(self, root, folder, stats, token, pending, report) -> None:
        known = self.catalog.files_in_dir(root.id, folder)
        unchanged = []
        fresh_after = time.time_ns() - int(self.defer_fresh * 1e9) if self.defer_fresh else None
        for st in stats:
            report.scanned += 1
            row = known.get(st.relpath)
            if row and row[1] == st.size and row[2] == st.mtime_ns and row[4] is not None:
                unchanged.append(row[0])
                report.unchanged += 1
            elif fresh_after is not None and st.mtime_ns > fresh_after:
                report.deferred.append(st.relpath)
                if row:
                    unchanged.append(row[0])  # kept as it was until the re-check
            else:
                pending.stats.append(st)
                report.changed += row is not None
                report.new += row is None
        if unchanged:
            with self.catalog.write() as conn:
                self.catalog.mark_seen(conn, unchanged, token)
        self.progress("scan", report.scanned, None)

    def _finish_scan(self, root, start, token, problems, report) -> None:
        gone = root_state(root.path)
        if gone:  # vanished mid-scan: what we did not see is not deleted
            self._go_offline(root, gone, report)
            return
        with self.catalog.write() as conn:
            for problem in problems:
                log.warning("%s: %s", os.fsdecode(os.path.join(root.path, problem.relpath)), problem.reason)
                report.errors.append(f"{os.fsdecode(os.path.join(root.path, problem.relpath))}: {problem.reason}")
                self._keep(conn, root.id, problem.relpath, token)
            removed = self.catalog.sweep(conn, root.id, token, start or None)
            report.removed += removed
            self.catalog.bump(conn, vectors=removed > 0)
            conn.execute("UPDATE roots SET last_scan_at = ? WHERE id = ?", (time.time(), root.id))

    @staticmethod
    def _keep(conn, root_id: int, relpath: bytes, token: int) -> None:
        """What is under a folder we could not list stays as it was."""
        conn.execute(
            "UPDATE files SET seen = ? WHERE root_id = ? AND (relpath = ? OR substr(relpath, 1, ?) = ?)",
            (token, root_id, relpath, len(relpath) + 1, relpath + b"/"),
        )

    # -- hashing -----------------------------------------------------------------------------------

    def _hash_and_link(self, pending: _Pending, token: int, report: IndexReport) -> None:
        if not pending.stats:
            return
        root, linked = pending.root, []
        for st in pending.stats:
            linked.append((st, *self._identify(root, st)))
        relinked = False
        with self.catalog.write() as conn:
            for st, digest, size, error in linked:
                content_id = None
                if digest is not None:
                    known = conn.execute("SELECT id, error FROM contents WHERE hash = ?", (digest,)).fetchone()
                    report.reused += known is not None
                    report.quarantined += bool(known and known[1])  # a copy of a file already quarantined
                    content_id = known[0] if known else self.catalog.content_for_hash(conn, digest, size)
                elif isinstance(size, int) and size < 0:
                    continue  # vanished between stat and read: the next scan or event settles it
                report.quarantined += bool(error)  # unreadable: in quarantine with its reason, as status counts
                if error:
                    report.errors.append(f"{os.fsdecode(os.path.join(root.path, st.relpath))}: {error}")
                relinked |= self.catalog.upsert_file(
                    conn, root.id, st.relpath, st.size, st.mtime_ns, st.inode, content_id, error, token
                )
            # A known content linked again (a photo moved out and back) is searchable again at once: the
            # vector index must hear of it, not only the metadata folders.
            self.catalog.bump(conn, vectors=relinked)
        self._read += len(linked)
        self.progress("read", self._read, None)
        pending.stats = []

    def _identify(self, root: Root, st: FileStat) -> tuple[str | None, int, str | None]:
        """(hash, size, error). A file moved within the root (same inode, size, mtime) is not read again."""
        if not resolves_inside(root.path, st.relpath):
            return None, -1, None  # swapped for a link out of the root since the scan: as if it had vanished
        content_id = self.catalog.content_by_inode(root.id, st)
        if content_id is not None:
            row = self.catalog.read().execute("SELECT hash, size FROM contents WHERE id = ?", (content_id,)).fetchone()
            if row:
                return row[0], row[1], None
        try:
            digest, size = hash_file(os.path.join(root.path, st.relpath))
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
        row = self.catalog.file_row(root.id, relpath)
        if row and row[1] == st.size and row[2] == st.mtime_ns and row[4] is not None:
            return
        report.new += row is None
        report.changed += row is not None
        with self.catalog.write() as conn:
            token = conn.execute("SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'scan_token'").fetchone()[0]
        self._hash_and_link(_Pending(root, [st]), token, report)

    def remove_path(self, root: Root, relpath: bytes, report: IndexReport) -> None:
        with self.catalog.write() as conn:
            removed = self.catalog.delete_paths(conn, root.id, relpath)
            if removed:
                self.catalog.bump(conn, vectors=True)
        report.removed += removed

    def move_path(self, root: Root, src: bytes, dest: bytes, report: IndexReport) -> None:
        """A rename inside one root: the catalog rows follow, nothing is read or embedded again."""
        with self.catalog.write() as conn:
            moved = self.catalog.move_paths(conn, root.id, src, dest)
            self.catalog.bump(conn, vectors=True)
        if not moved:
            self.upsert_path(root, dest, report)

    # -- metadata and embeddings ---------------------------------------------------------------------

    def process(self, report: IndexReport) -> None:
        self._extract_all(report)
        self._embed_all(report)
        self._count_leftovers(report)

    def _extract_all(self, report: IndexReport) -> None:
        done, total = 0, self.catalog.count_needing(None)
        while batch := self.catalog.contents_needing_meta(WORK_BATCH):
            inside = [path for _, path in batch if self._inside_a_root(path)]
            results = self.extractor.extract(inside) if inside else {}
            with self.catalog.write() as conn:
                for content_id, path in batch:
                    result = results.get(path, "exiftool returned nothing for this file")
                    if path not in inside:
                        result = "its path now leads out of the root (a symlink swapped in): not read"
                    if isinstance(result, str):
                        self.catalog.store_meta_error(conn, content_id, result)
                    else:
                        self.catalog.store_facets(conn, content_id, result)
                self.catalog.bump(conn)
            done += len(batch)
            self.progress("metadata", done, total)

    def _embed_all(self, report: IndexReport) -> None:
        if self.embedder is None:
            return
        model = self.embedder.model_id
        failed_ids: set[tuple[int, bytes]] = set()
        done, total = 0, self.catalog.count_needing(model)

        def store(positions, results) -> None:  # after each model batch: searchable at once
            nonlocal done
            rows = [batch[i] for i in positions]
            found = [self._rescue_raw(content_id, path, results[i]) for i, (content_id, path) in zip(positions, rows)]
            self._store_embeddings(model, rows, found, report, failed_ids)
            done += len(rows)
            self.progress("embed", done, total)

        while batch := [
            row for row in self.catalog.contents_needing_embedding(model, WORK_BATCH) if row not in failed_ids
        ]:
            outside = [row for row in batch if not self._inside_a_root(row[1])]
            failed_ids.update(outside)  # not this round: the watcher or the next scan drops the link
            batch = [row for row in batch if row not in outside]
            if not batch:
                continue
            try:
                self.embedder.embed_images([path for _, path in batch], on_batch=store)
            except ModelUnavailable as exc:
                report.errors.append(str(exc))
                return

    def _inside_a_root(self, path: bytes) -> bool:
        """The last check before a file is opened: it still resolves inside one of the roots."""
        real = os.path.realpath(path)
        return any(is_under(real, os.path.realpath(root.path)) for root in self.catalog.roots() if root.online)

    def _rescue_raw(self, content_id: int, path: bytes, result):
        """A camera RAW file Pillow cannot decode is embedded from the JPEG preview it carries, turned
        upright by the RAW's own orientation (the preview carries none)."""
        if result.ok or not is_raw_name(path) or not os.path.exists(path):
            return result
        data = self.extractor.preview(path)
        rescued = self.embedder.embed_bytes(data, self._orientation(content_id)) if data else None
        if rescued is not None and rescued.ok:
            return rescued
        why = f": {rescued.error}" if rescued is not None else ""
        return ImageResult(error=ImageError(f"{result.error}; and no usable embedded preview (camera RAW){why}"))

    def _orientation(self, content_id: int) -> int | None:
        row = (
            self.catalog.read()
            .execute("SELECT num FROM facets WHERE content_id = ? AND key = 'orientation'", (content_id,))
            .fetchone()
        )
        return int(row[0]) if row and row[0] else None

    def _store_embeddings(self, model, batch, results, report, failed_ids) -> None:
        """Vectors go to the catalog; the vector index catches up from there (Library.vector_index)."""
        embedded = 0
        with self.catalog.write() as conn:
            for (content_id, path), result in zip(batch, results):
                if result.ok:
                    self.catalog.store_embedding(conn, model, content_id, result.vector)
                    embedded += 1
                elif not os.path.exists(path):
                    # Moved or deleted since it was listed: not the file's fault. Its new path (if any) is
                    # tried in the next round; this one is not tried again.
                    failed_ids.add((content_id, path))
                else:
                    reason = str(result.error) or type(result.error).__name__
                    files = self.catalog.quarantine(conn, content_id, reason)
                    log.info("quarantined %s: %s", os.fsdecode(path), reason)
                    report.quarantined += files  # files, not contents: the count `searchfs status` shows
            self.catalog.bump(conn, vectors=embedded > 0)
        report.embedded += embedded

    def _count_leftovers(self, report: IndexReport) -> None:
        if self.embedder is not None:
            report.pending = self.catalog.count_needing(self.embedder.model_id)
