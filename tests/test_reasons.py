"""Quarantine reasons say what a file really is: each case is a file built here, decoded by real Pillow."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_decode import close, halves

from searchfs.errors import ImageError
from searchfs.ingest.decode import load_image
from searchfs.ingest.reasons import JXL_PLUGIN_MISSING


def reason(path: Path) -> str:
    with pytest.raises(ImageError) as caught:
        load_image(path)
    text = str(caught.value)
    assert "\n" not in text and len(text) < 300
    return text


def jpeg(size=(96, 64)) -> bytes:
    buffer = io.BytesIO()
    halves(size).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def patch_sof(data: bytes, marker: int | None = None, **fields) -> bytes:
    """A JPEG with its SOF0 marker or fields (precision, height, width) rewritten."""
    at = data.index(b"\xff\xc0")
    out = bytearray(data)
    if marker is not None:
        out[at + 1] = marker
    if "precision" in fields:
        out[at + 4] = fields["precision"]
    if "height" in fields:
        out[at + 5 : at + 7] = struct.pack(">H", fields["height"])
    return bytes(out)


# ---------------------------------------------------------------------------------------------- JPEG


@pytest.mark.parametrize(
    "marker, what",
    [(0xC3, "lossless"), (0xC5, "hierarchical"), (0xCB, "lossless arithmetic coding"), (0xCE, "hierarchical")],
)
def test_jpeg_variants_libjpeg_lacks(tmp_path, marker, what):
    (tmp_path / "x.jpg").write_bytes(patch_sof(jpeg(), marker))
    assert reason(tmp_path / "x.jpg").startswith(f"unsupported JPEG variant: {what}")


def test_twelve_bit_jpeg(tmp_path):
    (tmp_path / "x.jpg").write_bytes(patch_sof(jpeg(), precision=12))
    assert reason(tmp_path / "x.jpg") == "unsupported JPEG variant: 12-bit samples"


def test_dnl_jpeg_and_zero_height(tmp_path):
    data = patch_sof(jpeg(), height=0)
    end = data.rindex(b"\xff\xd9")
    (tmp_path / "dnl.jpg").write_bytes(data[:end] + b"\xff\xdc\x00\x04\x00\x40" + data[end:])
    (tmp_path / "zero.jpg").write_bytes(data)
    assert reason(tmp_path / "dnl.jpg") == "unsupported JPEG variant: height set by a DNL marker after the image data"
    assert reason(tmp_path / "zero.jpg").startswith("damaged JPEG: ")


def test_jpeg_without_a_frame_or_marker(tmp_path):
    data = jpeg()
    frame = data.index(b"\xff\xdb")  # the first table: everything before it is SOI + APP0 (JFIF)
    (tmp_path / "meta.jpg").write_bytes(data[:frame] + b"\xff\xd9")
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8" + b"\x00junk" + data[2:])
    (tmp_path / "header.jpg").write_bytes(data[:frame])
    assert reason(tmp_path / "meta.jpg") == "damaged JPEG: metadata only, no frame"
    assert reason(tmp_path / "junk.jpg") == "damaged JPEG: no marker after the start-of-image marker"
    assert reason(tmp_path / "header.jpg").startswith("truncated JPEG: ends inside its headers")


def test_truncated_jpeg_data(tmp_path):
    data = jpeg((320, 240))
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    assert reason(tmp_path / "cut.jpg").startswith("truncated JPEG: ")


@pytest.mark.skipif(not shutil.which("cjpeg") or not shutil.which("djpeg"), reason="no libjpeg-turbo-progs")
def test_arithmetic_jpeg_over_64_kib_decodes(tmp_path):
    """libjpeg cannot suspend inside arithmetic decoding; Pillow feeds 64 KiB at a time unless told."""
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 600, 3), dtype=np.uint8))
    picture.save(tmp_path / "source.ppm")
    with open(tmp_path / "arith.jpg", "wb") as out:
        subprocess.run(["cjpeg", "-arithmetic", "-quality", "95", str(tmp_path / "source.ppm")], stdout=out, check=True)
    assert (tmp_path / "arith.jpg").stat().st_size > 65536
    with Image.open(tmp_path / "arith.jpg") as plain, pytest.raises(OSError):
        plain.load()  # what Pillow alone does with it
    with open(tmp_path / "reference.ppm", "wb") as out:  # libjpeg-turbo's own decoding of it
        subprocess.run(["djpeg", str(tmp_path / "arith.jpg")], stdout=out, check=True)
    with Image.open(tmp_path / "reference.ppm") as reference:
        assert close(load_image(tmp_path / "arith.jpg", target=300), reference.convert("RGB"), tolerance=1)


# ---------------------------------------------------------------------------------------------- Photoshop


def psd(mode: int, depth: int, channels: int, size=(10, 12), version: int = 1) -> bytes:
    """A flat Photoshop file: header, three empty sections, raw composite planes of zeros."""
    width, height = size
    header = b"8BPS" + struct.pack(">H6xHIIHH", version, channels, height, width, depth, mode)
    planes = bytes(channels * width * height * depth // 8)
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + planes


def test_photoshop_variants(tmp_path):
    (tmp_path / "rgb.psd").write_bytes(psd(3, 8, 3))
    (tmp_path / "cmyk16.psd").write_bytes(psd(4, 16, 4))
    (tmp_path / "grey32.psd").write_bytes(psd(1, 32, 1))
    (tmp_path / "big.psb").write_bytes(psd(3, 8, 3, version=2))
    assert load_image(tmp_path / "rgb.psd").size == (10, 12)  # the builder makes files Pillow reads
    assert reason(tmp_path / "cmyk16.psd") == "unsupported Photoshop variant: 16-bit CMYK"
    assert reason(tmp_path / "grey32.psd") == "unsupported Photoshop variant: 32-bit greyscale"
    assert reason(tmp_path / "big.psb") == "unsupported Photoshop variant: large document format (PSB)"


# ---------------------------------------------------------------------------------------------- TIFF


def tiff(tags: dict[int, int], pixels: bytes = bytes(4096)) -> bytes:
    """A little-endian one-strip TIFF of 8x8 with the given SHORT tags (the strip follows the IFD)."""
    tags = {256: 8, 257: 8, 278: 8, 279: len(pixels), 273: 0, **tags}
    data_at = 8 + 2 + 12 * len(tags) + 4
    tags[273] = data_at
    entries = b"".join(
        struct.pack("<HHI", tag, 4, 1) + struct.pack("<I", value)
        if tag in (273, 279)
        else struct.pack("<HHIHH", tag, 3, 1, value, 0)
        for tag, value in sorted(tags.items())
    )
    return b"II*\x00" + struct.pack("<IH", 8, len(tags)) + entries + b"\0\0\0\0" + pixels


def test_tiff_variants(tmp_path):
    (tmp_path / "grey.tif").write_bytes(tiff({258: 8, 259: 1, 262: 1, 277: 1}))
    (tmp_path / "float.tif").write_bytes(tiff({258: 32, 259: 1, 262: 2, 277: 3, 339: 3}))
    (tmp_path / "raw.tif").write_bytes(tiff({258: 16, 259: 32767, 262: 32803, 277: 1}))
    (tmp_path / "samples.tif").write_bytes(tiff({258: 8, 259: 1, 262: 1, 277: 60000}))
    assert load_image(tmp_path / "grey.tif").size == (8, 8)
    assert reason(tmp_path / "float.tif") == "unsupported TIFF variant: float 32-bit RGB, 3 samples per pixel"
    assert reason(tmp_path / "raw.tif") == "unsupported TIFF variant: compression 32767 (Sony camera RAW)"
    # Pillow logs this one at ERROR; it belongs in the reason, not on a terminal.
    assert reason(tmp_path / "samples.tif") == (
        "damaged TIFF: Invalid value for samples per pixel "
        "(decoder said: PIL.TiffImagePlugin: More samples per pixel than can be decoded: 60000)"
    )


# ---------------------------------------------------------------------------------------------- others


def test_not_images_and_damaged_containers(tmp_path):
    (tmp_path / "drawing.png").write_text('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>\n')
    (tmp_path / "clip.heic").write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(64))
    (tmp_path / "broken.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00\x00\x00\x06x")
    assert reason(tmp_path / "drawing.png") == "not an image (SVG drawing, which searchfs does not render)"
    assert reason(tmp_path / "clip.heic").startswith("not an image (MP4/QuickTime container of brand 'isom'")
    assert reason(tmp_path / "broken.heic").startswith(("damaged HEIF: ", "truncated HEIF: "))


def test_jpeg_xl_without_its_decoder_says_how_to_get_it(tmp_path):
    path = tmp_path / "photo.jxl"
    path.write_bytes(b"\xff\x0a\xfa\x1f" + bytes(60))  # a codestream header; the reason comes before decoding
    code = (
        "import sys; sys.modules['imagecodecs'] = None\n"  # what a missing package looks like to import
        "from searchfs.ingest.decode import load_image\n"
        f"try:\n    load_image({str(path)!r})\nexcept Exception as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == JXL_PLUGIN_MISSING
    assert "pip install imagecodecs" in JXL_PLUGIN_MISSING
