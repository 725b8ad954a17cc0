"""Watcher on real folders with real watchdog, against a recording sink."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from waiting import wait_for

from searchfs.config import Settings
from searchfs.ingest.coalesce import Change, RawEvent, split_ready
from searchfs.ingest.watch import Watcher, is_network_fs
from searchfs.system import fs_type

SETTLE = 0.4


class RecordingSink:
    """Records every call; for upserts also what the file held when the watcher handed it over."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple] = []
        self.content: dict[bytes, bytes] = {}

    def apply(self, root: str, changes: list[Change]) -> None:
        for ch in changes:
            if ch.kind == "upsert":
                try:
                    self.content[ch.path] = Path(os.fsdecode(ch.path)).read_bytes()
                except OSError:
                    pass
        with self.lock:
            self.calls.append(("apply", root, list(changes)))

    def reconcile(self, root: str, reason: str) -> None:
        with self.lock:
            self.calls.append(("reconcile", root, reason))

    def set_online(self, root: str, online: bool) -> None:
        with self.lock:
            self.calls.append(("online", root, online))

    def snapshot(self) -> list[tuple]:
        with self.lock:
            return list(self.calls)

    def changes(self, kind: str | None = None) -> list[Change]:
        return [ch for call in self.snapshot() if call[0] == "apply" for ch in call[2] if kind in (None, ch.kind)]

    def reasons(self) -> list[str]:
        return [call[2] for call in self.snapshot() if call[0] == "reconcile"]

    def online(self) -> list[bool]:
        return [call[2] for call in self.snapshot() if call[0] == "online"]

    def applies(self) -> int:
        return sum(call[0] == "apply" for call in self.snapshot())


def quiet_period(sink: RecordingSink, seconds: float = 3 * SETTLE) -> None:
    """Wait until the sink has seen nothing new for `seconds` (the watcher has flushed what it had)."""
    last, since = len(sink.snapshot()), time.monotonic()
    while time.monotonic() - since < seconds:
        time.sleep(0.05)
        now = len(sink.snapshot())
        if now != last:
            last, since = now, time.monotonic()


def b(path) -> bytes:
    return os.fsencode(str(path))


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(
        home=tmp_path / "home", watch_settle_seconds=SETTLE, watch_reconcile_minutes=60, watch_poll_seconds=0.3
    )


@pytest.fixture
def root(tmp_path) -> Path:
    path = tmp_path / "photos"
    path.mkdir()
    return path


@pytest.fixture
def start_watcher(settings):
    """Start a watcher on {name: path}; stopped afterwards, with no thread left behind."""
    before = set(threading.enumerate())
    started: list[Watcher] = []

    def start(roots: dict[str, Path], sink: RecordingSink, use_settings: Settings | None = None, **kw) -> Watcher:
        watcher = Watcher({name: b(path) for name, path in roots.items()}, sink, use_settings or settings, **kw)
        watcher.start()
        started.append(watcher)
        return watcher

    yield start
    for watcher in started:
        watcher.stop()
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    leaked = [t.name for t in set(threading.enumerate()) - before]
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


# --------------------------------------------------------------------------------------------------------
# Everyday changes


def test_start_reports_online_and_reconciles(root, sink, start_watcher):
    watcher = start_watcher({"main": root}, sink)
    assert sink.online() == [True]
    assert sink.reasons() == ["start"]
    status = watcher.status()["main"]
    assert status["mode"] == "inotify" and status["last_reconcile_reason"] == "start"


def test_copy_a_file_in(root, tmp_path, sink, start_watcher):
    source = tmp_path / "camera.jpg"
    source.write_bytes(b"jpeg" * 1000)
    start_watcher({"main": root}, sink)
    shutil.copy(source, root / "IMG_0001.jpg")
    wait_for(lambda: sink.changes("upsert"), what="upsert")
    quiet_period(sink)
    assert sink.changes() == [Change("upsert", b(root / "IMG_0001.jpg"))]
    assert sink.content[b(root / "IMG_0001.jpg")] == b"jpeg" * 1000


