"""The view alone (no FUSE): grammar, listings, names, probes, caching, single-flight, manifests.

`FakeBackend` here is also what tests/test_fs_mount.py mounts (in a child process).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import pytest

from searchfs.config import Settings
from searchfs.errors import ModelUnavailable, NotFound, QueryError, ReadOnly
from searchfs.fs import names as N
from searchfs.fs.cache import SingleFlightCache
from searchfs.fs.view import (
    DIR,
    FILE,
    LINK,
    Denied,
    Exists,
    NameTooLong,
    NoEntry,
    NotADir,
    View,
    ViewError,
)
from searchfs.records import FACETS, Hit
from searchfs.search.query import Query

# ------------------------------------------------------------------------------------- fake backend


class FakeBackend:
    """An in-memory library. Photos: (root, relpath) -> facets. Scores are a hash of (query, path).

    Ordering agrees with the engine's: ranked results best first, ties by root and path; metadata-only
    results oldest photo first (facet `date`, YYYY-MM-DD), undated last, then root name and path."""

    def __init__(self, roots: dict[str, bytes], settings: Settings | None = None, delay: float = 0.0):
        self.settings = settings or Settings(home=__import__("pathlib").Path("/nonexistent"))
        self.roots = dict(roots)
        self.photos: dict[tuple[str, bytes], dict] = {}
        self.gen = 1
        self.delay = delay
        self.search_calls: list[Query] = []
        self.count_calls: list[Query] = []
        self.fail: Exception | None = None
        self.saved: list[str] = []
        self.progress = (0, 0)  # (searchable, waiting); (0, 0) counts the photos as all searchable
        self._lock = threading.Lock()
        self._ids: dict[tuple[str, bytes], int] = {}

    def add(self, root: str, relpath: bytes, **facets) -> None:
        self.photos[(root, relpath)] = facets
        self._ids.setdefault((root, relpath), len(self._ids) + 1)

    # Backend protocol
    def generation(self) -> int:
        return self.gen

    def changed_at(self) -> float:
        return 1_600_000_000.0 + self.gen

    def root_names(self) -> list[str]:
        return list(self.roots)

    def root_path(self, name: str) -> bytes:
        if name not in self.roots:
            raise NotFound(name)
        return self.roots[name]

    def list_tree(self, root: str, relpath: bytes) -> list[tuple[bytes, bool]]:
        if root not in self.roots:
            raise NotFound(root)
        prefix = relpath + b"/" if relpath else b""
        out: dict[bytes, bool] = {}
        for r, p in self.photos:
            if r == root and p.startswith(prefix):
                rest = p[len(prefix) :]
                head, sep, _ = rest.partition(b"/")
                out[head] = bool(sep) or out.get(head, False)
        if relpath and not out:
            raise NotFound(relpath)
        return sorted(out.items())

    def _score(self, key: str, path: bytes) -> float:
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape") + b"\0" + path).digest()
        return int.from_bytes(digest[:4], "little") / 2**32 * 2 - 1

    def _match(self, facets: dict, flt) -> bool:
        value = facets.get(flt.key)
        if value is None:
            return False
        if flt.op == "match":
            return str(flt.value).casefold() in str(value).casefold()
        if flt.op == "range":
            if isinstance(flt.lo, str) or isinstance(flt.hi, str):
                value = str(value)
            else:
                value = float(value)
            return (flt.lo is None or value >= flt.lo) and (flt.hi is None or value <= flt.hi)
        if isinstance(flt.value, float):
            return abs(float(value) - flt.value) < 1e-9
        return str(value).casefold() == str(flt.value).casefold()

    def _matching(self, query: Query) -> list[tuple[str, bytes, dict]]:
        return [
            (root, relpath, facets)
            for (root, relpath), facets in self.photos.items()
            if all(self._match(facets, f) for f in query.filters)
        ]

    def search(self, query: Query) -> list[Hit]:
        with self._lock:
            self.search_calls.append(query)
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        query = query.with_defaults(self.settings.search_limit, self.settings.search_min_score)
        if query.similar_to is not None and query.similar_to not in self.photos:
            raise NotFound(f"not an indexed photo: {query.similar_to!r}")
        rows = []
        for root, relpath, facets in self._matching(query):
            if query.similar_to == (root, relpath):
                continue
            if query.text is not None:
                score: float | None = self._score(query.text, relpath)
            elif query.similar_to is not None:
                score = self._score(repr(query.similar_to), relpath)
            else:
                score = None
            if score is not None and query.min_score is not None and score < query.min_score:
                continue
            rows.append((score, root, relpath, facets.get("date")))
        if query.ranked:
            rows.sort(key=lambda r: (-r[0], r[1], r[2]))
        else:
            rows.sort(key=lambda r: (r[3] is None, r[3] or "", r[1], r[2]))
        end = query.offset + query.limit if query.limit else None
        return [
            Hit(
                rank=i,
                score=s,
                root=r,
                relpath=p,
                abspath=os.path.join(self.roots[r], p),
                file_id=self._ids[(r, p)],
                content_id=self._ids[(r, p)],
            )
            for i, (s, r, p, _) in enumerate(rows[query.offset : end], start=query.offset + 1)
        ]

    def iter_search(self, query: Query):
        yield from self.search(query)

    def date_counts(self, query: Query, width: int) -> list[tuple[str | None, int]]:
        with self._lock:
            self.count_calls.append(query)
        counts: dict[str | None, int] = {}
        for _root, _relpath, facets in self._matching(query):
            period = facets["date"][:width] if "date" in facets else None
            counts[period] = counts.get(period, 0) + 1
        return sorted(counts.items(), key=lambda item: (item[0] is None, item[0] or ""))

    def indexing_progress(self) -> tuple[int, int]:
        return self.progress

    def facet_values(self, key: str) -> list[tuple[str, int]]:
        """As the catalog lists them: numbers in numeric order, texts alphabetically (case-insensitive)."""
        counts: dict[str, int] = {}
        order: dict[str, tuple] = {}
        for facets in self.photos.values():
            if key in facets:
                value = facets[key]
                counts[str(value)] = counts.get(str(value), 0) + 1
                number = isinstance(value, (int, float))
                order[str(value)] = (0, float(value), "", "") if number else (1, 0.0, str(value).casefold(), str(value))
        return sorted(counts.items(), key=lambda item: order[item[0]])

    def saved_queries(self) -> list[str]:
        return list(self.saved)

    def save_query(self, text: str) -> None:
        if text not in self.saved:
            self.saved.append(text)

    def forget_query(self, text: str) -> None:
        if text not in self.saved:
            raise NotFound(f"no saved query {text!r}")
        self.saved.remove(text)


LONG = ("x" * 300).encode() + b".jpg"
LONG_UTF8 = ("é" * 200).encode() + b".jpeg"
NON_UTF8 = b"caf\xe9-\xff.jpg"


def populate(backend: FakeBackend) -> FakeBackend:
    """The photo set shared with the mount tests."""
    backend.add("Photos", b"2019/a.jpg", camera="Canon EOS 40D", year=2019, lens="EF 50mm f/1.8", iso=100)
    backend.add("Photos", b"2019/b.jpg", camera="Nikon D90", year=2019, iso=400)
    backend.add("Photos", b"2020/a.jpg", camera="Canon EOS 5D", year=2020, lens="EF 50mm f/1.8")  # dup basename
    backend.add("Photos", b"2020/" + LONG, camera="Canon EOS 5D", year=2020)
    backend.add("Photos", b"2021/" + LONG_UTF8, camera="Nikon D90", year=2021)
    backend.add("Photos", b"2021/" + NON_UTF8, camera="Nikon D90", year=2021, keyword="caf\udce9")
    backend.add("Photos", b"top.png", year=2018, format="PNG")
    backend.add("Other", b"x/folder.jpg", year=2018)  # a real photo with a probe-like name
    return backend


@pytest.fixture
def backend(tmp_path) -> FakeBackend:
    return populate(FakeBackend({"Photos": b"/photos", "Other": b"/other"}))


@pytest.fixture
def view(backend) -> View:
    return View(backend)


def names(view: View, path: bytes) -> list[bytes]:
    return [e.name for e in view.readdir(path)]


MARKERS = [b".nomedia", b".trackerignore"]  # indexer opt-outs: in the root and the top-level folders only


# --------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("text", ["f/2.8", "a%2Fb", "100%", "a\u2215b/c", "%25", "plain", "é/ü", "caf\udce9", "/", "%"])
def test_escape_round_trip(text):
    seg = N.escape_segment(text)
    assert "/" not in seg
    assert N.unescape_segment(seg) == text


def test_unescape_accepts_percent_slash_and_stray_percent():
    assert N.unescape_segment("f%2F2.8") == "f/2.8"
    assert N.unescape_segment("f\u22152.8") == "f/2.8"
    assert N.unescape_segment("100% sure") == "100% sure"


def test_fit_name_long_utf8_and_bytes():
    for base in (LONG, LONG_UTF8, b"\xff" * 300 + b".jpg", ("日本" * 100).encode() + b".heic"):
        name = N.fit_name("001_", base)
        assert len(name) <= 255
        assert name.startswith(b"001_")
        assert name.endswith(base[base.rfind(b".") :])
        if base.decode("utf-8", "strict") if _utf8(base) else False:
            name.decode("utf-8")  # never a split sequence
    assert N.fit_name("1_", b"short.jpg") == b"1_short.jpg"
    assert N.fit_name("1_", NON_UTF8) == b"1_" + NON_UTF8


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_result_names_unique_with_duplicate_ranks():
    out = N.result_names([(1, b"a.jpg"), (1, b"a.jpg"), (3, b"a.jpg")], 2)
    assert len(set(out)) == 3
    assert out[0] == b"01_a.jpg"


def test_probe_names():
    for probe in (
        b".hidden",
        b".Trash-1000",
        b".Trash",
        b"autorun.inf",
        b"Desktop.ini",
        b"Thumbs.db",
        b".DS_Store",
        b".xdg-volume-info",
        b".directory",
        b"folder.jpg",
        b"Folder.jpg",
        b".folder.png",
        b"@eaDir",
        b"AlbumArtSmall.jpg",
        b".thumbnails",
    ):
        assert N.is_probe(probe), probe
    for fine in (b"dog", b"camera=Canon", b"01_a.jpg", b"folder"):
        assert not N.is_probe(fine)


# ------------------------------------------------------------------------------------------- grammar


def test_root(view):
    entries = view.readdir(b"/")
    assert [(e.name, e.kind) for e in entries] == [
        (b"query", DIR),
        (b"exif", DIR),
        (b"similar", DIR),
        (b"date", DIR),
        (b"README.txt", FILE),
        (b".nomedia", FILE),  # GNOME's Tracker/LocalSearch skips a folder holding either marker
        (b".trackerignore", FILE),
    ]
    assert view.read(b"/.trackerignore", 100, 0) == b"" and view.getattr(b"/.nomedia").size == 0
    readme = view.read(b"/README.txt", 1 << 20, 0)
    assert b"query/<text>/" in readme and b"exif/" in readme
    assert view.getattr(b"/README.txt").size == len(readme)
    assert view.getattr(b"/").kind == DIR


def test_query_folder_exists_without_search(view, backend):
    for path in (
        b"/query/dog",
        b"/query/a dog on a beach",
        b"/query/dog/exif/camera=Canon",
        b"/query/dog/limit=3",
        b"/query/dog/camera=canon/min=0.1",
        b"/exif/camera=Canon/year=2019..2021/query/dog",
    ):
        assert view.getattr(path).kind == DIR, path
    assert backend.search_calls == []


def test_query_listing_links_and_manifest(view, backend):
    entries = view.readdir(b"/query/dog")
    assert len(backend.search_calls) == 1
    links = [e for e in entries if e.kind == LINK]
    assert len(links) == len(backend.photos)
    assert [e.name for e in links] == sorted(e.name for e in links)  # sorts in rank order
    assert {e.name for e in entries if e.kind == FILE} == {b".results.tsv", b".results.json"}
    first = links[0].name
    assert first.startswith(b"01_")  # limit 50: width 2
    hit_paths = [view.readlink(b"/query/dog/" + e.name) for e in links]
    assert set(hit_paths) == {os.path.join(b"/photos" if r == "Photos" else b"/other", p) for r, p in backend.photos}
    attr = view.getattr(b"/query/dog/" + first)
    assert attr.kind == LINK and attr.size == len(hit_paths[0])
    tsv = view.read(b"/query/dog/.results.tsv", 1 << 20, 0).decode("utf-8", "surrogateescape").splitlines()
    assert tsv[0] == "rank\tscore\tpath"
    assert len(tsv) == len(links) + 1
    rank, score, path = tsv[1].split("\t")
    assert rank == "1" and len(score.split(".")[1]) == 4 and path.encode("utf-8", "surrogateescape") == hit_paths[0]
    data = json.loads(view.read(b"/query/dog/.results.json", 1 << 20, 0))
    assert data[0]["rank"] == 1 and data[0]["name"].encode("utf-8", "surrogateescape") == first
    assert len(backend.search_calls) == 1  # everything above reused the listing
    assert b"dog" in names(view, b"/query")  # recent


def test_names_long_non_utf8_duplicates(view, backend):
    links = [e.name for e in view.readdir(b"/exif/year=2018..2021") if e.kind == LINK]
    assert all(len(n) <= 255 for n in links)
    assert len(set(links)) == len(links)
    assert sum(n.endswith(b"_a.jpg") for n in links) == 2
    assert any(n.endswith(NON_UTF8) for n in links)
    assert any(n.endswith(b".jpeg") and "é" in n.decode() for n in links)
    for n in links:
        assert view.readlink(b"/exif/year=2018..2021/" + n).startswith(b"/")


def test_metadata_only_scores_empty(view, backend):
    tsv = view.read(b"/exif/camera=canon/.results.tsv", 4096, 0).decode().splitlines()
    assert len(tsv) == 4
    assert all(line.split("\t")[1] == "" for line in tsv[1:])


def test_exif_listings_and_escaping(view, backend):
    assert names(view, b"/exif") == [f.key.encode() for f in FACETS] + MARKERS
    lens = names(view, b"/exif/lens")
    assert lens == ["lens=EF 50mm f\u22151.8".encode()]
    for spelled in (lens[0], b"lens=EF 50mm f%2F1.8"):
        for path in (b"/exif/lens/" + spelled, b"/exif/" + spelled):
            links = [e for e in view.readdir(path) if e.kind == LINK]
            assert len(links) == 2, path
    assert names(view, b"/exif/year") == [b"year=2018", b"year=2019", b"year=2020", b"year=2021"]
    years = [e for e in view.readdir(b"/exif/year=2019..2020") if e.kind == LINK]
    assert len(years) == 4
    keyword = names(view, b"/exif/keyword")
    assert keyword == [b"keyword=caf\xe9"]  # non-UTF-8 value round-trips
    assert len([e for e in view.readdir(b"/exif/keyword/" + keyword[0]) if e.kind == LINK]) == 1


def test_bad_names_are_enoent(view, backend):
    for path in (
        b"/nope",
        b"/exif/nokey",
        b"/exif/nokey=1",
        b"/exif/year=abc",
        b"/exif/year/camera=Canon",
        b"/exif/camera=",
        b"/query/dog/limit=0",
        b"/query/dog/limit=x",
        b"/query/dog/min=7",
        b"/query/dog/query/cat",
        b"/query/dog/similar/Photos/2019/a.jpg",
        b"/query/dog/nonsense",
        b"/similar/Nope",
        b"/similar/Photos/1999",
        b"/similar/Photos/2019/zzz.jpg",
        b"/query/ ",
        b"/query/caf\xe9",
    ):
        with pytest.raises((NoEntry, QueryError, NotFound)):
            view.getattr(path)
    with pytest.raises(NotADir):
        view.getattr(b"/README.txt/x")
    assert backend.search_calls == []


def test_similar_tree_and_results(view, backend):
    assert names(view, b"/similar") == [b"Photos", b"Other"] + MARKERS
    assert names(view, b"/similar/Photos") == [b"2019", b"2020", b"2021", b"top.png"]
    assert all(e.kind == DIR for e in view.readdir(b"/similar/Photos/2019"))  # photos are folders
    assert names(view, b"/similar/Other/x") == [b"folder.jpg"]  # real photo, not a probe here
    links = [e.name for e in view.readdir(b"/similar/Photos/2019/a.jpg") if e.kind == LINK]
    assert len(links) == len(backend.photos) - 1
    assert backend.search_calls[-1].similar_to == ("Photos", b"2019/a.jpg")
    assert all(
        not n.endswith(b"_a.jpg") or view.readlink(b"/similar/Photos/2019/a.jpg/" + n) != b"/photos/2019/a.jpg"
        for n in links
    )
    nested = view.readdir(b"/similar/Photos/2019/a.jpg/exif/year=2020")
    q = backend.search_calls[-1]
    assert q.similar_to == ("Photos", b"2019/a.jpg") and [str(f) for f in q.filters] == ["year=2020"]
    assert len([e for e in nested if e.kind == LINK]) == 2
    assert view.getattr(b"/similar/Photos/2021/" + NON_UTF8).kind == DIR


def test_nesting_is_and_and_unlisted(view, backend):
    a = view.readdir(b"/exif/camera=Canon/year=2019..2021/query/dog")
    q = backend.search_calls[-1]
    assert q.text == "dog" and sorted(str(f) for f in q.filters) == ["camera=Canon", "year=2019..2021"]
    assert len([e for e in a if e.kind == LINK]) == 3
    view.readdir(b"/query/dog/exif/camera=Canon")
    assert backend.search_calls[-1].text == "dog"
    b = view.readdir(b"/query/dog/camera=nikon/limit=1")
    assert [e.name[:2] for e in b if e.kind == LINK] == [b"1_"]
    c = view.readdir(b"/exif/year=2019/similar/Photos/2020/a.jpg")
    assert backend.search_calls[-1].similar_to == ("Photos", b"2020/a.jpg")
    assert len([e for e in c if e.kind == LINK]) == 2
    view.readdir(b"/query/dog/min=0.5")
    assert backend.search_calls[-1].min_score == 0.5
    # nested names are not listed: only links and manifests
    assert {e.kind for e in view.readdir(b"/query/dog")} == {LINK, FILE}
    # navigation folders inside a result folder
    assert names(view, b"/query/dog/exif") + MARKERS == names(view, b"/exif")  # no markers nested
    assert names(view, b"/query/dog/exif/camera") == names(view, b"/exif/camera")
    assert names(view, b"/exif/year=2019/similar") == [b"Photos", b"Other"]


def test_limit_sets_width_and_defaults(backend):
    backend.settings = backend.settings.replace(search_limit=5, search_min_score=-0.5)
    view = View(backend)
    links = [e.name for e in view.readdir(b"/query/cat") if e.kind == LINK]
    assert backend.search_calls[-1].limit == 5 and backend.search_calls[-1].min_score == -0.5
    assert links and all(n[:1].isdigit() and n[1:2] == b"_" for n in links)  # width 1 for limit 5
    links = [e.name for e in view.readdir(b"/query/cat/limit=1000") if e.kind == LINK]
    assert links[0].startswith(b"0001_")


def test_probes_never_search(view, backend):
    probes = [
        b".hidden",
        b".Trash-0",
        b".Trash",
        b"autorun.inf",
        b"desktop.ini",
        b".xdg-volume-info",
        b".directory",
        b"Thumbs.db",
        b".DS_Store",
        b".thumbnails",
        b"folder.jpg",
        b"Folder.jpg",
        b".folder.png",
        b".git",
    ]
    for parent in (
        b"/",
        b"/query",
        b"/query/dog",
        b"/exif",
        b"/exif/camera",
        b"/exif/camera=Canon",
        b"/similar/Photos/2019/a.jpg",
        b"/query/dog/limit=5",
    ):
        for probe in probes:
            with pytest.raises(NoEntry):
                view.getattr(parent.rstrip(b"/") + b"/" + probe)
    assert backend.search_calls == []


def test_entry_lookup_needs_entry_shape(view, backend):
    with pytest.raises(NoEntry):
        view.getattr(b"/query/dog/whatever.jpg")
    assert backend.search_calls == []
    with pytest.raises(NoEntry):
        view.getattr(b"/query/dog/99_nothing.jpg")  # looks like an entry: searches, then ENOENT
    assert len(backend.search_calls) == 1


def test_cache_by_generation(view, backend):
    view.readdir(b"/query/dog")
    view.readdir(b"/query/dog")
    view.readdir(b"/query/dog/")  # same folder
    assert len(backend.search_calls) == 1
    backend.gen += 1
    view.readdir(b"/query/dog")
    assert len(backend.search_calls) == 2
    backend.add("Photos", b"2022/new.jpg", year=2022)
    backend.gen += 1
    assert any(n.endswith(b"_new.jpg") for n in names(view, b"/query/dog"))
    assert names(view, b"/similar/Photos")[-2:] == [b"2022", b"top.png"]


def test_cache_is_bounded_by_bytes():
    cache: SingleFlightCache = SingleFlightCache(1000, weigh=len)
    for i in range(10):
        cache.get(i, lambda i=i: b"x" * 100)
    assert cache.bytes <= 1000 and len(cache) == 10
    cache.get("big", lambda: b"x" * 600)  # heavier than a quarter of the budget: handed back, not kept
    assert cache.peek("big") is None and len(cache) == 10
    for i in range(10, 20):
        cache.get(i, lambda i=i: b"x" * 200)
    assert cache.bytes <= 1000 and len(cache) == 5
    assert cache.peek(19) is not None and cache.peek(0) is None


def test_single_flight(backend):
    backend.delay = 0.3
    view = View(backend)
    results, errors = [], []

    def lister():
        try:
            results.append(names(view, b"/query/slow"))
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=lister) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert len(results) == 8 and all(r == results[0] for r in results)
    assert len(backend.search_calls) == 1


def test_single_flight_shares_errors_and_does_not_cache_them(backend):
    backend.delay = 0.2
    backend.fail = ModelUnavailable("no weights")
    view = View(backend)
    errors = []

    def lister():
        try:
            view.readdir(b"/query/x")
        except ModelUnavailable as exc:
            errors.append(exc)

    threads = [threading.Thread(target=lister) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(errors) == 4 and len(backend.search_calls) == 1
    backend.fail = None
    backend.delay = 0
    assert names(view, b"/query/x")
    assert len(backend.search_calls) == 2


def test_inodes_stable_unique(view):
    paths = [b"/", b"/query", b"/query/dog", b"/exif", b"/exif/camera", b"/similar", b"/similar/Photos"]
    inos = [view.getattr(p).ino for p in paths]
    assert len(set(inos)) == len(inos)
    assert inos == [view.getattr(p).ino for p in paths]
    assert View(view.backend).getattr(b"/query/dog").ino == inos[2]  # stable across mounts
    entries = view.readdir(b"/query")
    for e in entries:
        assert e.ino == view.getattr(b"/query/" + e.name).ino
    assert view.getattr(b"/").ino == 1


def test_saved_and_recent_queries(view, backend):
    view.mkdir(b"/query/cats on a sofa")
    assert backend.saved == ["cats on a sofa"]
    with pytest.raises(Exists):
        view.mkdir(b"/query/cats on a sofa")
    view.mkdir(b"/query/+AC%2FDC")
    assert backend.saved[-1] == "AC/DC"
    assert view.getattr(b"/query/+AC\xe2\x88\x95DC").kind == DIR  # the mkdir spelling exists once saved
    with pytest.raises(NoEntry):
        view.getattr(b"/query/+unsaved")
    listed = names(view, b"/query")
    assert listed[:2] == [b"cats on a sofa", "AC\u2215DC".encode()]
    for i in range(25):
        view.readdir(b"/query/q%d" % i)
    listed = names(view, b"/query")
    assert len(listed) == 2 + 20 + len(MARKERS) and listed[-2:] == MARKERS and b"q24" in listed and b"q0" not in listed
    view.rmdir(b"/query/cats on a sofa")
    view.rmdir(b"/query/q24")  # recent only
    listed = names(view, b"/query")
    assert b"cats on a sofa" not in listed and b"q24" not in listed
    view.rmdir(b"/query/never")  # nothing to forget: a no-op
    for bad in (b"/exif/x", b"/query/dog/sub", b"/similar/y", b"/z"):
        with pytest.raises(ReadOnly):
            view.mkdir(bad)
        with pytest.raises(ReadOnly):
            view.rmdir(bad)


def test_open_for_write_is_read_only(view):
    with pytest.raises(ReadOnly):
        view.open(b"/README.txt", os.O_WRONLY)
    view.open(b"/README.txt", os.O_RDONLY)
    assert view.read(b"/README.txt", 5, 2) == view.readme()[2:7]


def test_search_errors_propagate(view, backend):
    backend.fail = ModelUnavailable("weights missing")
    with pytest.raises(ModelUnavailable):
        view.readdir(b"/query/dog")
    assert view.getattr(b"/query/dog").kind == DIR  # stat still fine


def test_metadata_folders_list_every_match_ranked_ones_the_top_k(tmp_path):
    backend = FakeBackend({"Photos": b"/photos"}, Settings(home=tmp_path, search_limit=5))
    for i in range(12):
        backend.add("Photos", b"p%02d.jpg" % i, camera="Canon EOS 40D")
    view = View(backend)

    def links(path):
        return [n for n in names(view, path) if not n.startswith(b".")]

    assert len(links(b"/exif/camera=Canon")) == 12  # like `searchfs search --where`: no default limit
    assert len(links(b"/exif/camera=Canon/limit=3")) == 3
    assert len(links(b"/query/dog")) == 5  # ranked: search.limit
    assert len(links(b"/exif/camera=Canon/query/dog")) == 5


# ------------------------------------------------------------------------- big folders, date/, names

DATED = (
    [("2019-01-05", 1), ("2019-03-02", 2)]  # 2019: 3 photos
    + [("2020-02-10", 6), ("2020-06-01", 1)]  # 2020: 7 (one day of 6)
    + [("2021-12-31", 1)]
)


def big_photos() -> list[tuple[bytes, dict]]:
    """18 Canon photos: 3 in 2019, 7 in 2020 (6 of them on 2020-02-10), 1 in 2021 and 7 undated."""
    out = []
    for day, count in DATED:
        for i in range(count):
            out.append((b"%s/p%d.jpg" % (day.encode(), i), dict(camera="Canon EOS 5D", date=day, year=int(day[:4]))))
    out += [(b"undated/u%d.png" % i, dict(camera="Canon EOS 5D")) for i in range(7)]
    return out


@pytest.fixture
def capped(tmp_path) -> View:
    backend = FakeBackend({"Photos": b"/photos"}, Settings(home=tmp_path, mount_max_entries=5))
    for rel, facets in big_photos():
        backend.add("Photos", rel, **facets)
    return View(backend)


def links(view: View, path: bytes) -> list[bytes]:
    return [e.name for e in view.readdir(path) if e.kind in (LINK, FILE) and not e.name.startswith(b".")]


def folders(view: View, path: bytes) -> list[bytes]:
    return [e.name for e in view.readdir(path) if e.kind == DIR]


def read_all(view: View, path: bytes) -> bytes:
    opened = view.open(path, os.O_RDONLY)
    out, offset = [], 0
    while True:
        piece = view.read(path, 7000, offset, opened.fh)
        if not piece:
            break
        out.append(piece)
        offset += len(piece)
    view.release(opened.fh)
    return b"".join(out)


def test_a_folder_over_max_entries_splits_by_date_then_pages(capped):
    top = b"/exif/camera=Canon"
    assert links(capped, top) == [] and folders(capped, top) == [b"2019", b"2020", b"2021", b"undated"]
    assert links(capped, top + b"/2019") == [b"1_p0.jpg", b"2_p0.jpg", b"3_p1.jpg"]  # oldest first
    assert folders(capped, top + b"/2020") == [b"02", b"06"]
    assert folders(capped, top + b"/2020/02") == [b"10"]
    assert folders(capped, top + b"/2020/02/10") == [b"page=1", b"page=2"]
    assert len(links(capped, top + b"/2020/02/10/page=1")) == 5
    assert links(capped, top + b"/2020/02/10/page=2") == [b"6_p5.jpg"]  # ranks go on across pages
    assert links(capped, top + b"/2020/06") == [b"1_p0.jpg"]
    assert folders(capped, top + b"/undated") == [b"page=1", b"page=2"]
    assert links(capped, top + b"/undated/page=2") == [b"6_u5.png", b"7_u6.png"]
    assert capped.readlink(top + b"/undated/page=2/7_u6.png") == b"/photos/undated/u6.png"
    for folder in (top, top + b"/2020", top + b"/undated", top + b"/2020/02/10"):
        assert len(capped.readdir(folder)) <= 5 + 2  # entries or folders, plus the two manifests


def test_the_manifests_of_a_split_folder_list_every_match(capped):
    top = b"/exif/camera=Canon"
    assert capped.getattr(top + b"/.results.tsv").size == 0  # generated as it is read
    rows = read_all(capped, top + b"/.results.tsv").decode().splitlines()
    assert rows[0] == "rank\tscore\tpath" and len(rows) == 19
    assert [r.split("\t")[0] for r in rows[1:]] == [str(i) for i in range(1, 19)]
    assert rows[1].endswith("2019-01-05/p0.jpg") and rows[-1].endswith("undated/u6.png")
    items = json.loads(read_all(capped, top + b"/.results.json"))
    names = [item["name"] for item in items]
    assert names[:3] == ["2019/1_p0.jpg", "2019/2_p0.jpg", "2019/3_p1.jpg"]
    assert names[3:9] == [f"2020/02/10/page={1 + i // 5}/{i + 1}_p{i}.jpg" for i in range(6)]
    assert names[-1] == "undated/page=2/7_u6.png"
    for item in items:  # every name is an entry of the folder, pointing at that photo
        assert capped.readlink(top + b"/" + item["name"].encode()).decode() == item["path"]
    small = read_all(capped, top + b"/2019/.results.tsv")
    assert capped.getattr(top + b"/2019/.results.tsv").size == len(small) and small.count(b"\n") == 4


def test_a_streamed_manifest_reads_back_from_any_offset(capped):
    path = b"/exif/camera=Canon/.results.json"
    whole = read_all(capped, path)
    opened = capped.open(path, os.O_RDONLY)
    assert capped.read(path, 50, 100, opened.fh) == whole[100:150]
    assert capped.read(path, 50, 10, opened.fh) == whole[10:60]  # backwards: generated again
    assert capped.read(path, 10**6, 0, opened.fh) == whole
    assert capped.read(path, 10, len(whole), opened.fh) == b""
    capped.release(opened.fh)


def test_ranked_folders_over_max_entries_show_pages(capped):
    assert folders(capped, b"/query/dog/limit=12") == [b"page=1", b"page=2", b"page=3"]
    pages = [links(capped, b"/query/dog/limit=12/page=%d" % n) for n in (1, 2, 3)]
    assert [len(p) for p in pages] == [5, 5, 2]
    assert [n[:3] for n in pages[1]] == [b"06_", b"07_", b"08_", b"09_", b"10_"]
    rows = read_all(capped, b"/query/dog/limit=12/.results.tsv").splitlines()
    assert len(rows) == 13
    whole = [capped.readlink(b"/query/dog/limit=12/page=%d/" % (i // 5 + 1) + n) for i, n in enumerate(sum(pages, []))]
    assert [r.split(b"\t")[2] for r in rows[1:]] == whole
    assert folders(capped, b"/query/dog") == [b"page=1", b"page=2", b"page=3", b"page=4"]  # default limit 50
    with pytest.raises(NoEntry):
        capped.getattr(b"/query/dog/2019")  # date folders split metadata folders only


def test_limit_above_the_maximum_says_why(view, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="searchfs"):
        with pytest.raises(NoEntry):
            view.getattr(b"/query/dog/limit=100001")
    assert any("largest limit is 100000" in r.getMessage() for r in caplog.records)
    assert view.getattr(b"/query/dog/limit=100000").kind == DIR


def test_date_folders(capped):
    assert folders(capped, b"/date") == [b"2019", b"2020", b"2021"]
    assert folders(capped, b"/date/2020") == [b"02", b"06"]
    assert links(capped, b"/date/2019/03") == [b"1_p0.jpg", b"2_p1.jpg"]
    assert folders(capped, b"/date/2020/02") == [b"10"]  # over max_entries: by day
    assert links(capped, b"/date/2020/06/.results.tsv"[:-13]) == [b"1_p0.jpg"]
    nested = capped.readdir(b"/date/2019/03/query/dog")
    assert capped.backend.search_calls[-1].text == "dog"
    assert [str(f) for f in capped.backend.search_calls[-1].filters] == ["date=2019-03-01..2019-03-31"]
    assert len([e for e in nested if e.kind == LINK]) == 2
    assert len(links(capped, b"/query/dog/date/2019/03")) == 2  # and the other way round
    assert len(links(capped, b"/exif/camera=Canon/2019/query/dog")) == 3  # a by-date folder narrows too
    for bad in (b"/date/19", b"/date/2019/13", b"/date/2019/00", b"/date/x", b"/exif/camera=Canon/2019/02/30"):
        with pytest.raises(NoEntry):
            capped.getattr(bad)


def test_names_over_255_bytes_are_too_long_before_anything_runs(view, backend):
    long = b"x" * 256
    for path in (b"/query/" + long, b"/exif/camera=" + long, b"/" + long, b"/query/dog/" + long):
        with pytest.raises(NameTooLong):
            view.getattr(path)
    with pytest.raises(NameTooLong):
        view.mkdir(b"/query/+" + long)
    assert backend.saved == [] and backend.search_calls == []
    assert view.getattr(b"/query/" + b"x" * 255).kind == DIR


def test_folder_mtimes_follow_the_library_not_the_mount(backend):
    first, second = View(backend), View(backend)
    assert first.getattr(b"/query/dog").mtime_ns == second.getattr(b"/exif").mtime_ns == 1_600_000_001 * 10**9
    backend.gen += 1
    assert first.getattr(b"/query/dog").mtime_ns == 1_600_000_002 * 10**9


def test_listing_a_facet_key_then_its_values_costs_one_bounded_search_each(tmp_path):
    backend = FakeBackend({"Photos": b"/photos"}, Settings(home=tmp_path, mount_max_entries=5))
    for i in range(40):
        backend.add("Photos", b"p%02d.jpg" % i, camera=f"Cam {i % 8}", date=f"20{10 + i % 5}-01-01")
    backend.add("Photos", b"big%02d.jpg" % 99, camera="Cam 0")
    view = View(backend)
    assert folders(view, b"/exif/camera") == [b"page=1", b"page=2"]  # 8 values, at most 5 a folder
    values = folders(view, b"/exif/camera/page=1") + folders(view, b"/exif/camera/page=2")
    for name in values:  # what a file manager does to count each folder's items
        view.readdir(b"/exif/camera/" + name)
    assert names(view, b"/exif/camera/page=2/" + values[-1]) == names(view, b"/exif/camera/" + values[-1])
    assert len(values) == 8 and len(backend.search_calls) == 7 and len(backend.count_calls) == 1
    assert all(q.limit == 6 for q in backend.search_calls)  # at most max_entries + 1 rows each
    years = [b"2010", b"2011", b"2012", b"2013", b"2014", b"undated"]
    assert folders(view, b"/exif/camera/camera=Cam 0") == years  # 6: known to be big, only counted
    backend.search_calls.clear()
    backend.add("Photos", b"more.jpg", camera="Cam 1")
    for i in range(10):
        backend.add("Photos", b"c1-%d.jpg" % i, camera="Cam 1", date="2014-02-02")
    backend.gen += 1
    folders(view, b"/exif/camera")
    assert folders(view, b"/exif/camera/camera=Cam 1") == years
    assert backend.search_calls == []  # known to be big from the parent's counts: no probe, only counts


def test_the_result_cache_is_bounded_by_bytes(tmp_path):
    backend = FakeBackend({"Photos": b"/photos"}, Settings(home=tmp_path))
    for i in range(200):
        backend.add("Photos", b"some/long/folder/name/photo_%04d.jpg" % i, camera=f"Cam {i % 3}")
    view = View(backend, cache_bytes=200_000)
    for i in range(60):
        view.readdir(b"/query/q%d" % i)
    assert view._cache.bytes <= 200_000
    assert len(view._cache) < 60 * 2


def test_an_unfinished_library_says_so_in_ranked_folders_and_the_readme(view, backend):
    backend.progress = (3, 5)
    entries = {e.name: e.kind for e in view.readdir(b"/query/dog")}
    assert entries[b".searchfs-indexing"] == FILE
    line = view.read(b"/query/dog/.searchfs-indexing", 4096, 0).decode()
    assert line.startswith("Still indexing: 3 of 8 photos") and line.count("\n") == 1
    assert view.read(b"/README.txt", 4096, 0).decode().splitlines()[0] == line.strip()
    assert b".searchfs-indexing" not in names(view, b"/exif/camera=Canon")  # metadata folders are complete
    backend.progress = (8, 0)
    backend.gen += 1
    assert b".searchfs-indexing" not in names(view, b"/query/dog")
    with pytest.raises(NoEntry):
        view.getattr(b"/query/dog/.searchfs-indexing")
    assert view.read(b"/README.txt", 100, 0).startswith(b"searchfs:")


def test_files_mode_serves_originals_read_only_and_only_inside_their_root(tmp_path):
    root, outside = tmp_path / "photos", tmp_path / "secret.jpg"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"A" * 10_000)
    (root / "b.jpg").write_bytes(b"B" * 10)
    outside.write_bytes(b"not yours")
    backend = FakeBackend({"Photos": os.fsencode(root)}, Settings(home=tmp_path, mount_entries="files"))
    backend.add("Photos", b"a.jpg", camera="Canon")
    backend.add("Photos", b"b.jpg", camera="Canon")
    view = View(backend)
    entries = {e.name: e.kind for e in view.readdir(b"/exif/camera=Canon")}
    assert entries == {b"1_a.jpg": FILE, b"2_b.jpg": FILE, b".results.tsv": FILE, b".results.json": FILE}
    assert view.getattr(b"/exif/camera=Canon/1_a.jpg").size == 10_000
    opened = view.open(b"/exif/camera=Canon/1_a.jpg", os.O_RDONLY)
    assert view.read(b"/exif/camera=Canon/1_a.jpg", 4096, 9000, opened.fh) == b"A" * 1000
    view.release(opened.fh)
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND):
        with pytest.raises(ReadOnly):
            view.open(b"/exif/camera=Canon/1_a.jpg", flags)
    with pytest.raises(ViewError):
        view.readlink(b"/exif/camera=Canon/1_a.jpg")
    (root / "b.jpg").unlink()
    (root / "b.jpg").symlink_to(outside)  # swapped after indexing
    with pytest.raises(Denied):
        view.open(b"/exif/camera=Canon/2_b.jpg", os.O_RDONLY)
    assert view._originals.descriptors() == 0


def test_files_mode_holds_a_bounded_number_of_descriptors(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    backend = FakeBackend({"Photos": os.fsencode(root)}, Settings(home=tmp_path, mount_entries="files"))
    for i in range(40):
        (root / f"p{i:02d}.jpg").write_bytes(bytes([i]) * 100)
        backend.add("Photos", b"p%02d.jpg" % i, camera="Canon")
    view = View(backend)
    folder = b"/exif/camera=Canon/"
    handles = [(name, view.open(folder + name, os.O_RDONLY).fh) for name in links(view, folder)]
    for _ in range(2):
        for i, (name, fh) in enumerate(handles):
            assert view.read(folder + name, 10, 50, fh) == bytes([i]) * 10
    assert view._originals.descriptors() <= 16
    for _name, fh in handles:
        view.release(fh)
    assert view._originals.descriptors() == 0


# ---------------------------------------------------------------- the same view over the real Library


def real_library(settings, photos: list[tuple[bytes, dict]], embedded: int | None = None):
    """A real Library whose catalog holds `photos` (rows written directly: no exiftool, no decoding), the
    first `embedded` of them with random vectors for the configured model."""
    import numpy as np

    from searchfs.ingest.tags import EXTRACTOR_VERSION
    from searchfs.library import Library
    from searchfs.store.rows import NewPhoto

    lib = Library(settings, create=True)
    root = lib.catalog.add_root(b"/photos")
    embedded = len(photos) if embedded is None else embedded
    dim = lib.embedder.embed_text(["warm"]).shape[1]
    rng = np.random.default_rng(7)
    rows = []
    for i, (rel, facets) in enumerate(photos, start=1):
        vector = rng.standard_normal(dim).astype(np.float32) if i <= embedded else None
        rows.append(
            NewPhoto(
                rel, 1, 0, 0, f"{i:040x}", _facets(facets), None if vector is None else vector / np.linalg.norm(vector)
            )
        )
    with lib.catalog.transaction() as tx:
        tx.add_photos(root.id, rows, lib.model_id, EXTRACTOR_VERSION)
    return lib


def _facets(facets: dict) -> tuple:
    """`camera="Canon", date="2019-05-01"` as stored facets: numbers with their value, the rest as text."""
    from searchfs.records import Facet

    return tuple(Facet(k, str(v), float(v) if isinstance(v, (int, float)) else None) for k, v in facets.items())


def tree_of(view: View, path: bytes) -> dict:
    """Every folder under `path` (not the nested grammar) -> its entries and their targets."""
    out = {}
    entries = view.readdir(path)
    out[path] = [(e.name, view.readlink(path + b"/" + e.name) if e.kind == LINK else None) for e in entries]
    for e in entries:
        if e.kind == DIR:
            out.update(tree_of(view, path + b"/" + e.name))
    return out


def test_big_folders_and_dates_agree_between_the_fake_and_the_real_library(settings):
    settings = settings.replace(mount_max_entries=5)
    lib = real_library(settings, big_photos())
    fake = FakeBackend({"photos": b"/photos"}, settings)
    for rel, facets in big_photos():
        fake.add("photos", rel, **facets)
    try:
        real_view, fake_view = View(lib), View(fake)
        for path in (b"/exif/camera=canon", b"/date", b"/exif/year=2020"):
            assert tree_of(real_view, path) == tree_of(fake_view, path), path
        assert read_all(real_view, b"/exif/camera=canon/.results.json") == read_all(
            fake_view, b"/exif/camera=canon/.results.json"
        )
        api = [h.path for h in lib.search(where=["camera=canon"])]  # the manifest is the CLI's answer
        rows = read_all(real_view, b"/exif/camera=canon/.results.tsv").decode().splitlines()[1:]
        assert [row.split("\t")[2] for row in rows] == api and len(api) == 18
        ranked = tree_of(real_view, b"/query/dog/limit=12")
        hits = [h.path.encode() for h in lib.search("dog", limit=12)]
        assert [t for folder in sorted(ranked) for _, t in ranked[folder] if t] == hits
    finally:
        lib.close()


def test_real_indexing_progress_counts_waiting_photos(settings):
    lib = real_library(settings, big_photos(), embedded=10)
    try:
        assert lib.indexing_progress() == (10, 8)
        view = View(lib)
        assert view.read(b"/query/dog/.searchfs-indexing", 4096, 0).startswith(b"Still indexing: 10 of 18 photos")
        assert abs(lib.changed_at() - View(lib).getattr(b"/query").mtime_ns / 1e9) < 1e-6
    finally:
        lib.close()


def test_a_crawl_costs_one_bounded_search_per_folder_and_bounded_memory(tmp_path):
    """What `find` or a desktop indexer does: list every folder it is shown, depth first."""
    backend = FakeBackend({"Photos": b"/photos"}, Settings(home=tmp_path, mount_max_entries=30))
    for i in range(300):
        backend.add("Photos", b"d%d/p%03d.jpg" % (i % 6, i), camera=f"Cam {i % 4}", date=f"201{i % 3}-0{1 + i % 9}-01")
    view = View(backend, cache_bytes=300_000)
    folders_seen, largest = 0, 0
    stack = [b"/"]
    while stack:
        path = stack.pop()
        entries = view.readdir(path)
        folders_seen += 1
        largest = max(largest, len(entries))
        stack += [path.rstrip(b"/") + b"/" + e.name for e in entries if e.kind == DIR]
    assert folders_seen > 300  # exif/, date/ and the mirror, where every photo is a folder
    assert largest <= 30 + 2  # the mirror's folders of 50 photos show pages too
    assert view.searches <= folders_seen  # at most one search or count per folder listed
    assert view._cache.bytes <= 300_000


def test_long_navigation_folders_show_pages_and_their_names_still_resolve(capped):
    capped.backend.add("Photos", b"2019-01-05/page=2", camera="Canon")  # a real name wins over a page
    photos = [b"p0.jpg", b"page=2"]
    tree = folders(capped, b"/similar/Photos")
    assert tree == [b"page=1", b"page=2"]  # 6 folders, at most 5 a listing
    assert folders(capped, b"/similar/Photos/page=1") + folders(capped, b"/similar/Photos/page=2") == [
        b"2019-01-05",
        b"2019-03-02",
        b"2020-02-10",
        b"2020-06-01",
        b"2021-12-31",
        b"undated",
    ]
    assert folders(capped, b"/similar/Photos/2019-01-05") == photos
    assert capped.getattr(b"/similar/Photos/2019-01-05/page=2").kind == DIR  # the photo, not a page
    assert links(capped, b"/similar/Photos/page=1/2019-01-05/p0.jpg/limit=3") == links(
        capped, b"/similar/Photos/2019-01-05/p0.jpg/limit=3"
    )


def test_a_photo_not_embedded_yet_has_an_empty_similar_folder(view, backend):
    real_search = backend.search

    def search(query):
        if query.similar_to == ("Photos", b"2019/a.jpg"):
            raise NotFound("2019/a.jpg in Photos is not indexed yet")
        return real_search(query)

    backend.search = search
    backend.progress = (7, 1)
    path = b"/similar/Photos/2019/a.jpg"
    assert view.getattr(path).kind == DIR
    assert names(view, path) == [b".results.tsv", b".results.json", b".searchfs-indexing"]
    assert view.read(path + b"/.results.tsv", 100, 0) == b"rank\tscore\tpath\n"
    backend.fail = NotFound("no such root")  # anything else still fails as it did
    with pytest.raises(NotFound):
        view.readdir(b"/query/cat")
