"""The work queues and counts (store/work.py): answered from what is left (the embedding queue, the file
counts the triggers keep, partial indexes), they must always agree with the plain queries that read
every content and every file. Checked after every kind of change the indexer and the daemon make."""

from __future__ import annotations

import numpy as np
import pytest

from searchfs.records import FileStat
from searchfs.store.catalog import Catalog
from searchfs.store.rows import NewPhoto

MODEL = "m"


@pytest.fixture
def catalog(tmp_path):
    cat = Catalog(tmp_path / "lib" / "catalog.sqlite")
    yield cat
    cat.close()


def _hash(n: int) -> str:
    return f"{n:040x}"


def _vector(n: int) -> np.ndarray:
    v = np.zeros(4, np.float32)
    v[n % 4] = 1
    return v


def add(cat: Catalog, root, relpath: bytes, n: int, error: str | None = None) -> int | None:
    with cat.transaction() as tx:
        content = None if error else tx.content_for_hash(_hash(n), 10)[0].id
        tx.upsert_file(root.id, FileStat(relpath, 10, n, n), content, error)
    return content


def agree(cat: Catalog, model: str = MODEL) -> None:
    """The queue-based answers equal the ones that read everything."""
    assert cat.tracks(model)
    for online_only in (True, False):
        assert cat.census(model, online_only) == cat._census_reading_everything(model, online_only), online_only
    for root in cat.roots():
        assert cat.count_files(root.id) == len(
            [1 for folder in cat.folders(root.id) for _ in cat.folder_files(root.id, folder)]
        )
    queued = cat.contents_needing_embedding(model, 1000)
    cat._model_ids.clear()
    with cat.transaction() as tx:
        tx.conn.execute("UPDATE meta SET value = '-1' WHERE key = 'todo_model'")  # untracked: read everything
    try:
        assert queued == cat.contents_needing_embedding(model, 1000)
    finally:
        with cat.transaction() as tx:
            tx.conn.execute("UPDATE meta SET value = ? WHERE key = 'todo_model'", (str(cat._model(model)),))


def test_the_queue_and_the_counts_follow_every_kind_of_change(catalog):
    root = catalog.add_root(b"/p")
    other = catalog.add_root(b"/q")
    with catalog.transaction() as tx:
        tx.track_model(MODEL)
    contents = [add(catalog, root, f"d{i % 3}/{i}.jpg".encode(), i) for i in range(1, 13)]
    add(catalog, other, b"x.jpg", 100)
    add(catalog, root, b"unreadable.jpg", 0, error="cannot read: Permission denied")
    agree(catalog)
    assert catalog.count_needing_embedding(MODEL) == 13
    with catalog.transaction() as tx:  # some embedded, some quarantined
        for content in contents[:6]:
            tx.store_embedding(MODEL, content, _vector(content))
        tx.quarantine(contents[6], "not an image")
        tx.store_embedding("another model", contents[7], _vector(1))  # not this model's vector
    agree(catalog)
    assert catalog.embedding_progress(MODEL) == (6, 6)
    add(catalog, root, b"copy.jpg", 1)  # a copy of an embedded photo
    with catalog.transaction() as tx:
        tx.move_paths(root.id, b"d0", b"moved")  # a folder renamed
        tx.delete_paths(root.id, b"d1")  # a folder deleted with its files
        tx.delete_files(root.id, b"d2", [b"2.jpg"])
    agree(catalog)
    catalog.set_online(other.id, False)
    agree(catalog)
    with catalog.transaction() as tx:
        tx.retry_quarantined()
        tx.conn.execute("DELETE FROM embeddings WHERE content_id = ?", (contents[0],))  # a vector lost
    agree(catalog)
    with catalog.transaction() as tx:
        tx.conn.execute("DELETE FROM dirs WHERE path = ?", (b"moved",))  # a cascade takes the files with it
        tx.delete_dirs(root.id, [b"d2"])
        tx.collect_orphans(older_than=-5)  # contents no file holds any more are forgotten
    agree(catalog)
    catalog.remove_root("q")
    agree(catalog)


def test_a_model_switch_fills_the_queue_anew(catalog):
    root = catalog.add_root(b"/p")
    photos = [NewPhoto(f"{i}.jpg".encode(), 10, i, i, _hash(i), (), _vector(i)) for i in range(1, 9)]
    with catalog.transaction() as tx:
        tx.add_photos(root.id, photos, MODEL, version=1)
    assert catalog.tracks(MODEL) and catalog.count_needing_embedding(MODEL) == 0
    assert not catalog.tracks("new model") and catalog.count_needing_embedding("new model") == 8  # read everything
    with catalog.transaction() as tx:
        tx.track_model("new model")
    assert catalog.tracks("new model") and catalog.count_needing_embedding("new model") == 8
    agree(catalog, "new model")
    assert catalog.embedding_progress("new model") == (0, 8)
    assert catalog.embedding_progress(MODEL) == (8, 0)  # the other model is answered by reading everything