def test_slow_write_is_one_upsert_after_close(root, sink, start_watcher):
    start_watcher({"main": root}, sink)
    path = root / "slow.jpg"
    with open(path, "wb") as f:
        f.write(b"a" * 5000)
        f.flush()
        time.sleep(SETTLE * 3)  # the writer pauses longer than settle: inotify waits for the close
        assert sink.changes() == []
        f.write(b"b" * 5000)
        f.flush()
        time.sleep(SETTLE * 0.75)
        assert sink.changes() == []
    wait_for(lambda: sink.changes("upsert"), what="upsert")
    quiet_period(sink)
    assert sink.changes() == [Change("upsert", b(path))]
    assert sink.content[b(path)] == b"a" * 5000 + b"b" * 5000


def test_times_set_after_close_do_not_hold_a_file(root, sink, start_watcher):
    """cp -p and rsync -t set times after closing: that metadata event must not wait for a close."""
    start_watcher({"main": root}, sink)
    path = root / "kept-times.jpg"
    path.write_bytes(b"c" * 3000)
    os.utime(path, (1_000_000_000, 1_000_000_000))
    wait_for(lambda: sink.changes("upsert"), what="upsert", timeout=SETTLE * 10)
    quiet_period(sink)
    assert sink.changes() == [Change("upsert", b(path))]


def test_move_a_file(root, sink, start_watcher):
    (root / "a.jpg").write_bytes(b"x")
    (root / "sub").mkdir()
    start_watcher({"main": root}, sink)
    os.rename(root / "a.jpg", root / "sub" / "b.jpg")
    wait_for(lambda: sink.changes(), what="move")
    quiet_period(sink)
    assert sink.changes() == [Change("move", b(root / "a.jpg"), b(root / "sub" / "b.jpg"))]


def test_move_a_folder_is_one_move(root, sink, start_watcher):
    album = root / "2024" / "holiday"
    album.mkdir(parents=True)
    for i in range(50):
        (album / f"IMG_{i:04}.jpg").write_bytes(b"x")
    (album / "raw").mkdir()
    (album / "raw" / "IMG_0000.cr2").write_bytes(b"x")
    start_watcher({"main": root}, sink)
    os.rename(album, root / "holiday-2024")
    wait_for(lambda: sink.changes(), what="move")
    quiet_period(sink)
    assert sink.changes() == [Change("move", b(album), b(root / "holiday-2024"), is_dir=True)]


def test_folder_renamed_twice_quickly(root, sink, start_watcher):
    (root / "A").mkdir()
    (root / "A" / "x.jpg").write_bytes(b"x")
    start_watcher({"main": root}, sink)
    os.rename(root / "A", root / "B")
    os.rename(root / "B", root / "C")
    wait_for(lambda: sink.changes(), what="move")
    quiet_period(sink)
    assert sink.changes() == [Change("move", b(root / "A"), b(root / "C"), is_dir=True)]


def test_rm(root, sink, start_watcher):
    (root / "a.jpg").write_bytes(b"x")
    start_watcher({"main": root}, sink)
    os.remove(root / "a.jpg")
    wait_for(lambda: sink.changes(), what="delete")
    quiet_period(sink)
    assert sink.changes() == [Change("delete", b(root / "a.jpg"))]


def test_rm_r_is_one_delete(root, sink, start_watcher):
    album = root / "album"
    (album / "sub").mkdir(parents=True)
    for i in range(30):
        (album / f"{i}.jpg").write_bytes(b"x")
        (album / "sub" / f"{i}.jpg").write_bytes(b"x")
    start_watcher({"main": root}, sink)
    shutil.rmtree(album)
    wait_for(lambda: sink.changes(), what="delete")
    quiet_period(sink)
    assert sink.changes() == [Change("delete", b(album), is_dir=True)]


def test_new_folder_copied_in_is_one_rescan(root, tmp_path, sink, start_watcher):
    source = tmp_path / "card" / "DCIM"
    source.mkdir(parents=True)
    for i in range(20):
        (source / f"IMG_{i}.jpg").write_bytes(b"x" * 100)
    start_watcher({"main": root}, sink)
    shutil.copytree(source, root / "DCIM")
    wait_for(lambda: sink.changes(), what="rescan")
    quiet_period(sink)
    assert sink.changes() == [Change("rescan", b(root / "DCIM"), is_dir=True)]


