"""Test images made on the spot: solid or patterned pictures with EXIF written by Pillow.

Nothing third-party is committed; every test builds the photos it needs.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from PIL import Image

# EXIF tag numbers (IFD0, Exif sub-IFD, GPS sub-IFD).
MAKE, MODEL, ORIENTATION, DATETIME = 0x010F, 0x0110, 0x0112, 0x0132
IMAGE_DESCRIPTION = 0x010E
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
EXPOSURE, FNUMBER, ISO, DATETIME_ORIGINAL, FOCAL, LENS_MODEL = 0x829A, 0x829D, 0x8827, 0x9003, 0x920A, 0xA434


def make_photo(
    path: os.PathLike | str | bytes,
    color: tuple[int, int, int] = (200, 30, 30),
    size: tuple[int, int] = (96, 64),
    *,
    seed: int | None = None,
    make: str | None = None,
    model: str | None = None,
    lens: str | None = None,
    taken: str | None = None,  # "YYYY:MM:DD HH:MM:SS"
    iso: int | None = None,
    fnumber: float | None = None,
    exposure: float | None = None,
    focal: float | None = None,
    orientation: int | None = None,
    description: str | None = None,
    gps: tuple[float, float] | None = None,
    fmt: str | None = None,
) -> Path:
    """Write an image and return its path. `seed` adds noise so that images of one colour differ."""
    image = Image.new("RGB", size, color)
    if seed is not None:
        rng = random.Random(seed)
        pixels = image.load()
        for _ in range(size[0] * size[1] // 4):
            x, y = rng.randrange(size[0]), rng.randrange(size[1])
            pixels[x, y] = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    exif = Image.Exif()
    if make:
        exif[MAKE] = make
    if model:
        exif[MODEL] = model
    if orientation:
        exif[ORIENTATION] = orientation
    if description:
        exif[IMAGE_DESCRIPTION] = description
    sub = exif.get_ifd(EXIF_IFD)
    if taken:
        sub[DATETIME_ORIGINAL] = taken
    if iso:
        sub[ISO] = iso
    if fnumber:
        sub[FNUMBER] = fnumber
    if exposure:
        sub[EXPOSURE] = exposure
    if focal:
        sub[FOCAL] = focal
    if lens:
        sub[LENS_MODEL] = lens
    if gps:
        lat, lon = gps
        exif.get_ifd(GPS_IFD).update(
            {1: "N" if lat >= 0 else "S", 2: _dms(abs(lat)), 3: "E" if lon >= 0 else "W", 4: _dms(abs(lon))}
        )
    target = Path(os.fsdecode(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    fmt = fmt or {".png": "PNG", ".webp": "WEBP", ".gif": "GIF", ".tif": "TIFF"}.get(target.suffix.lower(), "JPEG")
    with open(os.fsencode(path) if isinstance(path, bytes) else target, "wb") as handle:
        image.save(handle, fmt, exif=exif.tobytes()) if fmt in ("JPEG", "PNG", "WEBP", "TIFF") else image.save(
            handle, fmt
        )
    return target


def _dms(value: float) -> tuple[float, float, float]:
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = round(((value - degrees) * 60 - minutes) * 60, 4)
    return (float(degrees), float(minutes), seconds)


def make_library(root: Path, count: int = 6) -> list[Path]:
    """A small photo folder with distinct pictures and varied EXIF, for end-to-end tests."""
    cameras = [("Canon", "Canon EOS 40D"), ("NIKON CORPORATION", "NIKON D70"), ("Apple", "iPhone 12")]
    colors = [(220, 20, 20), (20, 200, 20), (20, 20, 220), (230, 230, 30), (30, 220, 220), (200, 30, 200)]
    paths = []
    for i in range(count):
        make, model = cameras[i % len(cameras)]
        paths.append(
            make_photo(
                root / f"album{i % 2}" / f"IMG_{i:04d}.jpg",
                colors[i % len(colors)],
                seed=i,
                make=make,
                model=model,
                taken=f"{2018 + i % 4}:0{1 + i % 9}:1{i % 10} 1{i % 10}:00:00",
                iso=100 * (i + 1),
                fnumber=2.8 if i % 2 else 5.6,
                exposure=1 / 250,
                focal=35.0,
            )
        )
    return paths


def jpeg_bytes(color: tuple[int, int, int], size: tuple[int, int] = (320, 240), seed: int | None = None) -> bytes:
    import io

    buffer = io.BytesIO()
    picture = Image.new("RGB", size, color)
    if seed is not None:
        rng = random.Random(seed)
        pixels = picture.load()
        for _ in range(size[0] * size[1] // 4):
            pixels[rng.randrange(size[0]), rng.randrange(size[1])] = (
                rng.randrange(256),
                rng.randrange(256),
                rng.randrange(256),
            )
    picture.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_raw_like(
    path, preview: bytes, orientation: int = 1, make: str = "NIKON CORPORATION", model: str = "NIKON D850"
) -> Path:
    """A file built like a camera RAW: a TIFF whose main image (IFD0) is sensor data in a compression no
    decoder here knows (Nikon's 34713), and whose IFD1 carries a JPEG preview. exiftool reads it as a
    NEF; Pillow cannot open it. No real RAW is committed, and none can be made without a camera."""
    import struct

    make_b, model_b = make.encode() + b"\0", model.encode() + b"\0"
    strip = bytes(16 * 16 * 2)
    n0, n1 = 11, 3
    ifd0_at = 8
    ifd1_at = ifd0_at + 2 + n0 * 12 + 4
    make_at = ifd1_at + 2 + n1 * 12 + 4
    model_at = make_at + len(make_b)
    strip_at = model_at + len(model_b)
    preview_at = strip_at + len(strip)

    def entry(tag, kind, count, value):
        return struct.pack("<HHII", tag, kind, count, value)

    ifd0 = (
        struct.pack("<H", n0)
        + b"".join(
            [
                entry(0x100, 4, 1, 16),
                entry(0x101, 4, 1, 16),
                entry(0x102, 3, 1, 16),
                entry(0x103, 3, 1, 34713),
                entry(0x106, 3, 1, 32803),
                entry(0x10F, 2, len(make_b), make_at),
                entry(0x110, 2, len(model_b), model_at),
                entry(0x111, 4, 1, strip_at),
                entry(0x112, 3, 1, orientation),
                entry(0x115, 3, 1, 1),
                entry(0x117, 4, 1, len(strip)),
            ]
        )
        + struct.pack("<I", ifd1_at)
    )
    ifd1 = (
        struct.pack("<H", n1)
        + b"".join(
            [
                entry(0x103, 3, 1, 6),
                entry(0x201, 4, 1, preview_at),
                entry(0x202, 4, 1, len(preview)),
            ]
        )
        + struct.pack("<I", 0)
    )
    target = Path(os.fsdecode(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"II*\0" + struct.pack("<I", ifd0_at) + ifd0 + ifd1 + make_b + model_b + strip + preview)
    return target
