"""The catalog's schema ladder, tested from a real catalog of the previous release (schema 1), and the
extractor version that brings new metadata to existing libraries without re-embedding.

tests/data/catalog_v1.sql is a dump of a small library indexed by searchfs with schema 1 (the tiny test
model's vectors, a quarantined file, keywords, a title, GPS, a saved query). The expected values are read
from that same dump, with plain SQL on its v1 tables, before the catalog is opened and migrated.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from photos import make_library

from searchfs import content_hash
from searchfs.errors import SearchfsError
from searchfs.library import Library
from searchfs.records import display_number
from searchfs.store import migrations
from searchfs.store.catalog import Catalog

FIXTURE = Path(__file__).parent / "data" / "catalog_v1.sql"


@pytest.fixture
def v1(tmp_path) -> Path:
    path = tmp_path / "library" / "catalog.sqlite"
    path.parent.mkdir()
    with sqlite3.connect(path) as conn:
        conn.executescript(FIXTURE.read_text())
    return path


def v1_truth(path: Path) -> dict:
    """What the v1 catalog says, read with v1's own tables."""
    with sqlite3.connect(path) as conn:
        files = {bytes(rel): cid for rel, cid in conn.execute("SELECT relpath, content_id FROM files")}
        facets: dict[str, set] = {}
        for key, text, num in conn.execute("SELECT key, text, num FROM facets"):
            facets.setdefault(key, set()).add(display_number(key, num) if num is not None else text)
        vectors = {(m, cid): bytes(v) for m, cid, v in conn.execute("SELECT model, content_id, vector FROM embeddings")}
        generation = int(conn.execute("SELECT value FROM meta WHERE key = 'vectors_generation'").fetchone()[0])
        quarantined = {cid for (cid,) in conn.execute("SELECT id FROM contents WHERE error IS NOT NULL")}
        saved = [t for (t,) in conn.execute("SELECT text FROM saved_queries")]
    return dict(
        files=files, facets=facets, vectors=vectors, generation=generation, quarantined=quarantined, saved=saved
    )


def test_a_v1_catalog_climbs_to_the_latest_schema_losing_nothing(v1):
    truth = v1_truth(v1)
    assert sqlite3.connect(v1).execute("PRAGMA user_version").fetchone()[0] == 1
    catalog = Catalog(v1)
    try:
        assert catalog.read().execute("PRAGMA user_version").fetchone()[0] == migrations.LATEST
        root = catalog.roots()[0]
        found = {}
        for folder in catalog.folders(root.id):
            for name, row in catalog.folder_files(root.id, folder).items():
                found[os.path.join(folder, name)] = row.content_id
        assert found == truth["files"]
        for key in ("camera", "make", "model", "lens", "date", "iso", "fnumber", "exposure", "keyword", "title"):
            assert {text for text, _ in catalog.facet_values(key)} <= truth["facets"][key], key
            assert {text for text, _ in catalog.facet_values(key)}, key
        assert {text for text, _ in catalog.facet_values("year")} == truth["facets"]["year"]
        for (model, content_id), blob in truth["vectors"].items():
            assert catalog.vector_of(model, content_id).tobytes() == blob
        assert catalog.vectors_generation() == truth["generation"]  # vector files saved by v1 stay valid
        assert catalog.saved_queries() == truth["saved"]
        assert {q.reason for q in catalog.quarantined(10)} and len(catalog.quarantined(10)) == len(truth["quarantined"])
    finally:
        catalog.close()


