"""Image files to small upright RGB pictures for the model, or a one-line reason why not.

`load_image` (a file) and `decode_image` (bytes in memory, a camera RAW's preview) return an 8-bit RGB
picture with EXIF orientation applied, or raise `ImageError` whose message becomes the file's quarantine
reason (`reasons.py` words it from the file's header). What decoders complain about on the way goes to
the file's notes and the log (`noise.py`). Nothing here imports torch or open_clip.

Memory bound. The model needs a picture of about 2 x its input side (2 x 224 px), so nothing larger is
kept: JPEG and MPO decode at the smallest DCT scale that keeps both sides >= 2 x target (libjpeg's
draft mode, 1/2 to 1/8); every other format decodes in full and is reduced by an integer factor to that
size at once, in horizontal strips of at most STRIP_PIXELS (each strip first put in a mode that averages
right: palette to RGB(A), 16-bit to 32-bit), so no full-size copy or conversion is ever made; orientation
and the conversion to RGB apply to the reduced picture. Full-size decodes share a PIXEL_BUDGET
across all decoding threads: they run together while their pixels add up to at most PIXEL_BUDGET, and a
larger one runs alone. So decoding holds at most max(PIXEL_BUDGET, the largest file's pixels) x 4 bytes
of full-size pixels (4 bytes is the widest Pillow mode) plus one strip per thread: with the default
pixel limit (Pillow's 178,956,970) at most 716 MB, whatever the input. JPEG XL is the exception in one
way: libjxl decodes a whole picture at once, so its size is read from the codestream header beforehand.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import re
import struct
import threading
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError, one_line
from . import noise
from .reasons import (
    HEIF_PLUGIN_MISSING,
    JXL_PLUGIN_MISSING,
    failure_reason,
    header_problem,
    identify,
    jpeg_frame_kind,
    sniff,
)

log = logging.getLogger(__name__)

PathLike = bytes | str | os.PathLike
MIB = 1 << 20
PIXEL_BUDGET = 64_000_000  # full-size pixels decoding at once across threads (a larger picture runs alone)
STRIP_PIXELS = 4_000_000  # pixels per strip when reducing a full-size decode
# Bytes handed to the decoder per call. Pillow's default, 64 KiB, makes a 4 MB JPEG take the GIL back 60
# times, and each time can wait up to the 5 ms switch interval behind a busy Python thread (importing
# torch, hashing, SQLite): measured here, 2 decodes/s instead of 19 beside one busy thread.
DECODE_BLOCK = 64 * MIB
_DEEP_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_REDUCIBLE = {"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "I", "F"}  # reduce() averages these right

# We enforce the pixel limit ourselves (per call); Pillow's warning between 1x and 2x its limit is noise.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

# Pillow allocates a picture's pixels in blocks of 16 MiB. Once glibc has seen a block of that size freed,
# it serves later ones from per-thread arenas and keeps the memory: each decode thread then holds a
# full-size picture's worth for good (measured: 1.3 GB instead of 0.7 GB for four 13000x13000 PNGs on two
# threads). Blocks over 32 MiB are always mapped on their own and returned when freed.
Image.core.set_block_size(64 * MIB)

__all__ = ["decode_image", "load_image", "pixel_limit", "sniff", "to_rgb", "upright"]


# ---------------------------------------------------------------------------------------------- plugins

_PLUGIN_LOCK = threading.Lock()
_plugins: dict[str, bool] = {}


def register_heif() -> bool:
    """Teach Pillow HEIC/HEIF once (AVIF is Pillow's own since 11.2; pillow-heif here has no AVIF decoder)."""
    with _PLUGIN_LOCK:
        if "heif" not in _plugins:
            try:
                import pillow_heif

                pillow_heif.register_heif_opener()
                if hasattr(pillow_heif, "register_avif_opener"):
                    from PIL import features

                    if not features.check("avif"):
                        pillow_heif.register_avif_opener()
                _plugins["heif"] = True
            except ImportError:
                log.warning("pillow-heif is not installed: HEIC/HEIF photos cannot be decoded")
                _plugins["heif"] = False
        return _plugins["heif"]


def register_jxl() -> bool:
    """Teach Pillow JPEG XL once, through imagecodecs (ingest/jxl.py; importing it registers the format)."""
    with _PLUGIN_LOCK:
        if "jxl" not in _plugins:
            try:
                from . import jxl  # noqa: F401

                _plugins["jxl"] = True
            except ImportError:
                log.warning("imagecodecs is not installed: JPEG XL photos cannot be decoded")
                _plugins["jxl"] = False
        return _plugins["jxl"]


def pixel_limit(max_pixels: int = 0) -> int | None:
    """The effective limit: ours when given, else the one Pillow raises at (2 x MAX_IMAGE_PIXELS)."""
    if max_pixels > 0:
        return max_pixels
    return None if Image.MAX_IMAGE_PIXELS is None else 2 * Image.MAX_IMAGE_PIXELS


# ---------------------------------------------------------------------------------------------- entry points


def load_image(path: PathLike, max_pixels: int = 0, target: int = 224) -> Image.Image:
    """Decode a file into an upright RGB picture with sides of about 2 x `target` (never smaller, unless
    the file is), or raise ImageError(one-line reason). The file is read inside a `with` block, so no
    handle outlives the call."""
    with noise.decoding(path) as notes, _image_errors(notes):
        with open(path, "rb") as handle:
            return _decode(handle, max_pixels, target)


def decode_image(data: bytes, max_pixels: int = 0, target: int = 224, orientation: int | None = None) -> Image.Image:
    """As load_image, for a picture held in memory (a camera RAW's embedded preview). `orientation`, when
    given, is the EXIF orientation to apply instead of the picture's own (a RAW's preview carries none)."""
    with noise.decoding("(embedded picture)") as notes, _image_errors(notes):
        return _decode(io.BytesIO(data), max_pixels, target, orientation)


def _decode(handle, max_pixels: int, target: int, orientation: int | None = None) -> Image.Image:
    size = handle.seek(0, io.SEEK_END)
    if size == 0:
        raise ImageError("empty file")
    handle.seek(0)
    head = handle.read(65536)
    limit = pixel_limit(max_pixels)
    early = jxl_size(head) if identify(head) == "JXL" else None  # its plugin decodes everything at open
    if early:
        _check_size(early, limit)
    with _budget.claim(early[0] * early[1] if early else 0):
        image = _open(handle, head)
        try:
            _check_size(image.size, limit)
            with _budget.claim(0 if early else _draft(image, handle, size, target)):
                picture, own = _load_small(image, target)
        except ImageError:
            raise
        except Exception as exc:  # noqa: BLE001 - Pillow plugins raise anything; the header says why
            raise ImageError(_reason(exc, handle, image.format)) from exc
    return to_rgb(upright(picture, orientation or own))


@contextlib.contextmanager
def _image_errors(notes: list[str]) -> Iterator[None]:
    """Whatever decoding raises becomes an ImageError with a one-line reason, plus what the decoders said."""
    try:
        yield
    except ImageError as exc:
        raise _with_notes(str(exc), notes) from exc
    except Exception as exc:  # noqa: BLE001 - raised outside a known format's decoding: the file, or Pillow
        raise _with_notes(_reason(exc, None, None), notes) from exc


def _with_notes(reason: str, notes: list[str]) -> ImageError:
    extra = [text for text in notes if text not in reason]
    if extra:
        reason = f"{reason} (decoder said: {'; '.join(extra)})"
    return ImageError(reason if len(reason) <= 280 else reason[:277] + "...")


def _reason(exc: BaseException, handle, fmt: str | None) -> str:
    if isinstance(exc, Image.DecompressionBombError):  # raised again by a plugin, e.g. a GIF frame's canvas
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{claimed.group(1)} pixels" if claimed else "image"
        return f"too large: {pixels} exceeds the {pixel_limit()}-pixel limit"
    if isinstance(exc, OSError) and exc.errno is not None:  # the OS failed us; Pillow's own errors have none
        return f"cannot read file: {exc.strerror or exc}"
    if isinstance(exc, MemoryError):
        return "too large: out of memory while decoding"
    if handle is None:
        return f"cannot decode: {one_line(exc)}"
    return header_problem(handle, fmt) or failure_reason(exc, fmt, opened=True)


# ---------------------------------------------------------------------------------------------- opening


def _open(handle, head: bytes) -> Image.Image:
    fmt = identify(head)
    register_heif()
    register_jxl()
    handle.seek(0)
    try:
        return Image.open(handle)
    except UnidentifiedImageError as exc:
        raise ImageError(_unidentified(handle, head, fmt)) from exc
    except Image.DecompressionBombError:
        # Reopen without Pillow's check: only headers are parsed, and _check_size then applies our own
        # limit (which may be higher than Pillow's global) and says how large the image claims to be.
        return _open_without_bomb_check(handle)
    except Exception as exc:  # noqa: BLE001 - a plugin's own exception while reading headers
        raise ImageError(header_problem(handle, fmt) or failure_reason(exc, fmt, opened=False)) from exc


def _unidentified(handle, head: bytes, fmt: str | None) -> str:
    """Why Pillow could not open a file: a plugin missing, a broken or unsupported header, or not an image."""
    if fmt == "JXL" and not register_jxl():
        return JXL_PLUGIN_MISSING
    if fmt == "HEIF" and not register_heif():
        return HEIF_PLUGIN_MISSING
    problem = header_problem(handle, fmt)
    if problem or fmt is None:
        return problem or f"not an image ({sniff(head[:2048])})"
    error = _plugin_error(handle, fmt)
    return failure_reason(error, fmt, opened=False) if error else f"damaged {fmt}: Pillow cannot open it"


def _plugin_error(handle, fmt: str) -> BaseException | None:
    """The exception the format's own plugin raises (Image.open keeps it to itself)."""
    Image.init()
    factory = Image.OPEN.get(fmt, (None, None))[0]
    if factory is None:
        return None
    handle.seek(0)
    try:
        factory(handle, "").close()
    except Exception as exc:  # noqa: BLE001 - exactly what we want to report
        return exc
    return None


def _open_without_bomb_check(handle) -> Image.Image:
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


def _check_size(size: tuple[int, int], limit: int | None) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"damaged image: {width}x{height} pixels")
    if limit is not None and width * height > limit:
        raise ImageError(f"too large: {width}x{height} pixels exceeds the {limit}-pixel limit")


