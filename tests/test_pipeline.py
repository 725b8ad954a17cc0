"""A whole index embeds beside the scan and exiftool (ingest/indexer.py): real exiftool, the real open_clip
path (tiny model), real SQLite; the wrappers below only watch the order of the calls."""

import contextlib
import threading

import pytest
from photos import make_library

from searchfs.ingest.indexer import Indexer
from searchfs.library import Library


@pytest.fixture
def lib(settings):
    library = Library(settings, create=True)
    yield library
    library.close()


def watch_embedding(lib, monkeypatch) -> threading.Event:
    started = threading.Event()
    real = lib.embedder.embed_images

    def embed_images(paths, on_batch=None, then=()):
        started.set()
        return real(paths, on_batch=on_batch, then=then)

    monkeypatch.setattr(lib.embedder, "embed_images", embed_images)
    return started


def wrap_extract(lib, monkeypatch, before_extract) -> None:
    """Every exiftool batch of the index calls `before_extract()` first."""
    real_extractor = lib.extractor

    @contextlib.contextmanager
    def extractor():
        with real_extractor() as tool:
            real_extract = tool.extract

            def extract(paths):
                before_extract()
                return real_extract(paths)

            tool.extract = extract
            yield tool

    monkeypatch.setattr(lib, "extractor", extractor)


def test_the_model_starts_before_exiftool_is_through(lib, tmp_path, monkeypatch):
    make_library(tmp_path / "photos", 6)
    embedding = watch_embedding(lib, monkeypatch)
    seen: list[bool] = []
    # Sequential stages would call exiftool first and wait here in vain: the model only started after it.
    wrap_extract(lib, monkeypatch, lambda: seen.append(embedding.wait(20)))

    report = lib.index([tmp_path / "photos"])

    assert seen and all(seen), "exiftool ran before the model had started on the hashed files"
    assert (report.new, report.embedded, report.pending) == (6, 6, 0), report
    canon = lib.search(where=["camera=Canon"])  # and the metadata arrived all the same
    assert len(canon) == 2 and all(hit.score is None or hit.score >= -1 for hit in canon)
    assert len(lib.search("a photo", limit=6)) == 6


def test_a_failed_scan_stops_the_embedding_thread_and_says_why(lib, tmp_path, monkeypatch):
    make_library(tmp_path / "photos", 6)
    embedding = watch_embedding(lib, monkeypatch)

    def fail():
        embedding.wait(20)
        raise RuntimeError("exiftool exploded")

    wrap_extract(lib, monkeypatch, fail)
    with pytest.raises(RuntimeError, match="exiftool exploded"):
        lib.index([tmp_path / "photos"])
    assert not [t for t in threading.enumerate() if t.name == "searchfs-embed"]
    monkeypatch.undo()
    again = lib.index()  # nothing half-done is lost: the next index finishes the job
    assert again.pending == 0 and lib.status().indexed == 6


def test_the_first_files_commit_after_16_hashes_so_the_model_starts_early(lib, tmp_path, monkeypatch):
    """A scan commits what it hashed in batches that start small (16, 32, ... 256): the embedding thread,
    woken by the first commit, has work while the rest is still being hashed."""
    make_library(tmp_path / "photos", 40)  # two folders of 20
    sizes: list[int] = []
    real = Indexer._hash_and_link

    def hash_and_link(self, root, pending, report):
        sizes.append(len(pending))
        return real(self, root, pending, report)

    monkeypatch.setattr(Indexer, "_hash_and_link", hash_and_link)
    report = lib.index([tmp_path / "photos"])
    assert sizes == [16, 24] and report.embedded == 40


def test_a_file_swapped_for_an_outside_link_before_its_batch_is_never_embedded(lib, tmp_path, monkeypatch):
    """The next batch is checked when the embedder asks for it (then()), just before it opens the files: a
    photo of that batch replaced by a link out of the root meanwhile is not read."""
    photos = make_library(tmp_path / "photos", 6)
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(photos[0].read_bytes())
    monkeypatch.setattr("searchfs.ingest.indexer.WORK_BATCH", 2)
    real, calls, swapped = lib.embedder.embed_images, [], []

    def embed_images(paths, on_batch=None, then=()):
        calls.append(list(paths))
        if not swapped:  # a photo of a later batch becomes a link to a file outside every root
            victim = next(p for p in photos if bytes(p) not in paths)
            victim.unlink()
            victim.symlink_to(outside)
            swapped.append(bytes(victim))
        return real(paths, on_batch=on_batch, then=then)

    monkeypatch.setattr(lib.embedder, "embed_images", embed_images)
    report = lib.index([tmp_path / "photos"])
    assert len(calls) >= 3 and not any(swapped[0] in paths for paths in calls), calls
    assert report.embedded == 5, report