def test_excluded_and_hidden_paths_are_ignored(root, sink, start_watcher):
    (root / "@eaDir").mkdir()
    start_watcher({"main": root}, sink)
    (root / "@eaDir" / "thumb.jpg").write_bytes(b"x")
    (root / ".hidden.jpg").write_bytes(b"x")
    (root / "download.jpg.part").write_bytes(b"x")
    os.rename(root / "download.jpg.part", root / "download.jpg")  # finished download: new to us
    wait_for(lambda: sink.changes(), what="upsert")
    quiet_period(sink)
    assert sink.changes() == [Change("upsert", b(root / "download.jpg"))]


def test_hidden_files_are_watched_when_asked(root, sink, settings, start_watcher):
    start_watcher({"main": root}, sink, settings.replace(index_hidden=True))
    (root / ".hidden.jpg").write_bytes(b"x")
    wait_for(lambda: sink.changes(), what="upsert")
    assert sink.changes() == [Change("upsert", b(root / ".hidden.jpg"))]


def test_burst_of_20k_files_comes_in_few_batches(root, sink, start_watcher, inotify_queue):
    folder = root / "import"
    folder.mkdir()
    inotify_queue.set(1 << 20)  # the test is about batching; overflow has its own test
    watcher = start_watcher({"main": root}, sink)
    inotify_queue.restore()
    expected = set()
    for i in range(20_000):
        path = folder / f"IMG_{i:05}.jpg"
        with open(path, "wb") as f:
            f.write(b"x")
        expected.add(b(path))

    def done():
        seen = {ch.path for ch in sink.changes("upsert")}
        return expected <= seen or "overflow" in sink.reasons()

    wait_for(done, timeout=90, what="all 20k upserts")
    assert "overflow" not in sink.reasons(), "overflowed although the queue limit was raised"
    quiet_period(sink)
    upserts = sink.changes("upsert")
    assert len(upserts) == 20_000 and {ch.path for ch in upserts} == expected
    assert sink.applies() <= 10, f"{sink.applies()} apply calls"
    assert watcher.status()["main"]["pending"] == 0


# --------------------------------------------------------------------------------------------------------
# Lost events


def test_queue_overflow_leads_to_reconcile(root, sink, start_watcher, inotify_queue):
    # A new inotify instance takes the limit in force when it is created: lower it just for our start.
    inotify_queue.set(16)
    watcher = start_watcher({"main": root}, sink)
    inotify_queue.restore()
    for i in range(3000):
        (root / f"f{i}.jpg").write_bytes(b"x")
        if i % 500 == 499 and "overflow" in sink.reasons():
            break
    wait_for(lambda: "overflow" in sink.reasons(), what="overflow reconcile")
    assert watcher.status()["main"]["mode"] == "inotify"


def test_dead_observer_is_restarted(root, sink, start_watcher):
    watcher = start_watcher({"main": root}, sink)
    watcher._roots["main"].observer.stop()  # as if its threads had died
    wait_for(lambda: "observer-died" in sink.reasons(), what="restart")
    status = watcher.status()["main"]
    assert status["restarts"] == 1 and status["mode"] == "inotify"
    (root / "after.jpg").write_bytes(b"x")
    wait_for(lambda: sink.changes("upsert"), what="upsert after restart")
    assert sink.changes("upsert") == [Change("upsert", b(root / "after.jpg"))]


