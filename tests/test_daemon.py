"""Live sync, for real: a SyncDaemon with its watchdog watcher on real folders, the real indexer
(exiftool, the tiny open_clip model, SQLite), no FUSE. Every check goes through the Library API
(search, status, quarantine) and the daemon's status, polling against a deadline."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest
from photos import make_library, make_photo
from waiting import wait_for

from searchfs.content_hash import hash_file
from searchfs.daemon import SyncDaemon
from searchfs.library import Library

SETTLE = 0.3  # watch_settle_seconds for these tests
T = 30.0  # deadline for anything to show up


# ---------------------------------------------------------------------------------------------------------
# helpers


def leica(lib: Library) -> list[str]:
    return sorted(hit.path for hit in lib.search(where=["camera=Leica"]))


def since(daemon: SyncDaemon) -> dict:
    return daemon.status()["since_start"]


def catalog_files(lib: Library) -> dict[str, bool]:
    """Every file in the catalog -> whether it has an embedding for the current model."""
    return {os.fsdecode(state.path): state.embedded for state in lib.catalog.file_states(lib.model_id)}


def settled(daemon: SyncDaemon, quiet: float = 3 * SETTLE, timeout: float = T) -> None:
    """Wait until the watcher holds no events and the writer has no jobs, and it stays so for `quiet`."""
    deadline = time.monotonic() + timeout
    calm_since = None
    while time.monotonic() < deadline:
        status = daemon.status()
        busy = (
            status["pending_jobs"]
            or daemon._jobs.unfinished_tasks
            or any(r["pending"] for r in (status["watch"] or {}).values())
        )
        if busy:
            calm_since = None
        elif calm_since is None:
            calm_since = time.monotonic()
        elif time.monotonic() - calm_since >= quiet:
            return
        time.sleep(0.05)
    pytest.fail("the daemon did not settle")


def leica_photo(path: Path, seed: int, **kw) -> Path:
    return make_photo(
        path, (10 + seed * 7 % 240, 250 - seed * 13 % 240, 90), seed=seed, make="Leica", model="Leica M11", **kw
    )


@pytest.fixture
def start_daemon(settings, request):
    """start_daemon(*roots, started=callback, **settings) -> (daemon, library): roots added, daemon started
    with its watcher (`started` is called right after `SyncDaemon.start`), the start-up reconcile done. The daemon
    is always stopped and the library closed afterwards."""

    def start(*roots: Path, started=lambda: None, **overrides):
        lib = Library(settings.replace(watch_settle_seconds=SETTLE, **overrides), create=True)
        request.addfinalizer(lib.close)
        lib.add_roots(roots)
        daemon = SyncDaemon(lib, watch=True)
        request.addfinalizer(daemon.stop)
        try:
            daemon.start()
        finally:
            started()  # the watcher's inotify instances exist now
        assert daemon.wait_idle(T), "the start-up reconcile did not finish"
        return daemon, lib

    return start


@pytest.fixture
def photos(tmp_path) -> Path:
    root = Path(os.path.realpath(tmp_path)) / "photos"
    make_library(root, 3)
    return root


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder on the same file system as the root, but not in any root."""
    path = Path(os.path.realpath(tmp_path)) / "outside"
    path.mkdir()
    return path


# ---------------------------------------------------------------------------------------------------------
# new files


def test_a_photo_copied_in_becomes_searchable(start_daemon, photos, outside):
    daemon, lib = start_daemon(photos)
    assert since(daemon)["embedded"] == 3 and leica(lib) == []
    original = leica_photo(outside / "L1.jpg", 1)
    shutil.copy(original, photos / "album0" / "L1.jpg")
    copy = str(photos / "album0" / "L1.jpg")
    wait_for(lambda: leica(lib) == [copy], "the copy to be found by camera")
    hits = lib.search(image=original, limit=1)
    assert hits[0].path == copy and hits[0].score == pytest.approx(1.0, abs=1e-4)
    settled(daemon)
    assert since(daemon)["embedded"] == 4 and lib.status().files == 4


