"""Quarantine reasons that say what a file really is and why it cannot be used.

Pillow's exceptions say how decoding failed, not what the file is: an arithmetic-coded or DNL JPEG
comes out as "broken data stream", a 16-bit CMYK Photoshop file as "cannot identify image file". So when
decoding fails, the file's own header is read (a few small reads; nothing is decoded) and the reason is
built from it, in one of these forms:

* ``not an image (HTML text)``: no image format's signature at all; a guess at what it is instead.
* ``unsupported <format> variant: <what>``: a sound file in a variant Pillow cannot decode.
* ``<format> needs <package>``: a format whose Pillow plugin is not installed.
* ``damaged <format>: <what>``: the header itself is broken (no frame, impossible sizes or lengths).
* ``truncated <format>: ...`` / ``corrupt <format> data: ...``: the header is sound, the data is not.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

# Pillow's format names, as a user knows them.
FORMAT_NAMES = {
    "JPEG": "JPEG",
    "MPO": "MPO (multi-picture JPEG)",
    "PSD": "Photoshop",
    "JXL": "JPEG XL",
    "JPEG2000": "JPEG 2000",
    "WEBP": "WebP",
}
JXL_PLUGIN_MISSING = "JPEG XL needs the imagecodecs package (pip install imagecodecs)"
HEIF_PLUGIN_MISSING = "HEIF needs the pillow-heif package (pip install pillow-heif)"

_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")
_JXL_CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
_TRUNCATED = ("truncat", "end of file", "end of stream", "premature end", "not enough data")

# JPEG start-of-frame markers 0xC0-0xCF (less DHT C4, JPG C8, DAC CC) and what each one codes.
_SOF_KINDS = {
    0: "baseline",
    1: "extended",
    2: "progressive",
    3: "lossless",
    5: "hierarchical",
    6: "hierarchical progressive",
    7: "hierarchical lossless",
    9: "arithmetic coding",
    10: "progressive arithmetic coding",
    11: "lossless arithmetic coding",
    13: "hierarchical arithmetic coding",
    14: "hierarchical progressive arithmetic coding",
    15: "hierarchical lossless arithmetic coding",
}
_JPEG_DECODABLE = {0, 1, 2, 9, 10}  # what libjpeg(-turbo) behind Pillow decodes
_PSD_MODES = {0: "bitmap", 1: "greyscale", 2: "indexed", 3: "RGB", 4: "CMYK", 7: "multichannel", 8: "duotone", 9: "Lab"}
_TIFF_COMPRESSIONS = {
    6: "old-style JPEG",
    7: "JPEG",
    32767: "Sony camera RAW",
    32769: "Epson camera RAW",
    32770: "Samsung camera RAW",
    34712: "JPEG 2000",
    34713: "Nikon camera RAW",
    34892: "lossy DNG JPEG",
    52546: "JPEG XL",
    65000: "Kodak camera RAW",
    65535: "Pentax camera RAW",
}
_TIFF_PHOTOMETRIC = {0: "greyscale", 1: "greyscale", 2: "RGB", 3: "palette", 4: "mask", 5: "CMYK", 6: "YCbCr", 8: "Lab"}
_TIFF_SAMPLE_FORMATS = {2: "signed ", 3: "float "}


def format_name(pillow_format: str | None) -> str:
    return FORMAT_NAMES.get(pillow_format or "", pillow_format or "image")


def identify(head: bytes) -> str | None:
    """The image format a file's first bytes announce (Pillow's name), whatever Pillow makes of the rest."""
    if head.startswith(b"\xff\xd8"):
        return "JPEG"
    if head.startswith((b"II*\x00", b"MM\x00*", b"IIRO", b"IIU\x00")):  # TIFF, and Olympus/Panasonic RAW
        return "TIFF"
    if head.startswith(b"8BPS"):
        return "PSD"
    if head.startswith((b"\xff\x0a", _JXL_CONTAINER)):
        return "JXL"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        return "AVIF" if head[8:12] in (b"avif", b"avis") else "HEIF" if head[8:12] in _HEIF_BRANDS else None
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "JPEG2000"
    return None


def header_problem(handle: BinaryIO, fmt: str | None) -> str | None:
    """What the file's header says is wrong or unsupported, read from `handle`; None when it looks sound."""
    inspect = {"JPEG": _jpeg_problem, "MPO": _jpeg_problem, "PSD": _psd_problem, "TIFF": _tiff_problem}.get(fmt or "")
    if inspect is None:
        return None
    handle.seek(0)
    try:
        return inspect(handle)
    except (OSError, struct.error, ValueError):
        return None


