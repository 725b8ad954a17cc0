"""The mfusepy adapter: FUSE calls in, View calls out. The only module that imports mfusepy.

mfusepy hands paths over as `str` decoded from UTF-8 with `surrogateescape` (its defaults, which
`mount.py` passes explicitly), so `_b()` re-encodes them to the exact bytes the kernel sent, and
names going back are decoded the same way: names that are not UTF-8 round-trip.

Every call goes through `_call`, which turns any exception into an errno with `errno_for` (the one
place where domain errors become errnos), logs what deserves it, and never lets an exception reach
libfuse: no call, probe or burst of calls can take the daemon down. Expected errors (ENOENT, EROFS, ...)
are one DEBUG line each; mfusepy's own record of them (with a traceback) is dropped (`QuietFuseLog`).

libfuse 3 is preferred when it is installed (mfusepy otherwise loads libfuse 2 first): files opened with
`raw_fi` get `direct_io` for manifests generated as they are read, which both support.
"""

from __future__ import annotations

import ctypes.util
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

if (
    "FUSE_LIBRARY_PATH" not in os.environ
    and "FUSE_LIBRARY_NAME" not in os.environ
    and ctypes.util.find_library("fuse3")
):
    os.environ["FUSE_LIBRARY_NAME"] = "fuse3"

import mfusepy  # noqa: E402

from .. import errors as E  # noqa: E402
from . import view as V  # noqa: E402

log = logging.getLogger(__name__)

ENCODING, ERRORS = "utf-8", "surrogateescape"


def _b(path: str | None) -> bytes:
    return (path or "/").encode(ENCODING, ERRORS)


def _s(name: bytes) -> str:
    return name.decode(ENCODING, ERRORS)


# (class, errno, log level): the first matching class wins, so subclasses come first.
_ERRNO_TABLE: tuple[tuple[type, int, int], ...] = (
    (V.NoEntry, errno.ENOENT, logging.DEBUG),
    (V.NameTooLong, errno.ENAMETOOLONG, logging.DEBUG),
    (V.Denied, errno.EACCES, logging.INFO),
    (V.NotADir, errno.ENOTDIR, logging.DEBUG),
    (V.IsADir, errno.EISDIR, logging.DEBUG),
    (V.Exists, errno.EEXIST, logging.DEBUG),
    (V.ViewError, errno.EINVAL, logging.DEBUG),
    (E.NotFound, errno.ENOENT, logging.DEBUG),
    # A name that does not parse as a query or filter (year=abc) names nothing: ENOENT, so file
    # managers probing names stay quiet. Logged at INFO so the reason can still be found.
    (E.QueryError, errno.ENOENT, logging.INFO),
    (E.ReadOnly, errno.EROFS, logging.DEBUG),
    (E.LibraryBusy, errno.EAGAIN, logging.WARNING),
    (E.ModelUnavailable, errno.EIO, logging.ERROR),
    (E.SearchfsError, errno.EIO, logging.ERROR),
)


def errno_for(exc: BaseException) -> tuple[int, int]:
    """(errno, log level) for an exception raised inside a call. Unknown exceptions: EIO, ERROR."""
    for cls, code, level in _ERRNO_TABLE:
        if isinstance(exc, cls):
            return code, level
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return exc.errno, logging.WARNING
    return errno.EIO, logging.ERROR


class _Throttle:
    """Say the same thing at most once per `seconds` (a model that cannot load fails every call)."""

    def __init__(self, seconds: float = 30.0) -> None:
        self.seconds = seconds
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -1e9) < self.seconds:
                return False
            if len(self._last) > 1000:
                self._last.clear()
            self._last[key] = now
            return True


class ViewLike(Protocol):
    """What the adapter calls: fs/view.py's View, or a test's fake."""

    uid: int
    gid: int

    def getattr(self, path: bytes) -> V.Attr: ...

    def readdir(self, path: bytes) -> list[V.Entry]: ...

    def readlink(self, path: bytes) -> bytes: ...

    def open(self, path: bytes, flags: int) -> V.Opened: ...

    def read(self, path: bytes, size: int, offset: int, fh: int = 0) -> bytes: ...

    def release(self, fh: int) -> None: ...

    def mkdir(self, path: bytes) -> None: ...

    def rmdir(self, path: bytes) -> None: ...

    def statfs(self) -> dict: ...


FUSE_CAP_CACHE_SYMLINKS = 1 << 23  # libfuse 3 fuse_common.h
LINKS_KEPT = 50_000  # link paths remembered for invalidation; older ones are invalidated at once


