"""One contract for the mount's backend, run against the fake backend the view's tests use AND the real
Library: the view's tests may rely on the fake only where these pass for both.

The same photos go into both: the fake gets them as facet dicts, the real catalog through
`Transaction.add_photos` (metadata as tags.normalize would store it, random unit vectors). Deterministic
answers (metadata searches, counts, trees, values) must be equal; ranked answers, whose scores differ by
nature (a hash in the fake, cosine in the real), must keep the same rules (ranks, order, limits, offsets).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_fs_view import FakeBackend

from searchfs.errors import NotFound
from searchfs.records import Facet
from searchfs.search.query import Query

# (root, relpath, camera, date or None, iso or None, keyword or None)
PHOTOS = [
    ("Photos", b"2019/a.jpg", "Canon EOS 40D", "2019-05-01", 100, None),
    ("Photos", b"2019/b.jpg", "Nikon D90", "2019-05-01", 1600, "beach"),
    ("Photos", b"2019/sub/c.jpg", "Canon EOS 5D", "2019-11-30", 200, None),
    ("Photos", b"2020/a.jpg", "Canon EOS 5D", "2020-02-10", 400, "Beach"),
    ("Photos", b"2020/z.jpg", "Canon EOS 5D", "2020-02-10", None, None),
    ("Photos", b"top.png", None, None, None, None),
    ("Other", b"x/folder.jpg", "Nikon D90", "2018-12-24", 200, None),
    ("Other", b"undated.jpg", "Nikon D90", None, 100, None),
]
ROOTS = {"Photos": b"/library/Photos", "Other": b"/library/Other"}  # a root is named after its folder
WHERE = [
    [],
    ["camera=canon"],
    ["camera=Nikon D90"],
    ["year=2019"],
    ["year=2019..2020"],
    ["date=2020-02"],
    ["iso=100..400"],
    ["iso=1600"],
    ["keyword=beach"],
    ["camera=canon", "year=2020"],
]


def fake_backend(settings) -> FakeBackend:
    fake = FakeBackend(dict(ROOTS), settings)
    for root, relpath, camera, date, iso, keyword in PHOTOS:
        facets = {"camera": camera, "date": date, "year": int(date[:4]) if date else None, "iso": iso}
        facets["keyword"] = keyword
        fake.add(root, relpath, **{k: v for k, v in facets.items() if v is not None})
    return fake


def real_backend(settings):
    from searchfs.ingest.tags import EXTRACTOR_VERSION
    from searchfs.library import Library
    from searchfs.store.rows import NewPhoto

    lib = Library(settings, create=True)
    dim = lib.embedder.embed_text(["x"]).shape[1]
    rng = np.random.default_rng(3)
    for name, path in ROOTS.items():
        root = lib.catalog.add_root(path)
        assert root.name == name
        rows = []
        for i, (root_name, relpath, camera, date, iso, keyword) in enumerate(PHOTOS):
            if root_name != name:
                continue
            facets = [Facet("camera", camera)] if camera else []
            facets += [Facet("date", date)] if date else []
            facets += [Facet("iso", str(iso), float(iso))] if iso else []
            facets += [Facet("keyword", keyword)] if keyword else []
            vector = rng.standard_normal(dim).astype(np.float32)
            rows.append(NewPhoto(relpath, 1, 0, 0, f"{i + 1:040x}", tuple(facets), vector / np.linalg.norm(vector)))
        with lib.catalog.transaction() as tx:
            tx.add_photos(root.id, rows, lib.model_id, EXTRACTOR_VERSION)
    return lib


@pytest.fixture(params=["fake", "real"])
def backend(request, settings):
    if request.param == "fake":
        yield fake_backend(settings)
        return
    lib = real_backend(settings)
    yield lib
    lib.close()


@pytest.fixture
def both(settings):
    lib = real_backend(settings)
    yield fake_backend(settings), lib
    lib.close()


def paths(hits) -> list[tuple[str, bytes]]:
    return [(h.root, h.relpath) for h in hits]


# ------------------------------------------------------------------------------- the same answers


@pytest.mark.parametrize("where", WHERE, ids=lambda w: " ".join(w) or "everything")
def test_metadata_searches_agree_in_content_and_order(both, where):
    fake, real = both
    query = Query.build(where)
    assert paths(fake.search(query)) == paths(real.search(query))
    assert paths(real.iter_search(query)) == paths(real.search(query))  # streaming gives the same rows
    assert [h.rank for h in real.search(query)] == list(range(1, len(real.search(query)) + 1))


@pytest.mark.parametrize("width", [4, 7, 10])
@pytest.mark.parametrize("where", WHERE[:4], ids=lambda w: " ".join(w) or "everything")
def test_counts_by_date_agree(both, where, width):
    fake, real = both
    query = Query.build(where)
    assert fake.date_counts(query, width) == real.date_counts(query, width)


@pytest.mark.parametrize("key", ["camera", "iso", "year", "keyword"])
def test_facet_values_agree_numbers_in_numeric_order(both, key):
    fake, real = both
    values = real.facet_values(key)
    if key == "keyword":  # each spelling is listed, in case-insensitive order, then by spelling
        assert [v for v, _ in values] == ["Beach", "beach"]
    assert fake.facet_values(key) == values
    if key == "iso":
        assert [v for v, _ in values] == ["100", "200", "400", "1600"]  # numbers as numbers


def test_trees_agree(both):
    fake, real = both
    for root in ROOTS:
        assert fake.list_tree(root, b"") == real.list_tree(root, b"")
    for folder in (b"2019", b"2019/sub", b"2020"):
        assert fake.list_tree("Photos", folder) == real.list_tree("Photos", folder)
    for impl in (fake, real):
        with pytest.raises(NotFound):
            impl.list_tree("Photos", b"no/such/folder")


def test_metadata_pages_agree(both):
    fake, real = both
    for offset, limit in ((0, 3), (3, 3), (6, 10)):
        query = Query(limit=limit, offset=offset)
        assert paths(fake.search(query)) == paths(real.search(query))


# ------------------------------------------------------------------------------- the same rules


def test_roots(backend):
    assert sorted(backend.root_names()) == sorted(ROOTS)
    assert backend.root_path("Other") == ROOTS["Other"]


@pytest.mark.parametrize("limit", [1, 3, 50])
def test_ranked_answers_follow_the_rules(backend, limit):
    hits = backend.search(Query(text="a red flower", limit=limit))
    assert 0 < len(hits) <= limit
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    scores = [h.score for h in hits]
    assert all(s is not None for s in scores) and scores == sorted(scores, reverse=True)
    cut = scores[len(scores) // 2]
    floor = backend.search(Query(text="a red flower", limit=limit, min_score=cut))
    assert floor and all(h.score >= cut for h in floor)


def test_ranked_pages_continue_the_ranks(backend):
    whole = backend.search(Query(text="dog", limit=6))
    page = backend.search(Query(text="dog", limit=3, offset=3))
    assert paths(page) == paths(whole[3:6]) and [h.rank for h in page] == [4, 5, 6]


def test_similar_leaves_the_photo_itself_out_and_filters_hold(backend):
    hits = backend.search(Query(similar_to=("Photos", b"2019/a.jpg"), limit=50))
    assert ("Photos", b"2019/a.jpg") not in paths(hits) and len(hits) == len(PHOTOS) - 1
    canon = backend.search(Query.build(["camera=canon"], similar_to=("Photos", b"2019/a.jpg"), limit=50))
    assert {p for p in paths(canon)} == {
        ("Photos", b"2019/sub/c.jpg"),
        ("Photos", b"2020/a.jpg"),
        ("Photos", b"2020/z.jpg"),
    }
    with pytest.raises(NotFound):
        backend.search(Query(similar_to=("Photos", b"no/such.jpg")))


def test_saved_queries(backend):
    backend.save_query("red flower")
    backend.save_query("red flower")  # idempotent
    assert backend.saved_queries() == ["red flower"]
    backend.forget_query("red flower")
    assert backend.saved_queries() == []
    with pytest.raises(NotFound):
        backend.forget_query("never saved")