def test_a_slow_write_is_indexed_once_with_its_final_content(start_daemon, photos, outside):
    daemon, lib = start_daemon(photos)
    base = dict(since(daemon))
    original = leica_photo(outside / "slow.jpg", 2, size=(320, 240))
    data = original.read_bytes()
    target = photos / "slow.jpg"
    with open(target, "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        time.sleep(SETTLE * 3)  # longer than the settle time, with the file still open
        handle.write(data[len(data) // 2 :])
    wait_for(lambda: leica(lib) == [str(target)], "the slowly written photo to be found")
    settled(daemon)
    now = since(daemon)
    assert now["embedded"] - base["embedded"] == 1
    # Under inotify a written file waits for its close, however long the writer pauses: the half file
    # is never read, so nothing is quarantined and the photo is read and embedded exactly once.
    assert now["quarantined"] - base["quarantined"] == 0
    assert now["new"] + now["changed"] - base["new"] - base["changed"] == 1
    assert [q for q in lib.quarantine() if q["path"] == str(target)] == []
    digest = next(s.hash for s in lib.catalog.file_states(lib.model_id) if s.path == os.fsencode(target))
    assert digest == hash_file(os.fsencode(target))[0] == hash_file(os.fsencode(original))[0]
    hits = lib.search(image=original, limit=1)
    assert hits[0].path == str(target) and hits[0].score == pytest.approx(1.0, abs=1e-4)


# ---------------------------------------------------------------------------------------------------------
# moves cost no embedding


def test_moving_a_file_and_a_folder_costs_no_embedding(start_daemon, photos):
    for i in range(4):
        leica_photo(photos / "trip" / f"L{i}.jpg", 10 + i)
    daemon, lib = start_daemon(photos)
    embedded = since(daemon)["embedded"]
    assert embedded == 7 and len(leica(lib)) == 4

    os.rename(photos / "trip" / "L0.jpg", photos / "album1" / "moved.jpg")
    expect = sorted([str(photos / "album1" / "moved.jpg")] + [str(photos / "trip" / f"L{i}.jpg") for i in (1, 2, 3)])
    wait_for(lambda: leica(lib) == expect, "the moved file at its new path")

    os.rename(photos / "trip", photos / "2024 trip")
    expect = sorted(
        [str(photos / "album1" / "moved.jpg")] + [str(photos / "2024 trip" / f"L{i}.jpg") for i in (1, 2, 3)]
    )
    wait_for(lambda: leica(lib) == expect, "the moved folder's photos at their new paths")

    settled(daemon)
    assert since(daemon)["embedded"] == embedded
    assert lib.status().files == 7 and all(catalog_files(lib).values())


def test_a_folder_renamed_twice_quickly_costs_no_embedding(start_daemon, photos):
    for i in range(5):
        leica_photo(photos / "a" / "deep" / f"L{i}.jpg", 20 + i)
    daemon, lib = start_daemon(photos)
    embedded = since(daemon)["embedded"]
    os.rename(photos / "a", photos / "b")
    os.rename(photos / "b", photos / "c")
    expect = sorted(str(photos / "c" / "deep" / f"L{i}.jpg") for i in range(5))
    wait_for(lambda: leica(lib) == expect, "the photos under the folder's last name")
    settled(daemon)
    assert since(daemon)["embedded"] == embedded
    assert sorted(p for p in catalog_files(lib) if "/deep/" in p) == expect


# ---------------------------------------------------------------------------------------------------------
# deletes


def test_rm_and_rm_r_remove_from_search_and_status(start_daemon, photos):
    leica_photo(photos / "L.jpg", 30)
    for i in range(4):
        leica_photo(photos / "gone" / "sub" / f"L{i}.jpg", 31 + i)
    daemon, lib = start_daemon(photos)
    assert lib.status().files == 8 and len(leica(lib)) == 5

    os.remove(photos / "L.jpg")
    wait_for(lambda: len(leica(lib)) == 4 and lib.status().files == 7, "the removed file to go")
    assert str(photos / "L.jpg") not in catalog_files(lib)

    shutil.rmtree(photos / "gone")
    wait_for(lambda: leica(lib) == [] and lib.status().files == 3, "the removed folder's files to go")
    status = lib.status()
    assert status.indexed == 3 and status.pending == 0 and [r.files for r in status.roots] == [3]
    assert not any("/gone/" in p for p in catalog_files(lib))


# ---------------------------------------------------------------------------------------------------------
# across the root's edge


def test_moved_out_is_gone_and_moved_back_in_is_not_embedded_again(start_daemon, photos, outside):
    leica_photo(photos / "L.jpg", 40)
    daemon, lib = start_daemon(photos)
    embedded = since(daemon)["embedded"]
    assert leica(lib) == [str(photos / "L.jpg")]

    os.rename(photos / "L.jpg", outside / "L.jpg")
    wait_for(lambda: leica(lib) == [] and lib.status().files == 3, "the file moved out to go")

    os.rename(outside / "L.jpg", photos / "album0" / "back.jpg")
    wait_for(lambda: leica(lib) == [str(photos / "album0" / "back.jpg")], "the file moved back in")
    settled(daemon)
    assert since(daemon)["embedded"] == embedded  # its content (and vector) was still known

    # A folder never seen before, moved in from outside: new content, embedded once each.
    for i in range(3):
        leica_photo(outside / "new" / f"N{i}.jpg", 41 + i)
    os.rename(outside / "new", photos / "new")
    wait_for(lambda: len(leica(lib)) == 4, "the folder moved in")
    settled(daemon)
    assert since(daemon)["embedded"] == embedded + 3
    assert lib.status().files == 7


# ---------------------------------------------------------------------------------------------------------
# many events


def _jpeg_variants(template: bytes, count: int):
    """`count` different files from one JPEG: a COM segment right after SOI carries the number."""
    assert template[:2] == b"\xff\xd8"
    for i in range(count):
        payload = b"searchfs burst %06d" % i
        yield template[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + template[2:]


@pytest.mark.slow
def test_a_burst_of_2000_files_all_end_up_indexed_and_copies_share_one_embedding(start_daemon, photos, outside):
    daemon, lib = start_daemon(photos)
    template = make_photo(
        outside / "t.jpg", (120, 60, 200), size=(32, 32), make="Burst", model="Burst 2000"
    ).read_bytes()
    started = time.monotonic()
    for i, data in enumerate(_jpeg_variants(template, 2000)):
        folder = photos / "burst" / f"{i // 500}"
        if i % 500 == 0:
            folder.mkdir(parents=True)
        (folder / f"B{i:04d}.jpg").write_bytes(data)
    (photos / "burst" / "same").mkdir()
    for i in range(200):  # and 200 copies of one more photo: one content, one embedding
        (photos / "burst" / "same" / f"S{i:03d}.jpg").write_bytes(template)
    wait_for(
        lambda: len(lib.search(where=["camera=Burst"])) == 2200,
        "all 2200 burst files to be searchable",
        timeout=90,
        every=0.5,
    )
    settled(daemon)
    took = time.monotonic() - started
    files = catalog_files(lib)
    assert len(files) == 2203 and all(files.values())
    assert since(daemon)["embedded"] == 3 + 2000 + 1 and since(daemon)["quarantined"] == 0
    print(f"2200 files indexed live in {took:.1f}s")


def test_an_inotify_queue_overflow_is_caught_up_by_a_reconcile(start_daemon, photos, inotify_queue):
    inotify_queue.set(16)
    daemon, lib = start_daemon(photos, started=inotify_queue.restore)
    template = leica_photo(photos.parent / "outside-t.jpg", 50, size=(32, 32)).read_bytes()
    expect = []
    for i, data in enumerate(_jpeg_variants(template, 300)):
        path = photos / "flood" / f"F{i:03d}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        expect.append(str(path))
    wait_for(
        lambda: daemon.status()["last_reconcile"].get(lib.roots()[0].name, {}).get("reason") == "overflow",
        "a reconcile for the overflow",
    )
    wait_for(lambda: leica(lib) == sorted(expect), "every flooded file to be searchable")
    settled(daemon)
    files = catalog_files(lib)
    assert len(files) == 303 and all(files.values())
    assert since(daemon)["embedded"] == 303


# ---------------------------------------------------------------------------------------------------------
# a root that is a mount point


def _run(*cmd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def _is_mount_point(path: Path) -> bool:
    """From /proc/self/mountinfo: os.path.ismount cannot see a bind mount from the same file system."""
    with open("/proc/self/mountinfo", "rb") as handle:
        points = {line.split(b" ")[4] for line in handle.read().splitlines()}
    return os.fsencode(path).replace(b" ", b"\\040") in points


def _umount(path: Path) -> None:
    for _ in range(50):
        if not _is_mount_point(path) or _run("umount", str(path)).returncode == 0:
            return
        time.sleep(0.1)
    _run("umount", "-l", str(path))


def test_an_unmounted_root_goes_offline_keeps_its_photos_and_comes_back(start_daemon, tmp_path, request):
    base = Path(os.path.realpath(tmp_path))
    source, mnt = base / "disk", base / "mnt"
    make_library(source, 4)
    leica_photo(source / "L.jpg", 60)
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = _run("mount", "--bind", str(source), str(mnt))
    if done.returncode != 0:
        pytest.skip(f"cannot bind mount: {done.stderr.strip()}")
    request.addfinalizer(lambda: _umount(mnt))
    assert _is_mount_point(mnt)

    daemon, lib = start_daemon(mnt)
    name = lib.roots()[0].name
    embedded = since(daemon)["embedded"]
    assert embedded == 5 and lib.status().files == 5 and leica(lib) == [str(mnt / "L.jpg")]

    _umount(mnt)
    assert not _is_mount_point(mnt)
    wait_for(lambda: daemon.status()["offline_roots"] == [name], "the root to be reported offline")
    status = lib.status()
    assert [(r.online, r.files) for r in status.roots] == [(False, 5)] and status.files == 5
    assert leica(lib) == []  # not shown while offline, but not deleted either
    assert daemon.status()["watch"][name]["mode"] == "offline"

    assert _run("mount", "--bind", str(source), str(mnt)).returncode == 0
    wait_for(lambda: daemon.status()["offline_roots"] == [] and lib.roots()[0].online, "the root to come back")
    wait_for(lambda: leica(lib) == [str(mnt / "L.jpg")], "its photos to be searchable again")
    settled(daemon)
    assert [(r.online, r.files) for r in lib.status().roots] == [(True, 5)]
    assert since(daemon)["embedded"] == embedded and since(daemon)["removed"] == 0
    assert daemon.status()["watch"][name]["mode"] == "inotify"

    # And it is watched again: a new photo on the remounted disk shows up.
    leica_photo(mnt / "L2.jpg", 61)
    wait_for(lambda: len(leica(lib)) == 2, "a photo added after the remount")


# ---------------------------------------------------------------------------------------------------------
# bad files


def test_bad_files_are_quarantined_and_the_daemon_goes_on(start_daemon, photos):
    daemon, lib = start_daemon(photos)
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "page.jpg").write_text("<html><body>not a photo</body></html>")
    bad = {str(photos / "empty.jpg"), str(photos / "page.jpg")}
    wait_for(lambda: {q["path"] for q in lib.quarantine()} == bad, "both bad files to be quarantined")
    assert all(q["reason"] for q in lib.quarantine())

    leica_photo(photos / "after" / "L.jpg", 70)
    wait_for(lambda: leica(lib) == [str(photos / "after" / "L.jpg")], "a good file dropped in afterwards")
    settled(daemon)
    status = lib.status()
    assert status.files == 6 and status.indexed == 4 and status.quarantined == 2 and status.pending == 0
    assert since(daemon)["quarantined"] == 2 and daemon._thread.is_alive()


# ---------------------------------------------------------------------------------------------------------
# links that lead out of a root


def _atime_is_kept(folder: Path) -> bool:
    """Whether reading a file here updates its atime (relatime does when atime < mtime): the probe below."""
    probe = folder / "atime-probe"
    probe.write_bytes(b"x")
    os.utime(probe, (0, time.time()))
    probe.read_bytes()
    return os.stat(probe).st_atime > 0


def test_links_out_of_the_root_are_never_followed_while_watching(start_daemon, photos, outside):
    """`ln -s /elsewhere r/evil` and `ln -s /elsewhere/private.jpg r/leak.jpg` under a running daemon: the
    outside photos must not be indexed, their metadata (GPS!) must not show, the daemon must not open them."""
    private = leica_photo(outside / "private.jpg", 3, gps=(48.85, 2.35))
    leica_photo(outside / "sub" / "deep.jpg", 4)
    reads_seen = _atime_is_kept(outside)
    for path in (private, outside / "sub" / "deep.jpg"):
        os.utime(path, (0, os.stat(path).st_mtime))  # any read would now move the atime
    daemon, lib = start_daemon(photos)
    os.symlink(outside, photos / "evil")
    os.symlink(private, photos / "leak.jpg")
    os.symlink(outside / "sub", photos / "album0" / "evil2")
    inside_link = photos / "album1" / "again.jpg"
    os.symlink(photos / "album0" / "IMG_0000.jpg", inside_link)  # inside the root: followed, as documented
    wait_for(lambda: str(inside_link) in catalog_files(lib), "the inside link to be indexed")
    settled(daemon)
    daemon.reconcile("photos", "test")  # and a full rescan does not take them either
    settled(daemon)
    files = catalog_files(lib)
    assert not [p for p in files if "evil" in p or "leak" in p], files
    assert leica(lib) == [] and lib.search(where=["has_gps=yes"]) == []
    if reads_seen:
        assert os.stat(private).st_atime == 0 and os.stat(outside / "sub" / "deep.jpg").st_atime == 0


def test_a_watching_daemon_loads_the_image_model_once_its_start_up_work_is_done(settings, photos):
    """Nothing to embed at start (the library is indexed already), yet the model loads in the background,
    so the first photo copied in later does not wait for torch; `preload_model = false` leaves it unloaded
    until a photo needs it."""
    first = Library(settings, create=True)
    first.index([photos])
    first.close()
    for preload in (True, False):
        lib = Library(settings.replace(watch_settle_seconds=SETTLE, watch_preload_model=preload))
        daemon = SyncDaemon(lib, watch=True)
        try:
            daemon.start()
            assert daemon.wait_idle(T), "the start-up reconcile did not finish"
            assert since(daemon)["embedded"] == 0
            if preload:
                wait_for(lambda lib=lib: lib.embedder.loaded, "the image model to load in the background", T)
            else:
                assert lib.embedder._loader is None and not lib.embedder.loaded  # never even started
        finally:
            daemon.stop()
            lib.close()
