"""The vector index's files: immutable segments named in a stamp, written atomically, checked by size at
load and by checksum in the background after it.

A folder (0700, files 0600) holds:
- per segment `<name>.ids.npy` (int64, row order) and `<name>.vectors.npy` (float32, unit rows), plus
  `<name>.offsets.npy` (int64, nlist + 1: where each list starts) when the index has lists;
- `lists-<tag>.npy`: the centroids (float32), when the index has lists;
- `dead-<tag>.npy`: (segment, row) pairs of rows replaced or removed since their segment was written;
- `stamp.json`, written last: {format, model_id, dim, count, generation, kind, lists, trained_on,
  segments: [{name, rows}], dead, files: {name: {size, crc32}}}.

A save writes new files under new names (a segment is never rewritten in place), fsyncs them and the
folder, then replaces the stamp; files the new stamp no longer names are removed after it. A crash
leaves the old stamp naming the old, complete set (new files it does not name are swept by the next
save), so what a stamp names is always whole. Checksums are computed from the bytes as they are
written, so a save reads nothing back.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import secrets
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..config import ensure_private_dir

FORMAT_VERSION = 2
STAMP_FILE = "stamp.json"
TEMP_MARK = ".tmp-"
CHUNK_ROWS = 16_384  # rows per write: bounds the temporary copies of a save
TAKE_ROWS = 64  # scattered rows read from a memory map between two releases of its pages (take_rows)
VERIFY_BLOCK = 1 << 22


def new_tag(generation: int) -> str:
    return f"{int(generation)}-{secrets.token_hex(3)}"


def make_private_folder(folder: Path) -> None:
    if not folder.exists():
        ensure_private_dir(folder)


def remove_temp_files(folder: Path) -> None:
    """Leftovers of a save that crashed; no other save can run (writers are serialized)."""
    for path in folder.iterdir():
        if path.name.startswith(".") and TEMP_MARK in path.name:
            path.unlink(missing_ok=True)


class _Writer:
    """A temp file (created 0600) that becomes `name` on commit; keeps the crc32 of what went in."""

    def __init__(self, folder: Path, name: str):
        self.folder, self.name = folder, name
        self.temp = folder / f".{name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
        self.file = os.fdopen(fd, "wb")
        self.crc, self.size = 0, 0

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        self.crc = zlib.crc32(view, self.crc)
        self.size += len(view)
        self.file.write(view)

    def commit(self) -> dict:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.temp, self.folder / self.name)
        return {"size": self.size, "crc32": f"{self.crc:08x}"}

    def abort(self) -> None:
        self.file.close()
        self.temp.unlink(missing_ok=True)


def write_file(folder: Path, name: str, parts: Iterable) -> dict:
    """Write `name` atomically from buffers; return its size and crc32 for the stamp."""
    writer = _Writer(folder, name)
    try:
        for part in parts:
            writer.write(part)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def npy_parts(array: np.ndarray | None, shape: tuple, dtype, chunks: Iterable[np.ndarray] | None = None):
    """The bytes of an .npy file of `shape`: its header, then `array` (or `chunks`) in row chunks."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    import io

    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, header)
    yield head.getvalue()
    if chunks is None:
        assert array is not None
        chunks = (array[start : start + CHUNK_ROWS] for start in range(0, len(array), CHUNK_ROWS))
    for chunk in chunks:
        yield np.ascontiguousarray(chunk, dtype=dtype)


def write_array(folder: Path, name: str, array: np.ndarray) -> dict:
    return write_file(folder, name, npy_parts(array, array.shape, array.dtype))


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_stamp(folder: Path, stamp: dict) -> None:
    write_file(folder, STAMP_FILE, [json.dumps(stamp, indent=1).encode()])
    fsync_folder(folder)


def read_stamp(folder: Path) -> dict:
    stamp = json.loads((Path(folder) / STAMP_FILE).read_text())
    if not isinstance(stamp, dict):
        raise ValueError("the stamp is not a JSON object")
    return stamp


def remove_unnamed(folder: Path, stamp: dict) -> None:
    """Files of earlier saves that this stamp no longer names."""
    keep = set(stamp.get("files", {})) | {STAMP_FILE}
    for path in folder.iterdir():
        if path.name not in keep and not path.name.startswith("."):
            path.unlink(missing_ok=True)


