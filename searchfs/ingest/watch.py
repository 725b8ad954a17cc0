"""Watch the photo roots and hand the indexer coalesced batches of changes.

With inotify.py (its hooks into watchdog) and observe.py (events in, observers stopped), the only
modules that import watchdog. Per root: one watchdog observer (inotify, or polling on network file
systems), whose events are filtered like the scan, held until the files they touch are complete,
coalesced and passed to `ChangeSink.apply` in large batches.

One supervisor thread owns every decision: it flushes batches, notices lost events and dead observers,
follows roots going offline and coming back, and asks for periodic full rescans. Watchdog threads only
append to a buffer or raise a flag, so the sink is only ever called from the supervisor thread.

Lost events and how they are noticed (each leads to a warning and `sink.reconcile(root, reason)`):

- "overflow": the kernel's inotify queue overflowed (IN_Q_OVERFLOW). watchdog 7 handles it inside
  `InotifyWatchGroup.on_queue_overflow` (it rebuilds the watches) and emits no event, so we subclass the
  watch group to hear about it.
- "watch-limit": inotify_add_watch failed with ENOSPC (fs.inotify.max_user_watches). watchdog raises for
  the root but silently skips sub-folders, so the subclass reports those too; the root falls back to
  polling.
- "inotify-unavailable": no inotify instance could be created (EMFILE); polling.
- "observer-died": a watchdog thread is no longer alive; the observer is restarted.
- "root-replaced": the root folder is a different directory than before (remounted, recreated); inotify
  watches follow inodes, so the observer is restarted.
- "online": the root came back after being offline. "start" and "periodic" need no explanation.

A root that disappears (folder missing, or a mount point whose file system was unmounted) is reported
with `sink.set_online(root, False)` and nothing else: no deletes for its files.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from watchdog.events import FileSystemEvent
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from ..system import fs_type, mount_table
from .coalesce import Change, RawEvent, coalesce, split_ready
from .inotify import LossReportingObserver, threads_alive
from .observe import EVENT_FILTER, EventFilter, Handler, halt, is_network_fs, to_raw
from .scan import ScanRules

log = logging.getLogger(__name__)

BATCH_CHANGES = 10_000  # most changes per sink.apply call
PROBE_TIMEOUT = 5.0  # seconds a stat of a root folder may take before the root counts as offline
OPEN_WRITE_LIMIT = 120.0  # seconds of quiet after which a written, never-closed file is taken as it is
FLUSH_EVENTS = 30_000  # flush a burst still in progress once this many raw events are buffered
RESTART_BACKOFF = 5.0  # seconds between attempts to restart a dead observer
MAX_EVENTS = 500_000  # beyond this, drop the buffer and ask for a rescan rather than use more memory


class ChangeSink(Protocol):
    def apply(self, root: str, changes: list[Change]) -> None: ...

    def reconcile(self, root: str, reason: str) -> None: ...

    def set_online(self, root: str, online: bool) -> None: ...


# ---------------------------------------------------------------------------------------------------------
# Mounts


@dataclass(frozen=True)
class _Probe:
    identity: tuple[int, int]  # st_dev, st_ino of the root folder
    is_mount: bool
    fs_type: str


def _probe(path: bytes) -> _Probe | None:
    """What the root is now; None if it is not there (or not a folder)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    real = os.path.realpath(path)
    mounts = mount_table()
    return _Probe((st.st_dev, st.st_ino), real in mounts, fs_type(real, mounts))


# ---------------------------------------------------------------------------------------------------------
# The watcher


