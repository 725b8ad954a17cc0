"""Mount lifecycle: checks, stale mounts, the foreground daemon, background spawning, unmount.

API (what the CLI calls)
------------------------
``mount(backend_factory, mountpoint, *, foreground=True, allow_other=False, log_file=None, debug=False,
command=None, ready_timeout=60)``
    Foreground (the default): clear a stale mount left by a killed daemon, build the backend
    (``backend_factory()``), refuse a mountpoint inside or above a source root, then serve until
    unmounted (``searchfs umount``, ``fusermount -u``, SIGTERM, SIGINT or SIGHUP: libfuse unmounts
    cleanly on those signals). Logs go to ``log_file`` (default ``<settings.log_dir>/mount.log``).
    Closes the backend (``backend.close()`` if it has one) on the way out.
    Background (``foreground=False``): no fork (forking after torch started threads is unsafe); it
    starts ``command`` (default ``[python, -m, searchfs, mount, --foreground, <mountpoint>]``, plus
    ``--allow-other``) as a fresh detached process (new session, stdin /dev/null, stdout/stderr appended
    to the log file), waits until the mount is live and returns the child's pid; if the child exits
    first, raises MountError with the tail of its log.
``spawn(command, mountpoint, *, log_file, ready_timeout=60) -> int``: the background half, alone.
``unmount(mountpoint, *, lazy=False)``: for ``searchfs umount``. A busy mount (a shell sitting inside)
    raises MountError saying so, unless ``lazy=True`` (``fusermount -uz``: the mount disappears now, the
    daemon exits when the last user leaves). A stale mount is simply cleared.
``is_mounted(mountpoint)``, ``is_stale(mountpoint)``, ``clear_stale(mountpoint)``,
``check_mountpoint(mountpoint, root_paths)``, ``fuse_options(allow_other)``.

Mount options: fsname=searchfs, subtype=searchfs, use_ino (our stable inode numbers), entry/attr/
negative timeouts of 1 s (new results show on the next listing), multi-threaded. ``debug`` logs every FUSE
call in one DEBUG line (libfuse's own -d trace is not turned on: it is several lines per call on stderr).

Read-only without the kernel's `ro` flag: with `ro` the kernel itself answers EROFS to mkdir/rmdir, so
`rmdir query/<text>` (forget) and `mkdir query/+<text>` (save) could never reach us. Every other write
is answered EROFS by fs/fuse_ops.py for every user. `default_permissions` is off for the same reason
(the kernel would answer EACCES, not EROFS, to a non-root writer in a 0555 folder); nothing is lost:
the tree is read-only, and the photos behind the symlinks keep their own permissions.
Private by default: ``allow_other`` only with the explicit flag (a non-root user also needs
``user_allow_other`` in /etc/fuse.conf).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import ensure_private_file, runtime_dir
from ..errors import NotFound, SearchfsError
from ..paths import is_under
from ..system import mount_table

if TYPE_CHECKING:
    from .view import Backend

log = logging.getLogger(__name__)

FSNAME = "searchfs"
ENTRY_TIMEOUT = 1.0


class MountError(SearchfsError):
    """A mount or unmount cannot be done (busy, not a folder, inside a source root, ...)."""

    exit_code = 7


# ------------------------------------------------------------------------------------------ helpers


def _abs(mountpoint: os.PathLike | str | bytes) -> str:
    path = os.fsdecode(mountpoint)
    path = os.path.abspath(os.path.expanduser(path))
    parent, name = os.path.split(path)
    return os.path.join(os.path.realpath(parent), name) if name else path


def mounts() -> dict[str, str]:
    """mount point -> fs type (system.mount_table, as str paths)."""
    return {os.fsdecode(point): kind for point, kind in mount_table().items()}


def is_mounted(mountpoint) -> bool:
    """Something (live or stale) is mounted at `mountpoint`."""
    return _abs(mountpoint) in mounts()


def is_stale(mountpoint) -> bool:
    """A FUSE mount whose daemon is gone: ENOTCONN (Transport endpoint is not connected).

    statvfs always reaches the daemon, where stat may be answered from the kernel's attribute cache."""
    path = _abs(mountpoint)
    try:
        os.stat(path)
        if path in mounts():
            os.statvfs(path)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def _unmount_commands(lazy: bool) -> list[list[str]]:
    flag = "-uz" if lazy else "-u"
    cmds = []
    for tool in ("fusermount3", "fusermount"):
        if shutil.which(tool):
            cmds.append([tool, flag])
    if shutil.which("umount"):
        cmds.append(["umount", "-l"] if lazy else ["umount"])
    return cmds