def test_watch_limit_falls_back_to_polling(root, sink, start_watcher, monkeypatch):
    (root / "sub").mkdir()
    from watchdog.observers.inotify_c import InotifyFD

    original = InotifyFD.add_callback

    def limited(self, path, *args, **kwargs):
        if path.endswith(b"/sub"):
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(InotifyFD, "add_callback", limited)
    watcher = start_watcher({"main": root}, sink)
    wait_for(lambda: "watch-limit" in sink.reasons(), what="watch-limit reconcile")
    status = watcher.status()["main"]
    assert status["mode"] == "polling" and status["polling_reason"] == "watch-limit"
    (root / "sub" / "new.jpg").write_bytes(b"x")
    wait_for(lambda: sink.changes("upsert"), what="upsert by polling")
    assert sink.changes("upsert") == [Change("upsert", b(root / "sub" / "new.jpg"))]


def test_polling_picks_up_a_new_file(root, sink, start_watcher):
    watcher = start_watcher({"main": root}, sink, force_polling=True)
    assert watcher.status()["main"]["mode"] == "polling"
    (root / "new.jpg").write_bytes(b"x")
    wait_for(lambda: sink.changes("upsert"), what="upsert by polling")
    assert sink.changes() == [Change("upsert", b(root / "new.jpg"))]


def test_periodic_reconcile(root, sink, settings, start_watcher):
    start_watcher({"main": root}, sink, settings.replace(watch_reconcile_minutes=0.5 / 60))
    wait_for(lambda: sink.reasons().count("periodic") >= 2, what="periodic reconciles")


def test_sink_errors_do_not_stop_the_watcher(root, start_watcher):
    class Failing(RecordingSink):
        def apply(self, root, changes):
            super().apply(root, changes)
            raise RuntimeError("catalog locked")

    sink = Failing()
    watcher = start_watcher({"main": root}, sink)
    (root / "a.jpg").write_bytes(b"x")
    wait_for(lambda: sink.applies() == 1, what="first apply")
    # the sink records the call before it raises: wait for the watcher to have seen the error
    wait_for(lambda: "catalog locked" in (watcher.status()["main"]["last_error"] or ""), what="the error in status")
    (root / "b.jpg").write_bytes(b"x")
    wait_for(lambda: sink.applies() == 2, what="second apply")


# --------------------------------------------------------------------------------------------------------
# Roots that go away


def test_root_missing_at_start_then_created(tmp_path, sink, start_watcher):
    root = tmp_path / "later"
    watcher = start_watcher({"main": root}, sink)
    assert sink.online() == [False] and watcher.status()["main"]["mode"] == "offline"
    root.mkdir()
    wait_for(lambda: sink.online() == [False, True], what="online")
    wait_for(lambda: "online" in sink.reasons(), what="reconcile")
    (root / "a.jpg").write_bytes(b"x")
    wait_for(lambda: sink.changes("upsert"), what="upsert")


def test_a_root_that_stops_answering_goes_offline_and_the_others_keep_being_watched(
    tmp_path, sink, start_watcher, monkeypatch
):
    """A hard-mounted NFS share whose server went away: stat() of its folder never returns. That cannot
    be staged here without a dead server, so the stat of that one root is made to hang; everything else
    is real."""
    import searchfs.ingest.watch as watch

    nas, local = tmp_path / "nas", tmp_path / "local"
    nas.mkdir()
    local.mkdir()
    hang = threading.Event()
    release = threading.Event()
    real_probe = watch._probe

    def probe(path):
        if path == os.fsencode(nas) and hang.is_set():
            release.wait(30)  # a stat stuck in the kernel
        return real_probe(path)

    monkeypatch.setattr(watch, "_probe", probe)
    monkeypatch.setattr(watch, "PROBE_TIMEOUT", 0.3)
    watcher = start_watcher({"nas": nas, "local": local}, sink)
    try:
        hang.set()
        wait_for(lambda: watcher.status()["nas"]["mode"] == "offline", what="the silent root offline")
        (local / "still.jpg").write_bytes(b"x")  # the supervisor is not stuck: other roots go on
        wait_for(lambda: [c for c in sink.changes("upsert") if c.path.endswith(b"still.jpg")], what="upsert")
        assert not sink.changes("delete")
    finally:
        hang.clear()
        release.set()
    wait_for(lambda: watcher.status()["nas"]["mode"] != "offline", what="the root back online")