def failure_reason(exc: BaseException, fmt: str | None, opened: bool) -> str:
    """The reason for an exception raised while decoding a file of format `fmt` whose header looked sound."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    name = format_name(fmt)
    if isinstance(exc, EOFError) or any(word in text.lower() for word in _TRUNCATED):
        return f"truncated {name}: {text}"
    return f"corrupt {name} data: {text}" if opened else f"damaged {name}: {text}"


# ---------------------------------------------------------------------------------------------- JPEG


def jpeg_frame_kind(handle: BinaryIO) -> int | None:
    """The n of the first SOFn marker (0 baseline, 2 progressive, 9 arithmetic, ...), None if not found."""
    handle.seek(0)
    try:
        problem, frame = _jpeg_walk(handle)
    except (OSError, struct.error):
        return None
    return frame[0] if frame else None


def _jpeg_problem(handle: BinaryIO) -> str | None:
    problem, frame = _jpeg_walk(handle)
    return problem or (_frame_problem(*frame, handle) if frame else None)


def _jpeg_walk(handle: BinaryIO) -> tuple[str | None, tuple[int, bytes] | None]:
    """Walk the markers up to the first scan: (what is wrong with them or None, (SOF n, SOF body) or None)."""
    if handle.read(2) != b"\xff\xd8":
        return None, None
    frame = None
    truncated = "truncated JPEG: ends inside its headers, before any image data"
    for _ in range(1000):  # a real JPEG has a few dozen segments before its first scan
        prefix = handle.read(2)
        if len(prefix) < 2:
            return truncated, frame
        if prefix[0] != 0xFF or prefix[1] == 0x00:  # FF00 is a stuffed byte, not a marker
            if handle.tell() == 4:  # Pillow takes a file for a JPEG only when a marker follows SOI
                return "damaged JPEG: no marker after the start-of-image marker", frame
            handle.seek(-1, 1)  # garbage between segments: libjpeg skips it to the next marker, so do we
            if not _skip_to_marker(handle):
                return truncated, frame
            continue
        marker = prefix[1]
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:
            handle.seek(-1 if marker == 0xFF else 0, 1)  # a fill byte, or a marker without a length
            continue
        if marker == 0xD9:
            return ("damaged JPEG: metadata only, no frame" if frame is None else "damaged JPEG: no image data"), frame
        if marker == 0xDA:
            return ("damaged JPEG: image data before any frame header" if frame is None else None), frame
        length = handle.read(2)
        size = struct.unpack(">H", length)[0] if len(length) == 2 else 0
        if len(length) < 2:
            return truncated, frame
        if size < 2:
            return f"damaged JPEG: segment FF{marker:02X} has an impossible length ({size})", frame
        body = handle.read(size - 2)
        if len(body) < size - 2:
            return f"truncated or damaged JPEG: segment FF{marker:02X} runs past the end of the file", frame
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and frame is None:
            frame = (marker - 0xC0, body)
    return None, frame


def _skip_to_marker(handle: BinaryIO, limit: int = 1 << 20) -> bool:
    chunk = handle.read(limit)
    found = chunk.find(b"\xff")
    if found < 0:
        return False
    handle.seek(found - len(chunk), 1)
    return True


def _frame_problem(kind: int, body: bytes, handle: BinaryIO) -> str | None:
    if len(body) < 6:
        return "damaged JPEG: frame header too short"
    precision, height, width, components = body[0], *struct.unpack(">HH", body[1:5]), body[5]
    if kind not in _JPEG_DECODABLE:
        return f"unsupported JPEG variant: {_SOF_KINDS[kind]}"
    if precision != 8:
        if precision in (12, 16):
            return f"unsupported JPEG variant: {precision}-bit samples"
        return f"damaged JPEG: frame header says {precision}-bit samples"
    if components not in (1, 3, 4):
        return f"damaged JPEG: frame header says {components} colour components"
    if width == 0:
        return "damaged JPEG: frame header says width 0"
    if height == 0:
        if _has_dnl(handle):
            return "unsupported JPEG variant: height set by a DNL marker after the image data"
        return "damaged JPEG: frame header says height 0"
    return None


def _has_dnl(handle: BinaryIO, limit: int = 64 << 20) -> bool:
    """A DNL marker (FFDC) in the scan data gives the height that the frame header left at 0."""
    carry, read = b"", 0
    while read < limit and (chunk := handle.read(1 << 20)):
        if b"\xff\xdc" in carry + chunk:
            return True
        carry, read = chunk[-1:], read + len(chunk)
    return False


# ---------------------------------------------------------------------------------------------- Photoshop


def _psd_problem(handle: BinaryIO) -> str | None:
    from PIL import PsdImagePlugin

    header = handle.read(26)
    if len(header) < 26:
        return "truncated Photoshop document: ends inside its header"
    version, channels, height, width, depth, mode = struct.unpack(">4xH6xHIIHH", header)
    if version == 2:
        return "unsupported Photoshop variant: large document format (PSB)"
    if version != 1:
        return f"damaged Photoshop document: version {version}"
    name = _PSD_MODES.get(mode)
    if name is None:
        return f"damaged Photoshop document: colour mode {mode}"
    if (mode, depth) not in PsdImagePlugin.MODES:
        return f"unsupported Photoshop variant: {depth}-bit {name}"
    if channels < PsdImagePlugin.MODES[(mode, depth)][1]:
        return f"damaged Photoshop document: {channels} channels for {name}"
    if width == 0 or height == 0:
        return f"damaged Photoshop document: {width}x{height} pixels"
    return None


# ---------------------------------------------------------------------------------------------- TIFF


def _tiff_problem(handle: BinaryIO) -> str | None:
    from PIL import TiffImagePlugin

    tags = _tiff_ifd0(handle)
    if tags is None:
        return "damaged TIFF: no readable first image directory"
    compression = tags.get(259, 1)
    if compression not in TiffImagePlugin.COMPRESSION_INFO:
        what = _TIFF_COMPRESSIONS.get(compression, "unknown to Pillow")
        return f"unsupported TIFF variant: compression {compression} ({what})"
    if 256 not in tags or 257 not in tags:
        return "no image size in the TIFF's first image directory (as in some camera RAW files)"
    try:  # Pillow's own test of photometric x bits x samples: does it know a pixel mode for them?
        handle.seek(0)
        TiffImagePlugin.TiffImageFile(handle)
    except SyntaxError as exc:
        if "pixel mode" in str(exc) or "data organization" in str(exc):
            return f"unsupported TIFF variant: {_tiff_pixels(tags)}"
    return None


def _tiff_pixels(tags: dict[int, int]) -> str:
    """E.g. '16-bit CMYK', 'float 32-bit RGB', from the first values of the IFD's tags."""
    photometric = _TIFF_PHOTOMETRIC.get(tags.get(262, -1), f"photometric {tags.get(262, '?')}")
    kind = _TIFF_SAMPLE_FORMATS.get(tags.get(339, 1), "")
    return f"{kind}{tags.get(258, 1)}-bit {photometric}, {tags.get(277, 1)} samples per pixel"


