import os
import sqlite3
import stat
import threading

import numpy as np
import pytest

from searchfs.errors import SearchfsError
from searchfs.records import Facet, FileStat
from searchfs.search.filters import parse_filter
from searchfs.store.catalog import SCHEMA_VERSION, Catalog, CatalogError


@pytest.fixture
def catalog(tmp_path):
    cat = Catalog(tmp_path / "lib" / "catalog.sqlite")
    yield cat
    cat.close()


def _add_file(cat, root, relpath, digest="1" * 40, size=10):
    with cat.transaction() as tx:
        content, _ = tx.content_for_hash(digest, size)
        tx.upsert_file(root.id, FileStat(relpath, size, 1, 0), content.id, None)
    return content.id


def _hash(n: int) -> str:
    return f"{n:040x}"


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
    with pytest.raises(SearchfsError, match="newer"):
        Catalog(path)


def test_garbage_file_is_refused_clearly(tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CatalogError, match="not usable.*doctor --repair"):
        Catalog(path)


def test_root_names_are_unique(catalog):
    a = catalog.add_root(b"/x/photos")
    b = catalog.add_root(b"/y/photos")
    assert (a.name, b.name) == ("photos", "photos-2")
    assert catalog.add_root(b"/x/photos") == a


def test_every_change_moves_the_generation_and_only_searchability_moves_the_vectors_one(catalog):
    g0 = catalog.generation()
    root = catalog.add_root(b"/p")
    assert catalog.generation() > g0
    v0 = catalog.vectors_generation()
    content = _add_file(catalog, root, b"a.jpg")
    assert catalog.vectors_generation() > v0  # a file linked to a content: searchability may change
    v1, g1 = catalog.vectors_generation(), catalog.generation()
    with catalog.transaction() as tx:
        tx.move_paths(root.id, b"a.jpg", b"b.jpg")
    assert catalog.generation() > g1 and catalog.vectors_generation() == v1  # a rename never touches vectors
    with catalog.transaction() as tx:
        tx.store_embedding("m", content, np.ones(4, np.float32) / 2)
    v2 = catalog.vectors_generation()
    assert v2 > v1
    catalog.set_online(root.id, False)
    assert catalog.vectors_generation() > v2
    with catalog.transaction():
        pass  # nothing written: nothing moves
    assert catalog.generation() == catalog.generation()


def test_move_folder_keeps_content_and_is_one_row_per_folder(catalog):
    root = catalog.add_root(b"/p")
    content = _add_file(catalog, root, b"old/sub/a.jpg")
    _add_file(catalog, root, b"older/keep.jpg", digest=_hash(2))
    with catalog.transaction() as tx:
        assert tx.move_paths(root.id, b"old", b"new") == 1
    row = catalog.file_at(root.id, b"new/sub/a.jpg")
    assert row is not None and row.content_id == content
    assert catalog.file_at(root.id, b"older/keep.jpg") is not None  # a sibling sharing the prefix is untouched
    assert catalog.folder_files(root.id, b"new/sub").keys() == {b"a.jpg"}
    assert sorted(catalog.folders(root.id)) == [b"new/sub", b"older"]


def test_deleting_files_orphans_contents_and_collection_waits_for_the_grace(catalog):
    root = catalog.add_root(b"/p")
    kept = _add_file(catalog, root, b"a.jpg", _hash(1))
    gone = _add_file(catalog, root, b"b.jpg", _hash(2))
    _add_file(catalog, root, b"copy.jpg", _hash(1))
    with catalog.transaction() as tx:
        assert tx.delete_files(root.id, b"", [b"b.jpg", b"copy.jpg"]) == 2
        assert tx.collect_orphans(older_than=3600) == 0  # grace period: the vector stays a while
    with catalog.transaction() as tx:
        assert tx.collect_orphans(older_than=-5) == 1  # only the content no file holds any more
    assert catalog.content_by_hash(_hash(2)) is None and catalog.content_by_hash(_hash(1)) == kept
    assert gone != kept