def jxl_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG XL SizeHeader (bare codestream or in a jxlc/jxlp box), else None."""
    code = head if head.startswith(b"\xff\x0a") else _jxl_codestream(head)
    if code is None or len(code) < 12:
        return None
    bits, position = int.from_bytes(code[2:14], "little"), 0

    def read(count: int) -> int:
        nonlocal position
        value = (bits >> position) & ((1 << count) - 1)
        position += count
        return value

    small = read(1)
    height = 8 * (1 + read(5)) if small else 1 + read((9, 13, 18, 30)[read(2)])
    ratio = read(3)
    if ratio:
        numerator, denominator = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}[ratio]
        return height * numerator // denominator, height
    return (8 * (1 + read(5)) if small else 1 + read((9, 13, 18, 30)[read(2)])), height


def _jxl_codestream(head: bytes) -> bytes | None:
    position = 0
    while position + 8 <= len(head):
        size, kind = struct.unpack(">I4s", head[position : position + 8])
        start = position + (16 if size == 1 else 8)
        if kind == b"jxlc":
            return head[start:]
        if kind == b"jxlp":
            return head[start + 4 :]
        if size == 1:
            size = struct.unpack(">Q", head[position + 8 : position + 16])[0]
        if size < 8:
            return None
        position += size
    return None


# ---------------------------------------------------------------------------------------------- loading small


class PixelBudget:
    """Full-size decodes across threads: admitted in arrival order while their pixels fit `total`;
    one larger than `total` waits until it can run alone. Claims of 0 pixels pass at once."""

    def __init__(self, total: int):
        self.total = total
        self.used = 0
        self._tickets = itertools.count()
        self._serving = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def claim(self, pixels: int) -> Iterator[None]:
        if pixels <= 0:
            yield
            return
        with self._cond:
            ticket = next(self._tickets)
            self._cond.wait_for(lambda: self._serving == ticket and (not self.used or self.used + pixels <= self.total))
            self._serving += 1
            self.used += pixels
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self.used -= pixels
                self._cond.notify_all()


_budget = PixelBudget(PIXEL_BUDGET)


def _draft(image: Image.Image, handle, size: int, target: int) -> int:
    """Ask JPEGs for the DCT scale we need; the number of pixels the decode will then produce. `size`: the
    file's, in bytes."""
    block = min(size, DECODE_BLOCK)
    if image.format in ("JPEG", "MPO"):
        image.draft("RGB", (target * 2, target * 2))
        if jpeg_frame_kind(handle) in (9, 10):
            # libjpeg's arithmetic decoder cannot suspend for more input, and Pillow feeds it a block at a
            # time: give it the whole file in one piece, or any arithmetic JPEG over one block fails.
            block = size
    block = max(block, getattr(image, "decodermaxblock", 65536))
    setattr(image, "decodermaxblock", block)  # noqa: B010 - Pillow reads it as an instance attribute
    return image.size[0] * image.size[1]