def _tiff_ifd0(handle: BinaryIO) -> dict[int, int] | None:
    """Tag -> first value for the short/long tags of the first IFD (enough to describe the pixels)."""
    header = handle.read(8)
    if len(header) < 8 or header[:2] not in (b"II", b"MM"):
        return None
    order = "<" if header[:2] == b"II" else ">"
    handle.seek(struct.unpack(order + "I", header[4:8])[0])
    count_bytes = handle.read(2)
    if len(count_bytes) < 2:
        return None
    count = struct.unpack(order + "H", count_bytes)[0]
    entries = handle.read(12 * min(count, 500))
    tags = {}
    for i in range(len(entries) // 12):
        tag, kind, _count, value = struct.unpack(order + "HHI4s", entries[i * 12 : i * 12 + 12])
        if kind == 3:  # SHORT: the first value sits in the first two bytes
            tags[tag] = struct.unpack(order + "H", value[:2])[0]
        elif kind == 4:
            tags[tag] = struct.unpack(order + "I", value)[0]
    return tags


# ---------------------------------------------------------------------------------------------- not images


def sniff(head: bytes) -> str:
    """A short guess at what a non-image file is, for the quarantine reason."""
    lowered = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in lowered[:512]:
        return "HTML text"
    if b"<svg" in lowered[:1024]:
        return "SVG drawing, which searchfs does not render"
    signatures = {
        b"%pdf": "PDF document",
        b"pk\x03\x04": "ZIP archive",
        b"<?xml": "XML text",
        b"{": "JSON text",
    }
    for magic, what in signatures.items():
        if lowered.startswith(magic):
            return what
    if head[4:8] == b"ftyp":
        return f"MP4/QuickTime container of brand {head[8:12].decode('latin-1')!r}, not a still image"
    if head and _looks_like_text(head):
        return "text"
    return "unrecognised format"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return sum(ch.isprintable() or ch in "\r\n\t" for ch in text) >= 0.95 * len(text)
