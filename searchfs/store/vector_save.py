"""Saving and opening the vector index (store/vectors.py): what a save writes, and how a load adopts it.

A save writes what changed since the last one, never the whole table again:
- the tail (rows added since) as a new segment, in list order;
- a segment rewritten only when COMPACT_DEAD_FRACTION of its rows are dead, and the smaller segments
  merged into one when there are more than MAX_SEGMENTS (each row is rewritten a few times over its
  life, not at every save);
- the dead rows of the segments kept as they are (8 bytes each), the lists when they are new, the stamp.
Nothing changed since the last save: nothing is written. Everything is written only to a new folder, or
when the lists are trained again (the index grew RETRAIN_GROWTH times past them).

After writing, the index reads its new segments through memory maps, so the tail's RAM is given back.
Opening reads the stamp, checks every file's size, loads the ids (8 bytes a row) and maps the vectors:
no vector is read until a query reads it, and the checksums are `VectorIndex.verify`'s, in the
background (store/vector_store.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import vector_files as files
from .vector_lists import Lists
from .vector_scoring import assign_rows, live_parts, train_lists
from .vector_state import Segment, published
from .vectors import COMPACT_DEAD_FRACTION, MAX_SEGMENTS, RETRAIN_GROWTH

if TYPE_CHECKING:
    from .vectors import VectorIndex


def save_index(index: VectorIndex, folder: Path, generation: int) -> dict:
    state = index._state
    files.make_private_folder(folder)
    files.remove_temp_files(folder)
    at_home = index._folder == folder and index._stamp is not None
    retrain = state.lists is not None and state.count >= max(RETRAIN_GROWTH * state.lists.trained_on, index.exact_below)
    if at_home and not retrain and not _changed(index, state):
        index._generation = generation  # nothing to write: the saved files are what the index holds
        return {"written_bytes": 0, "segments_written": 0}
    tag = files.new_tag(generation)
    lists = state.lists
    if retrain:  # lists for the size the index has reached; every row is rewritten in their order
        lists = train_lists(live_parts(state.all_segments()), state.count, index.dim)
        keep, rewrite = [], [*state.segments, state.tail]  # type: list[Segment], list[Segment]
    else:
        keep, rewrite = _keep_or_rewrite(state, at_home)
    written = []
    if rewrite:
        written.append(write_rows(folder, f"seg-{tag}-a", rewrite, lists, index.dim, reassign=retrain))
    if state.tail.live and not retrain:
        written.append(write_rows(folder, f"seg-{tag}-t", [state.tail], lists, index.dim))
    segments = tuple(keep) + tuple(s for s in written if len(s.ids))
    stamp = _stamp(index, folder, tag, segments, lists, generation)
    files.fsync_folder(folder)
    files.write_stamp(folder, stamp)
    files.remove_unnamed(folder, stamp)
    _adopt(index, folder, stamp, segments, lists)
    index._generation = generation
    new_bytes = sum(info["size"] for s in written for info in (s.files or {}).values())
    return {"written_bytes": new_bytes, "segments_written": len(written)}


def _keep_or_rewrite(state, at_home: bool) -> tuple[list[Segment], list[Segment]]:
    """The saved segments kept as they are, and those rewritten (merged into one new segment)."""
    keep: list[Segment] = []
    rewrite: list[Segment] = []
    for segment in state.segments:
        reusable = at_home and segment.name is not None and segment.files is not None
        dead = len(segment.ids) - segment.live
        (keep if reusable and dead <= COMPACT_DEAD_FRACTION * len(segment.ids) else rewrite).append(segment)
    if len(keep) + len(rewrite) + bool(state.tail.live) > MAX_SEGMENTS:
        keep.sort(key=lambda s: len(s.ids))
        rewrite, keep = rewrite + keep[:-1], keep[-1:]  # the smaller ones merge; the biggest stays
    return keep, rewrite


def _changed(index: VectorIndex, state) -> bool:
    """Anything the saved files do not hold: rows added, rows killed, segments or lists not from there."""
    stamp = index._stamp
    assert stamp is not None
    if state.tail.live or len(state.tail.ids):
        return True
    if [s.name for s in state.segments] != [e["name"] for e in stamp["segments"]]:
        return True
    dead = sum(len(s.ids) - s.live for s in state.segments)
    return dead != int(stamp.get("dead_rows", 0)) or (state.lists is not None) != bool(stamp.get("lists"))


def _row_lists(segment: Segment, lists: Lists | None) -> np.ndarray:
    """The list of each row of a segment (zeros without lists)."""
    if lists is None:
        return np.zeros(len(segment.ids), np.int32)
    if segment.offsets is not None:
        return np.repeat(np.arange(len(segment.offsets) - 1, dtype=np.int32), np.diff(segment.offsets))
    assert segment.lists is not None
    return np.asarray(segment.lists)


def write_rows(
    folder: Path, name: str, sources: list[Segment], lists: Lists | None, dim: int, reassign: bool = False
) -> Segment:
    """The live rows of `sources` as one new segment, in list order, streamed in chunks. `reassign`: the
    lists are new, each row's list is found again (chunk by chunk: no copy of the table either way)."""
    rows = [s.live_rows() for s in sources]
    if reassign:
        assert lists is not None
        keys = np.concatenate([assign_rows(s.vectors, r, lists) for s, r in zip(sources, rows)])
    else:
        keys = np.concatenate([_row_lists(s, lists)[r] for s, r in zip(sources, rows)])
    which = np.concatenate([np.full(len(r), i, np.int64) for i, r in enumerate(rows)])
    where = np.concatenate(rows)
    order = np.argsort(keys, kind="stable")  # by list, then by source and row: sequential reads per list
    ids = np.concatenate([s.ids[r] for s, r in zip(sources, rows)])[order]

    def chunks():
        for start in range(0, len(order), files.CHUNK_ROWS):
            part = order[start : start + files.CHUNK_ROWS]
            out = np.empty((len(part), dim), np.float32)
            for i, source in enumerate(sources):
                mine = which[part] == i
                out[mine] = files.take_rows(source.vectors, where[part[mine]])  # pages given back as it goes
            yield out

    offsets = None
    if lists is not None:
        offsets = np.concatenate([[0], np.cumsum(np.bincount(keys, minlength=lists.count))]).astype(np.int64)
    written = files.write_segment(folder, name, ids, chunks(), dim, offsets)
    return Segment(ids, np.empty((0, dim), np.float32), offsets, None, name, written)  # mapped by _adopt