def clear_stale(mountpoint) -> bool:
    """Lazily unmount a stale mount at `mountpoint`; True if one was cleared."""
    path = _abs(mountpoint)
    if not is_stale(path):
        return False
    log.info("clearing stale mount at %s (its daemon is gone)", path)
    for cmd in _unmount_commands(lazy=True):
        try:
            subprocess.run(cmd + [path], capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if not is_stale(path):
            return True
    raise MountError(
        f"{path}: a stale mount is left by a killed daemon and cannot be cleared; "
        f"run `fusermount -uz {path}` (or `sudo umount -l {path}`)"
    )


def check_mountpoint(mountpoint, root_paths: Sequence[bytes | str] = ()) -> str:
    """The absolute mountpoint, after refusing what cannot or must not be mounted on."""
    path = _abs(mountpoint)
    if not os.path.exists(path):
        raise MountError(f"mountpoint {path} does not exist; create it first (mkdir -p {path})")
    if not os.path.isdir(path):
        raise MountError(f"mountpoint {path} is not a folder")
    if path in mounts():
        raise MountError(f"{path} is already a mount point; unmount it first (searchfs umount {path})")
    real = os.path.realpath(path)
    for root in root_paths:
        root_real = os.path.realpath(os.fsdecode(root))
        if is_under(real, root_real):
            raise MountError(
                f"mountpoint {path} is inside the source root {root_real}; "
                "the index would find its own results. Pick a folder outside the roots"
            )
        if is_under(root_real, real):
            raise MountError(
                f"mountpoint {path} contains the source root {root_real}; "
                "mounting would hide the photos. Pick another folder"
            )
    if os.listdir(path):
        raise MountError(f"mountpoint {path} is not empty; mounting would hide its files")
    return path


def fuse_options(allow_other: bool = False) -> dict:
    """libfuse options. See the module docstring for why `ro` and `default_permissions` are off."""
    options = {
        "fsname": FSNAME,
        "subtype": FSNAME,
        "use_ino": True,
        "entry_timeout": ENTRY_TIMEOUT,
        "attr_timeout": ENTRY_TIMEOUT,
        "negative_timeout": ENTRY_TIMEOUT,
    }
    if allow_other:
        options["allow_other"] = True
    return options


def default_log_file(settings) -> Path:
    return Path(settings.log_dir) / "mount.log"


def _setup_logging(log_file: os.PathLike | None, debug: bool) -> logging.Handler | None:
    if log_file is None:
        return None
    path = Path(log_file)
    ensure_private_file(path)
    logging.raiseExceptions = False  # a log line lost to a full disk must not print a traceback instead
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG if debug else logging.INFO)
    for name in ("searchfs", "fuse"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > handler.level:
            logger.setLevel(handler.level)
    return handler


# ------------------------------------------------------------------------------------------- mount


def mount(
    backend_factory: Callable[[], Backend] | None,
    mountpoint,
    *,
    foreground: bool = True,
    allow_other: bool = False,
    log_file: os.PathLike | None = None,
    debug: bool = False,
    command: Sequence[str] | None = None,
    ready_timeout: float = 60.0,
) -> int | None:
    """Mount the search tree at `mountpoint`. See the module docstring."""
    if not foreground:
        if command is None:
            raise MountError("a background mount needs the command that serves it (cli.py builds it)")
        return spawn(command, mountpoint, log_file=log_file, ready_timeout=ready_timeout)

    from .fuse_ops import SearchfsOperations, run_fuse  # needs libfuse; the rest of this module doesn't
    from .view import View

    if backend_factory is None:
        raise MountError("a foreground mount needs a backend")
    path = _abs(mountpoint)
    clear_stale(path)
    backend = backend_factory()
    handler = None
    try:
        if log_file is None and getattr(backend, "settings", None) is not None:
            log_file = default_log_file(backend.settings)
        handler = _setup_logging(log_file, debug)
        roots = [backend.root_path(name) for name in backend.root_names()]
        check_mountpoint(path, roots)
        view = View(backend)
        pid_file = _pid_file(path)
        pid_file.write_text(str(os.getpid()))
        log.info(
            "mounting searchfs at %s (pid %d, %s)",
            path,
            os.getpid(),
            "shared with other users" if allow_other else "private",
        )
        operations = SearchfsOperations(view, trace=debug)
        try:
            run_fuse(operations, path, foreground=True, **fuse_options(allow_other))
        except RuntimeError as exc:
            # libfuse3 reports a loop ended by SIGTERM/SIGINT/SIGHUP as a non-zero status (mfusepy
            # raises RuntimeError(status)); that is a clean stop when the mount is gone.
            if not operations.started:
                raise MountError(f"cannot mount {path}: libfuse status {exc} (see the lines above)") from exc
            if path in mounts():
                raise MountError(f"libfuse failed serving {path}: status {exc}") from exc
            log.info("stopped by a signal (libfuse status %s)", exc)
        log.info("unmounted %s", path)
    finally:
        close = getattr(backend, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # noqa: BLE001
                log.exception("closing the backend failed")
        _pid_file(path).unlink(missing_ok=True)  # last: `searchfs umount` waits for it to go
        if handler is not None:
            for name in ("searchfs", "fuse"):
                logging.getLogger(name).removeHandler(handler)
            handler.close()
    return None


def spawn(
    command: Sequence[str],
    mountpoint,
    *,
    log_file: os.PathLike | None = None,
    ready_timeout: float = 60.0,
    env: dict | None = None,
) -> int:
    """Start `command` (a foreground mount) detached; return its pid once `mountpoint` is live."""
    path = _abs(mountpoint)
    if is_stale(path):
        clear_stale(path)
    if path in mounts():
        raise MountError(f"{path} is already a mount point; unmount it first (searchfs umount {path})")
    if log_file is not None:
        ensure_private_file(log_file)
        out = open(log_file, "ab")
    else:
        out = open(os.devnull, "wb")
    start = out.tell() if log_file is not None else 0
    with out:
        child = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if _live(path):
            return child.pid
        code = child.poll()
        if code is not None:
            raise MountError(
                f"the mount process exited with status {code} before {path} was mounted" + _tail(log_file, start)
            )
        time.sleep(0.05)
    try:
        child.send_signal(signal.SIGTERM)
        child.wait(5)
    except (OSError, subprocess.TimeoutExpired):
        child.kill()
    raise MountError(f"{path} was not mounted after {ready_timeout:.0f} s" + _tail(log_file, start))


def _live(path: str) -> bool:
    fstype = mounts().get(path)
    if fstype is None or not fstype.startswith("fuse"):
        return False
    try:
        os.stat(path)
    except OSError:
        return False
    return True


def _tail(log_file: os.PathLike | None, start: int, lines: int = 8) -> str:
    if log_file is None:
        return ""
    try:
        with open(log_file, "rb") as fh:
            fh.seek(start)
            text = fh.read().decode("utf-8", "replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return ("; log " + os.fspath(log_file) + ":\n  " + "\n  ".join(text)) if text else ""


def _pid_file(mountpoint: str) -> Path:
    """Where the daemon serving `mountpoint` says who it is, so that `unmount` can wait for it to finish."""
    key = hashlib.blake2b(os.fsencode(mountpoint), digest_size=8).hexdigest()
    return runtime_dir() / f"mount-{key}.pid"


def wait_for_daemon(mountpoint, timeout: float = 60.0) -> int | None:
    """After an unmount: wait until the daemon that served `mountpoint` has finished (saved what it keeps,
    released the library's writer lock). Returns its pid if it is still running after `timeout`."""
    pid_file = _pid_file(_abs(mountpoint))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            return None  # gone (or never recorded)
        if not running(pid):
            return None
        time.sleep(0.05)
    return pid


def running(pid: int) -> bool:
    """Whether `pid` is a live process: a zombie (ended, not reaped yet) has finished its work."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def unmount(mountpoint, *, lazy: bool = False, timeout: float = 10.0) -> None:
    """Unmount a searchfs mount (or clear a stale one). See the module docstring."""
    path = _abs(mountpoint)
    table = mounts()
    if path not in table:
        raise NotFound(f"nothing is mounted at {path}")
    if is_stale(path):
        clear_stale(path)
        return
    errors = []
    for cmd in _unmount_commands(lazy):
        try:
            proc = subprocess.run(cmd + [path], capture_output=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            errors.append(f"{cmd[0]}: {exc}")
            continue
        if proc.returncode == 0 and path not in mounts():
            return
        message = proc.stderr.decode("utf-8", "replace").strip()
        errors.append(message or f"{cmd[0]} exited {proc.returncode}")
        if "busy" in message.lower():
            raise MountError(
                f"{path} is busy: a shell or program is using it. Leave it (cd elsewhere) "
                f"and retry, or unmount lazily with `searchfs umount --lazy {path}`"
            )
    if path in mounts():
        raise MountError(f"cannot unmount {path}: " + "; ".join(errors))
