"""The vector index: exact and list (IVF) search, updates, files and stamps, saves that write what changed,
concurrency."""

from __future__ import annotations

import json
import stat
import threading

import numpy as np
import pytest

from searchfs.store import vector_files
from searchfs.store import vectors as vectors_module
from searchfs.store.vectors import VectorIndex

MODEL = "ViT-B-32/laion2b"
DIM = 32


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(rng: np.random.Generator, n: int, dim: int = DIM, latent: int = 16, clusters: int = 64) -> np.ndarray:
    """Clusters in a low-dimensional subspace plus noise, like embeddings of a photo library."""
    world = np.random.default_rng(5)  # same subspace and centres for the library and its queries
    projection = world.standard_normal((latent, dim)).astype(np.float32) / np.sqrt(latent)
    centres = world.standard_normal((clusters, latent)).astype(np.float32)
    z = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, latent)).astype(np.float32)
    x = z @ projection + rng.standard_normal((n, dim)).astype(np.float32) * (0.5 / np.sqrt(dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def like_queries(rng: np.random.Generator, vecs: np.ndarray, count: int, spread: float) -> np.ndarray:
    """Library vectors pushed away by a random direction: 0.5 ~ similar-image, 2.0 ~ text query."""
    x = vecs[rng.integers(0, len(vecs), count)] + spread * unit(rng, count, vecs.shape[1])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(ids, vecs, q, k, keep=None):
    scores = vecs @ (q / np.linalg.norm(q))
    if keep is not None:
        scores = np.where(keep, scores, -np.inf)
    order = np.argsort(-scores, kind="stable")[:k]
    return [(int(ids[i]), float(scores[i])) for i in order if np.isfinite(scores[i])]


def assert_same_hits(got, want):
    """Same ranked scores; ids may differ only where two scores tie to float rounding."""
    assert len(got) == len(want) and len({i for i, _ in got}) == len(got)
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
    for (got_id, got_score), (want_id, want_score) in zip(got, want):
        assert got_id == want_id or abs(got_score - want_score) < 1e-5


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.fixture
def small(rng):
    ids = rng.choice(10**6, 2000, replace=False).astype(np.int64)
    vecs = unit(rng, 2000)
    return ids, vecs


@pytest.fixture(scope="module")
def big():
    """20k clustered 64-d vectors indexed with lists (exact_below lowered), and the same data as arrays."""
    rng = np.random.default_rng(11)
    ids = np.arange(20_000, dtype=np.int64) * 3 + 1
    vecs = clustered(rng, 20_000, dim=64)
    index = VectorIndex.build(ids, vecs, MODEL, exact_below=1000)
    assert index.stats["kind"] == "ivf"
    return ids, vecs, index


# ------------------------------------------------------------------ exact search


def test_exact_top_k_equals_brute_force(small, rng):
    ids, vecs = small
    index = VectorIndex.build(ids, vecs, MODEL)
    assert index.stats["kind"] == "exact" and len(index) == 2000
    for q in unit(rng, 5):
        for k in (1, 10, 50, 2000, 5000):
            assert_same_hits(index.search(q, k), brute_force(ids, vecs, q, k))


def test_query_need_not_be_normalized(small, rng):
    ids, vecs = small
    index = VectorIndex.build(ids, vecs, MODEL)
    q = unit(rng, 1)[0]
    assert_same_hits(index.search(q * 7.5, 10), brute_force(ids, vecs, q, 10))


def test_allowed_exclude_min_score_exact(small, rng):
    ids, vecs = small
    index = VectorIndex.build(ids, vecs, MODEL)
    q = unit(rng, 1)[0]
    allowed = np.concatenate([rng.choice(ids, 300, replace=False), [-5, 10**9]])  # unknown ids ignored
    exclude = rng.choice(allowed[:300], 50, replace=False)
    keep = np.isin(ids, allowed) & ~np.isin(ids, exclude)
    assert_same_hits(index.search(q, 20, allowed=allowed, exclude=exclude), brute_force(ids, vecs, q, 20, keep))
    assert_same_hits(index.search(q, 20, exclude=exclude), brute_force(ids, vecs, q, 20, ~np.isin(ids, exclude)))
    hits = index.search(q, 2000, min_score=0.2)
    assert hits and all(s >= 0.2 for _, s in hits)
    assert len(hits) == int(np.sum(vecs @ q >= 0.2))
    assert index.search(q, 10, allowed=np.array([], np.int64)) == []
    assert index.search(q, 0) == []


def test_empty_index_and_bad_input(rng):
    index = VectorIndex(DIM, MODEL)
    assert len(index) == 0 and index.search(unit(rng, 1)[0], 5) == [] and index.vector(1) is None
    with pytest.raises(ValueError):
        index.add(np.array([1, 1]), unit(rng, 2))  # duplicate ids
    with pytest.raises(ValueError):
        index.add(np.array([1]), unit(rng, 1, DIM + 1))  # wrong dimension
    with pytest.raises(ValueError):
        index.search(np.zeros(DIM, np.float32), 5)
    assert len(index) == 0


# ------------------------------------------------------------------ updates


def test_add_replace_remove(small, rng):
    ids, vecs = small
    index = VectorIndex.build(ids[:1000], vecs[:1000], MODEL)
    index.add(ids[1000:], vecs[1000:])
    assert len(index) == 2000 and ids[1500] in index and 123456789 not in index
    np.testing.assert_array_equal(index.ids(), np.sort(ids))
    assert not index.ids().flags.writeable  # callers cannot change what readers see
    assert 1.5 not in index and "x" not in index and 2**70 not in index

    new = unit(rng, 10)
    index.add(ids[:10], new)  # replace
    np.testing.assert_allclose(index.vector(int(ids[3])), new[3])
    assert index.search(new[3], 1)[0][0] == ids[3]
    assert len(index) == 2000

    index.remove(np.concatenate([ids[:500], [777_777_777]]))  # unknown id ignored
    assert len(index) == 1500 and ids[0] not in index and index.vector(int(ids[0])) is None
    live_ids, live_vecs = ids[500:], vecs[500:]
    q = unit(rng, 1)[0]
    assert_same_hits(index.search(q, 30), brute_force(live_ids, live_vecs, q, 30))
    assert index.stats["dead_rows"] == 510  # replaced and removed rows die in place; a save drops them


def test_replace_then_remove_everything(small):
    ids, vecs = small
    index = VectorIndex.build(ids, vecs, MODEL)
    index.add(ids, vecs[::-1])
    index.remove(ids)
    assert len(index) == 0 and index.search(vecs[0], 5) == []
    index.add(ids[:3], vecs[:3])
    assert index.search(vecs[1], 1)[0][0] == ids[1]


def test_grows_from_exact_to_lists_and_back(rng):
    vecs = unit(rng, 1500)
    ids = np.arange(1500, dtype=np.int64)
    index = VectorIndex.build(ids[:900], vecs[:900], MODEL, exact_below=1000)
    assert index.stats["kind"] == "exact" and index.stats["lists"] is None
    index.add(ids[900:], vecs[900:])
    assert index.stats["kind"] == "ivf" and index.stats["lists"] > 1 and index.stats["tail_rows"] == 0
    index.remove(ids[:200])
    assert index.stats["dead_rows"] == 200 and 5 not in index
    assert all(i >= 200 for i, _ in index.search(vecs[5], 50))
    index.add(ids[:50], vecs[:50])  # re-added: new rows in the tail, found before their dead old ones
    assert index.stats["tail_rows"] == 50 and index.search(vecs[5], 1)[0][0] == 5
    index.remove(ids[:800])  # under exact_below again: every row is scored
    assert index.stats["kind"] == "exact" and len(index) == 700
    q = unit(rng, 1)[0]
    assert_same_hits(index.search(q, 10), brute_force(ids[800:], vecs[800:], q, 10))


# ------------------------------------------------------------------ list (IVF) quality


def recall(got, want):
    return len({i for i, _ in got} & {i for i, _ in want}) / max(len(want), 1)


@pytest.mark.parametrize("spread", [0.5, 2.0], ids=["image-like", "text-like"])
@pytest.mark.parametrize("k", [10, 50, 200])
def test_lists_recall_against_exact(big, k, spread):
    ids, vecs, index = big
    queries = like_queries(np.random.default_rng(k), vecs, 30, spread)
    r = np.mean([recall(index.search(q, k), brute_force(ids, vecs, q, k)) for q in queries])
    assert r >= 0.98


def test_lists_scores_are_cosine(big):
    ids, vecs, index = big
    q = vecs[123]
    hits = index.search(q, 5)
    assert hits[0][0] == ids[123] and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    for content_id, score in hits:
        assert score == pytest.approx(float(vecs[(content_id - 1) // 3] @ q), abs=1e-5)


@pytest.mark.parametrize("share", [0.001, 0.03, 0.6])
def test_lists_allowed_is_correct_top_k(big, share):
    """Small allowed sets are gathered and scored, large ones read more lists, scoring only their rows."""
    ids, vecs, index = big
    rng = np.random.default_rng(3)
    allowed = rng.choice(ids, int(len(ids) * share), replace=False)
    exclude = allowed[:3]
    keep = np.isin(ids, allowed) & ~np.isin(ids, exclude)
    rs = []
    for q in like_queries(rng, vecs, 20, 1.0):
        got = index.search(q, 20, allowed=allowed, exclude=exclude)
        assert not {i for i, _ in got} - set(allowed[3:].tolist())
        rs.append(recall(got, brute_force(ids, vecs, q, 20, keep)))
    assert np.mean(rs) >= 0.98


def test_lists_exclude_and_min_score(big):
    ids, vecs, index = big
    q = vecs[500]
    top = [i for i, _ in index.search(q, 10)]
    got = index.search(q, 10, exclude=np.array(top[:5]))
    assert len(got) == 10 and not set(top[:5]) & {i for i, _ in got}
    assert all(s >= 0.7 for _, s in index.search(q, 200, min_score=0.7))


# ------------------------------------------------------------------ files


@pytest.fixture(params=["exact", "ivf"])
def saved(request, tmp_path, rng):
    exact_below = 10**6 if request.param == "exact" else 500
    ids = np.arange(1, 2001, dtype=np.int64) * 5
    vecs = unit(rng, 2000)
    index = VectorIndex.build(ids, vecs, MODEL, exact_below=exact_below)
    index.remove(ids[:10])  # saved with a dead row / deleted node
    folder = tmp_path / "vectors"
    index.save(folder, generation=7)
    return folder, index, exact_below


def load(saved, generation=7, **changes):
    """The saved index if it opens and was saved at `generation` (the caller's catch-up point), else None."""
    folder, _, exact_below = saved
    args = {"model_id": MODEL, "exact_below": exact_below} | changes
    opened = VectorIndex.open(folder, **args)
    return opened[0] if opened is not None and opened[1] == generation else None


def test_save_load_round_trip(saved, rng):
    folder, index, _ = saved
    loaded = load(saved)
    assert loaded is not None and len(loaded) == 1990
    assert loaded.stats["kind"] == index.stats["kind"] and loaded.stats["generation"] == 7
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    np.testing.assert_array_equal(loaded.vector(100), index.vector(100))
    for q in unit(rng, 3):
        assert [i for i, _ in loaded.search(q, 10)] == [i for i, _ in index.search(q, 10)]
    # a loaded (memory-mapped) index takes updates, in its tail, without copying the mapped table
    assert loaded.stats["table_mapped"] and loaded.stats["tail_rows"] == 0
    loaded.add(np.array([5, 99_999]), unit(rng, 2))
    assert loaded.stats["table_mapped"] and loaded.stats["tail_rows"] == 2
    loaded.remove(np.array([100]))
    loaded.save(folder, generation=8)
    again = load(saved, generation=8)
    assert again is not None and len(again) == 1991 and 5 in again and 99_999 in again and 100 not in again


def test_file_modes(saved):
    folder, index, _ = saved
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    stamp = json.loads((folder / "stamp.json").read_text())
    assert {p.name for p in folder.iterdir()} == set(stamp["files"]) | {"stamp.json"}
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    assert stamp["model_id"] == MODEL and stamp["count"] == 1990 and stamp["dim"] == DIM
    assert stamp["generation"] == 7 and stamp["kind"] == index.stats["kind"]
    assert bool(stamp["lists"]) == (index.stats["kind"] == "ivf") and stamp["dead_rows"] == 0  # written live only


def test_open_refuses_another_model_and_reports_the_generation(saved):
    folder, _, exact_below = saved
    assert VectorIndex.open(folder, "other-model", exact_below=exact_below) is None
    opened = VectorIndex.open(folder, MODEL, exact_below=exact_below)
    assert opened is not None and opened[1] == 7  # older than the catalog? the caller catches up from there


def test_a_stamp_that_contradicts_its_files_is_refused(saved):
    folder, _, _ = saved
    stamp = folder / "stamp.json"
    stamp.write_text(stamp.read_text().replace('"count": 1990', '"count": 1991'))
    assert load(saved) is None
    assert any("count" in problem for problem in VectorIndex.read_stamp(folder, MODEL)[1])


def test_damaged_files_are_refused_at_load_or_found_by_verify(saved):
    """Sizes are checked at load (cheap); the checksums of every byte by `verify`, which the vector store
    runs in the background after a load (and rebuilds when it fails)."""
    folder, index, _ = saved
    assert load(saved).verify() == []
    for name in [p.name for p in folder.iterdir() if p.suffix != ".json"]:
        path = folder / name
        good = path.read_bytes()
        path.write_bytes(good[: len(good) // 2])  # truncated
        assert load(saved) is None, name
        flipped = bytearray(good)
        flipped[len(good) - 17] ^= 0x01  # one bit, same size
        path.write_bytes(bytes(flipped))
        loaded = load(saved)
        assert loaded is None or any(name in problem for problem in loaded.verify()), name
        path.unlink()  # missing
        assert load(saved) is None, name
        path.write_bytes(good)
        assert load(saved) is not None and load(saved).verify() == [], name


def test_load_refuses_missing_or_garbled_stamp(saved, tmp_path):
    folder, _, _ = saved
    stamp = folder / "stamp.json"
    text = stamp.read_text()
    stamp.write_text(text[:40])
    assert load(saved) is None
    stamp.unlink()
    assert load(saved) is None
    assert VectorIndex.open(tmp_path / "nowhere", MODEL) is None


def test_crash_mid_save_keeps_old_index(saved, rng, monkeypatch):
    folder, index, _ = saved
    # a crash left a temp file behind: the old set still loads
    (folder / ".seg.vectors.npy.tmp-123-abcd").write_bytes(b"half written")
    assert load(saved) is not None

    # a crash after the new segment was written, before the stamp: the old stamp names the old, whole set
    index.add(np.array([424242]), unit(rng, 1))

    def crash(folder, name, *args, **kwargs):
        if name == "stamp.json":
            raise OSError("power cut")
        return real_write(folder, name, *args, **kwargs)

    real_write = vector_files.write_file
    monkeypatch.setattr(vector_files, "write_file", crash)
    with pytest.raises(OSError):
        index.save(folder, generation=8)
    monkeypatch.undo()
    old = load(saved)
    assert old is not None and 424242 not in old and old.verify() == [] and load(saved, generation=8) is None
    index.save(folder, generation=8)  # the next save cleans up and succeeds
    assert 424242 in load(saved, generation=8)
    stamp = json.loads((folder / "stamp.json").read_text())
    assert {p.name for p in folder.iterdir()} == set(stamp["files"]) | {"stamp.json"}  # nothing left over


def test_load_trains_lists_when_exact_below_dropped(saved):
    folder, index, _ = saved
    loaded = load(saved, exact_below=100)
    assert loaded is not None and loaded.stats["kind"] == "ivf"
    loaded = load(saved, exact_below=10**6)
    assert loaded is not None and loaded.stats["kind"] == "exact"


# ------------------------------------------------------------------ saves write what changed


def _files(folder):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_a_save_writes_what_changed_and_nothing_when_nothing_did(saved, rng):
    folder, index, _ = saved
    loaded = load(saved)
    before = _files(folder)
    assert loaded.save(folder, generation=7)["written_bytes"] == 0 and _files(folder) == before
    loaded.add(np.array([7_000_001, 7_000_002]), unit(rng, 2))
    written = loaded.save(folder, generation=8)
    table = sum(p.stat().st_size for p in folder.iterdir() if p.name.endswith(".vectors.npy"))
    assert 0 < written["written_bytes"] < table / 50  # two rows and a stamp, not the table again
    after = _files(folder)
    assert all(after.get(name) == seen for name, seen in before.items() if "vectors" in name or "ids" in name)
    assert loaded.stats["tail_rows"] == 0 and loaded.stats["segments"] == 2  # the tail is a mapped segment now
    again = load(saved, generation=8)
    assert 7_000_001 in again and len(again) == 1992


def test_saves_merge_small_segments_and_compact_dead_rows(saved, rng):
    folder, index, _ = saved
    loaded = load(saved)
    for step in range(12):
        loaded.add(np.array([8_000_000 + step]), unit(rng, 1))
        loaded.save(folder, generation=8 + step)
        assert loaded.stats["segments"] <= vectors_module.MAX_SEGMENTS
    loaded.remove(np.arange(1, 1500) * 5)  # most of the first segment dies
    loaded.save(folder, generation=30)
    assert loaded.stats["dead_rows"] < 0.2 * (len(loaded) + loaded.stats["dead_rows"])
    again = load(saved, generation=30)
    assert len(again) == len(loaded) == 2000 - 10 + 12 - (1499 - 10)
    q = unit(rng, 1)[0]
    assert again.search(q, 5) == loaded.search(q, 5)


# ------------------------------------------------------------------ bounded memory: retraining and rebuilding


def _no_table_copies(monkeypatch) -> None:
    """The in-RAM reorganisation copies the whole table: at a million, 2 GB beside the 2 GB it sorts."""

    def copied(*args):
        raise AssertionError("the whole table was copied into RAM")

    monkeypatch.setattr(vectors_module, "sorted_by_list", copied)


def test_a_save_past_4x_growth_trains_the_lists_again_without_a_copy_in_ram(rng, tmp_path, monkeypatch):
    vecs = clustered(rng, 6000)
    index = VectorIndex.build(np.arange(1000), vecs[:1000], MODEL, exact_below=1000)  # lists for 1000
    index.save(tmp_path / "v", generation=1)
    _no_table_copies(monkeypatch)
    for start in range(1000, 6000, 500):  # to 6x the lists' size, through the tail and saves
        index.add(np.arange(start, start + 500), vecs[start : start + 500])
        index.save(tmp_path / "v", generation=start)
    stamp = json.loads((tmp_path / "v" / "stamp.json").read_text())
    assert stamp["lists_trained_on"] >= 4000 and stamp["count"] == len(index) == 6000
    assert index.stats["segments"] == 1 or stamp["lists_trained_on"] < 6000
    q = vecs[4321] + 0.01 * unit(rng, 1)[0]
    assert index.search(q, 1)[0][0] == 4321  # every row is where its new list says
    again = VectorIndex.open(tmp_path / "v", MODEL, exact_below=1000)
    assert again is not None and again[0].search(q, 5) == index.search(q, 5)


def _chunks(ids, vecs, size=700):
    return ((ids[i : i + size], vecs[i : i + size]) for i in range(0, len(ids), size))


@pytest.mark.parametrize("count", [800, 5000])
def test_a_rebuild_goes_through_files_and_answers_as_one_in_ram(rng, tmp_path, monkeypatch, count):
    from searchfs.store.vector_build import build_index

    ids, vecs = np.arange(count) * 3 + 1, clustered(rng, count)
    in_ram = VectorIndex.build(ids, vecs, MODEL, exact_below=1000)
    _no_table_copies(monkeypatch)
    built = build_index(count, _chunks(ids, vecs), DIM, MODEL, 1000, tmp_path / "scratch")
    assert len(built) == count and built.stats["kind"] == in_ram.stats["kind"]
    assert all(isinstance(s.vectors, np.memmap) for s in built._state.segments)  # page cache, not RAM
    assert list((tmp_path / "scratch").iterdir()) == []  # the scratch files went as soon as they were mapped
    for q in like_queries(rng, vecs, 5, spread=0.3):
        assert built.search(q, 10) == in_ram.search(q, 10)
    built.save(tmp_path / "v", generation=3)
    assert VectorIndex.open(tmp_path / "v", MODEL, exact_below=1000)[0].search(vecs[7], 3) == built.search(vecs[7], 3)


def test_a_rebuild_that_cannot_write_its_scratch_files_builds_in_ram(rng, tmp_path):
    from searchfs.store.vector_build import build_index

    ids, vecs = np.arange(300), unit(rng, 300)
    (tmp_path / "file").write_text("")
    built = build_index(300, _chunks(ids, vecs), DIM, MODEL, 1000, tmp_path / "file" / "scratch")
    assert len(built) == 300 and built.search(vecs[5], 1)[0][0] == 5
    empty = build_index(0, iter(()), DIM, MODEL, 1000, tmp_path / "scratch")
    assert len(empty) == 0 and empty.search(vecs[5], 1) == []


def test_a_rebuild_refuses_a_stream_that_contradicts_its_count(rng, tmp_path):
    from searchfs.store.vector_build import build_index

    ids, vecs = np.arange(300), unit(rng, 300)
    with pytest.raises(ValueError):
        build_index(301, _chunks(ids, vecs), DIM, MODEL, 1000, tmp_path / "scratch")
    assert list((tmp_path / "scratch").iterdir()) == []


# ------------------------------------------------------------------ concurrency


@pytest.mark.parametrize("exact_below", [10**6, 1500])
def test_concurrent_searches_while_writing(rng, exact_below):
    ids = np.arange(3000, dtype=np.int64)
    vecs = unit(rng, 3000)
    index = VectorIndex.build(ids[:2000], vecs[:2000], MODEL, exact_below=exact_below)
    errors: list[BaseException] = []
    stop = threading.Event()
    universe = set(ids.tolist())

    def reader(seed):
        r = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                allowed = r.choice(ids, 400, replace=False) if r.random() < 0.3 else None
                hits = index.search(unit(r, 1)[0], int(r.integers(1, 60)), allowed=allowed)
                scores = [s for _, s in hits]
                assert scores == sorted(scores, reverse=True)
                assert {i for i, _ in hits} <= universe and len({i for i, _ in hits}) == len(hits)
                assert all(-1.0001 <= s <= 1.0001 for s in scores)
                if allowed is not None:
                    assert {i for i, _ in hits} <= set(allowed.tolist())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def writer():
        r = np.random.default_rng(99)
        try:
            for _step in range(40):
                batch = r.choice(ids, 100, replace=False)
                index.add(batch, unit(r, 100))
                index.remove(r.choice(ids, 80, replace=False))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    readers = [threading.Thread(target=reader, args=(s,)) for s in range(8)]
    for t in readers:
        t.start()
    w = threading.Thread(target=writer)
    w.start()
    w.join(timeout=60)
    stop.set()
    for t in readers:
        t.join(timeout=10)
    assert not errors, errors[0]
    assert not w.is_alive()
    live = index.ids()
    q = vecs[0]
    table_vecs = np.stack([index.vector(int(i)) for i in live])
    if index.stats["kind"] == "exact":
        assert_same_hits(index.search(q, 10), brute_force(live, table_vecs, q, 10))
    else:
        assert recall(index.search(q, 10), brute_force(live, table_vecs, q, 10)) >= 0.9


def test_stats(small):
    ids, vecs = small
    stats = VectorIndex.build(ids, vecs, MODEL).stats
    assert stats["count"] == 2000 and stats["dim"] == DIM and stats["kind"] == "exact"
    assert stats["generation"] is None and stats["model_id"] == MODEL
    json.dumps(stats)


def _mapped_file_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    return 0


def test_scattered_reads_of_a_mapped_segment_give_its_pages_back(rng, tmp_path):
    """A rebuild reads every row of a 2 GB map in list order; what it read must not stay counted in the
    daemon's RSS. Plain indexing of the same rows leaves most of the file mapped (the control)."""
    rows_total, dim = 40_000, 512  # 80 MB
    rows = np.sort(rng.choice(rows_total, 20_000, replace=False))
    chunks = (unit(rng, 4000, dim) for _ in range(rows_total // 4000))
    vector_files.write_file(tmp_path, "v.npy", vector_files.npy_parts(None, (rows_total, dim), np.float32, chunks))
    mapped = vector_files.map_vectors(tmp_path / "v.npy", rows_total, dim)
    before = _mapped_file_kib()
    taken = vector_files.take_rows(mapped, rows)
    after_take = _mapped_file_kib()
    plain = np.asarray(mapped[rows])
    after_plain = _mapped_file_kib()
    assert np.array_equal(taken, plain)
    file_kib = rows_total * dim * 4 // 1024
    assert after_take - before < file_kib // 10 and after_plain - after_take > file_kib // 2
