"""The watchdog side of watching one root, for watch.py's supervisor: which events watchdog is asked for
(EVENT_FILTER), which file systems are polled because inotify misses changes made elsewhere
(is_network_fs), how a watchdog event becomes RawEvents filtered by the scan's own rules (to_raw,
EventFilter), the handler that passes events on from watchdog's dispatch thread, and stopping an
observer with all its threads (halt). watch.py decides when each is used. Imports watchdog; imported by
watch.py only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver

from ..paths import relative
from .coalesce import EventKind, RawEvent
from .scan import ScanRules

log = logging.getLogger(__name__)

# What we ask watchdog for. Leaving out opens, read-only closes and folder "modified" events keeps the
# indexer's own reads from echoing back and keeps the kernel queue short during large copies.
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
]

# File systems where inotify misses changes made by other machines: poll them instead.
NETWORK_FS = {
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ncpfs",
    "afs",
    "9p",
    "virtiofs",
    "ceph",
    "glusterfs",
    "lustre",
    "gpfs",
    "davfs",
    "fuse",
}


def is_network_fs(fs_type: str) -> bool:
    return fs_type in NETWORK_FS or fs_type.startswith("fuse.")


class EventFilter:
    """The scan's own rules (ScanRules), for absolute paths of one root's events."""

    def __init__(self, root: bytes, rules: ScanRules) -> None:
        self.root = root
        self.rules = rules

    def wanted(self, path: bytes) -> bool:
        inside = relative(path, self.root)
        return inside is not None and inside != b"" and self.rules.keeps(inside)  # not the root itself, nor outside


_KINDS = {kind.value: kind for kind in EventKind}  # watchdog's event_type names are ours


def to_raw(event: FileSystemEvent, keep: EventFilter, now: float) -> list[RawEvent]:
    kind = _KINDS.get(event.event_type)
    if kind is None or (event.is_directory and kind in (EventKind.MODIFIED, EventKind.ATTRIB, EventKind.CLOSED)):
        return []
    src = os.fsencode(event.src_path)
    is_dir = event.is_directory
    if kind != EventKind.MOVED:
        return [RawEvent(kind, src, is_dir=is_dir, time=now)] if keep.wanted(src) else []
    dest = os.fsencode(event.dest_path)
    src_ok, dest_ok = keep.wanted(src), keep.wanted(dest)
    if src_ok and dest_ok:
        return [RawEvent(EventKind.MOVED, src, dest, is_dir, now)]
    if dest_ok:
        # e.g. a download renamed from "x.jpg.part" to "x.jpg": new to us, and complete (its writer
        # closed it under the excluded name), so a close goes with it.
        created = RawEvent(EventKind.CREATED, dest, is_dir=is_dir, time=now)
        return [created] if is_dir else [created, RawEvent(EventKind.CLOSED, dest, time=now)]
    if src_ok:
        return [RawEvent(EventKind.DELETED, src, is_dir=is_dir, time=now)]
    return []


class Handler(FileSystemEventHandler):
    """watchdog handler: hands each event to `receive` (the watcher's, which converts and buffers it), on
    watchdog's dispatch thread. Must never raise."""

    def __init__(self, receive: Callable[[FileSystemEvent], None]) -> None:
        self._receive = receive

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._receive(event)
        except Exception:  # noqa: BLE001 - an exception here would kill watchdog's thread
            log.exception("watcher: cannot handle %r", event)


def halt(observer: BaseObserver, timeout: float) -> None:
    """Stop an observer and join its threads (emitters, inotify's reader), each for up to `timeout` seconds."""
    try:
        observer.stop()
    except Exception:  # noqa: BLE001 - stopping half-dead observers may fail; join anyway
        log.debug("observer.stop failed", exc_info=True)
    if observer.is_alive():
        observer.join(timeout)
    for emitter in list(observer.emitters):
        if emitter.is_alive():
            emitter.join(timeout)
    fd_thread = getattr(observer, "_inotify_fd", None)
    if fd_thread is not None and fd_thread.is_alive():
        fd_thread.join(timeout)
