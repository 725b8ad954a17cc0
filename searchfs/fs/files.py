"""Files mode ([mount] entries = "files"): result entries are read-only regular files whose reads pass
through to the original photos.

Every open resolves the original and refuses (EACCES) one that lands outside its root or is not a
regular file: the check is made on the file actually opened (/proc/self/fd), so a symlink swapped in
after indexing, or any path trick between the check and the open, cannot serve an outside file.
Descriptors are bounded: a small LRU of open originals, reopened (and checked again) when evicted.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass

from .nodes import Denied, NoEntry

log = logging.getLogger(__name__)

MAX_FDS = 16


@dataclass
class _Open:
    path: bytes
    root: bytes  # the root's real path
    fd: int = -1
    users: int = 0  # reads using `fd` right now; it is closed only when none is


def inside(path: bytes, root: bytes) -> bool:
    root = root.rstrip(b"/") or b"/"
    return path == root or path.startswith(root + b"/") or root == b"/"


def open_checked(path: bytes, root: bytes) -> int:
    """An O_RDONLY descriptor of `path`, a regular file inside `root` (a real path) once opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise NoEntry(path) from None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.ELOOP):
            raise Denied(f"{os.fsdecode(path)}: {exc.strerror}") from None
        raise
    try:
        real = os.readlink(f"/proc/self/fd/{fd}".encode())
        if not inside(real, root) or not stat.S_ISREG(os.fstat(fd).st_mode):
            log.warning(
                "refused to serve %s: it is %s, not a regular file inside its root %s",
                os.fsdecode(path),
                os.fsdecode(real),
                os.fsdecode(root),
            )
            raise Denied(f"{os.fsdecode(path)} is not a regular file inside its root")
    except BaseException:
        os.close(fd)
        raise
    return fd


class Originals:
    """Open originals by handle, with at most `max_fds` descriptors held between reads."""

    def __init__(self, max_fds: int = MAX_FDS) -> None:
        self.max_fds = max_fds
        self._lock = threading.Lock()
        self._handles: dict[int, _Open] = {}
        self._lru: OrderedDict[int, None] = OrderedDict()  # handles holding a descriptor
        self._numbers = itertools.count(1 << 32)  # apart from the view's own handles

    def open(self, path: bytes, root: bytes) -> int:
        fd = open_checked(path, root)
        with self._lock:
            handle = next(self._numbers)
            self._handles[handle] = _Open(path, root, fd)
            self._lru[handle] = None
            self._trim()
        return handle

    def read(self, handle: int, size: int, offset: int) -> bytes:
        item = self._use(handle)
        try:
            return os.pread(item.fd, size, offset)
        finally:
            with self._lock:
                item.users -= 1
                if handle not in self._handles and not item.users and item.fd >= 0:
                    os.close(item.fd)  # released while this read ran
                    item.fd = -1
                self._trim()

    def release(self, handle: int) -> None:
        with self._lock:
            item = self._handles.pop(handle, None)
            self._lru.pop(handle, None)
            if item is not None and item.fd >= 0 and not item.users:
                os.close(item.fd)
                item.fd = -1

    def descriptors(self) -> int:
        with self._lock:
            return sum(1 for item in self._handles.values() if item.fd >= 0)

    def _use(self, handle: int) -> _Open:
        with self._lock:
            item = self._handles.get(handle)
            if item is None:
                raise NoEntry(f"no open file {handle}")
            if item.fd >= 0:
                item.users += 1
                self._lru.move_to_end(handle)
                return item
        fd = open_checked(item.path, item.root)  # evicted: open (and check) again, outside the lock
        with self._lock:
            if item.fd >= 0 or handle not in self._handles:
                os.close(fd)
                if handle not in self._handles:
                    raise NoEntry(f"no open file {handle}")
            else:
                item.fd = fd
            item.users += 1
            self._lru[handle] = None
            self._lru.move_to_end(handle)
            self._trim()
            return item

    def _trim(self) -> None:
        """Close the least recently used idle descriptors beyond `max_fds`."""
        for handle in list(self._lru):
            if len(self._lru) <= self.max_fds:
                return
            item = self._handles.get(handle)
            if item is None:
                del self._lru[handle]
            elif not item.users:
                os.close(item.fd)
                item.fd = -1
                del self._lru[handle]