class LinkCache:
    """Symlink targets the kernel caches, taken back when the library's generation moves on.

    The kernel keeps a cached link until told otherwise (it invalidates cached pages of regular files
    on attribute changes, never those of symlinks), and an entry name such as `03_IMG_0001.jpg` can point
    at another photo after a change. So every link served is remembered with its generation, and a
    thread asks libfuse to invalidate (fuse_invalidate_path) those served for an older generation.
    It runs outside libfuse's request threads: an invalidation must not wait on the request it is in."""

    def __init__(self, view, fuse: int, interval: float = 0.2) -> None:
        self.view = view
        self.interval = interval
        self._fuse = ctypes.c_void_p(fuse)
        self._invalidate = mfusepy._libfuse.fuse_invalidate_path
        self._invalidate.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._invalidate.restype = ctypes.c_int
        self._served: dict[bytes, int] = {}  # path -> generation served for (insertion order: oldest first)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="searchfs-links", daemon=True)
        self.invalidated = 0

    def served(self, path: bytes, generation: int) -> None:
        with self._lock:
            self._served.pop(path, None)
            self._served[path] = generation

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop, and wait for a sweep in flight (libfuse frees its handle after destroy)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep(self.view.generation())
            except Exception:  # noqa: BLE001 - the thread must go on; a failed sweep is retried
                log.exception("invalidating cached links failed")

    def sweep(self, generation: int) -> int:
        with self._lock:
            stale = [p for p, g in self._served.items() if g != generation]
            stale += list(self._served)[: max(0, len(self._served) - LINKS_KEPT)]
            for path in stale:
                self._served.pop(path, None)
        for path in stale:
            self._invalidate(self._fuse, path)  # -ENOENT when the kernel forgot it already: fine
        self.invalidated += len(stale)
        return len(stale)