def check_sizes(folder: Path, stamp: dict) -> None:
    """Every named file is there with its size: cheap, at load (the checksums come later)."""
    for name, info in stamp["files"].items():
        if (folder / name).stat().st_size != info["size"]:
            raise ValueError(f"{name} has the wrong size")


def checksum_problems(folder: Path, stamp: dict) -> list[str]:
    """Files whose bytes no longer match their crc32 (read in blocks; zlib lets other threads run)."""
    problems = []
    for name, info in stamp["files"].items():
        crc = 0
        try:
            with open(folder / name, "rb") as file:
                while block := file.read(VERIFY_BLOCK):
                    crc = zlib.crc32(block, crc)
        except OSError as exc:
            problems.append(f"{name}: {exc}")
            continue
        if f"{crc:08x}" != info["crc32"]:
            problems.append(f"{name} fails its checksum")
    return problems


def load_ids(path: Path) -> np.ndarray:
    ids = np.load(path, allow_pickle=False)
    if ids.dtype != np.int64 or ids.ndim != 1:
        raise ValueError(f"{path.name} is not an int64 vector")
    return ids


def map_vectors(path: Path, rows: int, dim: int) -> np.ndarray:
    """The vectors of a segment as a read-only memory map: page cache, not process memory."""
    vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    if vectors.dtype != np.float32 or vectors.shape != (rows, dim):
        raise ValueError(f"{path.name} does not have the shape the stamp promises")
    return vectors


def take_rows(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """vectors[rows], with a memory map's pages given back every TAKE_ROWS rows. A fault maps the whole
    page-cache folio around it (up to 2 MB on recent kernels): 1024 rows scattered over a segment mapped
    750 MB here, 16k of them all of it. 64 rows at a time costs a pass about 13% more time."""
    if getattr(vectors, "_mmap", None) is None:
        return vectors[rows]
    out = np.empty((len(rows), vectors.shape[1]), vectors.dtype)
    for start in range(0, len(rows), TAKE_ROWS):
        out[start : start + TAKE_ROWS] = vectors[rows[start : start + TAKE_ROWS]]
        release_pages(vectors)
    return out


def release_pages(vectors: np.ndarray) -> None:
    """Drop this process's mappings of a memory map's pages (they stay in the page cache, and a later read
    maps them again). A pass over a whole segment (a rebuild, a retraining save) would otherwise leave
    every page it read counted in the process's RSS: 2 GB at a million, beside what it writes."""
    mapped = getattr(vectors, "_mmap", None)  # np.memmap's; RAM arrays have none
    if mapped is not None and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):
            mapped.madvise(mmap.MADV_DONTNEED)


def rows_in(path: Path) -> int | None:
    """The row count an .npy file's header declares (its first bytes only); None if unreadable."""
    try:
        return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
    except (OSError, ValueError, IndexError):
        return None


def segment_files(name: str, with_offsets: bool) -> dict[str, str]:
    files = {"ids": f"{name}.ids.npy", "vectors": f"{name}.vectors.npy"}
    return files | ({"offsets": f"{name}.offsets.npy"} if with_offsets else {})


def write_segment(
    folder: Path, name: str, ids: np.ndarray, chunks: Iterable[np.ndarray], dim: int, offsets: np.ndarray | None
) -> dict:
    """One segment's files from its ids and its vectors in row chunks (never all of them in memory at once).
    Returns {file name: {size, crc32}}."""
    names = segment_files(name, offsets is not None)
    written = {names["ids"]: write_array(folder, names["ids"], ids)}
    written[names["vectors"]] = write_file(
        folder, names["vectors"], npy_parts(None, (len(ids), dim), np.float32, chunks)
    )
    if offsets is not None:
        written[names["offsets"]] = write_array(folder, names["offsets"], offsets)
    return written


def open_segment(folder: Path, name: str, rows: int, dim: int, with_offsets: bool):
    """(ids, mapped vectors, offsets or None) of a saved segment."""
    names = segment_files(name, with_offsets)
    ids = load_ids(folder / names["ids"])
    if len(ids) != rows:
        raise ValueError(f"{names['ids']} holds {len(ids)} rows, the stamp says {rows}")
    offsets = load_ids(folder / names["offsets"]) if with_offsets else None
    if offsets is not None and (offsets[0] != 0 or offsets[-1] != rows or np.any(np.diff(offsets) < 0)):
        raise ValueError(f"{names['offsets']} does not cut {rows} rows into lists")
    return ids, map_vectors(folder / names["vectors"], rows, dim), offsets