def _load_small(image: Image.Image, target: int) -> tuple[Image.Image, int | None]:
    """Decode (the first frame), then reduce to about 2 x target. Also returns the EXIF orientation,
    read before reducing: the reduced copy no longer carries the file's tags."""
    with noise.c_output() if image.format == "TIFF" else contextlib.nullcontext():
        image.load()
    factor = min(image.size) // (2 * target)
    if factor < 2:
        return image, None
    orientation, small = _orientation(image), _reduce(image, factor)
    image.close()  # frees the full-size pixels now, while this decode still holds its pixel budget
    return small, orientation


def _reduce(image: Image.Image, factor: int) -> Image.Image:
    """image.reduce(factor), strip by strip, each strip first put in a mode reduce() averages correctly."""
    width, height = image.size
    rows = factor * max(1, STRIP_PIXELS // (width * factor))
    out = None
    for top in range(0, height, rows):
        strip = _reducible(image.crop((0, top, width, min(height, top + rows)))).reduce(factor)
        if out is None:
            out = Image.new(strip.mode, (-(-width // factor), -(-height // factor)))
        out.paste(strip, (0, top // factor))
    assert out is not None  # an image has at least one row
    return out


def _reducible(strip: Image.Image) -> Image.Image:
    if strip.mode in ("P", "PA") or "transparency" in strip.info:
        return strip.convert("RGBA" if strip.mode == "PA" or "transparency" in strip.info else "RGB")
    if strip.mode.startswith("I;16"):
        return strip.convert("I")
    if strip.mode not in _REDUCIBLE:  # 1, HSV, ...: an 8-bit mode that averages
        return strip.convert("L" if strip.mode == "1" else "RGB")
    return strip


def _orientation(image: Image.Image) -> int | None:
    try:
        value = image.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - malformed EXIF raises anything; the picture stays as stored
        return None
    return value if isinstance(value, int) and 2 <= value <= 8 else None


# ---------------------------------------------------------------------------------------------- pixels


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
    if image.mode in _DEEP_MODES:
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
