"""The virtual tree coalesce.py replays a burst of file-system events on, and the events themselves.

The tree only holds the paths the events name. Every node knows its *identity*: the path it had before
the burst (None when it was created during the burst). Nodes nobody mentioned are implicit and travel
with their parent, which is how a folder move covers everything inside it. Besides the tree, a replay
leaves `Tree.doomed` (identities that no longer exist); coalesce.py compares the final tree with the
identities to get the changes. Pure: no I/O and no watchdog. Used by coalesce.py only; everyone else
takes `EventKind` and `RawEvent` from there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from ..paths import is_below
from ..records import TextEnum


class EventKind(TextEnum):
    """What the watcher saw happen to a path (a str, so literal event lists in tests read naturally)."""

    CREATED = "created"
    MODIFIED = "modified"
    ATTRIB = "attrib"
    CLOSED = "closed"
    DELETED = "deleted"
    MOVED = "moved"


@dataclass(frozen=True)
class RawEvent:
    kind: EventKind
    path: bytes
    dest: bytes | None = None
    is_dir: bool = False
    time: float = 0.0


# ---------------------------------------------------------------------------------------------------------
# Paths


def join(parent: bytes, name: bytes) -> bytes:
    """The path of `name` inside the folder `parent`."""
    return parent + name if parent.endswith(b"/") else parent + b"/" + name


def _parts(path: bytes) -> list[bytes]:
    return [part for part in path.split(b"/") if part]


def ancestors(path: bytes) -> Iterator[bytes]:
    """Proper ancestors of an absolute path, nearest first, ending with b"/"."""
    while path != b"/":
        path = os.path.dirname(path)
        yield path


# ---------------------------------------------------------------------------------------------------------
# The virtual tree


class Node:
    __slots__ = ("name", "parent", "children", "gone", "pinned", "orig", "is_dir", "dirty")

    def __init__(self, name: bytes, parent: Node | None, is_dir: bool) -> None:
        self.name = name
        self.parent = parent
        self.children: dict[bytes, Node] = {}
        self.gone: set[bytes] = set()  # names that were deleted or moved away: they no longer exist
        self.pinned = False  # identity stored in `orig` rather than derived from the parent's
        self.orig: bytes | None = None
        self.is_dir = is_dir
        self.dirty = False

    def identity(self) -> bytes | None:
        """The path this node had before the burst; None if it was created during the burst."""
        if self.pinned:
            return self.orig
        base = self.parent.identity() if self.parent is not None else None
        return None if base is None else join(base, self.name)


class Tree:
    def __init__(self) -> None:
        self.root = Node(b"", None, True)
        self.root.pinned, self.root.orig = True, b"/"
        self.doomed: list[tuple[bytes, bool]] = []  # identities that no longer exist, with is_dir
        self.moved_dirs: dict[bytes, Node] = {}  # folder moves by source path, to recognise echoes

    # -- lookups ---------------------------------------------------------------------------------------

    def lookup(self, path: bytes, is_dir: bool, materialise: bool = True) -> Node | None:
        """The node at `path`, or None when nothing is there.

        A path no event has named yet exists implicitly if it lies in a folder that existed before the
        burst; it gets a node (or, with `materialise` false, the answer is the root as a stand-in).
        """
        node = self.root
        parts = _parts(path)
        for i, name in enumerate(parts):
            child = node.children.get(name)
            if child is None:
                # Only folders that existed before the burst hold things we were not told about.
                if name in node.gone or not node.is_dir or node.identity() is None:
                    return None
                if not materialise:
                    return self.root
                child = Node(name, node, is_dir if i == len(parts) - 1 else True)
                node.children[name] = child
            node = child
        return node

    def known(self, path: bytes) -> Node | None:
        """The node at `path` if an event has named it (or a folder it is in) and it is still there."""
        node: Node | None = self.root
        for name in _parts(path):
            node = node.children.get(name) if node is not None else None
        return node

    def ensure_dir(self, path: bytes) -> Node:
        """The folder at `path`; a folder we were told nothing about is taken to be new."""
        node = self.lookup(path, True)
        if node is not None and node.is_dir:
            return node
        parent = self.ensure_dir(os.path.dirname(path))
        if node is not None:  # a file where a folder must be: events were lost; replace it
            self.remove(node)
        return self.attach_new(parent, os.path.basename(path), True)

    def path_of(self, node: Node) -> bytes | None:
        """Where a node is now; None if it has been deleted or moved away with something else."""
        names = []
        while node is not self.root:
            parent = node.parent
            if parent is None or parent.children.get(node.name) is not node:
                return None
            names.append(node.name)
            node = parent
        return b"/" + b"/".join(reversed(names))

    def is_echo(self, src: bytes, dest: bytes) -> bool:
        """Is this the move of a child that its folder's move, already applied, implies?"""
        for top in ancestors(src):
            node = self.moved_dirs.get(top)
            if node is not None:
                now = self.path_of(node)
                return now is not None and join(now, src[len(top) + 1 :]) == dest
        return False

    # -- edits ---------------------------------------------------------------------------------------

    def attach(self, parent: Node, name: bytes, node: Node) -> None:
        node.parent, node.name = parent, name
        parent.children[name] = node
        parent.gone.discard(name)

    def attach_new(self, parent: Node, name: bytes, is_dir: bool) -> Node:
        node = Node(name, parent, is_dir)
        node.pinned, node.orig, node.dirty = True, None, True
        self.attach(parent, name, node)
        return node

    def detach(self, node: Node) -> None:
        assert node.parent is not None
        if not node.pinned:  # it leaves its parent, so its identity can no longer be derived from it
            node.orig, node.pinned = node.identity(), True
        del node.parent.children[node.name]
        node.parent.gone.add(node.name)

    def remove(self, node: Node) -> None:
        """Delete a node: its identity and every identity moved below it are gone."""
        top = node.identity()
        if top is not None:
            self.doomed.append((top, node.is_dir))
        stack = list(node.children.values())
        while stack:
            child = stack.pop()
            if child.pinned and child.orig is not None:
                self.doomed.append((child.orig, child.is_dir))
            stack.extend(child.children.values())
        self.detach(node)

    # -- events --------------------------------------------------------------------------------------

    def apply(self, event: RawEvent) -> None:
        if event.kind == EventKind.CREATED:
            self.created(event.path, event.is_dir)
        elif event.kind in (EventKind.MODIFIED, EventKind.ATTRIB, EventKind.CLOSED):
            if not event.is_dir:  # a folder's own metadata is of no interest
                self.written(event.path)
        elif event.kind == EventKind.DELETED:
            node = self.lookup(event.path, event.is_dir)
            if node is not None and node is not self.root:
                self.remove(node)
        elif event.kind == EventKind.MOVED:
            if event.dest is None:
                raise ValueError(f"moved event without dest: {event.path!r}")
            self.moved(event.path, event.dest, event.is_dir)
        else:
            raise ValueError(f"unknown event kind {event.kind!r}")

    def created(self, path: bytes, is_dir: bool) -> None:
        # A creation of a path we have not heard of is new, even in a folder that existed: that is
        # what a creation says. A path we have heard of is watchdog repeating itself, or a rewrite.
        node = self.known(path)
        if node is not None and node.is_dir == is_dir:
            # Already there (watchdog repeats creations when it walks a new folder): a rewrite at most.
            node.dirty = node.dirty or not is_dir
            return
        if node is not None:
            self.remove(node)
        self.attach_new(self.ensure_dir(os.path.dirname(path)), os.path.basename(path), is_dir)

    def written(self, path: bytes) -> None:
        node = self.lookup(path, False)
        if node is None:  # written but never created: take it as new
            self.created(path, False)
        elif not node.is_dir:
            node.dirty = True

    def moved(self, src: bytes, dest: bytes, is_dir: bool) -> None:
        if src == dest or is_below(dest, src):
            return
        node = self.lookup(src, is_dir)
        if node is None:
            # The source is already gone: watchdog's echo of a child of a folder that was just moved
            # (nothing to do), or something we cannot follow: take the destination as new.
            if not self.is_echo(src, dest):
                self.created(dest, is_dir)
            return
        if node.is_dir:
            self.moved_dirs[src] = node
        self.detach(node)
        # Rename over something we know replaces it. inotify does not say whether a path nobody
        # mentioned existed; it is taken to be free (a consumer's move replaces whatever is there).
        target = self.known(dest)
        if target is not None:
            self.remove(target)
        self.attach(self.ensure_dir(os.path.dirname(dest)), os.path.basename(dest), node)
