"""The sync daemon: the one writer that keeps a library in step with its roots while it runs.

`searchfs watch` runs it alone; `searchfs mount` runs it beside the FUSE filesystem. The watcher
(ingest/watch.py) reports changes from its own threads into a queue; a single writer thread applies
them in order: catalog rows first (moves and deletes cost no reading), then metadata and embeddings for
new content. Every commit bumps the catalog generation, so open result folders show the change on their
next listing. A reconcile (full mark-and-sweep scan) runs at start, after lost events, and periodically.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import service
from .errors import DiskFull
from .ingest.coalesce import ChangeKind
from .library import Library
from .paths import relative
from .records import IndexReport, Root, TextEnum

if TYPE_CHECKING:
    from .ingest.extract import ExifExtractor
    from .ingest.indexer import Indexer
    from .ingest.watch import Watcher

log = logging.getLogger(__name__)

_STATUS_EVERY = 2.0  # seconds between refreshes of daemon.json (what `searchfs status` reads)
STATUS_BYTES = 64 * 1024  # daemon.json's reserved size: written in place, space-padded
_SAVE_VECTORS_EVERY = 300.0


class JobKind(TextEnum):
    """What the writer thread is asked to do."""

    CHANGES = "changes"  # coalesced watch events
    RECONCILE = "reconcile"  # a full scan of a root
    RECHECK = "recheck"  # files too fresh to read at the last look
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass
class _Job:
    kind: JobKind
    root: str
    changes: list = field(default_factory=list)
    reason: str = ""


class _Backlog:
    """Jobs that failed for want of disk space: how many wait, why, and the back-off before the next try
    (5 s, doubling up to 5 minutes; reset by the first job that succeeds)."""

    FIRST, LONGEST = 5.0, 300.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waiting = 0
        self.reason: str | None = None
        self.delay = 0.0
        self.next_try_at: float | None = None

    def failed(self, reason: str) -> float:
        with self._lock:
            self.waiting += 1
            self.reason = reason
            self.delay = min(self.LONGEST, self.delay * 2) if self.delay else self.FIRST
            self.next_try_at = time.time() + self.delay
            return self.delay

    def succeeded(self) -> None:
        with self._lock:
            if self.waiting:
                self.waiting, self.reason, self.delay, self.next_try_at = 0, None, 0.0, None

    def status(self) -> dict:
        with self._lock:
            return {"jobs": self.waiting, "reason": self.reason, "next_try_at": self.next_try_at}


class SyncDaemon:
    """Owns the library's writer lock and its writer thread for as long as it runs."""

    def __init__(self, library: Library, watch: bool = True):
        self.library = library
        self.watch = watch
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = library.writer_lock()
        self._watcher: Watcher | None = None
        self._extractor: ExifExtractor | None = None
        self._indexer_: Indexer | None = None
        self._stopping = threading.Event()
        self.last_reconcile: dict[str, tuple[float, str]] = {}
        self.totals = IndexReport()
        self._last_save = time.monotonic()
        self._rechecks = 0  # re-checks of too-fresh files waiting on their timer
        self._rechecks_lock = threading.Lock()
        self._working_on: JobKind | None = None  # the job kind the writer thread is doing now
        self._backlog = _Backlog()
        self._status_warned: int | None = None
        self._status_thread: threading.Thread | None = None
        self._service: service.SearchService | None = None  # answers the CLI's searches (service.py)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._lock.acquire()
        self._extractor = self.library.extractor()
        self._settle = self.library.settings.watch_settle_seconds
        self.library.vectors.own()  # from now on only the writer thread changes the vector index
        self._indexer_ = self.library.indexer(
            self._extractor, defer_fresh=self._settle, after_embedding=self.library.vectors.catch_up
        )
        self._thread = threading.Thread(target=self._run, name="searchfs-writer", daemon=True)
        self._thread.start()
        self._status_thread = threading.Thread(target=self._write_status_often, name="searchfs-status", daemon=True)
        self._status_thread.start()
        self._write_status()
        roots = {root.name: root.path for root in self.library.roots()}
        if self.watch:
            from .ingest.watch import Watcher  # the only place watchdog is needed

            self._watcher = Watcher(roots, self, self.library.settings)
            self._watcher.start()  # reconciles every root at start
        else:
            for name in roots:
                self.reconcile(name, "start")
        self._service = service.start_service(self.library)  # last: a failed start leaves no socket

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._service is not None:  # first: no search may outlive the library
            self._service.stop()
        if self._watcher is not None:
            self._watcher.stop()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout=60)
        self._finish()

    def _finish(self) -> None:
        if self._status_thread is not None:
            self._status_thread.join(timeout=5)  # so it cannot write daemon.json again after the unlink
        try:
            self.library.vectors.save()  # only when worth it: the next start catches up from the log
        except Exception:  # derived data: the next start catches up or rebuilds
            log.exception("could not save the vector index at shutdown")
        if self._extractor is not None:
            self._extractor.close()
        self._status_path().unlink(missing_ok=True)
        self._lock.release()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until every queued job is done (and no re-check is waiting): for tests and benchmarks."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._jobs.unfinished_tasks == 0 and self._rechecks == 0:
                return True
            time.sleep(0.05)
        return False

    # -- the watcher's sink (called from watcher threads; only queues) -------------------------------

    def apply(self, root: str, changes: list) -> None:
        self._jobs.put(_Job(JobKind.CHANGES, root, list(changes)))

    def reconcile(self, root: str, reason: str) -> None:
        self._jobs.put(_Job(JobKind.RECONCILE, root, reason=reason))

    def set_online(self, root: str, online: bool) -> None:
        self._jobs.put(_Job(JobKind.ONLINE if online else JobKind.OFFLINE, root))

    # -- the writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        self._keep_vectors()  # the first load, here rather than in the first FUSE call that searches
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                self._working_on = job.kind
                self._do(job)
                self._backlog.succeeded()
            except DiskFull as exc:  # nothing is lost: the job waits and is tried again, later and later
                if job is not None:
                    self._retry_later(job, str(exc))
            except Exception:  # one bad job must not stop the writer; the next reconcile catches up
                log.exception("sync job %s for root %s failed", job.kind if job else None, job.root if job else None)
            finally:
                self._working_on = None
                if self._jobs.qsize() == 0:
                    self._preload_model()  # before task_done: whoever waits for idle finds it started
                self._jobs.task_done()
                if self._jobs.qsize() == 0:
                    self._write_status()  # a finished burst shows at once, not at the next refresh

    def _preload_model(self) -> None:
        """Once the start-up work is done, a watching daemon loads the image model in the background, so the
        first photo copied in later is searchable within seconds instead of waiting for torch (about 10 s
        at a million photos, where the mount itself never needs the image model). Not before: the load would
        compete with the mount's first queries and the reconcile. `[watch] preload_model = false` saves the
        memory (about 0.6 GB for ViT-B-32) until a photo needs it."""
        if self.watch and self.library.settings.watch_preload_model:
            self.library.embedder.start_loading()  # a no-op once loaded, loading or failed

    def _do(self, job: _Job) -> None:
        root = self._root(job.root)
        if root is None:
            return
        if not root.online and job.kind in (JobKind.CHANGES, JobKind.RECHECK):
            # The watcher said it went away (or stopped answering): touching it could hang this thread.
            log.debug("skipping %s for offline root %s", job.kind, root.name)
            return
        report = IndexReport()
        if job.kind is JobKind.RECONCILE:
            log.info("reconciling %s (%s)", root.display, job.reason)
            self._indexer.scan_root(root, report)
            self.last_reconcile[root.name] = (time.time(), job.reason)
        elif job.kind is JobKind.RECHECK:
            self._recheck(root, job.changes, report)
        elif job.kind is JobKind.OFFLINE:
            self.library.catalog.set_online(root.id, False)
            log.warning("root %s went offline: its photos are kept", root.display)
        elif job.kind is JobKind.ONLINE:
            self.library.catalog.set_online(root.id, True)
        else:
            self._apply_changes(root, job.changes, report)
        self._recheck_later(root, report.deferred)
        if self._jobs.qsize() == 0 or report.new + report.changed > 64:
            self._indexer.process(report)
        self._add_totals(report)
        self._keep_vectors()
        self._maybe_save_vectors()

    def _retry_later(self, job: _Job, reason: str) -> None:
        delay = self._backlog.failed(reason)
        log.warning("%s; %s job for %s retried in %.0f s", reason, job.kind, job.root, delay)
        if not self._stopping.is_set():
            self._after(delay, job)

    def _after(self, delay: float, job: _Job) -> None:
        """Queue `job` after `delay` seconds; wait_idle and `idle` count it as pending meanwhile."""
        with self._rechecks_lock:
            self._rechecks += 1
        timer = threading.Timer(delay, self._queue_recheck, [job])
        timer.daemon = True
        timer.start()

    def _recheck_later(self, root: Root, relpaths: list[bytes]) -> None:
        """Files a scan found too fresh to read: look again once they have been quiet for a while."""
        if relpaths and not self._stopping.is_set():
            self._after(self._settle * 2, _Job(JobKind.RECHECK, root.name, list(relpaths)))

    def _queue_recheck(self, job: _Job) -> None:
        self._jobs.put(job)  # queued before the count drops, so wait_idle never sees a gap
        with self._rechecks_lock:
            self._rechecks -= 1

    def _recheck(self, root: Root, relpaths: list[bytes], report: IndexReport) -> None:
        fresh_after = time.time_ns() - int(self._settle * 1e9)
        for relpath in relpaths:
            try:
                fresh = os.stat(os.path.join(root.path, relpath)).st_mtime_ns > fresh_after
            except OSError:
                continue  # gone again: the watcher or the next reconcile settles it
            if fresh:
                report.deferred.append(relpath)
            else:
                self._indexer.upsert_path(root, relpath, report)

    def _apply_changes(self, root: Root, changes: list, report: IndexReport) -> None:
        for change in changes:
            src = self._relative(root, change.path)
            dest = self._relative(root, change.dest) if change.dest else None
            if change.kind is ChangeKind.RESCAN:
                self._indexer.scan_root(root, report, start=src or b"")
            elif change.kind is ChangeKind.DELETE and src is not None:
                self._indexer.remove_path(root, src, report)
            elif change.kind is ChangeKind.MOVE:
                self._apply_move(root, change, src, dest, report)
            elif change.kind is ChangeKind.UPSERT and src is not None:
                self._indexer.upsert_path(root, src, report)

    def _apply_move(self, root: Root, change, src: bytes | None, dest: bytes | None, report: IndexReport) -> None:
        if src is not None and dest is not None:
            self._indexer.move_path(root, src, dest, report)
            return
        if src is not None:  # moved out of this root: gone from here
            self._indexer.remove_path(root, src, report)
        other = self._root_of(change.dest)
        inside = self._relative(other, change.dest) if other is not None else None
        if other is not None and inside is not None:  # into another root: its content hash finds the old embedding
            self._indexer.upsert_path(other, inside, report)

    # -- helpers -----------------------------------------------------------------------------------

    def _root(self, name: str) -> Root | None:
        for root in self.library.roots():
            if root.name == name:
                return root
        return None

    def _root_of(self, path: bytes | None) -> Root | None:
        for root in self.library.roots():
            if path and self._relative(root, path) is not None:
                return root
        return None

    @staticmethod
    def _relative(root: Root, path: bytes | None) -> bytes | None:
        """`path` relative to the root ('' for the root itself), or None when it lies outside."""
        return relative(path, root.path) if path is not None else None

    def _add_totals(self, report: IndexReport) -> None:
        for name in ("new", "changed", "removed", "reused", "embedded", "quarantined"):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(report, name))
        self.totals.errors = (self.totals.errors + report.errors)[-20:]

    def _keep_vectors(self) -> None:
        """Publish what changed to readers: costs what changed (store/vector_store.py)."""
        try:
            self.library.vectors.catch_up()
        except Exception:  # derived data: the next catch-up tries again; searches keep the last index
            log.exception("could not bring the vector index up to date")

    def _maybe_save_vectors(self) -> None:
        if time.monotonic() - self._last_save > _SAVE_VECTORS_EVERY:
            self.library.vectors.save()
            self._last_save = time.monotonic()

    @property
    def _indexer(self) -> Indexer:
        assert self._indexer_ is not None, "the daemon was not started"
        return self._indexer_

    def _status_path(self):
        return self.library.settings.daemon_status_path

    def status(self) -> dict:
        watch = self._watcher.status() if self._watcher is not None else None
        events = sum(int(state.get("pending", 0)) for state in (watch or {}).values())
        queued = self._jobs.unfinished_tasks + self._rechecks
        return {
            "pid": os.getpid(),
            "pending_jobs": self._jobs.qsize() + self._rechecks,
            "working_on": str(self._working_on) if self._working_on else None,
            "idle": queued == 0 and events == 0,  # nothing queued, nothing being done, no events held
            "events_pending": events,
            "backlog": self._backlog.status(),
            "watch": watch,
            "last_reconcile": {k: {"at": v[0], "reason": v[1]} for k, v in self.last_reconcile.items()},
            "since_start": {k: v for k, v in self.totals.to_json().items() if k != "seconds"},
            "offline_roots": [r.name for r in self.library.roots() if not r.online],
            "service": self._service.status() if self._service is not None else None,
            "updated_at": time.time(),
        }

    def _write_status_often(self) -> None:
        """Refresh daemon.json every few seconds, so `searchfs status` is current even while the writer
        thread spends minutes on one job (a first embedding round)."""
        while not self._stopping.wait(_STATUS_EVERY):
            self._write_status()

    def _write_status(self) -> None:
        """Rewrite daemon.json in place, in blocks reserved at start: `searchfs status` must still hear
        why work waits when the disk is full, and a full disk has no room for a new file."""
        data = json.dumps(self.status(), default=str).encode()
        if len(data) > STATUS_BYTES:
            data = json.dumps({**self.status(), "since_start": {}}, default=str).encode()[:STATUS_BYTES]
        try:
            fd = os.open(self._status_path(), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < STATUS_BYTES:
                    os.posix_fallocate(fd, 0, STATUS_BYTES)
                os.pwrite(fd, data.ljust(STATUS_BYTES), 0)
            finally:
                os.close(fd)
        except OSError as exc:
            if self._status_warned != exc.errno:  # once per kind of failure, not every 2 s
                log.warning("could not write %s: %s", self._status_path(), exc)
                self._status_warned = exc.errno


class DaemonBackend:
    """The mount's backend: the Library, with a SyncDaemon running beside it until the mount closes."""

    def __init__(self, library: Library, daemon: SyncDaemon | None):
        self._library = library
        self._daemon = daemon

    def __getattr__(self, name):
        return getattr(self._library, name)

    def close(self) -> None:
        try:
            if self._daemon is not None:
                self._daemon.stop()
        finally:
            self._library.close()
