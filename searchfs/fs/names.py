"""Names shown in the mount: escaping of values and query texts, result entry names, probe names.

Escaping (values in `exif/<key>=<value>` and query texts in `query/<text>`)
--------------------------------------------------------------------------
A path segment cannot hold "/", so a value like the lens "EF 50mm f/1.8" is shown as
"EF 50mm f∕1.8": "/" becomes U+2215 DIVISION SLASH, which looks the same in a file manager.
To keep the mapping reversible, "%" is written "%25" and a literal U+2215 "%E2%88%95".
Reading a name back (`unescape_segment`) turns U+2215 into "/" and then decodes %XX sequences, so
"f%2F1.8" typed in a shell works too; a "%" not followed by two hex digits is kept as it is
("100%" stays "100%"). `unescape_segment(escape_segment(s)) == s` for every str.

Result entry names
------------------
`<rank>_<original basename>`, the rank zero-padded to the width of the folder's limit ("07_IMG_1.jpg"
with limit 50), so that a plain sort is the rank order and the extension survives (thumbnails, MIME).
Names are bytes and keep non-UTF-8 basenames unchanged. A name longer than 255 bytes loses the middle
of its stem, replaced by "…", keeping the extension; the cut falls between characters (a byte that is
not valid UTF-8 counts as one character), so a UTF-8 sequence is never split.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

NAME_MAX = 255  # bytes in one path segment, as statvfs says; longer names answer ENAMETOOLONG
SLASH_STANDIN = "\u2215"  # DIVISION SLASH
ELLIPSIS = "\u2026"

# Names file managers, shells and OSes probe for on their own. They never name a query, a value or a
# result, so they answer ENOENT at once and never cost a search. Compared case-insensitively.
PROBE_NAMES = frozenset(
    n.lower()
    for n in (
        "autorun.inf",
        "desktop.ini",
        "Thumbs.db",
        "ehthumbs.db",
        "ehthumbs_vista.db",
        "folder.jpg",
        "folder.jpeg",
        "folder.png",
        "folder.gif",
        "cover.jpg",
        "cover.png",
        "albumartsmall.jpg",
        "@eaDir",
        "$RECYCLE.BIN",
        "RECYCLER",
        "System Volume Information",
        "lost+found",
        "Icon\r",
        "__MACOSX",
        "BDMV",
        "VIDEO_TS",
        "AUDIO_TS",
        "DCIM",
    )
)
_PROBE_PREFIXES = ("albumart",)  # AlbumArt_{GUID}_Large.jpg and friends


# Empty files in the mount's root that desktop indexers honour: GNOME's Tracker/LocalSearch skips a folder
# holding either (its `ignored-directories-with-content`), and so never crawls the search tree.
INDEXER_MARKERS = (b".nomedia", b".trackerignore")


def is_probe(name: bytes) -> bool:
    """True for names that are never a query, value or result: dot-names, trash, thumbnail caches,
    desktop/autorun files and folder art. Manifest names (`.results.tsv`) are handled by the caller."""
    if not name or name.startswith(b"."):
        return True
    lowered = name.decode("utf-8", "surrogateescape").lower()
    if lowered in PROBE_NAMES:
        return True
    return any(lowered.startswith(p) and lowered.endswith((".jpg", ".png")) for p in _PROBE_PREFIXES)


# ---------------------------------------------------------------------------------------------- escaping


def escape_segment(text: str) -> str:
    """A str as one path segment: "%" -> "%25", U+2215 -> "%E2%88%95", "/" -> U+2215, NUL -> "%00"."""
    return text.replace("%", "%25").replace(SLASH_STANDIN, "%E2%88%95").replace("/", SLASH_STANDIN).replace("\0", "%00")


_PERCENT = re.compile(rb"(?:%[0-9A-Fa-f]{2})+")


def unescape_segment(segment: str) -> str:
    """Inverse of `escape_segment`; also accepts "%2F" for "/". Lenient with stray "%"."""
    raw = segment.replace(SLASH_STANDIN, "/").encode("utf-8", "surrogateescape")
    decoded = _PERCENT.sub(lambda m: unquote_to_bytes(m.group(0)), raw)
    return decoded.decode("utf-8", "surrogateescape")


def fsdecode(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


def fsencode(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


# ---------------------------------------------------------------------------------------- result names


def rank_width(limit: int) -> int:
    return len(str(max(1, limit)))


def _split_ext(base: str) -> tuple[str, str]:
    dot = base.rfind(".")
    if dot <= 0 or len(base) - dot > 16:  # no extension, a dot-name, or a "suffix" too long to be one
        return base, ""
    return base[:dot], base[dot:]


def _blen(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def fit_name(prefix: str, basename: bytes, limit: int = NAME_MAX) -> bytes:
    """`prefix + basename` as bytes, shortened in the middle of the stem to at most `limit` bytes."""
    base = fsdecode(basename)
    whole = prefix + base
    if _blen(whole) <= limit:
        return fsencode(whole)
    stem, ext = _split_ext(base)
    budget = limit - _blen(prefix) - _blen(ext) - _blen(ELLIPSIS)
    if budget < 2:  # absurd extension: cut the whole basename instead
        stem, ext = base, ""
        budget = limit - _blen(prefix) - _blen(ELLIPSIS)
    head_budget = (budget + 1) // 2
    tail_budget = budget - head_budget
    head: list[str] = []
    used = 0
    for ch in stem:
        size = _blen(ch)
        if used + size > head_budget:
            break
        head.append(ch)
        used += size
    tail: list[str] = []
    used_tail = 0
    for ch in reversed(stem[len(head) :]):
        size = _blen(ch)
        if used_tail + size > tail_budget + (head_budget - used):
            break
        tail.append(ch)
        used_tail += size
    name = prefix + "".join(head) + ELLIPSIS + "".join(reversed(tail)) + ext
    out = fsencode(name)
    assert len(out) <= limit, (len(out), name)
    return out


def result_names(ranks_and_basenames: list[tuple[int, bytes]], width: int) -> list[bytes]:
    """Unique entry names `<rank>_<basename>` for one result folder, in the given order."""
    names: list[bytes] = []
    used: set[bytes] = set()
    for position, (rank, basename) in enumerate(ranks_and_basenames, start=1):
        if rank < 1:
            rank = position
        name = fit_name(f"{rank:0{width}d}_", basename)
        if name in used:  # a backend that repeats ranks: fall back on the position, then a counter
            name = fit_name(f"{position:0{width}d}_", basename)
            n = 2
            while name in used:
                name = fit_name(f"{position:0{width}d}_{n}_", basename)
                n += 1
        used.add(name)
        names.append(name)
    return names


ENTRY_NAME = re.compile(rb"^[0-9]+_.")


def looks_like_entry(name: bytes) -> bool:
    """Cheap test before a search: result entries always start with digits and "_"."""
    return ENTRY_NAME.match(name) is not None