def test_a_content_that_gets_a_file_back_is_no_orphan(catalog):
    root = catalog.add_root(b"/p")
    _add_file(catalog, root, b"a.jpg", _hash(1))
    with catalog.transaction() as tx:
        tx.delete_paths(root.id, b"a.jpg")
    _add_file(catalog, root, b"back.jpg", _hash(1))
    with catalog.transaction() as tx:
        assert tx.collect_orphans(older_than=-5) == 0


def test_facets_and_embeddings_roundtrip(catalog):
    root = catalog.add_root(b"/p")
    content = _add_file(catalog, root, b"a.jpg")
    vector = np.arange(4, dtype=np.float32)
    facets = [Facet("camera", "Canon EOS 40D"), Facet("iso", "100", 100.0), Facet("keyword", "Beach")]
    with catalog.transaction() as tx:
        tx.store_facets(content, facets, version=1)
        tx.store_embedding("m", content, vector)
    assert catalog.count_needing_meta(1) == 0 and catalog.count_needing_meta(2) == 1  # an older extractor
    assert catalog.count_needing_embedding("m") == 0 and catalog.count_needing_embedding("other") == 1
    with catalog.live_vectors("m", 4) as (count, chunks):
        ((ids, vectors),) = list(chunks)
    assert count == 1 and ids.tolist() == [content] and np.array_equal(vectors[0], vector)
    assert catalog.embedding_dim("m") == 4
    assert catalog.facet_values("camera") == [("Canon EOS 40D", 1)] and catalog.facet_values("iso") == [("100", 1)]
    assert catalog.facet_values("keyword") == [("Beach", 1)]
    assert [h.relpath for h in catalog.matching_files([parse_filter("keyword=beach")])] == [b"a.jpg"]
    catalog.set_online(root.id, False)
    assert catalog.live_count("m") == 0  # offline photos are kept but not searched


def test_the_vector_change_feed_costs_what_changed(catalog):
    root = catalog.add_root(b"/p")
    ids = [_add_file(catalog, root, f"{i}.jpg".encode(), _hash(i)) for i in range(1, 6)]
    with catalog.transaction() as tx:
        for content in ids:
            tx.store_embedding("m", content, np.eye(4, dtype=np.float32)[content % 4])
    since = catalog.vectors_generation()
    assert catalog.vector_changes("m", since, 4).empty
    with catalog.transaction() as tx:
        tx.delete_paths(root.id, b"2.jpg")
    changes = catalog.vector_changes("m", since, 4)
    assert changes.remove_ids.tolist() == [ids[1]] and changes.add_ids.tolist() == []
    assert changes.upto == catalog.vectors_generation()
    with catalog.transaction() as tx:
        tx.prune_vector_log(changes.upto)
    assert catalog.oldest_logged() == changes.upto  # nothing older to catch up from any more


def test_readers_do_not_wait_for_the_writer(catalog):
    root = catalog.add_root(b"/p")
    _add_file(catalog, root, b"a.jpg")
    seen = []
    with catalog.transaction() as tx:
        tx.delete_paths(root.id, b"a.jpg")
        reader = threading.Thread(target=lambda: seen.append(len(catalog.folder_files(root.id, b""))))
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


def test_the_sqlite_catalog_is_one_implementation_of_the_protocols():
    """store/protocol.py is what a second catalog must provide: the SQLite one has every method with the
    same parameters, and nothing in the protocols names SQLite."""
    import inspect

    from searchfs.store import protocol
    from searchfs.store.catalog import Catalog
    from searchfs.store.writes import Transaction

    for proto, implementation in ((protocol.CatalogStore, Catalog), (protocol.CatalogWrites, Transaction)):
        names = [name for name in vars(proto) if not name.startswith("_")]
        assert len(names) > 15, names
        for name in names:
            wanted = inspect.signature(getattr(proto, name))
            have = inspect.signature(getattr(implementation, name))
            assert list(wanted.parameters) == list(have.parameters), (implementation.__name__, name)
            defaults = [p.default for p in wanted.parameters.values()]
            assert defaults == [p.default for p in have.parameters.values()], (implementation.__name__, name)
    assert "sqlite" not in inspect.getsource(protocol).split('"""', 2)[2].lower()
