"""Building the vector index from the catalog in bounded memory (store/vector_store.py calls it when no
saved index can be used: the first search of a library, files deleted or damaged, another model).

Held in RAM, a million 512-d vectors are 2 GB, and building them there took that several times over:
the catalog's rows as Python bytes, their join, the index's tail growing by doubling, the copy sorted
by list. Here they go from the catalog, one chunk at a time, to a file in a private scratch folder beside
the index's own; the lists are trained on a sample read back from its memory map, every row's list is
found chunk by chunk, and the rows are written again in list order (store/vector_save.py's writer). The
index then reads that file through its map, and the owner's next save writes it to the index folder.
The scratch folder is removed at once: mapped files stay readable until the index lets them go.

What is held at a time: one chunk (32 MB), the ids (8 bytes a row), each row's list (4 bytes), the
training sample (48 rows a list, 390 MB at a million), and the pages a pass has touched (page cache,
given back by the kernel as needed). A disk that cannot take the scratch files means the old way, in RAM.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from . import vector_files as files
from .vector_save import write_rows
from .vector_scoring import live_parts, train_lists
from .vector_state import Segment, published, readonly
from .vectors import VectorIndex, _checked_ids, _normalized

log = logging.getLogger(__name__)

PREFIX = ".build-"  # scratch folders: .build-<pid>-<random>


def build_index(
    count: int, chunks: Iterable[tuple[np.ndarray, np.ndarray]], dim: int, model: str, exact_below: int, scratch: Path
) -> VectorIndex:
    """An index of the `count` rows that `chunks` yields (content ids, vectors), built through files in a
    private folder made under `scratch`; in RAM when those cannot be written."""
    chunks = iter(chunks)
    if count == 0:  # nothing live (every root offline, say): a file of no rows cannot be mapped
        return _in_memory(chunks, dim, model, exact_below)
    try:
        files.make_private_folder(scratch)
        _remove_abandoned(scratch)
        folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=scratch))  # 0700
    except OSError as exc:
        log.warning("cannot build the vector index on disk in %s (%s): building it in memory", scratch, exc)
        return _in_memory(chunks, dim, model, exact_below)
    try:
        return _on_disk(folder, count, chunks, dim, model, exact_below)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _remove_abandoned(scratch: Path) -> None:
    """Scratch folders of builds whose process died (a crash, a kill): another live process's stays."""
    for folder in scratch.glob(f"{PREFIX}*"):
        pid = folder.name[len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's
    return True


def _on_disk(folder: Path, count: int, chunks: Iterator, dim: int, model_id: str, exact_below: int) -> VectorIndex:
    parts: list[np.ndarray] = []

    def normalized() -> Iterator[np.ndarray]:
        for ids, vectors in chunks:
            parts.append(_checked_ids(ids, len(vectors)))
            yield _normalized(vectors, dim)

    files.write_file(folder, "raw.vectors.npy", files.npy_parts(None, (count, dim), np.float32, normalized()))
    ids = np.concatenate(parts) if parts else np.empty(0, np.int64)
    if len(ids) != count or len(np.unique(ids)) != count:
        raise ValueError(f"the catalog gave {len(ids)} vectors ({len(np.unique(ids))} ids), not the {count} it counted")
    raw = Segment(readonly(ids), files.map_vectors(folder / "raw.vectors.npy", count, dim), None, None)
    index = VectorIndex(dim, model_id, exact_below)
    if count < exact_below:
        index._state = published((raw,), index._tail_view(None), None)
        return index
    lists = train_lists(live_parts([raw]), count, dim)
    write_rows(folder, "sorted", [raw], lists, dim, reassign=True)
    ids, vectors, offsets = files.open_segment(folder, "sorted", count, dim, True)
    del raw
    (folder / "raw.vectors.npy").unlink()
    index._state = published((Segment(ids, vectors, offsets, None),), index._tail_view(None), lists)
    log.info("vector index: %d vectors in %d lists, built on disk", count, lists.count)
    return index


def _in_memory(chunks: Iterator, dim: int, model_id: str, exact_below: int) -> VectorIndex:
    index = VectorIndex(dim, model_id, exact_below)
    for ids, vectors in chunks:
        index.add(ids, vectors)
    return index