def _stamp(index: VectorIndex, folder: Path, tag: str, segments, lists: Lists | None, generation: int) -> dict:
    named: dict = {}
    for segment in segments:
        named.update(segment.files or {})
    lists_name = None
    if lists is not None:
        old = index._stamp if index._folder == folder else None
        lists_name = old.get("lists") if old and old.get("lists_trained_on") == lists.trained_on else None
        if old and lists_name and lists_name in old.get("files", {}):
            named[lists_name] = old["files"][lists_name]
        else:
            lists_name = f"lists-{tag}.npy"
            named[lists_name] = files.write_array(folder, lists_name, lists.centroids)
    dead = [np.stack([np.full(len(d), i), d], 1) for i, s in enumerate(segments) if len(d := _dead_rows(s))]
    dead_rows = int(sum(len(d) for d in dead))
    dead_name = None
    if dead:
        dead_name = f"dead-{tag}.npy"
        named[dead_name] = files.write_array(folder, dead_name, np.concatenate(dead).astype(np.int64))
    count = sum(len(s.ids) for s in segments) - dead_rows
    return {
        "format": files.FORMAT_VERSION,
        "model_id": index.model_id,
        "dim": index.dim,
        "count": count,
        "generation": int(generation),
        "kind": "ivf" if lists is not None and count >= index.exact_below else "exact",
        "lists": lists_name,
        "lists_trained_on": None if lists is None else lists.trained_on,
        "segments": [{"name": s.name, "rows": len(s.ids)} for s in segments],
        "dead": dead_name,
        "dead_rows": dead_rows,
        "files": named,
    }


def _dead_rows(segment: Segment) -> np.ndarray:
    return np.empty(0, np.int64) if segment.alive is None else np.flatnonzero(~segment.alive)


def _adopt(index: VectorIndex, folder: Path, stamp: dict, segments, lists: Lists | None) -> None:
    """Read the saved segments through their maps from now on; the tail starts empty again."""
    mapped = []
    for segment in segments:
        if len(segment.vectors) == len(segment.ids):  # kept as it was: already mapped
            mapped.append(segment)
            continue
        ids, vectors, offsets = files.open_segment(folder, segment.name, len(segment.ids), index.dim, lists is not None)
        mapped.append(Segment(ids, vectors, offsets, None, segment.name, segment.files))
    index._used = 0
    index._tail_vectors = np.empty((0, index.dim), np.float32)
    index._tail_ids, index._tail_lists = np.empty(0, np.int64), np.empty(0, np.int32)
    index._state = published(tuple(mapped), index._tail_view(None), lists)
    index._folder, index._stamp = folder, stamp


def _files_of(stamp: dict, name: str) -> dict:
    return {f: info for f, info in stamp["files"].items() if f.startswith(f"{name}.")}


def open_index(cls, folder: Path, model_id: str, exact_below: int):
    stamp, problems = cls.read_stamp(folder, model_id)
    if problems:
        raise ValueError("; ".join(problems))
    files.check_sizes(folder, stamp)
    dim = int(stamp["dim"])
    lists = None
    if stamp.get("lists"):
        centroids = np.load(folder / stamp["lists"], allow_pickle=False)
        if centroids.dtype != np.float32 or centroids.ndim != 2 or centroids.shape[1] != dim:
            raise ValueError("the lists file does not hold centroids of this dimension")
        lists = Lists(centroids, int(stamp["lists_trained_on"]))
    segments = []
    for entry in stamp["segments"]:
        ids, vectors, offsets = files.open_segment(folder, entry["name"], int(entry["rows"]), dim, lists is not None)
        if offsets is not None and lists is not None and len(offsets) != lists.count + 1:
            raise ValueError(f"segment {entry['name']} has {len(offsets) - 1} lists, the index {lists.count}")
        segments.append(Segment(ids, vectors, offsets, None, entry["name"], _files_of(stamp, entry["name"])))
    if stamp.get("dead"):
        dead = np.load(folder / stamp["dead"], allow_pickle=False)
        if dead.dtype != np.int64 or dead.ndim != 2 or dead.shape[1] != 2:
            raise ValueError("the dead rows file is not (segment, row) pairs")
        for s in np.unique(dead[:, 0]):
            segments[int(s)] = segments[int(s)].killed(dead[dead[:, 0] == s, 1])
    index = cls(dim, model_id, exact_below)
    index._state = published(tuple(segments), index._tail_view(None), lists)
    if index._state.count != stamp["count"]:
        raise ValueError(f"the files hold {index._state.count} vectors, the stamp says {stamp['count']}")
    index._folder, index._stamp, index._generation = folder, stamp, int(stamp["generation"])
    if lists is None and index._state.count >= exact_below:
        index._organize()  # saved exact, but exact_below has dropped since (or it grew past it)
    return index, int(stamp["generation"])
