"""coalesce(): literal bursts, and a property test that the coalesced changes rebuild the same tree."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from searchfs.ingest.coalesce import Change, RawEvent, coalesce, ready


def created(p, d=False):
    return RawEvent("created", p, is_dir=d)


def modified(p):
    return RawEvent("modified", p)


def closed(p):
    return RawEvent("closed", p)


def deleted(p, d=False):
    return RawEvent("deleted", p, is_dir=d)


def moved(a, b, d=False):
    return RawEvent("moved", a, b, is_dir=d)


def up(p):
    return Change("upsert", p)


def rm(p, d=False):
    return Change("delete", p, is_dir=d)


def mv(a, b, d=False):
    return Change("move", a, b, is_dir=d)


def rescan(p):
    return Change("rescan", p, is_dir=True)


# --------------------------------------------------------------------------------------------------------
# Literal cases

CASES = {
    "write burst is one upsert": (
        [created(b"/r/a"), modified(b"/r/a"), modified(b"/r/a"), closed(b"/r/a")],
        [up(b"/r/a")],
    ),
    "modify existing": ([modified(b"/r/a"), closed(b"/r/a")], [up(b"/r/a")]),
    "created then deleted is nothing": ([created(b"/r/a"), modified(b"/r/a"), deleted(b"/r/a")], []),
    "deleted then created is an upsert": ([deleted(b"/r/a"), created(b"/r/a"), closed(b"/r/a")], [up(b"/r/a")]),
    "plain delete": ([deleted(b"/r/a")], [rm(b"/r/a")]),
    "move chain": ([moved(b"/r/a", b"/r/b"), moved(b"/r/b", b"/r/c")], [mv(b"/r/a", b"/r/c")]),
    "move then modify": ([moved(b"/r/a", b"/r/b"), modified(b"/r/b")], [mv(b"/r/a", b"/r/b"), up(b"/r/b")]),
    "move back is nothing": ([moved(b"/r/a", b"/r/b"), moved(b"/r/b", b"/r/a")], []),
    "created then moved is an upsert": ([created(b"/r/a"), closed(b"/r/a"), moved(b"/r/a", b"/r/b")], [up(b"/r/b")]),
    "move then delete": ([moved(b"/r/a", b"/r/b"), deleted(b"/r/b")], [rm(b"/r/a")]),
    "move over a known file replaces it": ([modified(b"/r/b"), moved(b"/r/a", b"/r/b")], [mv(b"/r/a", b"/r/b")]),
    # watchdog follows a folder move with a move per child: they are implied
    "folder move": (
        [
            moved(b"/r/D", b"/r/E", True),
            moved(b"/r/D/x", b"/r/E/x"),
            moved(b"/r/D/s", b"/r/E/s", True),
            moved(b"/r/D/s/y", b"/r/E/s/y"),
        ],
        [mv(b"/r/D", b"/r/E", True)],
    ),
    "folder renamed twice": (
        [
            moved(b"/r/D", b"/r/E", True),
            moved(b"/r/D/x", b"/r/E/x"),
            moved(b"/r/E", b"/r/F", True),
            moved(b"/r/E/x", b"/r/F/x"),
        ],
        [mv(b"/r/D", b"/r/F", True)],
    ),
    "child changed before folder move": (
        [modified(b"/r/D/x"), moved(b"/r/D", b"/r/E", True), moved(b"/r/D/x", b"/r/E/x")],
        [mv(b"/r/D", b"/r/E", True), up(b"/r/E/x")],
    ),
    "child changed after folder move": (
        [moved(b"/r/D", b"/r/E", True), modified(b"/r/E/x"), closed(b"/r/E/x")],
        [mv(b"/r/D", b"/r/E", True), up(b"/r/E/x")],
    ),
    "child renamed inside moved folder": (
        [moved(b"/r/D", b"/r/E", True), moved(b"/r/E/x", b"/r/E/y")],
        [mv(b"/r/D", b"/r/E", True), mv(b"/r/E/x", b"/r/E/y")],
    ),
    "child renamed then folder moved": (
        [moved(b"/r/D/x", b"/r/D/y"), moved(b"/r/D", b"/r/E", True), moved(b"/r/D/y", b"/r/E/y")],
        [mv(b"/r/D", b"/r/E", True), mv(b"/r/E/x", b"/r/E/y")],
    ),
    "rm -r is one delete": (
        [deleted(b"/r/D/s/y"), deleted(b"/r/D/s", True), deleted(b"/r/D/x"), deleted(b"/r/D", True)],
        [rm(b"/r/D", True)],
    ),
    "events inside a deleted folder are covered": (
        [modified(b"/r/D/x"), created(b"/r/D/n"), deleted(b"/r/D/x"), deleted(b"/r/D/n"), deleted(b"/r/D", True)],
        [rm(b"/r/D", True)],
    ),
    "file saved out of a folder before it is deleted": (
        [moved(b"/r/D/x", b"/r/y"), deleted(b"/r/D/z"), deleted(b"/r/D", True)],
        [mv(b"/r/D/x", b"/r/y"), rm(b"/r/D", True)],
    ),
    "new folder with files is one rescan": (
        [
            created(b"/r/N", True),
            created(b"/r/N/a"),
            closed(b"/r/N/a"),
            created(b"/r/N/s", True),
            created(b"/r/N/s/b"),
            created(b"/r/N", True),
        ],
        [rescan(b"/r/N")],
    ),
    "new folder renamed": (
        [created(b"/r/N", True), created(b"/r/N/a"), moved(b"/r/N", b"/r/M", True)],
        [rescan(b"/r/M")],
    ),
    "folder replaced by folder": (
        [deleted(b"/r/D/x"), deleted(b"/r/D", True), created(b"/r/D", True)],
        [rescan(b"/r/D")],
    ),
    "file replaced by folder": ([deleted(b"/r/a"), created(b"/r/a", True)], [rm(b"/r/a"), rescan(b"/r/a")]),
    "moved from a folder created in the burst is a creation": (
        [created(b"/r/N", True), moved(b"/r/N/x", b"/r/x")],
        [rescan(b"/r/N"), up(b"/r/x")],
    ),
    "folder modified events are ignored": ([RawEvent("modified", b"/r/D", is_dir=True)], []),
    "delete echo inside a moved folder is ignored": (
        [moved(b"/r/D", b"/r/E", True), deleted(b"/r/D/x")],
        [mv(b"/r/D", b"/r/E", True)],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_literal(name):
    events, expected = CASES[name]
    assert coalesce(events) == expected


def test_unrelated_paths_keep_their_own_results():
    events = [created(b"/r/a"), moved(b"/r/D", b"/r/E", True), modified(b"/r/b"), deleted(b"/r/c")]
    out = coalesce(events)
    assert sorted(out, key=repr) == sorted(
        [up(b"/r/a"), mv(b"/r/D", b"/r/E", True), up(b"/r/b"), rm(b"/r/c")], key=repr
    )
    # structure before content: every move/delete precedes every upsert/rescan
    kinds = [c.kind for c in out]
    assert max(i for i, k in enumerate(kinds) if k in ("move", "delete")) < min(
        i for i, k in enumerate(kinds) if k == "upsert"
    )


def test_swap_through_a_temporary_name_is_safe():
    events = [moved(b"/r/a", b"/r/t"), moved(b"/r/b", b"/r/a"), moved(b"/r/t", b"/r/b")]
    before = {b"/r": ("d",), b"/r/a": ("f", 1), b"/r/b": ("f", 2)}
    after = {b"/r": ("d",), b"/r/a": ("f", 2), b"/r/b": ("f", 1)}
    assert apply_changes(before, after, coalesce(events)) == after


def test_folder_swapped_with_its_own_child():
    # mv D/x t; rm -r D; mv t D: the identity of D/x ends up at D, which must first be emptied
    events = [
        moved(b"/r/D/x", b"/r/t", True),
        deleted(b"/r/D/y"),
        deleted(b"/r/D", True),
        moved(b"/r/t", b"/r/D", True),
    ]
    before = {b"/r": ("d",), b"/r/D": ("d",), b"/r/D/x": ("d",), b"/r/D/x/p": ("f", 1), b"/r/D/y": ("f", 2)}
    after = {b"/r": ("d",), b"/r/D": ("d",), b"/r/D/p": ("f", 1)}
    assert apply_changes(before, after, coalesce(events)) == after


def test_child_moved_back_into_a_recreated_folder():
    # mv D Dp; mkdir D; mv Dp/x D/x: D/x keeps its place while D moves
    events = [moved(b"/r/D", b"/r/Dp", True), created(b"/r/D", True), moved(b"/r/Dp/x", b"/r/D/x")]
    before = {b"/r": ("d",), b"/r/D": ("d",), b"/r/D/x": ("f", 1), b"/r/D/y": ("f", 2)}
    after = {b"/r": ("d",), b"/r/Dp": ("d",), b"/r/Dp/y": ("f", 2), b"/r/D": ("d",), b"/r/D/x": ("f", 1)}
    out = coalesce(events)
    assert apply_changes(before, after, out) == after
    assert mv(b"/r/D", b"/r/Dp", True) in out


def test_ready():
    pending = {b"/a": 10.0, b"/b": 10.0, b"/c": 9.0}
    assert ready(pending, {b"/a"}, now=9.5, settle=1.0) == {b"/a"}
    assert ready(pending, set(), now=10.0, settle=1.0) == {b"/c"}
    assert ready(pending, set(), now=11.0, settle=1.0) == {b"/a", b"/b", b"/c"}
    assert ready({}, {b"/x"}, now=0, settle=1) == set()


def test_rejects_unknown_kinds():
    with pytest.raises(ValueError):
        coalesce([RawEvent("renamed", b"/r/a")])


# --------------------------------------------------------------------------------------------------------
# Property: coalesced changes applied to a catalog give the tree the raw events describe.


def under(path, top):
    return path == top or path.startswith(top + b"/")


def apply_changes(catalog: dict, disk: dict, changes: list[Change]) -> dict:
    """What a consumer does: structure from the changes, content read from `disk` (the final tree)."""
    cat = dict(catalog)
    for ch in changes:
        if ch.kind == "move":
            assert ch.path in cat, f"move of a path the catalog does not have: {ch}"
            assert not under(ch.dest, ch.path)
            moving = {p: v for p, v in cat.items() if under(p, ch.path)}
            cat = {p: v for p, v in cat.items() if not under(p, ch.path) and not under(p, ch.dest)}
            cat.update({ch.dest + p[len(ch.path) :]: v for p, v in moving.items()})
        elif ch.kind == "delete":
            assert ch.path in cat, f"delete of a path the catalog does not have: {ch}"
            cat = {p: v for p, v in cat.items() if not under(p, ch.path)}
        elif ch.kind == "upsert":
            assert disk.get(ch.path, ("d",))[0] == "f", f"upsert of a path that is not a file: {ch}"
            cat[ch.path] = disk[ch.path]
        elif ch.kind == "rescan":
            assert disk.get(ch.path) == ("d",), f"rescan of a path that is not a folder: {ch}"
            cat = {p: v for p, v in cat.items() if not under(p, ch.path)}
            cat.update({p: v for p, v in disk.items() if under(p, ch.path)})
        else:
            raise AssertionError(ch)
    return cat


class Sim:
    """A file tree that records the events watchdog would report for each operation."""

    def __init__(self, tree: dict):
        self.tree = dict(tree)
        self.events: list[RawEvent] = []
        self.version = itertools.count(100)

    def dirs(self):
        return sorted(p for p, v in self.tree.items() if v == ("d",))

    def files(self):
        return sorted(p for p, v in self.tree.items() if v[0] == "f")

    def below(self, top):
        return sorted((p for p in self.tree if under(p, top) and p != top), key=lambda p: (-p.count(b"/"), p))

    def create(self, parent, name, is_dir, write_events):
        path = parent + b"/" + name
        if path in self.tree:
            return
        self.tree[path] = ("d",) if is_dir else ("f", next(self.version))
        self.events.append(created(path, is_dir))
        if is_dir and write_events:  # watchdog repeats the creation when it walks the new folder
            self.events.append(created(path, True))
        elif not is_dir:
            self.events += [modified(path)] * write_events + [closed(path)] * (write_events > 0)

    def write(self, path):
        self.tree[path] = ("f", next(self.version))
        self.events += [modified(path), closed(path)]

    def delete(self, path):
        for child in self.below(path):  # inotify reports the children first
            self.events.append(deleted(child, self.tree[child] == ("d",)))
            del self.tree[child]
        self.events.append(deleted(path, self.tree[path] == ("d",)))
        del self.tree[path]

    def move_out(self, path):  # to outside the root: one delete, nothing for the children
        is_dir = self.tree[path] == ("d",)
        for p in [path, *self.below(path)]:
            del self.tree[p]
        self.events.append(deleted(path, is_dir))

    def move_in(self, parent, name, nfiles):  # from outside: creations, children included
        path = parent + b"/" + name
        if path in self.tree:
            return
        self.tree[path] = ("d",)
        self.events.append(created(path, True))
        for i in range(nfiles):
            child = path + b"/f%d" % i
            self.tree[child] = ("f", next(self.version))
            self.events.append(created(child))

    def move(self, src, parent, name):
        dest = parent + b"/" + name
        if dest in self.tree or under(dest, src) or src == dest:
            return
        is_dir = self.tree[src] == ("d",)
        inside = [p for p in self.tree if under(p, src)]
        for p in inside:
            self.tree[dest + p[len(src) :]] = self.tree.pop(p)
        self.events.append(moved(src, dest, is_dir))
        for p in sorted(inside):  # watchdog's echo: one move per child, after the folder's
            if p != src:
                child_dest = dest + p[len(src) :]
                self.events.append(moved(p, child_dest, self.tree[child_dest] == ("d",)))


NAMES = [b"a", b"b", b"c", b"D", b"E"]


@st.composite
def initial_trees(draw):
    tree = {b"/r": ("d",)}
    for parent, name, is_dir in draw(
        st.lists(st.tuples(st.integers(0, 20), st.sampled_from(NAMES), st.booleans()), max_size=10)
    ):
        dirs = sorted(p for p, v in tree.items() if v == ("d",))
        path = dirs[parent % len(dirs)] + b"/" + name
        if path not in tree:
            tree[path] = ("d",) if is_dir else ("f", len(tree))
    return tree


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(initial_trees(), st.data())
def test_coalesced_changes_rebuild_the_same_tree(tree, data):
    sim = Sim(tree)
    for _ in range(data.draw(st.integers(1, 12))):
        op = data.draw(st.sampled_from(["create", "mkdir", "write", "delete", "move", "move", "move_out", "move_in"]))
        others = [p for p in sim.tree if p != b"/r"]
        pick = lambda items: items[data.draw(st.integers(0, len(items) - 1))]  # noqa: E731
        name = data.draw(st.sampled_from(NAMES + [b"t"]))
        if op == "create":
            sim.create(pick(sim.dirs()), name, False, data.draw(st.integers(0, 2)))
        elif op == "mkdir":
            sim.create(pick(sim.dirs()), name, True, data.draw(st.integers(0, 1)))
        elif op == "write" and sim.files():
            sim.write(pick(sim.files()))
        elif op == "delete" and others:
            sim.delete(pick(others))
        elif op == "move" and others:
            sim.move(pick(others), pick(sim.dirs()), name)
        elif op == "move_out" and others:
            sim.move_out(pick(others))
        elif op == "move_in":
            sim.move_in(pick(sim.dirs()), name, data.draw(st.integers(0, 2)))
    changes = coalesce(sim.events)
    assert apply_changes(tree, sim.tree, changes) == sim.tree
    # never more changes than it takes to say it event by event
    assert len(changes) <= len(sim.events)


def test_large_burst_is_fast():
    import time

    events = []
    for i in range(20_000):
        p = b"/r/burst/f%05d.jpg" % i
        events += [created(p), modified(p), closed(p)]
    events += [moved(b"/r/old%04d.jpg" % i, b"/r/new%04d.jpg" % i) for i in range(5_000)]
    # a renumbering: each name is freed by the next move
    events += [moved(b"/r/n/%04d" % i, b"/r/n/%04d" % (i + 1)) for i in reversed(range(2_000))]
    start = time.monotonic()
    out = coalesce(events)
    assert time.monotonic() - start < 10
    assert sum(c.kind == "upsert" for c in out) == 20_000
    assert sum(c.kind == "move" for c in out) == 7_000


def test_ready_waits_for_the_close_of_an_open_file_but_not_for_metadata_news():
    from searchfs.ingest.coalesce import ready

    pending = {b"/r/open.jpg": 0.0, b"/r/touched.jpg": 0.0, b"/r/closed.jpg": 0.0}
    assert ready(pending, {b"/r/closed.jpg"}, now=10.0, settle=1.0, open_files={b"/r/open.jpg"}, open_limit=120.0) == {
        b"/r/touched.jpg",
        b"/r/closed.jpg",
    }
    assert b"/r/open.jpg" in ready(pending, set(), now=121.0, settle=1.0, open_files={b"/r/open.jpg"}, open_limit=120.0)
