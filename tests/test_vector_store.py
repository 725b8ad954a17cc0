"""The vector index kept in step with the catalog's change feed (store/vector_store.py), on a real catalog.

Photos are recorded with `Transaction.add_photos` (no decoding, no model): what is tested is which vectors
the index holds after each change, what each catch-up reads, and who may change the index.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from searchfs.records import FileStat
from searchfs.store.catalog import Catalog
from searchfs.store.rows import NewPhoto
from searchfs.store.vector_store import VectorStore

MODEL, DIM = "test-model", 8


def unit(rng, n):
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def catalog(tmp_path):
    cat = Catalog(tmp_path / "lib" / "catalog.sqlite")
    yield cat
    cat.close()


def add(catalog, root, start, count, rng):
    vectors = unit(rng, count)
    photos = [
        NewPhoto(f"p/{i}.jpg".encode(), 1, 0, 0, f"{i:040x}", (), vectors[i - start])
        for i in range(start, start + count)
    ]
    with catalog.transaction() as tx:
        tx.add_photos(root.id, photos, MODEL, 1)


def store_for(catalog, tmp_path, exact_below=10**6) -> VectorStore:
    return VectorStore(catalog, lambda: tmp_path / "vectors", lambda: MODEL, exact_below)


class Reads:
    """Counts what the store asks of the catalog."""

    def __init__(self, catalog, monkeypatch):
        self.full, self.changed = 0, []
        live, changes = catalog.live_vectors, catalog.vector_changes

        def live_vectors(*a):
            self.full += 1
            return live(*a)

        def vector_changes(*a):
            result = changes(*a)
            self.changed.append(len(result.add_ids) + len(result.remove_ids))
            return result

        monkeypatch.setattr(catalog, "live_vectors", live_vectors)
        monkeypatch.setattr(catalog, "vector_changes", vector_changes)


def test_catching_up_reads_what_changed_not_every_id(catalog, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    root = catalog.add_root(b"/photos")
    add(catalog, root, 0, 500, rng)
    store = store_for(catalog, tmp_path)
    reads = Reads(catalog, monkeypatch)
    assert len(store.current()) == 500 and reads.full == 1  # the first build reads everything once
    add(catalog, root, 500, 3, rng)
    with catalog.transaction() as tx:
        tx.delete_paths(root.id, b"p/7.jpg")
    index = store.current()
    assert len(index) == 502 and 8 not in index and reads.full == 1
    assert reads.changed == [4]  # three new photos and one gone: what changed, nothing else
    catalog.set_online(root.id, False)
    assert len(store.current()) == 0  # an offline root's photos leave the results...
    catalog.set_online(root.id, True)
    assert len(store.current()) == 502 and reads.full == 1  # ...and come back without a rebuild


def test_a_saved_index_older_than_the_catalog_is_caught_up_not_rebuilt(catalog, tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    root = catalog.add_root(b"/photos")
    add(catalog, root, 0, 300, rng)
    writer = store_for(catalog, tmp_path)
    writer.catch_up()
    assert writer.save(force=True)
    add(catalog, root, 300, 20, rng)  # after the snapshot
    reader = store_for(catalog, tmp_path)
    reads = Reads(catalog, monkeypatch)
    index = reader.current()
    assert len(index) == 320 and reads.full == 0 and reads.changed == [20]
    assert reader.seq == catalog.vectors_generation()


def test_a_snapshot_the_log_no_longer_reaches_is_rebuilt(catalog, tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    root = catalog.add_root(b"/photos")
    add(catalog, root, 0, 100, rng)
    store = store_for(catalog, tmp_path)
    store.catch_up()
    store.save(force=True)
    add(catalog, root, 100, 10, rng)
    with catalog.transaction() as tx:  # another writer pruned past this snapshot (it saved a newer one, lost)
        tx.prune_vector_log(catalog.vectors_generation())
    reads = Reads(catalog, monkeypatch)
    assert len(store_for(catalog, tmp_path).current()) == 110 and reads.full == 1


def test_a_save_is_skipped_until_it_is_worth_it_and_prunes_the_log(catalog, tmp_path):
    rng = np.random.default_rng(3)
    root = catalog.add_root(b"/photos")
    add(catalog, root, 0, 50, rng)
    store = store_for(catalog, tmp_path)
    store.catch_up()
    assert store.save(force=True) and catalog.oldest_logged() == store.seq
    add(catalog, root, 50, 5, rng)
    store.catch_up()
    assert not store.save()  # 5 changes: the log is cheaper than rewriting the files
    assert store.save(force=True) and catalog.oldest_logged() == store.seq  # the log kept only what is unsaved


def test_readers_never_change_an_owned_index(catalog, tmp_path):
    """With a daemon, FUSE threads only read: the writer thread alone catches up, then publishes."""
    rng = np.random.default_rng(4)
    root = catalog.add_root(b"/photos")
    add(catalog, root, 0, 40, rng)
    store = store_for(catalog, tmp_path)
    store.own()
    store.catch_up()  # the writer's first load
    seen = []
    add(catalog, root, 40, 10, rng)
    readers = [threading.Thread(target=lambda: seen.append(len(store.current()))) for _ in range(8)]
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join(10)
    assert seen == [40] * 8  # the catalog changed, but no reader caught up on its own
    store.catch_up()  # the writer publishes
    assert len(store.current()) == 50


def test_an_owned_store_makes_readers_wait_for_the_first_load(catalog, tmp_path):
    rng = np.random.default_rng(5)
    root = catalog.add_root(b"/photos")
    add(catalog, root, 0, 10, rng)
    store = store_for(catalog, tmp_path)
    store.own()
    answers = []
    reader = threading.Thread(target=lambda: answers.append(store.current()))
    reader.start()
    reader.join(0.3)
    assert reader.is_alive() and answers == []  # waiting for the writer, not loading it itself
    store.catch_up()
    reader.join(10)
    assert len(answers[0]) == 10


def test_a_file_linked_again_is_searchable_again(catalog, tmp_path):
    """Every path that changes which contents are live reaches the index: here a relink (upsert_file)."""
    rng = np.random.default_rng(6)
    root = catalog.add_root(b"/photos")
    add(catalog, root, 0, 3, rng)
    store = store_for(catalog, tmp_path)
    assert len(store.current()) == 3
    content = catalog.file_at(root.id, b"p/1.jpg").content_id
    with catalog.transaction() as tx:
        tx.delete_paths(root.id, b"p/1.jpg")
    assert content not in store.current()
    with catalog.transaction() as tx:
        tx.upsert_file(root.id, FileStat(b"q/back.jpg", 1, 0, 0), content, None)
    assert content in store.current()