def _v1_matches(path: Path, key: str, where: str) -> list[str]:
    """File names whose content has a v1 facet row `key` meeting `where`, searchable (not quarantined)."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            f"""SELECT f.relpath FROM files f JOIN contents c ON c.id = f.content_id
                JOIN facets x ON x.content_id = c.id AND x.key = ? AND {where}
                WHERE c.error IS NULL AND f.error IS NULL""",
            (key,),
        )
        return sorted(os.path.basename(os.fsdecode(bytes(r[0]))) for r in rows)


def test_searches_answer_the_same_after_the_migration(v1, settings):
    expected = {
        "camera=canon": _v1_matches(v1, "camera", "x.fold LIKE '%canon%'"),
        "has_gps=yes": _v1_matches(v1, "has_gps", "x.text = 'yes'"),
        "keyword=holiday": _v1_matches(v1, "keyword", "x.fold = 'holiday'"),
        "year=2020": _v1_matches(v1, "year", "x.num = 2020"),
        "iso=100..300": _v1_matches(v1, "iso", "x.num BETWEEN 100 AND 300"),
        "exposure=1/250": _v1_matches(v1, "exposure", "x.num BETWEEN 0.00399 AND 0.00401"),
    }
    assert all(expected.values()) and expected["keyword=holiday"] == ["beach.jpg"]
    settings.library_dir.mkdir(parents=True)
    os.replace(v1, settings.catalog_path)
    with Library(settings) as lib:
        for word, names in expected.items():
            assert sorted(os.path.basename(h.path) for h in lib.search(where=[word])) == names, word


def test_a_v2_catalog_climbs_to_v3_with_its_counts_and_queue(v1, monkeypatch):
    """Step 2 -> 3 adds the indexes, the embedding queue and the file counts to a catalog of schema 2 (here the
    v1 fixture after the step before), filled from what it holds: they then answer as reading everything does."""
    monkeypatch.setattr(migrations, "LATEST", 2)
    Catalog(v1).close()
    with sqlite3.connect(v1) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert "files" not in [r[1] for r in conn.execute("PRAGMA table_info(roots)")]
        files = conn.execute("SELECT count(*) FROM files").fetchone()[0]
        (model,) = conn.execute("SELECT name FROM models").fetchone()
    monkeypatch.undo()
    catalog = Catalog(v1)
    try:
        assert catalog.read().execute("PRAGMA user_version").fetchone()[0] == migrations.LATEST
        names = {r[0] for r in catalog.read().execute("SELECT name FROM sqlite_master")}
        assert migrations._ADDED_IN_V3 <= names
        assert sum(catalog.counts(model).per_root.values()) == files > 0
        assert not catalog.tracks(model)  # the queue is filled by the first track_model
        reading_everything = catalog.census(model, online_only=False)
        with catalog.transaction() as tx:
            tx.track_model(model)
        assert catalog.tracks(model) and catalog.census(model, online_only=False) == reading_everything
        assert reading_everything.quarantined > 0 and reading_everything.searchable > 0
    finally:
        catalog.close()


def test_a_failed_step_leaves_the_catalog_as_it_was(v1, monkeypatch):
    def broken(conn):
        conn.execute("DROP TABLE facets")  # half way through...
        raise RuntimeError("power cut")

    monkeypatch.setitem(migrations.STEPS, 2, broken)
    with pytest.raises((RuntimeError, SearchfsError)):
        Catalog(v1)
    with sqlite3.connect(v1) as conn:  # rolled back: still schema 1, with every v1 table
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM facets").fetchone()[0] > 0
    monkeypatch.undo()
    Catalog(v1).close()  # and the next open climbs for real


def test_a_new_facet_reaches_an_existing_library_without_re_embedding(settings, tmp_path, monkeypatch):
    """A release that reads a new facet bumps EXTRACTOR_VERSION: contents read by the older extractor are read
    again by exiftool, lazily, and keep their vectors. Here the older extractor is played by a catalog whose
    lens values are missing (as if the old normalize had not known lenses) at meta version 1."""
    photos = tmp_path / "photos"
    make_library(photos, 4)
    from photos import make_photo

    make_photo(photos / "lens.jpg", (9, 99, 199), seed=77, make="Canon", lens="EF 50mm f/1.8")
    with Library(settings, create=True) as lib:
        lib.index([photos])
        assert [v for v, _ in lib.facet_values("lens")] == ["EF 50mm f/1.8"]
    with sqlite3.connect(settings.catalog_path) as conn:  # what the older extractor had left
        conn.execute("UPDATE contents SET lens = NULL, meta_version = 1")
    from searchfs.ingest import indexer

    monkeypatch.setattr(indexer, "EXTRACTOR_VERSION", 2)
    with Library(settings) as lib:
        assert lib.facet_values("lens") == []
        report = lib.index()
        assert report.embedded == 0 and report.new == 0
        assert [v for v, _ in lib.facet_values("lens")] == ["EF 50mm f/1.8"]
        assert lib.catalog.count_needing_meta(2) == 0


def test_a_v3_library_keeps_its_blake2b_hashes_and_reads_nothing_again(settings, tmp_path, monkeypatch):
    """Schema 4 hashes new catalogs with SHA-256. A v3 catalog (BLAKE2b, and no 'content_hash' row: here a
    library indexed with BLAKE2b, then put back to v3) is stamped BLAKE2b by the step: its unchanged files
    are not read, and a new copy of one of its photos is recognised as that photo (same hash)."""
    photos = tmp_path / "photos"
    first = make_library(photos, 3)[0]
    monkeypatch.setattr(content_hash, "NEW", content_hash.LEGACY)  # what new catalogs were made with before
    with Library(settings, create=True) as lib:
        assert lib.index([photos]).embedded == 3
    monkeypatch.undo()
    with sqlite3.connect(settings.catalog_path) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'content_hash'")
        conn.execute("PRAGMA user_version = 3")
    (photos / "copy.jpg").write_bytes(first.read_bytes())
    with Library(settings) as lib:
        assert lib.catalog.content_hash() == content_hash.LEGACY
        report = lib.index()
        assert (report.new, report.reused, report.embedded, report.unchanged) == (1, 1, 0, 3)
    with Library(settings.replace(library=settings.library + "-new"), create=True) as fresh:
        assert fresh.catalog.content_hash() == content_hash.NEW
        fresh.index([photos])
        assert fresh.catalog.content_by_hash(content_hash.hash_file(os.fsencode(first))[0]) is not None


def test_a_catalog_hashed_with_an_unknown_hash_is_refused(settings, tmp_path):
    with Library(settings, create=True):
        pass
    with sqlite3.connect(settings.catalog_path) as conn:
        conn.execute("UPDATE meta SET value = 'md7-999' WHERE key = 'content_hash'")
    with pytest.raises(SearchfsError, match="with md7-999, unknown to this searchfs"):
        Catalog(settings.catalog_path)


def test_the_v1_fixture_vectors_are_unit_length():
    """The fixture is real data: the vectors the tiny model wrote, not zeros."""
    with sqlite3.connect(":memory:") as conn:
        conn.executescript(FIXTURE.read_text())
        for (blob,) in conn.execute("SELECT vector FROM embeddings"):
            assert abs(float(np.linalg.norm(np.frombuffer(blob, np.float32))) - 1) < 1e-3
