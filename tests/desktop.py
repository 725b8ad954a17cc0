"""A desktop for tests: Xvfb, a D-Bus session and a real file manager, driven from Python.

Used by tests/test_desktop.py. Every file manager runs in its own session (`dbus-run-session` in a new
process group, fresh HOME and XDG folders), so its GVfs daemons, thumbnailers and caches start empty
and die with it. Nothing here sleeps as a success criterion: every wait polls something real with a
deadline (thumbnail files, reads of the originals, the daemon log, window ids).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import signal
import struct
import subprocess
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from waiting import poll

SCREEN = (1280, 1024)


# ------------------------------------------------------------------------------------ file managers


@dataclass(frozen=True)
class Manager:
    name: str
    argv: tuple[str, ...]  # the folder is appended
    wm_class: str
    # "cache": thumbnails are saved under $XDG_CACHE_HOME/thumbnails, keyed by the URI shown;
    # "reads": they are not saved (libfm 1.3.2 skips saving), so the evidence is that the file
    # manager read every original.
    thumbnails: str
    # Nautilus shows an item count on every folder (show-directory-item-counts 'local-only', and a FUSE
    # mount is local): it lists each child folder of the folder it opens.
    counts_children: bool = False

    def available(self) -> bool:
        return shutil.which(self.argv[0]) is not None


MANAGERS = {
    "pcmanfm": Manager("pcmanfm", ("pcmanfm", "--no-desktop"), "pcmanfm", "reads"),
    "thunar": Manager("thunar", ("thunar",), "thunar", "cache"),
    "nautilus": Manager("nautilus", ("nautilus", "--new-window"), "org.gnome.Nautilus", "cache", counts_children=True),
}


def unresponsive_fuse_mounts(timeout: float = 3.0) -> list[str]:
    """FUSE mounts that do not answer statfs: GIO's volume monitors stat every mount, so one dead or
    frozen FUSE daemon anywhere (a gvfsd-fuse left by an ended session, a stopped searchfs) can hang a
    file manager that has nothing to do with it."""
    stuck = []
    with open("/proc/self/mountinfo") as info:
        points = [line.split(" - ")[0].split()[4] for line in info if " - fuse" in line]
    for point in points:
        point = point.encode().decode("unicode_escape")
        probe = subprocess.Popen(["stat", "-f", point], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            probe.wait(timeout)
        except subprocess.TimeoutExpired:
            probe.kill()
            stuck.append(point)
    return stuck


def missing_tools() -> list[str]:
    return [tool for tool in ("Xvfb", "dbus-run-session", "import", "gio", "xdotool") if shutil.which(tool) is None]


# ------------------------------------------------------------------------------------------ Xvfb


class Display:
    """One Xvfb server; `session()` starts a file manager on it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        read_end, write_end = os.pipe()
        self.xvfb = subprocess.Popen(
            [
                *("Xvfb", "-displayfd", str(write_end), "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24"),
                # -noreset: an X server resets when its last client disconnects, and a client that connects
                # meanwhile "cannot open display". Here every session ends with its file manager, so the
                # next one started at that moment: the first PCManFM and the first Thunar failed so in CI.
                *("-noreset", "-nolisten", "tcp"),
            ],
            pass_fds=(write_end,),
            stdout=open(base / "xvfb.log", "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        os.close(write_end)
        # Xvfb writes the number, then "\n": read both, or its second write fails (EPIPE) and it exits.
        number = b""
        while not number.endswith(b"\n"):
            chunk = os.read(read_end, 16)
            if not chunk:
                break
            number += chunk
        os.close(read_end)
        if not number.strip():
            raise RuntimeError("Xvfb did not start: " + (base / "xvfb.log").read_text(errors="replace"))
        self.name = ":" + number.decode().strip()
        self.sessions: list[Session] = []
        # Xvfb names the display once it listens; a real client round trip says it also answers
        if not poll(self.answers, 20, every=0.2):
            raise RuntimeError(f"Xvfb {self.name} does not answer: " + (base / "xvfb.log").read_text(errors="replace"))

    def answers(self) -> bool:
        env = {"PATH": "/usr/bin:/bin", "DISPLAY": self.name}
        try:
            done = subprocess.run(["xdotool", "getdisplaygeometry"], env=env, capture_output=True, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    def session(self, manager: Manager, folder: os.PathLike, label: str, home: Path | None = None) -> Session:
        session = Session(self, manager, Path(folder), self.base / label, home)
        self.sessions.append(session)
        return session

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["import", "-window", "root", str(path)], env={**os.environ, "DISPLAY": self.name}, timeout=30, check=True
        )

    def close(self) -> None:
        for session in self.sessions:
            session.close()
        self.xvfb.terminate()
        try:
            self.xvfb.wait(10)
        except subprocess.TimeoutExpired:
            self.xvfb.kill()
            self.xvfb.wait(10)


class Session:
    """A file manager in its own D-Bus session and its own HOME, caches and runtime folder."""

    def __init__(self, display: Display, manager: Manager, folder: Path, base: Path, home: Path | None = None) -> None:
        self.display, self.manager, self.folder, self.base = display, manager, folder, base
        if base.exists():
            shutil.rmtree(base)
        self.env = {
            "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG": "C.UTF-8",
            "DISPLAY": display.name,
            "NO_AT_BRIDGE": "1",  # no accessibility bus
            "GVFS_DISABLE_FUSE": "1",  # no gvfsd-fuse mount left behind in XDG_RUNTIME_DIR
            "GTK_A11Y": "none",
            # Nautilus's job log ("starting mount in ...", "Finished loading window for uri ..."),
            # so a window stuck on "Loading..." says which job it waits for
            "NAUTILUS_DEBUG": "AsyncJobs,Window",
            "G_MESSAGES_DEBUG": "all",
        }
        for var, sub in (
            ("HOME", "home"),
            ("XDG_CACHE_HOME", "cache"),
            ("XDG_CONFIG_HOME", "config"),
            ("XDG_DATA_HOME", "data"),
            ("XDG_RUNTIME_DIR", "run"),
        ):
            path = base / sub
            path.mkdir(parents=True)
            path.chmod(0o700)
            self.env[var] = str(path)
        if home is not None:  # a HOME of the caller's choosing (a mount inside HOME is shown as a volume)
            self.env["HOME"] = str(home)
        self.cache = base / "cache"
        self.log = base / f"{manager.name}.log"
        self.proc: subprocess.Popen | None = None
        self._extra: tuple[str, ...] = ()
        self._log_mark = 0

    def start(self, *extra: str) -> Session:
        self._extra = extra
        self._log_mark = self.log.stat().st_size if self.log.exists() else 0
        self.proc = subprocess.Popen(
            ["dbus-run-session", "--", *self.manager.argv, *extra, str(self.folder)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def _display_refused(self) -> bool:
        """Whether the file manager has exited saying it cannot open the display (PCManFM: "Cannot open
        display:", Thunar: "cannot open display: :0"): then it is started again, as that is the X server's
        trouble, not what a test checks. -noreset (Display) removed the cause seen; this stays as a net."""
        if self.proc is None or self.proc.poll() is None:
            return False
        with open(self.log, "rb") as log:
            log.seek(self._log_mark)
            return b"cannot open display" in log.read().lower()

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """A command in this session's environment (not its D-Bus session), without GLib's debug output."""
        env = {k: v for k, v in self.env.items() if k not in ("G_MESSAGES_DEBUG", "NAUTILUS_DEBUG")}
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)

    def window(self, timeout: float = 30) -> str | None:
        """The file manager's visible window id, once it is mapped."""

        def find():
            if self._display_refused():
                return "refused"
            done = self.run("xdotool", "search", "--onlyvisible", "--class", self.manager.wm_class)
            ids = done.stdout.split()
            return ids[-1] if done.returncode == 0 and ids else None

        for _attempt in range(3):
            found = poll(find, timeout)
            if found != "refused":
                return found
            self.close()
            poll(self.display.answers, 10, every=0.2)
            self.start(*self._extra)
        return None

    def fill_screen(self, window: str) -> None:
        """No window manager here: place and size the window ourselves, so every icon is visible."""
        self.run("xdotool", "windowmove", window, "0", "0")
        self.run("xdotool", "windowsize", window, str(SCREEN[0]), str(SCREEN[1]))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def thumbnails(self) -> set[str]:
        """The paths whose thumbnails are saved so far (any size), from each PNG's Thumb::URI."""
        from PIL import Image

        folder = self.cache / "thumbnails"
        found = set()
        for png in folder.glob("*/*.png") if folder.exists() else ():
            try:
                with Image.open(png) as image:
                    uri = image.text.get("Thumb::URI", "")
            except (OSError, SyntaxError, ValueError):
                continue  # being written
            if uri.startswith("file://"):
                found.add(os.fsdecode(urllib.parse.unquote_to_bytes(uri[len("file://") :])))
        return found

    def failed_thumbnails(self) -> set[str]:
        folder = self.cache / "thumbnails" / "fail"
        return {p.name for p in folder.rglob("*.png")} if folder.exists() else set()

    def close(self) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                continue
            # the bus daemon and the services it started share the group; make sure none is left
            time.sleep(0.2)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None


# -------------------------------------------------------------------------------------- inotify

_IN_CLOSE_NOWRITE = 0x10
_EVENT = struct.Struct("iIII")


class Reads:
    """Which files in `folders` were opened read-only and closed since this was made (inotify)."""

    def __init__(self, folders: list[Path]) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._folders: dict[int, Path] = {}
        for folder in folders:
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(folder), _IN_CLOSE_NOWRITE)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}")
            self._folders[wd] = folder
        self.seen: Counter[Path] = Counter()

    def poll(self) -> Counter[Path]:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return self.seen
            offset = 0
            while offset < len(data):
                wd, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                if name and wd in self._folders:
                    self.seen[self._folders[wd] / os.fsdecode(name)] += 1

    def close(self) -> None:
        os.close(self.fd)


# ---------------------------------------------------------------------------------- the daemon log

# The daemon's `--debug` log: one line per FUSE call from fs/fuse_ops.py ("readdir '/query/x': ok" or
# "readlink '/a': NoEntry: ... -> ENOENT"), and one per search the view ran (fs/results.py).
_CALL = re.compile(r" DEBUG searchfs\.fs\.fuse_ops: (\w+) '(.*)': (?:ok|.* -> (E[A-Z]+))$")
_SEARCH = re.compile(r" DEBUG searchfs\.fs\.results: search (Query\(.*\)): (\S+) hits")


@dataclass
class Calls:
    """What the daemon's `--debug` log says happened in one stretch of it."""

    text: str
    ops: Counter[str] = field(default_factory=Counter)  # FUSE operation (upper case) -> count
    paths: Counter[tuple[str, str]] = field(default_factory=Counter)  # (op, path) -> count
    searches: list[str] = field(default_factory=list)  # repr(Query) of every search that ran
    errnos: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)  # WARNING / ERROR / CRITICAL lines

    @classmethod
    def parse(cls, text: str) -> Calls:
        calls = cls(text)
        for line in text.splitlines():
            call = _CALL.search(line)
            if call:
                op = call.group(1).upper()
                op = "LOOKUP" if op == "GETATTR" else op  # the high-level API looks names up with getattr
                calls.ops[op] += 1
                calls.paths[(op, call.group(2))] += 1
                if call.group(3):
                    calls.errnos[getattr(errno, call.group(3), 0)] += 1
                continue
            found = _SEARCH.search(line)
            if found:
                calls.searches.append(found.group(1))
                continue
            if re.search(r"\d (WARNING|ERROR|CRITICAL) ", line):
                calls.problems.append(line)
        return calls

    def count(self, op: str, under: str = "") -> int:
        return sum(n for (o, p), n in self.paths.items() if o == op and p.startswith(under))


