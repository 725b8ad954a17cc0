"""A damaged catalog, for real: pages of a real catalog overwritten on disk, then `searchfs doctor --repair`.

The catalog is the truth, but disks fail; the way back must keep what SQLite can still read and reuse every
intact embedding instead of re-embedding the library.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from photos import make_library

from searchfs import content_hash


def searchfs(*args, env) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "searchfs", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def env(home, tiny_model):
    environment = dict(os.environ)
    environment.update({"SEARCHFS_" + k.upper(): v for k, v in tiny_model.items()})
    return environment


def pages_of(catalog: Path, *names: str, kind: str = "%") -> list[int]:
    """The file's pages that hold these tables or indexes (SQLite's dbstat), page 1 (the schema) left out;
    `kind` 'leaf' for the pages holding rows (not the b-tree's inner pages)."""
    marks = ",".join("?" * len(names))
    with sqlite3.connect(catalog) as conn:
        rows = conn.execute(
            f"SELECT pageno FROM dbstat WHERE name IN ({marks}) AND pageno > 1 AND pagetype LIKE ?", (*names, kind)
        )
        return sorted(r[0] for r in rows)


def damage(catalog: Path, pages: list[int]) -> None:
    with sqlite3.connect(catalog) as conn:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    with open(catalog, "r+b") as handle:
        for page in pages:
            handle.seek((page - 1) * size)
            handle.write(b"\xde\xad\xbe\xef" * (size // 4))


def indexed_library(env, tmp_path, count: int) -> tuple[Path, Path]:
    photos = tmp_path / "photos"
    make_library(photos, count)
    catalog = Path(env["SEARCHFS_HOME"]) / "libraries" / "default" / "catalog.sqlite"
    catalog.parent.mkdir(parents=True, mode=0o700)
    with sqlite3.connect(catalog) as conn:  # 4 KiB pages (a new catalog has 16): a few photos span several
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("VACUUM")
    os.chmod(catalog, 0o600)
    assert searchfs("index", str(photos), "--no-progress", env=env).returncode == 0
    assert searchfs("search", "red flower", env=env).returncode == 0
    with sqlite3.connect(catalog) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every row in the main file, where the damage goes
    return photos, catalog


def test_damaged_indexes_are_rebuilt_and_nothing_is_embedded_again(env, tmp_path):
    photos, catalog = indexed_library(env, tmp_path, 40)
    damage(catalog, pages_of(catalog, "contents_camera", "contents_date", "sqlite_autoindex_contents_1"))
    # Opening does not scan the whole file (a million photos would take a minute): the damage shows on the
    # first read that meets it, as one line that says what to do, and in `doctor`.
    broken = searchfs("search", "--where", "camera=canon", env=env)
    assert broken.returncode != 0 and "doctor --repair" in broken.stderr and broken.stderr.count("\n") == 1
    doctor = searchfs("doctor", env=env)
    assert doctor.returncode == 1 and "damaged" in doctor.stdout and "doctor --repair" in doctor.stdout
    repaired = searchfs("doctor", "--repair", env=env)
    assert repaired.returncode == 0, repaired.stderr
    assert "0 embedded again" in repaired.stdout, repaired.stdout
    status = json.loads(searchfs("status", "--json", env=env).stdout)
    assert status["files"] == 40 and status["indexed"] == 40
    assert len(json.loads(searchfs("search", "--where", "camera=canon", "--json", env=env).stdout)) == 14
    assert list(catalog.parent.glob("catalog.sqlite.damaged-*"))  # the damaged file is kept, not deleted
    assert searchfs("doctor", "--repair", env=env).stdout.startswith(f"catalog {catalog} is sound")


def test_lost_rows_are_found_again_and_only_lost_vectors_are_embedded(env, tmp_path):
    photos, catalog = indexed_library(env, tmp_path, 40)
    # one of the pages holding vectors, and the one holding camera names (every photo's metadata refers to it)
    damage(catalog, pages_of(catalog, "embeddings", kind="leaf")[:1] + pages_of(catalog, "names", kind="leaf"))
    repaired = searchfs("doctor", "--repair", env=env)
    assert repaired.returncode == 0, repaired.stderr
    embedded_again = int(repaired.stdout.split(" embedded again")[0].rsplit(" ", 1)[1])
    assert 0 < embedded_again < 40, repaired.stdout  # the survivors were reused
    assert "40 photos' metadata to read again" in repaired.stdout, repaired.stdout
    status = json.loads(searchfs("status", "--json", env=env).stdout)
    assert status["files"] == 40 and status["indexed"] == 40 and status["pending"] == 0
    # metadata of the photos whose facet rows were lost was read again by exiftool
    assert len(json.loads(searchfs("search", "--where", "camera=canon", "--json", env=env).stdout)) == 14
    with sqlite3.connect(catalog) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_table_whose_last_page_is_lost_is_still_walked(env, tmp_path):
    """When even a table's largest key cannot be read, the salvage walks on past the last row it saw."""
    photos, catalog = indexed_library(env, tmp_path, 20)
    damage(catalog, pages_of(catalog, "files", kind="leaf")[-1:])
    repaired = searchfs("doctor", "--repair", env=env)
    assert repaired.returncode == 0, repaired.stderr
    assert "0 embedded again" in repaired.stdout, repaired.stdout
    assert json.loads(searchfs("status", "--json", env=env).stdout)["indexed"] == 20


def made_before_schema_4(catalog: Path, photos: Path) -> None:
    """Turn a catalog into what a library indexed before schema 4 holds: BLAKE2b hashes of its photos, no
    'content_hash' row, user_version 3 (the objects are the same)."""
    with sqlite3.connect(catalog) as conn:
        for path in photos.rglob("*.jpg"):
            new, legacy = (content_hash.hash_file(os.fsencode(path), h)[0] for h in content_hash.NAMES)
            conn.execute("UPDATE contents SET hash = ? WHERE hash = ?", (bytes.fromhex(legacy), bytes.fromhex(new)))
        conn.execute("DELETE FROM meta WHERE key = 'content_hash'")
        conn.execute("PRAGMA user_version = 3")
    with sqlite3.connect(catalog) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # where the damage goes


def test_a_damaged_catalog_from_before_schema_4_keeps_its_hash(env, tmp_path):
    """The rebuilt catalog is born with the newest hash; one salvaged from a v3 file is told its hashes are
    BLAKE2b, so a copy of a photo added after the repair is still that photo (nothing embedded)."""
    photos, catalog = indexed_library(env, tmp_path, 12)
    made_before_schema_4(catalog, photos)
    damage(catalog, pages_of(catalog, "contents_camera"))
    repaired = searchfs("doctor", "--repair", env=env)
    assert repaired.returncode == 0 and "0 embedded again" in repaired.stdout, repaired.stdout + repaired.stderr
    with sqlite3.connect(catalog) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'content_hash'").fetchone()[0] == content_hash.LEGACY
    first = sorted(photos.rglob("*.jpg"))[0]
    (photos / "copy.jpg").write_bytes(first.read_bytes())
    report = json.loads(searchfs("index", "--json", env=env).stdout)
    assert (report["new"], report["reused"], report["embedded"]) == (1, 1, 0), report