def test_root_folder_removed_goes_offline_without_deletes(tmp_path, sink, start_watcher):
    root = tmp_path / "usb"
    root.mkdir()
    start_watcher({"main": root}, sink)
    os.rename(root, tmp_path / "elsewhere")  # the way a folder vanishes without its files being deleted
    wait_for(lambda: sink.online() == [True, False], what="offline")
    os.rename(tmp_path / "elsewhere", root)
    wait_for(lambda: sink.online() == [True, False, True], what="online again")
    wait_for(lambda: "online" in sink.reasons(), what="reconcile")
    assert sink.changes("delete") == []


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


def test_unmount_and_remount(tmp_path, sink, start_watcher):
    source, root = tmp_path / "nas-export", tmp_path / "nas"
    source.mkdir()
    root.mkdir()
    for i in range(5):
        (source / f"{i}.jpg").write_bytes(b"x")
    if shutil.which("mount") is None or _mount("--bind", str(source), str(root)).returncode != 0:
        pytest.skip("bind mounts are not permitted here")
    try:
        watcher = start_watcher({"nas": root}, sink)
        assert sink.online() == [True]
        subprocess.run(["umount", str(root)], check=True)
        wait_for(lambda: sink.online() == [True, False], what="offline")
        assert watcher.status()["nas"]["mode"] == "offline"
        # an unmounted share must stay offline, however empty its mount point looks: the supervisor has
        # looked at it three more times, and still says so
        looked = watcher.status()["nas"]["probes"]
        wait_for(lambda: watcher.status()["nas"]["probes"] >= looked + 3, what="three more looks")
        assert sink.online() == [True, False] and watcher.status()["nas"]["mode"] == "offline"
        assert _mount("--bind", str(source), str(root)).returncode == 0
        wait_for(lambda: sink.online() == [True, False, True], what="online again")
        wait_for(lambda: sink.reasons() == ["start", "online"], what="reconcile")
        (source / "new.jpg").write_bytes(b"x")  # the watch follows the new mount
        wait_for(lambda: sink.changes("upsert"), what="upsert after remount")
        assert sink.changes("delete") == []
        assert sink.changes("upsert") == [Change("upsert", b(root / "new.jpg"))]
    finally:
        subprocess.run(["umount", str(root)], capture_output=True)


# --------------------------------------------------------------------------------------------------------
# Pieces


def test_network_file_systems_are_polled():
    mounts = {b"/": "ext4", b"/mnt/nas": "nfs4", b"/mnt/nas/local": "ext4", b"/media/box": "fuse.sshfs"}
    assert fs_type(b"/mnt/nas/photos", mounts) == "nfs4"
    assert fs_type(b"/mnt/nas/local/x", mounts) == "ext4"
    assert fs_type(b"/mnt/nasty", mounts) == "ext4"
    assert is_network_fs("nfs4") and is_network_fs("cifs") and is_network_fs("fuse.sshfs")
    assert not is_network_fs("ext4") and not is_network_fs("fuseblk")


def test_split_ready_holds_files_being_written_and_what_depends_on_them():
    ev = lambda kind, p, t, d=None, is_dir=False: RawEvent(kind, p, d, is_dir, t)  # noqa: E731
    events = [
        ev("created", b"/r/done.jpg", 0.0),
        ev("closed", b"/r/done.jpg", 0.1),
        ev("created", b"/r/D/big.mov", 0.0),
        ev("modified", b"/r/D/big.mov", 0.9),
        ev("created", b"/r/other.jpg", 0.2),
        ev("moved", b"/r/D", 1.0, b"/r/E", True),
    ]
    go, held = split_ready(events, now=1.0, settle=0.5)
    # other.jpg has been quiet for 0.8s; big.mov is neither closed nor quiet, and D's move must wait for it
    assert [e.path for e in go] == [b"/r/done.jpg", b"/r/done.jpg", b"/r/other.jpg"]
    assert [e.path for e in held] == [b"/r/D/big.mov", b"/r/D/big.mov", b"/r/D"]
    go, held = split_ready(events + [ev("closed", b"/r/E/big.mov", 1.1)], now=1.2, settle=0.5)
    assert held == []
