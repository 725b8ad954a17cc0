import os
import sqlite3
import stat
import threading

import numpy as np
import pytest

from searchfs.records import Facet
from searchfs.store.catalog import SCHEMA_VERSION, Catalog, CatalogError


@pytest.fixture
def catalog(tmp_path):
    cat = Catalog(tmp_path / "lib" / "catalog.sqlite")
    yield cat
    cat.close()


def _add_file(cat, root, relpath, digest="h1", token=1):
    with cat.write() as conn:
        content = cat.content_for_hash(conn, digest, 10)
        cat.upsert_file(conn, root.id, relpath, 10, 1, 0, content, None, token)
    return content


def test_private_files_and_schema_version(catalog, tmp_path):
    catalog.add_root(b"/photos")
    assert stat.S_IMODE((tmp_path / "lib").stat().st_mode) == 0o700
    for name in os.listdir(tmp_path / "lib"):
        assert stat.S_IMODE((tmp_path / "lib" / name).stat().st_mode) == 0o600, name
    assert catalog.read().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert catalog.read().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "c.sqlite"
    Catalog(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(CatalogError, match="newer"):
        Catalog(path)


def test_garbage_file_is_refused_clearly(tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CatalogError, match="not a usable SQLite"):
        Catalog(path)


def test_root_names_are_unique(catalog):
    a = catalog.add_root(b"/x/photos")
    b = catalog.add_root(b"/y/photos")
    assert (a.name, b.name) == ("photos", "photos-2")
    assert catalog.add_root(b"/x/photos") == a


def test_generation_moves_with_writes(catalog):
    g0 = catalog.generation()
    root = catalog.add_root(b"/p")
    assert catalog.generation() > g0
    v0 = catalog.vectors_generation()
    _add_file(catalog, root, b"a.jpg")
    with catalog.write() as conn:
        catalog.move_paths(conn, root.id, b"a.jpg", b"b.jpg")
        catalog.bump(conn)
    assert catalog.vectors_generation() == v0  # a rename never invalidates vectors


def test_move_folder_keeps_content(catalog):
    root = catalog.add_root(b"/p")
    content = _add_file(catalog, root, b"old/sub/a.jpg")
    _add_file(catalog, root, b"older/keep.jpg", digest="h2")
    with catalog.write() as conn:
        assert catalog.move_paths(conn, root.id, b"old", b"new") == 1
    row = catalog.file_row(root.id, b"new/sub/a.jpg")
    assert row is not None and row[4] == content
    assert catalog.file_row(root.id, b"older/keep.jpg") is not None  # a sibling sharing the prefix is untouched
    assert catalog.files_in_dir(root.id, b"new/sub").keys() == {b"new/sub/a.jpg"}


def test_sweep_and_orphan_collection(catalog):
    root = catalog.add_root(b"/p")
    kept = _add_file(catalog, root, b"a.jpg", "h1", token=1)
    gone = _add_file(catalog, root, b"b.jpg", "h2", token=1)
    with catalog.write() as conn:
        catalog.mark_seen(conn, [catalog.file_row(root.id, b"a.jpg")[0]], 2)
        assert catalog.sweep(conn, root.id, 2) == 1
    assert catalog.collect_orphans(older_than=3600) == 0  # grace period: the vector stays a while
    assert catalog.collect_orphans(older_than=-1) == 1
    ids = [r[0] for r in catalog.read().execute("SELECT id FROM contents")]
    assert ids == [kept] and gone not in ids


def test_facets_and_embeddings_roundtrip(catalog):
    root = catalog.add_root(b"/p")
    content = _add_file(catalog, root, b"a.jpg")
    vector = np.arange(4, dtype=np.float32)
    with catalog.write() as conn:
        catalog.store_facets(conn, content, [Facet("camera", "Canon EOS 40D"), Facet("iso", "100", 100.0)])
        catalog.store_embedding(conn, "m", content, vector)
    assert catalog.count_needing(None) == 0 and catalog.count_needing("m") == 0 and catalog.count_needing("other") == 1
    ids, vectors = catalog.live_vectors("m", 4)
    assert ids.tolist() == [content] and np.array_equal(vectors[0], vector)
    assert catalog.embedding_dim("m") == 4
    catalog.set_online(root.id, False)
    assert catalog.live_ids("m").tolist() == []  # offline photos are kept but not searched


def test_readers_do_not_wait_for_the_writer(catalog):
    root = catalog.add_root(b"/p")
    _add_file(catalog, root, b"a.jpg")
    seen = []
    with catalog.write() as conn:
        conn.execute("DELETE FROM files")
        reader = threading.Thread(target=lambda: seen.append(len(catalog.files_in_dir(root.id, b""))))
        reader.start()
        reader.join(5)
    assert seen == [1]  # the reader saw the last committed state, at once


def test_reader_connections_of_ended_threads_are_reused(tmp_path):
    """libfuse starts and ends worker threads all the time: one connection per thread ever seen ran the
    daemon out of file descriptors (found by benchmarks/bench_live.py)."""
    catalog = Catalog(tmp_path / "c.sqlite")
    for _ in range(40):
        worker = threading.Thread(target=lambda: catalog.read().execute("SELECT 1").fetchone())
        worker.start()
        worker.join()
    assert len(catalog._readers) <= 2
    open_files = len(os.listdir("/proc/self/fd"))
    for _ in range(40):
        worker = threading.Thread(target=lambda: catalog.read().execute("SELECT count(*) FROM files").fetchone())
        worker.start()
        worker.join()
    assert len(os.listdir("/proc/self/fd")) <= open_files + 2
    catalog.close()


def test_reader_connections_stay_bounded_for_foreign_threads(tmp_path):
    """libfuse calls Python from C threads. For those, `threading.local` is empty on every call and the
    made-up thread object reports itself alive forever; 300 calls from 300 short-lived pthreads must not
    hold 300 connections (each one is a file descriptor, and desktops allow 1024)."""
    import ctypes

    libc = ctypes.CDLL(None)
    catalog = Catalog(tmp_path / "c.sqlite")
    answers = []
    callback_type = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
    callback = callback_type(lambda _arg: answers.append(catalog.read().execute("SELECT 1").fetchone()[0]))
    for _ in range(300):
        thread = ctypes.c_ulong()
        assert libc.pthread_create(ctypes.byref(thread), None, callback, None) == 0
        assert libc.pthread_join(thread, None) == 0
    assert answers == [1] * 300
    assert len(catalog._readers) <= 3
    catalog.close()
