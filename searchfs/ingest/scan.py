"""Walking a root: which files are photos, and what one stat says about each.

The walk never writes, never follows a symlink out of its root, and never loops (each folder is
entered once, by device and inode). A folder that cannot be listed is reported, so that the indexer keeps
what it knew of it instead of sweeping it away.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ..paths import is_under
from ..records import FileStat

log = logging.getLogger(__name__)

# Photo and image formats we try to index. RAW formats carry a JPEG preview that the embedder uses.
# .mpo is a multi-picture JPEG (3D cameras, Nintendo 3DS, some phones): its first picture is used.
# SVG stays out: a vector drawing, not a photo, which Pillow cannot render (and rendering one safely is a
# job of its own: scripts, external references).
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .mpo .png .gif .webp .tif .tiff .bmp .heic .heif .hif .avif .jxl .psd .jp2 .j2k .jpf"
    " .jpx .ppm .pgm .pbm .pnm .tga .ico .dds .pcx"
    " .dng .nef .nrw .cr2 .cr3 .crw .arw .srf .sr2 .orf .rw2 .raf .pef .srw .x3f .3fr .erf .kdc .mos .mrw".split()
)
RAW_EXTENSIONS = frozenset(
    ".dng .nef .nrw .cr2 .cr3 .crw .arw .srf .sr2 .orf .rw2 .raf .pef .srw .x3f .3fr .erf .kdc .mos .mrw".split()
)

# Leading bytes of image formats, for files that have no extension at all.
_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"II*\x00",  # TIFF little-endian (also many RAWs)
    b"MM\x00*",  # TIFF big-endian
    b"BM",
    b"8BPS",  # PSD
    b"\x00\x00\x00\x0cjP  ",  # JPEG 2000
    b"\xff\x0a",  # JPEG XL codestream
    b"\x00\x00\x00\x0cJXL \r\n\x87\n",  # JPEG XL container
)


@dataclass
class Folder:
    """One listed folder of a root: its photos (with stats) and the subfolders entered from it."""

    relpath: bytes
    files: list[FileStat] = field(default_factory=list)


@dataclass
class ScanProblem:
    relpath: bytes
    reason: str


@dataclass(frozen=True)
class ScanRules:
    """Which names the scan and the watcher leave out: `exclude` patterns (fnmatch, matched against every
    path component) and hidden (dot) names unless `hidden`. The patterns are one compiled bytes regex: this
    runs for every name of every walk (eleven fnmatch calls a name were most of a rescan's time)."""

    exclude: Sequence[str] = ()
    hidden: bool = False
    _pattern: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        alternatives = [fnmatch.translate(p).encode("utf-8", "surrogateescape") for p in self.exclude]
        object.__setattr__(self, "_pattern", re.compile(b"|".join(alternatives) or rb"(?!)"))

    def skips(self, name: bytes) -> bool:
        return (not self.hidden and name.startswith(b".")) or self._pattern.match(name) is not None

    def keeps(self, relpath: bytes) -> bool:
        """No component of `relpath` (relative to its root) is left out."""
        return not any(self.skips(part) for part in relpath.split(b"/") if part)


def is_photo_name(name: bytes) -> bool:
    return os.path.splitext(name)[1].decode("ascii", "replace").lower() in IMAGE_EXTENSIONS


def looks_like_image(path: bytes) -> bool:
    """For extensionless files only: sniff the first bytes (one small read)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return False
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"avif", b"msf1"):
        return True
    return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def is_raw_name(name: bytes) -> bool:
    return os.path.splitext(name)[1].decode("ascii", "replace").lower() in RAW_EXTENSIONS


def is_candidate(abspath: bytes, name: bytes) -> bool:
    if is_photo_name(name):
        return True
    return b"." not in name.lstrip(b".") and looks_like_image(abspath)


def resolves_inside(root: bytes, relpath: bytes) -> bool:
    """Whether root/relpath, with every symlink resolved, stays inside the root (resolved too). Every path
    the daemon opens on anyone's behalf passes this first: a link to /elsewhere is never followed."""
    path = os.path.join(root, relpath) if relpath else root
    return is_under(os.path.realpath(path), os.path.realpath(root))


def walk(root: bytes, rules: ScanRules, problems: list[ScanProblem], start: bytes = b"") -> Iterator[Folder]:
    """Yield every folder of `root` (or of its subfolder `start`) with its photo files. Problems
    (unlistable folders) are appended to `problems`; the walk goes on."""
    root_real = os.path.realpath(root)
    if start and not resolves_inside(root, start):
        return  # a folder that is (or sits behind) a link out of the root: nothing of it is ours
    seen_dirs: set[tuple[int, int]] = set()
    stack = [start]
    while stack:
        rel = stack.pop()
        folder = Folder(rel)
        subdirs = _list_folder(root, root_real, rel, rules, seen_dirs, folder, problems)
        if subdirs is None:
            continue
        stack.extend(sorted(subdirs, reverse=True))
        yield folder


def _list_folder(root, root_real, rel, rules, seen_dirs, folder, problems):
    abspath = os.path.join(root, rel) if rel else root
    try:
        info = os.stat(abspath)
        key = (info.st_dev, info.st_ino)
        if key in seen_dirs:
            return None  # reached again through a symlink: already walked
        seen_dirs.add(key)
        entries = list(os.scandir(abspath))
    except OSError as exc:
        problems.append(ScanProblem(rel, f"cannot list folder: {exc.strerror or exc}"))
        return None
    subdirs = []
    for entry in entries:
        name = os.fsencode(entry.name)
        if rules.skips(name):
            continue
        child = os.path.join(rel, name) if rel else name
        try:
            kind = _entry_kind(entry, root_real)
            if kind == "dir":
                subdirs.append(child)
            elif kind == "file" and is_candidate(os.fsencode(entry.path), name):
                st = entry.stat(follow_symlinks=True)
                folder.files.append(FileStat(child, st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError as exc:
            problems.append(ScanProblem(child, f"cannot stat: {exc.strerror or exc}"))
    return subdirs


def _entry_kind(entry: os.DirEntry, root_real: bytes) -> str:
    """'dir', 'file' or 'other'. A symlink counts only when its target stays inside the root."""
    if entry.is_symlink():
        target = os.path.realpath(os.fsencode(entry.path))
        if not is_under(target, root_real):
            return "other"
        mode = os.stat(target).st_mode
    else:
        mode = entry.stat(follow_symlinks=False).st_mode
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "other"


def stat_photo(root: bytes, relpath: bytes, rules: ScanRules) -> FileStat | None:
    """Stat one path for a watch event: None when it is gone, excluded, or not a photo."""
    parts = relpath.split(b"/")
    if not rules.keeps(relpath) or not resolves_inside(root, relpath):
        return None
    abspath = os.path.join(root, relpath)
    try:
        st = os.stat(abspath)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or not is_candidate(abspath, parts[-1]):
        return None
    return FileStat(relpath, st.st_size, st.st_mtime_ns, st.st_ino)


def root_state(root: bytes) -> str | None:
    """None when the root can be walked, else why not (missing, not a folder, unreadable)."""
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return "folder is missing"
    except OSError as exc:
        return f"cannot reach folder: {exc.strerror or exc}"
    if not stat.S_ISDIR(st.st_mode):
        return "not a folder"
    if not os.access(root, os.R_OK | os.X_OK):
        return "folder is not readable"
    return None