class QuietFuseLog(logging.Filter):
    """Drops mfusepy's DEBUG record of every errno a call returns (it carries a traceback, and the adapter
    has already logged the call in one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.DEBUG and str(record.msg).startswith("FUSE operation %s (%s) raised"))


class SearchfsOperations(mfusepy.Operations):
    """mfusepy Operations over a `View` (or anything with the same methods)."""

    use_ns = True

    def __init__(self, view: ViewLike, throttle_seconds: float = 30.0, trace: bool = False) -> None:
        self.view = view
        self.started = False  # set once libfuse has mounted and called init
        self.trace = trace  # one DEBUG line per call (searchfs mount --debug)
        self.links: LinkCache | None = None
        self._throttle = _Throttle(throttle_seconds)

    def init(self, path: str) -> None:
        self.started = True
        log.info("mounted; serving requests")

    def init_with_config(self, conn, config) -> None:
        """libfuse's init: with libfuse 3 and a kernel that can, let the kernel cache symlink targets
        (Nautilus reads each link about 14 times); LinkCache takes them back when the library changes."""
        self.init("/")
        if conn is None or mfusepy.fuse_version_major < 3 or not conn.capable & FUSE_CAP_CACHE_SYMLINKS:
            return
        if not hasattr(self.view, "on_readlink"):
            return
        fuse = mfusepy._libfuse.fuse_get_context().contents.fuse
        if not fuse:
            return
        conn.want |= FUSE_CAP_CACHE_SYMLINKS
        self.links = LinkCache(self.view, fuse)
        self.view.on_readlink = self.links.served
        self.links.start()
        log.info("the kernel caches link targets (until the library changes)")

    def destroy(self, path: str) -> None:
        if self.links is not None:
            self.links.stop()

    # ------------------------------------------------------------------------------------ plumbing

    def _call(self, op: str, path: str | None, fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - nothing may escape into libfuse
            if not isinstance(exc, Exception):  # KeyboardInterrupt/SystemExit: still not ours to raise
                log.error("%s %r interrupted by %s", op, path, type(exc).__name__)
                raise mfusepy.FuseOSError(errno.EINTR) from None
            code, level = errno_for(exc)
            self._log(op, path, exc, code, level)
            raise mfusepy.FuseOSError(code) from None
        if self.trace:
            log.debug("%s %r: ok", op, path)
        return result

    def _log(self, op: str, path: str | None, exc: Exception, code: int, level: int) -> None:
        if level < logging.WARNING:
            log.log(level, "%s %r: %s: %s -> %s", op, path, type(exc).__name__, exc, errno.errorcode.get(code))
            return
        if isinstance(exc, E.SearchfsError):  # expected failures: one clear line, no traceback
            if self._throttle.allow(f"{type(exc).__name__}:{exc}"):
                log.log(
                    level,
                    "%s %r failed: %s (%s); answering %s",
                    op,
                    path,
                    exc,
                    type(exc).__name__,
                    errno.errorcode.get(code),
                )
            return
        log.log(
            level,
            "%s %r: unexpected %s; answering %s",
            op,
            path,
            type(exc).__name__,
            errno.errorcode.get(code),
            exc_info=exc,
        )

    def _stat(self, attr: V.Attr) -> dict[str, Any]:
        return {
            "st_mode": attr.mode,
            "st_ino": attr.ino,
            "st_nlink": attr.nlink,
            "st_size": attr.size,
            "st_uid": self.view.uid,
            "st_gid": self.view.gid,
            "st_atime": attr.mtime_ns,
            "st_mtime": attr.mtime_ns,
            "st_ctime": attr.mtime_ns,
            "st_blocks": (attr.size + 511) // 512,
            "st_blksize": 4096,
        }

    # ------------------------------------------------------------------------------------- reading

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        return self._call("getattr", path, lambda: self._stat(self.view.getattr(_b(path))))

    def readdir(self, path: str, fh: int):
        def run():
            entries = self.view.readdir(_b(path))
            out: list = [(".", {"st_mode": V.DIR.mode}, 0), ("..", {"st_mode": V.DIR.mode}, 0)]
            out.extend((_s(e.name), {"st_mode": e.mode, "st_ino": e.ino}, 0) for e in entries)
            return out

        return self._call("readdir", path, run)

    def readlink(self, path: str) -> str:
        return self._call("readlink", path, lambda: _s(self.view.readlink(_b(path))))

    # With raw_fi (see run_fuse), open, read and release get libfuse's fuse_file_info, or an int in tests.

    def open(self, path: str, fi) -> int:
        def run() -> int:
            flags = fi if isinstance(fi, int) else fi.flags
            opened = self.view.open(_b(path), flags)
            if isinstance(fi, int):
                return opened.fh
            fi.fh = opened.fh
            fi.direct_io = int(opened.direct_io)
            return 0

        return self._call("open", path, run)

    def read(self, path: str, size: int, offset: int, fi) -> bytes:
        fh = fi if isinstance(fi, int) else fi.fh
        return self._call("read", path, lambda: self.view.read(_b(path), size, offset, fh))

    def opendir(self, path: str) -> int:
        return self._call("opendir", path, lambda: 0)

    def release(self, path: str, fi) -> int:
        fh = fi if isinstance(fi, int) else fi.fh
        return self._call("release", path, lambda: _then_zero(self.view.release, fh))

    def releasedir(self, path: str, fh: int) -> int:
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return self._call("statfs", path, lambda: self.view.statfs())

    def access(self, path: str, amode: int) -> int:
        def run():
            self.view.getattr(_b(path))
            if amode & os.W_OK:
                raise E.ReadOnly("searchfs is read-only")
            return 0

        return self._call("access", path, run)

    # ------------------------------------------------------------------------- query folders (rw)

    def mkdir(self, path: str, mode: int) -> int:
        return self._call("mkdir", path, lambda: _then_zero(self.view.mkdir, _b(path)))

    def rmdir(self, path: str) -> int:
        return self._call("rmdir", path, lambda: _then_zero(self.view.rmdir, _b(path)))

    # ------------------------------------------------------------------------ everything else: EROFS

    def _refuse(self, op: str, path: str | None) -> int:
        return self._call(op, path, _raise_read_only)

    def create(self, path, mode, fi=None):
        return self._refuse("create", path)

    def mknod(self, path, mode, dev):
        return self._refuse("mknod", path)

    def write(self, path, data, offset, fh):
        return self._refuse("write", path)

    def truncate(self, path, length, fh=None):
        return self._refuse("truncate", path)

    def unlink(self, path):
        return self._refuse("unlink", path)

    def rename(self, old, new):
        return self._refuse("rename", old)

    def link(self, target, source):
        return self._refuse("link", target)

    def symlink(self, target, source):
        return self._refuse("symlink", target)

    def chmod(self, path, mode):
        return self._refuse("chmod", path)

    def chown(self, path, uid, gid):
        return self._refuse("chown", path)

    def utimens(self, path, times=None):
        return self._refuse("utimens", path)

    def setxattr(self, path, name, value, options, position=0):
        return self._refuse("setxattr", path)

    def removexattr(self, path, name):
        return self._refuse("removexattr", path)

    def fallocate(self, path, mode, offset, size, fh):
        return self._refuse("fallocate", path)


def _then_zero(fn: Callable[..., None], *args: Any) -> int:
    fn(*args)
    return 0


def _raise_read_only() -> None:
    raise E.ReadOnly("searchfs is read-only")


def run_fuse(operations: SearchfsOperations, mountpoint: str, *, foreground: bool = True, **options: Any) -> None:
    """Block serving `operations` at `mountpoint` until unmounted (multi-threaded)."""
    quiet = QuietFuseLog()
    logging.getLogger("fuse").addFilter(quiet)
    try:
        mfusepy.FUSE(
            operations,
            mountpoint,
            foreground=foreground,
            nothreads=False,
            raw_fi=True,
            encoding=ENCODING,
            errors=ERRORS,
            **options,
        )
    finally:
        logging.getLogger("fuse").removeFilter(quiet)
