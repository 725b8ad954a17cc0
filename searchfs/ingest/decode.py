"""Image files to upright RGB pictures for the model, or a one-line reason why not.

`load_image` (a file) and `decode_image` (bytes in memory, a camera RAW's preview) return an 8-bit RGB
picture with EXIF orientation applied, or raise `ImageError` whose message becomes the file's quarantine
reason. Nothing here imports torch or open_clip: decoding runs in worker threads beside the model and
must stay cheap to import.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import struct
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError

log = logging.getLogger(__name__)

PathLike = bytes | str | os.PathLike

# We enforce the pixel limit ourselves (per call); Pillow's warning between 1x and 2x its limit is noise.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, OSError) else text


_HEIF_LOCK = threading.Lock()
_heif_registered = False


def register_heif() -> None:
    """Teach Pillow HEIC/HEIF once (AVIF is Pillow's own since 11.2; pillow-heif here has no AVIF decoder)."""
    global _heif_registered
    with _HEIF_LOCK:
        if _heif_registered:
            return
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
            if hasattr(pillow_heif, "register_avif_opener"):
                from PIL import features

                if not features.check("avif"):
                    pillow_heif.register_avif_opener()
        except ImportError:
            log.warning("pillow-heif is not installed: HEIC/HEIF photos cannot be decoded")
        _heif_registered = True


def pixel_limit(max_pixels: int = 0) -> int | None:
    """The effective limit: ours when given, else the one Pillow raises at (2 x MAX_IMAGE_PIXELS)."""
    if max_pixels > 0:
        return max_pixels
    return None if Image.MAX_IMAGE_PIXELS is None else 2 * Image.MAX_IMAGE_PIXELS


def load_image(path: PathLike, max_pixels: int = 0, target: int = 224) -> Image.Image:
    """Decode a file into an upright RGB picture for the model; ImageError(one-line reason) otherwise.

    `target` is the model's input side: JPEGs are decoded at the smallest DCT scale that keeps both sides
    at least 2 x target, which is 4-10x faster on camera files and invisible after the model's resize.
    The file is read inside a `with` block, so no handle outlives the call.
    """
    with _image_errors():
        with open(path, "rb") as handle:
            return _decode(handle, max_pixels, target)


def decode_image(data: bytes, max_pixels: int = 0, target: int = 224, orientation: int | None = None) -> Image.Image:
    """As load_image, for a picture held in memory (a camera RAW's embedded preview). `orientation`, when
    given, is the EXIF orientation to apply instead of the picture's own (a RAW's preview carries none)."""
    with _image_errors():
        return _decode(io.BytesIO(data), max_pixels, target, orientation)


def _decode(handle, max_pixels: int, target: int, orientation: int | None = None) -> Image.Image:
    register_heif()
    if handle.seek(0, io.SEEK_END) == 0:
        raise ImageError("empty file")
    handle.seek(0)
    image = _open(handle)
    _check_size(image, pixel_limit(max_pixels))
    if image.format == "JPEG":
        image.draft("RGB", (target * 2, target * 2))
    image.load()
    return to_rgb(upright(image, orientation))


@contextlib.contextmanager
def _image_errors():
    """Whatever decoding raises becomes an ImageError with a one-line reason."""
    try:
        yield
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # raised again by a plugin, e.g. a GIF frame's canvas
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{claimed.group(1)} pixels" if claimed else "image"
        raise ImageError(f"too large: {pixels} exceeds the {pixel_limit()}-pixel limit") from exc
    except OSError as exc:
        if exc.errno is not None:  # the OS failed us (missing, permission, EIO); Pillow's own errors have none
            raise ImageError(f"cannot read file: {exc.strerror or exc}") from exc
        kind = "truncated image" if "truncat" in str(exc).lower() else "corrupt image"
        raise ImageError(f"{kind}: {one_line(exc)}") from exc
    except MemoryError as exc:
        raise ImageError("too large: out of memory while decoding") from exc
    except Exception as exc:  # Pillow plugins raise all sorts (SyntaxError, struct.error, ValueError...)
        raise ImageError(f"cannot decode: {one_line(exc)}") from exc


def _open(handle: io.BufferedReader) -> Image.Image:
    try:
        return Image.open(handle)
    except UnidentifiedImageError as exc:
        handle.seek(0)
        raise ImageError(f"not an image ({sniff(handle.read(2048))})") from exc
    except Image.DecompressionBombError:
        # Reopen without Pillow's check: only headers are parsed, and _check_size then applies our own
        # limit (which may be higher than Pillow's global) and says how large the image claims to be.
        return _open_without_bomb_check(handle)


def _open_without_bomb_check(handle: io.BufferedReader) -> Image.Image:
    """Open with the plugin directly: the settings allow more pixels than Pillow's global limit, and
    changing that global would change it for every other thread too. We check the size ourselves after."""
    Image.init()
    handle.seek(0)
    prefix = handle.read(16)
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        accepted = accept(prefix) if accept else True
        if not accepted or isinstance(accepted, str):
            continue
        handle.seek(0)
        with contextlib.suppress(SyntaxError, IndexError, TypeError, struct.error):
            return factory(handle, "")
    raise ImageError("not an image (unrecognised format)")


def _check_size(image: Image.Image, limit: int | None) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(f"corrupt image: {width}x{height} pixels")
    if limit is not None and width * height > limit:
        raise ImageError(f"too large: {width}x{height} pixels exceeds the {limit}-pixel limit")


def sniff(head: bytes) -> str:
    """A short guess at what a non-image file is, for the quarantine reason."""
    lowered = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in lowered[:512]:
        return "HTML text"
    signatures = {
        b"%pdf": "PDF document",
        b"pk\x03\x04": "ZIP archive",
        b"<?xml": "XML text",
        b"{": "JSON text",
        b"8bps": "Photoshop document",
        b"\xff\x0a": "JPEG XL, unsupported",
        b"\x00\x00\x00\x0cjxl ": "JPEG XL, unsupported",
        b"ii*\x00": "unsupported TIFF variant or camera RAW",
        b"mm\x00*": "unsupported TIFF variant or camera RAW",
    }
    for magic, what in signatures.items():
        if lowered.startswith(magic):
            return what
    if head[4:8] == b"ftyp":
        return "damaged or unsupported HEIF/MP4 container"
    if head and _looks_like_text(head):
        return "text"
    return "unrecognised format"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return sum(ch.isprintable() or ch in "\r\n\t" for ch in text) >= 0.95 * len(text)


def upright(image: Image.Image, orientation: int | None = None) -> Image.Image:
    """Apply EXIF orientation (the picture's own, or `orientation` when given); a broken orientation tag
    or EXIF block leaves the picture as stored."""
    try:
        if orientation:
            image.getexif()[0x0112] = orientation  # exif_transpose reads it from there
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # noqa: BLE001 - malformed EXIF raises anything from SyntaxError to struct.error
        log.debug("ignoring unusable EXIF orientation: %s", exc)
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB: transparency over white (what a viewer shows), deep greys rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _deep_to_l(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageError(f"unsupported colour mode {image.mode}") from exc


def _deep_to_l(image: Image.Image) -> Image.Image:
    """16/32-bit greys: Pillow's convert clips at 255 (all white), so scale to 0-255 instead."""
    values = np.asarray(image, dtype=np.float32)
    top = float(values.max()) if values.size else 0.0
    if image.mode == "F" or top > 65535:
        low = float(values.min())
        values = (values - low) / max(top - low, 1e-6) * 255.0
    elif top > 255:
        values = values / 257.0
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")
