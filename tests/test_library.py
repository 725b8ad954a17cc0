"""End to end through the Python API: real exiftool, the real open_clip path (tiny model), real SQLite."""

import hashlib
import os
import shutil
import subprocess

import pytest
from photos import make_library, make_photo

from searchfs.errors import LibraryBusy, NotFound, QueryError
from searchfs.library import Library


def tree_digest(root) -> dict:
    """Every path under root with its bytes' hash, mode and mtime: what 'byte-identical' means here."""
    out = {}
    for folder, dirs, files in os.walk(os.fsencode(root)):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            digest = hashlib.sha256(open(path, "rb").read()).hexdigest() if os.path.isfile(path) else ""
            out[path] = (digest, st.st_mode, st.st_mtime_ns)
    return out


def add_broken(root):
    (root / "broken").mkdir(parents=True, exist_ok=True)
    (root / "broken" / "empty.jpg").write_bytes(b"")
    (root / "broken" / "page.jpg").write_text("<html><body>not a photo</body></html>")
    good = make_photo(root / "broken" / "full.jpg", seed=99).read_bytes()
    (root / "broken" / "full.jpg").unlink()
    (root / "broken" / "truncated.jpg").write_bytes(good[: len(good) // 2])


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    make_library(root, 6)
    return root


@pytest.fixture
def lib(settings):
    library = Library(settings, create=True)
    yield library
    library.close()


def test_index_search_and_reindex_costs_nothing(lib, photos):
    add_broken(photos)
    report = lib.index([photos])
    assert (report.new, report.embedded, report.quarantined) == (9, 6, 3), report
    status = lib.status()
    assert (status.files, status.indexed, status.quarantined, status.pending) == (9, 6, 3, 0)
    reasons = {os.path.basename(q["path"]): q["reason"] for q in status.quarantine}
    assert set(reasons) == {"empty.jpg", "page.jpg", "truncated.jpg"} and all(reasons.values())

    again = lib.index()
    assert (again.embedded, again.new, again.unchanged, again.removed) == (0, 0, 9, 0), again


def test_an_indexed_image_finds_itself_first(lib, photos):
    lib.index([photos])
    for path in sorted(photos.rglob("*.jpg"))[:3]:
        hits = lib.search(image=path, limit=3)
        assert hits[0].path == str(path) and hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_an_image_outside_the_roots_can_be_the_query(lib, photos, tmp_path):
    lib.index([photos])
    outside = tmp_path / "elsewhere" / "copy.jpg"
    outside.parent.mkdir()
    shutil.copy(sorted(photos.rglob("*.jpg"))[0], outside)
    (tmp_path / "elsewhere" / "new.jpg").write_bytes(make_photo(tmp_path / "x.jpg", (1, 2, 3)).read_bytes())
    assert lib.search(image=outside, limit=1)[0].path == str(sorted(photos.rglob("*.jpg"))[0])
    assert len(lib.search(image=tmp_path / "elsewhere" / "new.jpg", limit=2)) == 2
    with pytest.raises(QueryError):
        lib.search(image=tmp_path / "elsewhere" / "missing.jpg")


def test_rename_move_and_copy_embed_nothing(lib, photos):
    lib.index([photos])
    first = sorted(photos.rglob("*.jpg"))[0]
    os.rename(first, photos / "renamed.jpg")
    shutil.move(str(photos / "album1"), str(photos / "moved-album"))
    shutil.copy(photos / "renamed.jpg", photos / "copy.jpg")
    report = lib.index()
    assert report.embedded == 0 and report.removed == 4 and report.new == 5, report
    hits = lib.search(image=photos / "renamed.jpg", limit=2)
    assert {h.path for h in hits} == {str(photos / "renamed.jpg"), str(photos / "copy.jpg")}
    assert all(h.score == pytest.approx(1.0, abs=1e-4) for h in hits)


def test_metadata_filters(lib, photos):
    lib.index([photos])
    canon = lib.search(where=["camera=canon"])
    assert {h.path.rsplit("/", 1)[1] for h in canon} == {"IMG_0000.jpg", "IMG_0003.jpg"}
    assert all(h.score is None for h in canon)
    years = lib.search(where=["year=2019..2020"])
    assert {h.path.rsplit("/", 1)[1] for h in years} == {"IMG_0001.jpg", "IMG_0002.jpg", "IMG_0005.jpg"}
    ranked = lib.search("a red photo", where=["fnumber=2.8"], limit=10)
    assert len(ranked) == 3 and all(h.score is not None for h in ranked)
    assert [h.score for h in ranked] == sorted((h.score for h in ranked), reverse=True)
    assert lib.search("x", where=["camera=Leica"]) == []
    values = dict(lib.facet_values("camera"))
    assert values == {"Apple iPhone 12": 2, "Canon EOS 40D": 2, "NIKON D70": 2}


def test_limit_and_min_score(lib, photos):
    lib.index([photos])
    hits = lib.search("anything", limit=4)
    assert [h.rank for h in hits] == [1, 2, 3, 4]
    floor = hits[1].score
    assert all(h.score >= floor for h in lib.search("anything", min_score=floor))


def test_similar_leaves_the_photo_out(lib, photos):
    lib.index([photos])
    root = lib.roots()[0].name
    hits = lib.search(similar_to=(root, "album0/IMG_0000.jpg"), limit=10)
    assert len(hits) == 5 and "album0/IMG_0000.jpg" not in {os.fsdecode(h.relpath) for h in hits}
    with pytest.raises(NotFound):
        lib.search(similar_to=(root, "nope.jpg"))


def test_similar_shows_duplicates_first(lib, photos):
    shutil.copy(photos / "album0" / "IMG_0000.jpg", photos / "album1" / "copy-of-0.jpg")
    lib.index([photos])
    hits = lib.search(similar_to=(lib.roots()[0].name, "album0/IMG_0000.jpg"), limit=3)
    assert os.fsdecode(hits[0].relpath) == "album1/copy-of-0.jpg" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert len(hits) == 3 and "album0/IMG_0000.jpg" not in {os.fsdecode(h.relpath) for h in hits}


def test_source_stays_byte_identical_on_a_read_only_bind_mount(lib, photos, tmp_path):
    add_broken(photos)
    view = tmp_path / "ro"
    view.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(photos), str(view)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        before = tree_digest(photos)
        report = lib.index([view])
        assert report.embedded == 6 and report.quarantined == 3
        assert not [e for e in report.errors if "Read-only" in e or "EROFS" in e]
        assert tree_digest(photos) == before
    finally:
        subprocess.run(["umount", str(view)])


def test_offline_root_is_kept_and_returns_without_reembedding(lib, photos, tmp_path):
    lib.index([photos])
    parked = tmp_path / "parked"
    os.rename(photos, parked)
    report = lib.index()
    assert report.offline_roots == ["photos"] and report.removed == 0
    assert lib.status().files == 6 and not lib.roots()[0].online
    assert lib.search("x") == []  # offline photos are not offered as results (their links would dangle)
    os.rename(parked, photos)
    back = lib.index()
    assert (back.embedded, back.removed, back.unchanged) == (0, 0, 6) and lib.roots()[0].online
    assert len(lib.search("x")) == 6


def test_an_empty_mountpoint_is_offline_not_emptied(lib, photos):
    lib.index([photos])
    for path in sorted(photos.iterdir()):
        shutil.rmtree(path)
    report = lib.index()
    assert report.offline_roots == ["photos"] and lib.status().files == 6


def test_missing_weights_still_serve_metadata(home, tiny_model, photos):
    from searchfs.config import load_settings

    broken = dict(tiny_model, model_pretrained=str(photos / "no-such-checkpoint.pt"))
    with Library(load_settings(**broken), create=True) as library:
        report = library.index([photos])
        assert report.embedded == 0 and report.pending == 6
        assert any("no-such-checkpoint" in e for e in report.errors)
        assert len(library.search(where=["camera=nikon"])) == 2
    with Library(load_settings(**tiny_model)) as library:  # weights back: the pending photos get embedded
        assert library.index().embedded == 6


def test_one_writer_at_a_time(lib, photos):
    with lib.writer_lock():
        with pytest.raises(LibraryBusy, match="pid"):
            lib.index([photos])


def test_derived_vector_files_are_rebuilt_when_damaged(settings, photos):
    with Library(settings, create=True) as library:
        library.index([photos])
        expected = [h.path for h in library.search("query", limit=6)]
        folder = library.vectors_dir
        assert library.status().vectors["state"] == "ok"
        stamp_file = folder / "stamp.json"
        good = stamp_file.read_text()
        stamp_file.write_text(good.replace('"count": 6', '"count": 5'))
        assert (
            library.status().vectors["state"].startswith("stale") and "count is 5" in library.status().vectors["state"]
        )
        stamp_file.write_text(good)
    files = [p for p in folder.iterdir() if p.is_file() and p.name != "stamp.json"]
    assert files
    for path in files:
        path.write_bytes(path.read_bytes()[:-7])  # truncated by a crash
    with Library(settings, create=True) as library:
        assert [h.path for h in library.search("query", limit=6)] == expected


def test_non_utf8_names_round_trip(lib, tmp_path):
    root = os.fsencode(tmp_path / "odd")
    name = b"caf\xe9 \xff.jpg"
    make_photo(os.path.join(root, name), seed=5)
    lib.index([root])
    hit = lib.search(image=os.path.join(root, name), limit=1)[0]
    assert hit.abspath == os.path.join(root, name) and hit.relpath == name


def test_camera_raw_is_embedded_from_its_preview_upright(lib, tmp_path):
    from photos import make_raw_like
    from PIL import Image

    root = tmp_path / "raw"
    # a lopsided picture (bright band on one side), so that turning it changes what the model sees
    picture = Image.new("RGB", (320, 200), (20, 20, 20))
    picture.paste((250, 250, 250), (0, 0, 90, 200))
    buffer = __import__("io").BytesIO()
    picture.save(buffer, "JPEG", quality=95)
    preview = buffer.getvalue()
    make_raw_like(root / "DSC_0001.NEF", preview, orientation=6)  # the camera was held upright
    (root / "DSC_0002.NEF").write_bytes(b"II*\0" + b"\0" * 64)  # a RAW with nothing usable in it
    # what the photo looks like: the preview turned as orientation 6 says; and as stored, unturned
    upright, stored = tmp_path / "upright.png", tmp_path / "stored.png"
    Image.open(__import__("io").BytesIO(preview)).transpose(Image.Transpose.ROTATE_270).save(upright)
    Image.open(__import__("io").BytesIO(preview)).save(stored)
    report = lib.index([root])
    assert report.embedded == 1 and report.quarantined == 1, report
    raw = lib.catalog.vector_of(lib.model_id, lib.search(where=["format=nef"])[0].content_id)
    as_upright, as_stored = (lib.embedder.embed_images([os.fsencode(p)])[0].vector for p in (upright, stored))
    assert float(raw @ as_upright) == pytest.approx(1.0, abs=1e-4)
    assert float(raw @ as_stored) < float(raw @ as_upright) - 1e-4  # the preview was turned, not used as stored
    reasons = {os.path.basename(q["path"]): q["reason"] for q in lib.status().quarantine}
    assert "no usable embedded preview" in reasons["DSC_0002.NEF"]
    assert [os.path.basename(h.path) for h in lib.search(where=["camera=nikon d850"])] == ["DSC_0001.NEF"]