@dataclass
class _Root:
    name: str
    path: bytes
    keep: EventFilter
    lock: threading.Lock = field(default_factory=threading.Lock)
    mode: str = "offline"  # "inotify" | "polling" | "offline"
    observer: BaseObserver | None = None
    polling_reason: str | None = None  # why this root polls even though inotify was wanted
    probe: _Probe | None = None  # what the root was when last seen online
    expect_mount: bool = False  # it was a mount point: an empty folder in its place means unmounted
    buffer: list[RawEvent] = field(default_factory=list)
    first_event: float = 0.0
    last_event: float = 0.0
    lost: str | None = None  # set by watchdog threads, handled by the supervisor
    last_reconcile: float | None = None  # wall-clock time, for status
    last_reconcile_at: float = 0.0  # watcher clock, for scheduling
    last_reconcile_reason: str | None = None
    restarts: int = 0
    next_restart_at: float = 0.0
    last_error: str | None = None
    batches: int = 0
    probes: int = 0
    prober: threading.Thread | None = None  # the last stat of the root folder, maybe stuck on a dead server
    probe_box: list = field(default_factory=list)


class Watcher:
    def __init__(
        self,
        roots: dict[str, bytes],
        sink: ChangeSink,
        settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        force_polling: bool = False,
    ) -> None:
        self._sink = sink
        self._settings = settings
        self._clock = clock
        self._force_polling = force_polling
        self._settle = float(settings.watch_settle_seconds)
        self._quiet = self._settle / 2  # a burst is over when nothing happened for this long
        self._max_delay = max(5.0, 5 * self._settle)  # ... or when it has gone on for this long
        self._tick = min(0.25, max(0.02, self._settle / 4))
        rules = ScanRules(tuple(settings.index_exclude), bool(settings.index_hidden))
        self._roots = {
            name: _Root(name, os.fsencode(path), EventFilter(os.fsencode(path), rules)) for name, path in roots.items()
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    # -- public ------------------------------------------------------------------------------------------

    def start(self) -> None:
        with self._start_lock:
            if self._thread is not None:
                raise RuntimeError("watcher already started")
            self._stop.clear()
            for root in self._roots.values():
                self._guarded(root, self._bring_up, root)
            self._thread = threading.Thread(target=self._run, name="searchfs-watch", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5) -> None:
        with self._start_lock:
            deadline = time.monotonic() + timeout
            self._stop.set()
            if self._thread is not None:
                self._thread.join(max(0.0, deadline - time.monotonic()))
                if self._thread.is_alive():
                    log.warning("watch supervisor did not stop within %.1fs", timeout)
                self._thread = None
            for root in self._roots.values():
                if root.mode != "offline":
                    self._guarded(root, self._flush, root, True)
                self._stop_observer(root, max(0.1, deadline - time.monotonic()))

    def status(self) -> dict:
        out = {}
        for root in self._roots.values():
            with root.lock:
                out[root.name] = {
                    "path": os.fsdecode(root.path),
                    "mode": root.mode,
                    "pending": len(root.buffer),
                    "last_reconcile": root.last_reconcile,
                    "last_reconcile_reason": root.last_reconcile_reason,
                    "restarts": root.restarts,
                    "last_error": root.last_error,
                    "polling_reason": root.polling_reason,
                    "batches": root.batches,
                    "probes": root.probes,  # how often the supervisor has looked at the root folder
                }
        return out

    # -- supervisor ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self._tick):
            for root in self._roots.values():
                if self._stop.is_set():
                    break
                self._guarded(root, self._supervise, root)

    def _guarded(self, root: _Root, fn: Callable, *args) -> None:
        """Run one step; whatever goes wrong is logged and kept for status, never fatal to the thread."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - the watcher must not silently stop
            log.exception("watcher: root %s: %s failed", root.name, getattr(fn, "__name__", fn))
            with root.lock:
                root.last_error = f"{type(exc).__name__}: {exc}"

    def _supervise(self, root: _Root) -> None:
        if not self._follow_root(root):
            return
        self._check_losses(root)
        self._flush(root)
        period = float(self._settings.watch_reconcile_minutes) * 60
        if period > 0 and self._clock() - root.last_reconcile_at >= period:
            self._reconcile(root, "periodic")

    def _timed_probe(self, root: _Root) -> tuple[bool, _Probe | None]:
        """(answered, probe). The stat runs in a thread of its own: on a hard-mounted network share whose
        server went away it never returns, and it must not take the supervisor (every root) with it.
        While such a stat hangs no second one is started; the root counts as not answering."""
        if root.prober is None or not root.prober.is_alive():
            box: list = []
            root.probe_box = box
            root.prober = threading.Thread(
                target=lambda: box.append(_probe(root.path)), daemon=True, name=f"searchfs-probe-{root.name}"
            )
            root.prober.start()
            root.prober.join(PROBE_TIMEOUT)
        if root.prober.is_alive():
            return False, None
        return True, root.probe_box[0] if root.probe_box else None

    def _follow_root(self, root: _Root) -> bool:
        """Notice the root going away, coming back or being replaced. True if it is online."""
        answered, probe = self._timed_probe(root)
        root.probes += 1
        if not answered:
            if root.mode != "offline":
                self._take_down(root, f"not answering within {PROBE_TIMEOUT:g}s")
            return False
        if root.mode == "offline":
            if probe is not None and (probe.is_mount or not root.expect_mount):
                self._bring_up(root, probe, "online")
            return root.mode != "offline"
        if probe is None or (root.expect_mount and not probe.is_mount):
            self._take_down(root, "missing" if probe is None else "unmounted")
            return False
        if root.probe is not None and probe.identity != root.probe.identity:
            log.warning("watcher: root %s is a different folder now; restarting its watch", root.name)
            root.probe = probe
            root.expect_mount = root.expect_mount or probe.is_mount
            self._restart(root, "root-replaced")
        return True

    def _bring_up(self, root: _Root, probe: _Probe | None = None, reason: str = "start") -> None:
        probe = probe or _probe(root.path)
        if probe is None:
            log.warning("watcher: root %s (%s) is not there; waiting for it", root.name, os.fsdecode(root.path))
            with root.lock:
                root.mode = "offline"
            self._call(root, self._sink.set_online, root.name, False)
            return
        root.probe = probe
        root.expect_mount = root.expect_mount or probe.is_mount
        self._start_observer(root)
        if reason == "online":
            log.warning("watcher: root %s is back online", root.name)
        self._call(root, self._sink.set_online, root.name, True)
        self._reconcile(root, reason)

    def _take_down(self, root: _Root, why: str) -> None:
        log.warning("watcher: root %s is offline (%s); keeping its catalog entries", root.name, why)
        self._stop_observer(root, 2.0)
        with root.lock:
            root.mode = "offline"
            root.buffer = []  # whatever the disappearance looked like, it is not a deletion
            root.lost = None
        self._call(root, self._sink.set_online, root.name, False)

    def _check_losses(self, root: _Root) -> None:
        with root.lock:
            lost, root.lost = root.lost, None
        if lost is not None:
            log.warning("watcher: root %s lost events (%s); rescanning", root.name, lost)
            if lost == "watch-limit" and root.mode == "inotify":
                root.polling_reason = lost
                self._restart(root, lost, count=False)
            else:
                self._drop_buffer(root)
                self._reconcile(root, lost)
        elif root.observer is None or not threads_alive(root.observer):
            if self._clock() >= root.next_restart_at:  # back off, or a broken start would spin
                log.warning("watcher: root %s: its watchdog observer is not running; restarting", root.name)
                root.next_restart_at = self._clock() + RESTART_BACKOFF
                self._restart(root, "observer-died")

    def _restart(self, root: _Root, reason: str, count: bool = True) -> None:
        self._stop_observer(root, 2.0)
        self._drop_buffer(root)
        if count:
            with root.lock:
                root.restarts += 1
        self._start_observer(root)
        self._reconcile(root, reason)

    def _drop_buffer(self, root: _Root) -> None:
        with root.lock:  # the rescan that follows covers whatever the buffer said
            root.buffer = []

    # -- observers ---------------------------------------------------------------------------------------

    def _start_observer(self, root: _Root) -> None:
        polling = self._force_polling or root.polling_reason is not None
        if not polling and root.probe is not None and is_network_fs(root.probe.fs_type):
            root.polling_reason = f"network file system ({root.probe.fs_type})"
            log.info(
                "watcher: root %s is on %s; polling every %ss",
                root.name,
                root.probe.fs_type,
                self._settings.watch_poll_seconds,
            )
            polling = True
        if not polling:
            try:
                self._launch(root, LossReportingObserver(self._loss_reporter(root)), "inotify")
                return
            except OSError as exc:
                reason = "watch-limit" if exc.errno == errno.ENOSPC else "inotify-unavailable"
                log.warning("watcher: root %s: cannot use inotify (%s); polling instead", root.name, exc)
                root.polling_reason = reason
                with root.lock:
                    root.last_error = f"{reason}: {exc}"
        self._launch(root, PollingObserver(timeout=float(self._settings.watch_poll_seconds)), "polling")

    def _launch(self, root: _Root, observer: BaseObserver, mode: str) -> None:
        handler = Handler(lambda event: self._receive(root, event))
        try:
            observer.schedule(handler, os.fsdecode(root.path), recursive=True, event_filter=EVENT_FILTER)
            observer.start()
        except BaseException:
            halt(observer, 1.0)
            raise
        with root.lock:
            root.observer, root.mode = observer, mode

    def _stop_observer(self, root: _Root, timeout: float) -> None:
        with root.lock:
            observer, root.observer = root.observer, None
        if observer is not None:
            halt(observer, timeout)

    def _loss_reporter(self, root: _Root) -> Callable[[str, BaseException | None], None]:
        def report(reason: str, exc: BaseException | None) -> None:  # called on a watchdog thread
            with root.lock:
                if root.lost is None or reason == "watch-limit":
                    root.lost = reason
                if exc is not None:
                    root.last_error = f"{reason}: {exc}"

        return report

    # -- events ------------------------------------------------------------------------------------------

    def _receive(self, root: _Root, event: FileSystemEvent) -> None:
        now = self._clock()
        raws = to_raw(event, root.keep, now)
        if not raws:
            return
        with root.lock:
            if not root.buffer:
                root.first_event = now
            root.last_event = now
            root.buffer.extend(raws)
            if len(root.buffer) > MAX_EVENTS and root.lost is None:
                root.lost = "buffer-full"

    def _flush(self, root: _Root, final: bool = False) -> None:
        now = self._clock()
        with root.lock:
            if not root.buffer:
                return
            due = (
                final
                or now - root.last_event >= self._quiet
                or now - root.first_event >= self._max_delay
                or len(root.buffer) >= FLUSH_EVENTS
            )
            if not due:
                return
            events, root.buffer = root.buffer, []
        open_limit = OPEN_WRITE_LIMIT if root.mode == "inotify" else None
        go, held = split_ready(events, now, self._settle, open_limit)
        if held:
            with root.lock:
                root.buffer = held + root.buffer
                root.first_event = held[0].time
        changes = coalesce(go) if go else []
        for start in range(0, len(changes), BATCH_CHANGES):
            with root.lock:
                root.batches += 1
            self._call(root, self._sink.apply, root.name, changes[start : start + BATCH_CHANGES])

    def _reconcile(self, root: _Root, reason: str) -> None:
        with root.lock:
            root.last_reconcile, root.last_reconcile_at = time.time(), self._clock()
            root.last_reconcile_reason = reason
        self._call(root, self._sink.reconcile, root.name, reason)

    def _call(self, root: _Root, fn: Callable, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - a failing sink must not stop the watcher
            log.exception("watcher: root %s: sink.%s failed", root.name, getattr(fn, "__name__", "?"))
            with root.lock:
                root.last_error = f"sink: {type(exc).__name__}: {exc}"
