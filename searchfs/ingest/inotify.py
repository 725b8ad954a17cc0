"""watchdog's inotify observer, hooked so that what it otherwise only logs or ignores reaches the watcher:
a kernel queue overflow (IN_Q_OVERFLOW, after which events were lost) and a folder that could not be
watched (the inotify watch limit, or too many open files). watch.py starts one per root and turns each
loss into a reconcile, or into polling for that root. Imported by watch.py only.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyEmitter, InotifyObserver, InotifyWatchGroup


class _WatchGroup(InotifyWatchGroup):
    """watchdog's watch group, reporting what it otherwise only logs or ignores."""

    def __init__(self, *args, on_lost: Callable[[str, BaseException | None], None], **kwargs) -> None:
        self.on_lost = on_lost  # set before the dataclass __init__, which already adds the watches
        super().__init__(*args, **kwargs)

    def on_queue_overflow(self) -> None:
        super().on_queue_overflow()
        self.on_lost("overflow", None)

    def _add_callback(self, path: bytes) -> None:
        # Same as watchdog's, but a sub-folder that cannot be watched is reported, not skipped.
        try:
            wd = self._inotify_fd.add_callback(path, self.event_mask, self._callback, self._id)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EMFILE):
                self.on_lost("watch-limit", exc)
            if path == self.path:
                raise
            return
        self._active_callbacks_by_path[path] = wd
        self._active_callbacks_by_watch[wd] = path


class _Emitter(InotifyEmitter):
    def __init__(self, *args, on_lost: Callable[[str, BaseException | None], None], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._on_lost = on_lost

    def on_thread_start(self) -> None:  # InotifyEmitter.on_thread_start with our watch group
        self._inotify = _WatchGroup(
            self._inotify_fd,
            os.fsencode(self.watch.path),
            is_recursive=self.watch.is_recursive,
            event_mask=self.get_event_mask_from_filter(),
            follow_symlink=self.watch.follow_symlink,
            on_lost=self._on_lost,
        )


class LossReportingObserver(InotifyObserver):
    """An inotify observer with its own inotify instance whose losses reach `on_lost`."""

    def __init__(self, on_lost: Callable[[str, BaseException | None], None]) -> None:
        super().__init__()
        self._emitter_class = _Emitter
        self._emitter_kwargs["on_lost"] = on_lost

    def threads_alive(self) -> bool:
        fd_thread = getattr(self, "_inotify_fd", None)
        return (
            self.is_alive() and all(e.is_alive() for e in self.emitters) and (fd_thread is None or fd_thread.is_alive())
        )


def threads_alive(observer: BaseObserver) -> bool:
    """Whether an observer and all its threads (emitters, and inotify's reader thread) still run."""
    if isinstance(observer, LossReportingObserver):
        return observer.threads_alive()
    return observer.is_alive() and all(e.is_alive() for e in observer.emitters)