class DaemonLog:
    """The mount log, read from a mark onwards."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mark()

    def mark(self) -> None:
        self.start = self.size()

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def since_mark(self) -> Calls:
        with open(self.path, "rb") as handle:
            handle.seek(self.start)
            return Calls.parse(handle.read().decode("utf-8", "replace"))

    def quiet(self, seconds: float, timeout: float) -> bool:
        """True once the log has not grown for `seconds` (the daemon has nothing left to answer)."""
        last = [self.size(), time.monotonic()]

        def settled():
            size = self.size()
            if size != last[0]:
                last[:] = [size, time.monotonic()]
                return False
            return time.monotonic() - last[1] >= seconds

        return bool(poll(settled, timeout, 0.1))


def usage(pid: int) -> dict[str, int]:
    """A process's descriptors (all, those on catalog.sqlite, the others), RSS and threads, from /proc."""
    catalog = other = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if os.path.basename(target) == "catalog.sqlite":
            catalog += 1
        elif not os.path.basename(target).startswith("catalog.sqlite-"):
            other += 1
    fds, rss_kb = fds_and_rss(pid)
    threads = len(os.listdir(f"/proc/{pid}/task"))
    return {"fds": fds, "rss_kb": rss_kb, "threads": threads, "catalog_fds": catalog, "other_fds": other}


def fds_and_rss(pid: int) -> tuple[int, int]:
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as status:
        rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return fds, rss_kb
