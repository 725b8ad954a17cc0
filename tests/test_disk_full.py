"""A full disk, for real: SEARCHFS_HOME on a small tmpfs that is filled to the last block.

The photos live elsewhere (sources are read-only; it is searchfs's own disk that fills up). A full disk is
one line and exit 8 from the CLI, a backlog with back-off in the daemon, and never a damaged catalog.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from photos import make_library, make_photo
from waiting import wait_for

from searchfs.daemon import SyncDaemon
from searchfs.library import Library

T = 60.0


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs mounted at tmp_path/disk (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk: Path) -> Path:
    """Write a filler file until the file system has not one block left."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:  # unbuffered: a failed write is not retried at close
        for block in (65536, 4096, 512, 1):
            try:
                while True:
                    handle.write(b"\0" * block)
            except OSError:
                pass
    return filler


def searchfs(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "searchfs", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_index_on_a_full_disk_is_one_line_and_loses_nothing(small_disk, tiny_model, tmp_path):
    env = dict(os.environ, SEARCHFS_HOME=str(small_disk / "home"), XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    env.update({"SEARCHFS_" + k.upper(): v for k, v in tiny_model.items()})
    photos = tmp_path / "photos"
    make_library(photos, 3)
    assert searchfs("index", str(photos), "--no-progress", env=env).returncode == 0
    for i in range(150):
        make_photo(photos / "more" / f"M{i:03d}.jpg", (i, 255 - i, 40), seed=100 + i, make="Leica")
    filler = fill(small_disk)
    done = searchfs("index", "--no-progress", env=env)
    assert done.returncode == 8, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("searchfs: no space left on the disk holding"), done.stderr
    filler.unlink()
    catalog = small_disk / "home" / "libraries" / "default" / "catalog.sqlite"
    with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True) as conn:  # (opening needs a little space)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    again = searchfs("index", "--no-progress", "--json", env=env)
    assert again.returncode == 0, again.stderr
    status = json.loads(searchfs("status", "--json", env=env).stdout)
    assert status["files"] == 153 and status["indexed"] == 153 and status["pending"] == 0


def test_the_daemon_waits_out_a_full_disk_and_catches_up(small_disk, settings, tmp_path):
    photos = tmp_path / "photos"
    make_library(photos, 2)
    lib = Library(settings.replace(home=small_disk / "home", watch_settle_seconds=0.3), create=True)
    lib.add_roots([photos])
    daemon = SyncDaemon(lib, watch=True)
    daemon.start()
    try:
        assert daemon.wait_idle(T)
        filler = fill(small_disk)
        for i in range(120):
            make_photo(photos / "new" / f"N{i:03d}.jpg", (200, i, 9), seed=300 + i, make="Leica")
        backlog = wait_for(lambda: daemon.status()["backlog"]["jobs"] and daemon.status()["backlog"], "a backlog")
        assert "no space left" in backlog["reason"] and backlog["next_try_at"] > time.time() - 1
        assert daemon.status()["idle"] is False  # a script waiting for "indexing finished" keeps waiting
        status_file = lib.settings.library_dir / "daemon.json"  # rewritten in place: still says why
        wait_for(lambda: json.loads(status_file.read_text())["backlog"]["jobs"] >= 1, "daemon.json to show it")
        filler.unlink()
        wait_for(
            lambda: len(lib.search(where=["camera=Leica"])) == 120, "the photos after space came back", timeout=120
        )
        wait_for(lambda: daemon.status()["backlog"]["jobs"] == 0, "the backlog to clear")
    finally:
        daemon.stop()
        lib.close()
