"""Reduce a burst of file-system events to the fewest changes that have the same effect.

Pure: no I/O and no watchdog. The watcher turns watchdog events into `RawEvent`s, holds them until the
files they touch are complete (`ready`), and hands each burst to `coalesce`.

How it works: the raw events are replayed on a virtual tree (event_tree.py) that only holds the paths
the events name. Every node knows its *identity*: the path it had before the burst (None when it was
created during the burst). Nodes nobody mentioned are implicit and travel with their parent, which is
how a folder move covers everything inside it. The final tree is then compared with the identities to
get moves (identity now somewhere else), deletes (identity gone), upserts (file content changed) and
rescans (new folders). Moves and deletes are finally ordered so that each one is safe to apply after the
ones before it.

What a consumer must do with each `Change` (paths are absolute bytes):

- ``upsert p``: the file at p is new or its content changed; read it.
- ``rescan p`` (a folder): make everything at and below p match the disk (a folder that appeared).
- ``move s -> d``: rename s and everything below it to d, keeping the content; whatever was known at d
  (or below it) is replaced, as rename(2) does. d never lies below s.
- ``delete p``: p and everything below it is gone.

Known limit: inotify does not say when a rename replaced a file nobody mentioned before, so in
"mv a b" (over an existing b) followed by "mv b c", the old b is not reported; a reconcile finds it.

The order of the returned list is the order to apply them in: moves and deletes first, then rescans and
upserts, which read the disk as it is at the end of the burst.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..paths import is_below
from ..records import TextEnum
from .event_tree import EventKind, Node, RawEvent, Tree, ancestors, join

__all__ = [
    "Change",
    "ChangeKind",
    "EventKind",
    "RawEvent",
    "coalesce",
    "ready",
    "split_ready",
]  # EventKind, RawEvent: event_tree.py's


class ChangeKind(TextEnum):
    """What the catalog must do about a path once a burst of events is coalesced."""

    UPSERT = "upsert"
    DELETE = "delete"
    MOVE = "move"
    RESCAN = "rescan"


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    path: bytes
    dest: bytes | None = None
    is_dir: bool = False


def _read_again(is_dir: bool) -> ChangeKind:
    """What a path whose history was lost needs: a folder is scanned again, a file read again."""
    return ChangeKind.RESCAN if is_dir else ChangeKind.UPSERT


def ready(
    pending: Mapping[bytes, float],
    closed: set[bytes],
    now: float,
    settle: float,
    open_files: frozenset[bytes] | set[bytes] = frozenset(),
    open_limit: float = float("inf"),
) -> set[bytes]:
    """The written files that are complete: closed after writing, or quiet for `settle` seconds.

    `pending` maps a path to the time of its last event. `open_files` are files whose content was
    written and whose close has not been seen yet: where closes are reported (inotify), such a file waits
    for its close, however long its writer pauses, up to `open_limit` seconds of quiet (a writer that
    never closes). A file whose only news is metadata (touch, chmod) waits `settle`.
    """
    return {
        path
        for path, last in pending.items()
        if path in closed or now - last >= (open_limit if path in open_files else settle)
    }


def coalesce(events: Sequence[RawEvent]) -> list[Change]:
    tree = Tree()
    for event in events:
        tree.apply(event)
    return _plan(tree)


# ---------------------------------------------------------------------------------------------------------
# From the final tree to ordered changes


@dataclass
class _Op:
    id: int
    kind: ChangeKind  # MOVE or DELETE
    src: bytes
    dest: bytes | None
    is_dir: bool


def _plan(tree: Tree) -> list[Change]:
    moves, content, final = _walk(tree)
    deletes = _deletes(tree.doomed, final, {op.src for op in moves})
    ops = moves + deletes
    for i, op in enumerate(ops):
        op.id = i
    structural, broken = _Scheduler(ops).run()
    content.extend(Change(_read_again(op.is_dir), op.dest or b"", is_dir=op.is_dir) for op in broken)
    return structural + _drop_covered(content)


def _walk(tree: Tree) -> tuple[list[_Op], list[Change], dict[bytes, bool]]:
    """Moves, upserts and rescans the final tree calls for, and the kind of every path it names."""
    moves: list[_Op] = []
    content: list[Change] = []
    final: dict[bytes, bool] = {}
    # node, path, identity, inside a new folder
    stack: list[tuple[Node, bytes, bytes | None, bool]] = [(tree.root, b"/", b"/", False)]
    while stack:
        node, path, ident, in_new = stack.pop()
        for name in sorted(node.children, reverse=True):  # reversed so the stack pops them in order
            child = node.children[name]
            child_path = join(path, name)
            expected = None if ident is None else join(ident, name)
            child_ident = child.orig if child.pinned else expected
            final[child_path] = child.is_dir
            if child_ident is not None and child_ident != expected:
                moves.append(_Op(0, ChangeKind.MOVE, child_ident, child_path, child.is_dir))
            child_in_new = in_new
            if not in_new and child_ident is None:
                content.append(Change(_read_again(child.is_dir), child_path, is_dir=child.is_dir))
                child_in_new = child.is_dir
            elif not in_new and child.dirty and not child.is_dir:
                content.append(Change(ChangeKind.UPSERT, child_path))
            stack.append((child, child_path, child_ident, child_in_new))
    return moves, content, final


def _deletes(doomed: list[tuple[bytes, bool]], final: dict[bytes, bool], move_srcs: set[bytes]) -> list[_Op]:
    """One delete per gone identity, leaving out those inside another and those simply replaced."""
    gone = {path for path, _ in doomed}
    ops: list[_Op] = []
    seen: set[bytes] = set()
    for path, is_dir in doomed:
        if path in seen or _covered(path, gone, move_srcs):
            continue
        seen.add(path)
        # Something of the same kind now sits at the same place and nothing above it moves: the upsert,
        # rescan or move (which replaces) that puts it there also disposes of the old one.
        replaced = final.get(path) == is_dir and not any(a in move_srcs for a in ancestors(path))
        if not replaced:
            ops.append(_Op(0, ChangeKind.DELETE, path, None, is_dir))
    return ops


def _covered(path: bytes, gone: set[bytes], move_srcs: set[bytes]) -> bool:
    """Does the delete of a folder above `path` take it along? Not if it was moved out first."""
    for a in ancestors(path):
        if a in move_srcs:
            return False
        if a in gone:
            return True
    return False


def _drop_covered(content: list[Change]) -> list[Change]:
    rescans = {c.path for c in content if c.kind == ChangeKind.RESCAN}
    kept = [c for c in content if not any(a in rescans for a in ancestors(c.path))]
    return [c for c in kept if c.kind == ChangeKind.RESCAN] + [c for c in kept if c.kind != ChangeKind.RESCAN]


class _Scheduler:
    """Order moves and deletes so each is valid when applied after the previous ones.

    Sources are kept in current coordinates (rewritten as folders above them move); destinations are
    final paths. A move waits until nothing still to be moved or deleted sits at, above or below its
    destination, and until moves into folders above its destination are done; a delete waits until what
    survives inside it has been moved out. A cycle of waits (a swap) is broken by turning one move into a
    delete plus a rescan/upsert of its destination.
    """

    def __init__(self, ops: list[_Op]) -> None:
        self.ops = {op.id: op for op in ops}
        self.next_id = len(ops)
        self.src_at: dict[bytes, set[int]] = {}
        self.src_below: dict[bytes, set[int]] = {}
        self.dest_at: dict[bytes, set[int]] = {}
        self.waiters: dict[int, list[int]] = {}
        self.blocked_by: dict[int, int] = {}
        self.queue: deque[int] = deque()
        for op in ops:
            self._index(op, True)
            self.queue.append(op.id)
        self.out: list[Change] = []
        self.broken: list[_Op] = []

    def run(self) -> tuple[list[Change], list[_Op]]:
        while self.ops:
            if not self.queue:
                self._break_cycle()
                continue
            op = self.ops.get(self.queue.popleft())
            if op is None:
                continue
            if op.kind == ChangeKind.MOVE and op.dest is not None and is_below(op.dest, op.src):
                # e.g. a file whose place a new folder took, and which went into it: say it plainly
                self._convert(op)
                continue
            blocker = self._blocker(op)
            if blocker is None:
                self._execute(op)
            else:
                self.blocked_by[op.id] = blocker
                self.waiters.setdefault(blocker, []).append(op.id)
        return self.out, self.broken

    def _index(self, op: _Op, add: bool) -> None:
        def edit(table: dict[bytes, set[int]], key: bytes) -> None:
            if add:
                table.setdefault(key, set()).add(op.id)
            else:
                table[key].discard(op.id)

        edit(self.src_at, op.src)
        for a in ancestors(op.src):
            edit(self.src_below, a)
        if op.kind == ChangeKind.MOVE and op.dest is not None:
            edit(self.dest_at, op.dest)

    def _other(self, table: dict[bytes, set[int]], key: bytes, me: int) -> int | None:
        for i in table.get(key, ()):
            if i != me:
                return i
        return None

    def _blocker(self, op: _Op) -> int | None:
        if op.kind == ChangeKind.DELETE:
            for i in self.src_below.get(op.src, ()):
                if self.ops[i].kind == ChangeKind.MOVE:
                    return i
            return None
        dest = op.dest or b""
        checks = [(self.src_at, dest), (self.src_below, dest)]
        for a in ancestors(dest):
            checks += [(self.src_at, a), (self.dest_at, a)]
        for table, key in checks:
            found = self._other(table, key, op.id)
            if found is not None:  # ids start at 0, so no `or` here
                return found
        return None

    def _finish(self, op: _Op) -> None:
        self._index(op, False)
        del self.ops[op.id]
        self.blocked_by.pop(op.id, None)
        self.queue.extend(self.waiters.pop(op.id, []))

    def _execute(self, op: _Op) -> None:
        self._finish(op)
        if op.kind == ChangeKind.DELETE:
            self.out.append(Change(ChangeKind.DELETE, op.src, is_dir=op.is_dir))
            return
        assert op.dest is not None
        self.out.append(Change(ChangeKind.MOVE, op.src, op.dest, op.is_dir))
        moved = set(self.src_at.get(op.src, ())) | set(self.src_below.get(op.src, ()))
        for i in moved:
            other = self.ops[i]
            self._index(other, False)
            other.src = op.dest + other.src[len(op.src) :]
            self._index(other, True)
            if other.kind == ChangeKind.MOVE and other.src == other.dest:  # back where it belongs
                self._finish(other)

    def _break_cycle(self) -> None:
        start = min(self.ops)
        path: list[int] = []
        seen: set[int] = set()
        current = start
        while current not in seen:
            seen.add(current)
            path.append(current)
            current = self.blocked_by[current]
        cycle = path[path.index(current) :]
        self._convert(self.ops[min(i for i in cycle if self.ops[i].kind == ChangeKind.MOVE)])

    def _convert(self, victim: _Op) -> None:
        """Give up on moving `victim`: delete it where it is and read it afresh where it ends up."""
        self._finish(victim)
        self.broken.append(victim)
        if not any(
            self.ops[i].kind == ChangeKind.DELETE
            for a in [victim.src, *ancestors(victim.src)]
            for i in self.src_at.get(a, ())
        ):
            delete = _Op(self.next_id, ChangeKind.DELETE, victim.src, None, victim.is_dir)
            self.next_id += 1
            self.ops[delete.id] = delete
            self._index(delete, True)
            self.queue.append(delete.id)


# ---------------------------------------------------------------------------------------------------------
# Which events are ready (pure: the watcher passes the clock in)


def split_ready(
    events: list[RawEvent], now: float, settle: float, open_limit: float | None = None
) -> tuple[list[RawEvent], list[RawEvent]]:
    """Split a buffer into events that can go now and events to hold (files still being written).

    With `open_limit` (inotify, which reports closes) a file written and not yet closed is held until
    its close, or `open_limit` seconds of quiet; without it (polling) `settle` seconds of quiet do.

    An event is held when it touches a file that is not complete, or a path above or below one, or
    any path an earlier held event touched: so nothing released depends on something held back.
    """
    pending: dict[bytes, float] = {}
    closed: set[bytes] = set()
    written: set[bytes] = set()  # content written, close not seen yet
    names: dict[bytes, set[bytes]] = {}  # every name a pending file had in this buffer
    for ev in events:
        if ev.kind in (EventKind.CREATED, EventKind.MODIFIED) and not ev.is_dir:
            pending[ev.path] = ev.time
            names.setdefault(ev.path, {ev.path})
            closed.discard(ev.path)
            if ev.kind == EventKind.MODIFIED:  # bytes written: wait for the close. A bare creation may be a
                written.add(ev.path)  # file moved in from outside, complete, whose close never comes
        elif ev.kind == EventKind.ATTRIB and not ev.is_dir:  # touch, chmod, or cp -p setting times after close
            pending[ev.path] = ev.time
            names.setdefault(ev.path, {ev.path})
        elif ev.kind == EventKind.CLOSED:
            written.discard(ev.path)
            pending.setdefault(ev.path, ev.time)
            names.setdefault(ev.path, {ev.path})
            closed.add(ev.path)
        elif ev.kind in (EventKind.DELETED, EventKind.MOVED):
            gone = [p for p in pending if p == ev.path or (ev.is_dir and is_below(p, ev.path))]
            for p in gone:
                when, old_names = pending.pop(p), names.pop(p)
                if ev.kind == EventKind.MOVED and ev.dest is not None:  # the writer may go on under the new name
                    new = ev.dest + p[len(ev.path) :]
                    pending[new] = when
                    names[new] = old_names | {new}
                    if p in closed:
                        closed.add(new)
                    if p in written:
                        written.add(new)
                closed.discard(p)
                written.discard(p)
    if open_limit is None:
        written.clear()
    unready = set(pending) - ready(pending, closed, now, settle, written, open_limit or settle)
    if not unready:
        return events, []
    held_paths = set().union(*(names[p] for p in unready))
    above = {a for p in held_paths for a in _parents(p)}
    go: list[RawEvent] = []
    held: list[RawEvent] = []
    for ev in events:
        paths = [ev.path] if ev.dest is None else [ev.path, ev.dest]
        if any(p in held_paths or p in above or any(a in held_paths for a in _parents(p)) for p in paths):
            held.append(ev)
            for p in paths:
                held_paths.add(p)
                above.update(_parents(p))
        else:
            go.append(ev)
    return go, held


def _parents(path: bytes) -> list[bytes]:
    out = []
    while path not in (b"/", b""):
        path = os.path.dirname(path)
        out.append(path)
    return out
