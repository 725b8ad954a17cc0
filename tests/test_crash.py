"""A crash (SIGKILL) in the middle of indexing leaves a sound catalog, and the next run finishes the job
without embedding anything twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from photos import make_photo

from searchfs.config import load_settings
from searchfs.library import Library


def _progress(catalog_path) -> tuple[int, int]:
    """(files recorded, vectors stored) as a reader sees them while the indexer runs."""
    try:
        conn = sqlite3.connect(f"file:{catalog_path}?mode=ro", uri=True, timeout=1)
        try:
            files = conn.execute("SELECT count(*) FROM files").fetchone()[0]
            vectors = conn.execute("SELECT count(*) FROM embeddings").fetchone()[0]
        finally:
            conn.close()
        return files, vectors
    except sqlite3.Error:
        return 0, 0


N = 300  # more than one embedding batch (indexer.WORK_BATCH = 256), so "mid-embedding" exists

# kill while files are being recorded (before any vector), or while vectors are being stored
PHASES = {"scan": lambda files, vectors: files > 0 and vectors == 0, "embed": lambda files, vectors: 0 < vectors < N}


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_sigkill_during_index_then_resume(home, tiny_model, tmp_path, phase):
    photos = tmp_path / "photos"
    for i in range(N):
        make_photo(
            photos / f"d{i % 4}" / f"p{i:03d}.jpg",
            ((i * 37) % 256, (i * 91) % 256, 128),
            seed=i,
            size=(64, 48),
            make="Canon",
            model="Canon EOS 40D",
        )
    env = dict(os.environ, **{"SEARCHFS_" + k.upper(): v for k, v in tiny_model.items()}, SEARCHFS_MODEL_BATCH_SIZE="4")
    child = subprocess.Popen(
        [sys.executable, "-m", "searchfs", "index", str(photos), "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    settings = load_settings(**tiny_model)
    deadline = time.monotonic() + 60
    while not PHASES[phase](*_progress(settings.catalog_path)):
        assert child.poll() is None and time.monotonic() < deadline, (
            f"the index finished before its {phase} phase was seen"
        )
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    assert _progress(settings.catalog_path)[1] < N  # it really died with work left
    conn = sqlite3.connect(settings.catalog_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()

    with Library(settings, create=True) as lib:
        report = lib.index()
        status = lib.status()
        assert (status.files, status.indexed, status.pending, status.quarantined) == (N, N, 0, 0), report
        rows = lib.catalog.read().execute("SELECT count(*), count(DISTINCT content_id) FROM embeddings").fetchone()
        assert rows[0] == rows[1] == N  # one vector per photo: nothing embedded twice, nothing lost
        assert len(lib.search(where=["camera=canon"])) == N
        first = photos / "d0" / "p000.jpg"
        assert lib.search(image=first, limit=1)[0].path == str(first)
