"""searchfs.ingest.decode: files to upright RGB pictures, or a true one-line reason. Real Pillow, no model."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from photos import make_photo
from PIL import Image

from searchfs.errors import ImageError
from searchfs.ingest.decode import PixelBudget, decode_image, jxl_size, load_image, to_rgb
from searchfs.ingest.scan import is_candidate


def halves(size=(96, 64)) -> Image.Image:
    """A picture whose rotation shows: red left half, blue right, a yellow stripe on top."""
    image = Image.new("RGB", size, (220, 30, 30))
    image.paste((30, 30, 220), (size[0] // 2, 0, size[0], size[1]))
    image.paste((250, 250, 20), (0, 0, size[0], size[1] // 5))
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def close(a: Image.Image, b: Image.Image, tolerance: float = 3.0) -> bool:
    """Same size and on average within `tolerance` levels per channel (lossy codecs differ slightly)."""
    return a.size == b.size and float(np.abs(pixels(a) - pixels(b)).mean()) <= tolerance


# ---------------------------------------------------------------------------------------------- orientation


def test_orientation_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": exif_transpose turns the stored pixels by 270 degrees
    halves().save(tmp_path / "stored.png", exif=exif.tobytes())
    expected = halves().transpose(Image.Transpose.ROTATE_270)
    np.testing.assert_array_equal(pixels(load_image(tmp_path / "stored.png")), pixels(expected))
    halves().save(tmp_path / "plain.png")
    assert load_image(tmp_path / "plain.png").size == (96, 64)


def test_orientation_applied_to_jpeg(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    halves((400, 300)).save(tmp_path / "stored.jpg", quality=95, exif=exif.tobytes())
    image = load_image(tmp_path / "stored.jpg")
    assert image.size == (300, 400)
    assert close(image, halves((400, 300)).transpose(Image.Transpose.ROTATE_270))


def test_orientation_given_for_bytes_replaces_the_pictures_own(tmp_path):
    """A RAW's preview carries no orientation of its own; the RAW's is passed in."""
    halves().save(tmp_path / "preview.png")
    data = (tmp_path / "preview.png").read_bytes()
    assert decode_image(data).size == (96, 64)
    turned = decode_image(data, orientation=8)
    np.testing.assert_array_equal(pixels(turned), pixels(halves().transpose(Image.Transpose.ROTATE_90)))


@pytest.mark.parametrize("orientation", [0, 9, 255])
def test_broken_orientation_tag_is_ignored(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    halves().save(tmp_path / "odd.jpg", exif=exif.tobytes())
    halves().save(tmp_path / "plain.jpg")
    np.testing.assert_array_equal(pixels(load_image(tmp_path / "odd.jpg")), pixels(load_image(tmp_path / "plain.jpg")))


def test_garbage_exif_block_is_ignored(tmp_path):
    halves().save(tmp_path / "bad.jpg", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff garbage")
    assert close(load_image(tmp_path / "bad.jpg"), halves())


# ---------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("suffix", [".png", ".webp", ".gif", ".tif", ".jpg", ".bmp", ".ppm", ".tga"])
def test_formats(tmp_path, suffix):
    path = tmp_path / f"photo{suffix}"
    halves((120, 80)).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and close(image, halves((120, 80)), tolerance=6), suffix


def test_heic(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    if not pillow_heif.libheif_info().get("HEIF"):
        pytest.skip("pillow-heif has no HEIF encoder here")
    path = tmp_path / "IMG_0001.HEIC"
    halves((160, 120)).save(path, format="HEIF", quality=95)
    assert close(load_image(path), halves((160, 120)), tolerance=6)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (64, 64), color) for color in [(200, 20, 20), (20, 20, 200), (20, 200, 20)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert close(load_image(tmp_path / "anim.gif"), frames[0], tolerance=1)


def test_modes_convert_to_rgb(tmp_path):
    base = halves((80, 80))
    base.convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.png")
    base.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    base.convert("CMYK").save(tmp_path / "cmyk.tif")
    base.convert("L").save(tmp_path / "grey.png")
    base.convert("LA").save(tmp_path / "grey_alpha.png")
    base.convert("1").save(tmp_path / "bilevel.png")
    for name in ["palette.png", "cmyk.jpg", "cmyk.tif", "grey.png", "grey_alpha.png", "bilevel.png"]:
        image = load_image(tmp_path / name)
        assert image.mode == "RGB" and image.size == (80, 80), name
    assert close(load_image(tmp_path / "palette.png"), base, tolerance=2)
    assert close(load_image(tmp_path / "cmyk.tif"), base, tolerance=1)
    grey = np.asarray(base.convert("L"))
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "grey_alpha.png"))[..., 0], grey)


def test_transparency_is_composited_over_white(tmp_path):
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.new("RGBA", (64, 64), (255, 0, 0, 255)).save(tmp_path / "opaque.png")
    assert load_image(tmp_path / "clear.png").getpixel((5, 5)) == (255, 255, 255)
    assert load_image(tmp_path / "opaque.png").getpixel((5, 5)) == (255, 0, 0)


def test_sixteen_bit_grey_is_rescaled_not_clipped(tmp_path):
    grey = np.tile(np.arange(0, 256, 4, dtype=np.uint16), (64, 1))
    Image.fromarray(grey * 257).save(tmp_path / "grey16.png")  # I;16 PNG
    with Image.open(tmp_path / "grey16.png") as check:
        assert check.mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "grey16.png"))[..., 1], grey.astype(np.uint8))


def test_jpeg_draft_decodes_big_photos_small(tmp_path):
    halves((4000, 3000)).save(tmp_path / "big.jpg", quality=90)
    image = load_image(tmp_path / "big.jpg", target=224)
    assert image.mode == "RGB"
    assert min(image.size) >= 448 and image.size[0] < 4000  # reduced DCT scale, still above the model size


def test_mpo_uses_the_first_picture(tmp_path):
    first, second = halves((640, 480)), Image.new("RGB", (640, 480), (20, 200, 20))
    first.save(tmp_path / "DSCF0001.MPO", "MPO", save_all=True, append_images=[second])
    with Image.open(tmp_path / "DSCF0001.MPO") as check:
        assert check.format == "MPO" and check.n_frames == 2
    assert is_candidate(os.fsencode(tmp_path / "DSCF0001.MPO"), b"DSCF0001.MPO")
    assert close(load_image(tmp_path / "DSCF0001.MPO", target=160), first, tolerance=4)
    assert load_image(tmp_path / "DSCF0001.MPO", target=80).size == (320, 240)  # drafted like a JPEG


def test_pcx(tmp_path):
    halves().save(tmp_path / "old.pcx")
    assert is_candidate(os.fsencode(tmp_path / "old.pcx"), b"old.pcx")
    assert close(load_image(tmp_path / "old.pcx"), halves(), tolerance=0)


def jxl_bytes(picture: Image.Image, container: bool = False, **options) -> bytes:
    """A JPEG XL file of `picture`, written by libjxl (imagecodecs); `container` wraps it in ISO-BMFF boxes."""
    import imagecodecs

    code = imagecodecs.jpegxl_encode(np.asarray(picture), **options)
    if not container:
        return code
    signature = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
    ftyp = struct.pack(">I4s4sI4s", 20, b"ftyp", b"jxl ", 0, b"jxl ")
    return signature + ftyp + struct.pack(">I4s", 8 + len(code), b"jxlc") + code


@pytest.mark.parametrize("container", [False, True])
def test_jpeg_xl(tmp_path, container):
    (tmp_path / "photo.jxl").write_bytes(jxl_bytes(halves((160, 120)), container, level=95))
    assert close(load_image(tmp_path / "photo.jxl"), halves((160, 120)), tolerance=4)
    # Extensionless: the scan sniffs both the bare codestream and the ISO-BMFF container.
    (tmp_path / "photo").write_bytes((tmp_path / "photo.jxl").read_bytes())
    assert is_candidate(os.fsencode(tmp_path / "photo"), b"photo")


def test_jpeg_xl_size_is_read_before_decoding(tmp_path):
    """libjxl decodes a whole picture at once; the pixel limit must apply before, from the SizeHeader."""
    for size in [(64, 48), (1920, 1080), (123, 77), (40, 5000), (513, 300)]:
        for container in (False, True):
            assert jxl_size(jxl_bytes(Image.new("RGB", size), container, effort=1)) == size
    (tmp_path / "p.jxl").write_bytes(jxl_bytes(Image.new("RGB", (513, 300)), effort=1))
    with pytest.raises(ImageError, match=r"too large: 513x300 pixels exceeds the 1000-pixel limit"):
        load_image(tmp_path / "p.jxl", max_pixels=1000)


# ---------------------------------------------------------------------------------------------- big pictures


@pytest.mark.parametrize(
    "mode, suffix",
    [("RGB", ".png"), ("P", ".png"), ("RGBA", ".webp"), ("I;16", ".png"), ("CMYK", ".tif"), ("1", ".png")],
)
def test_big_pictures_decode_small(tmp_path, mode, suffix):
    """Every format is reduced to about 2 x the model side; JPEG by draft, the others by an integer factor."""
    base = halves((2400, 1800))
    picture = base.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)
    picture.save(tmp_path / f"big{suffix}")
    image = load_image(tmp_path / f"big{suffix}", target=224)
    assert image.mode == "RGB"
    assert 448 <= min(image.size) < 2 * 448 and image.size == (600, 450)  # factor 4
    with Image.open(tmp_path / f"big{suffix}") as full:  # the same, converted at full size then reduced
        assert close(image, to_rgb(full).reduce(4), tolerance=2), mode


def test_reduced_pictures_keep_orientation_and_transparency(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    halves((2000, 1000)).save(tmp_path / "turned.png", exif=exif.tobytes())
    assert load_image(tmp_path / "turned.png", target=100).size == (200, 400)  # factor 5, then rotated
    clear = Image.new("RGBA", (2000, 1000), (255, 0, 0, 0))
    clear.paste((0, 0, 255, 255), (0, 0, 1000, 1000))
    clear.save(tmp_path / "alpha.png")
    palette = Image.new("P", (2000, 1000), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255])
    palette.paste(1, (0, 0, 1000, 1000))
    palette.save(tmp_path / "palette.png", transparency=0)
    for name in ("alpha.png", "palette.png"):
        image = load_image(tmp_path / name, target=100)
        assert image.size == (400, 200), name
        assert image.getpixel((300, 100)) == (255, 255, 255) and image.getpixel((100, 100)) == (0, 0, 255), name


def test_pixel_budget_runs_a_huge_decode_alone():
    budget = PixelBudget(100)
    order = []
    inside = threading.Event()
    release = threading.Event()

    def hold(name, pixels, wait=None):
        with budget.claim(pixels):
            order.append((name, budget.used))
            if wait:
                inside.set()
                release.wait(5)

    first = threading.Thread(target=hold, args=("small", 60, True))
    first.start()
    assert inside.wait(5)
    second = threading.Thread(target=hold, args=("huge", 500))
    second.start()
    second.join(0.3)
    assert second.is_alive() and budget.used == 60  # waits: 60 + 500 > 100
    with budget.claim(0):  # nothing to budget: never waits
        pass
    release.set()
    first.join(5)
    second.join(5)
    assert order == [("small", 60), ("huge", 500)] and budget.used == 0


# ---------------------------------------------------------------------------------------------- broken files


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 30)) + chunk(b"IEND", b"")
    )


def write_broken(folder: Path) -> dict[str, str]:
    """Broken files and the start of the reason each must give."""
    good = make_photo(folder / "source.jpg", seed=7, size=(320, 240)).read_bytes()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "random.jpg").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (folder / "page.jpg").write_text("<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head></html>\n")
    (folder / "huge.png").write_bytes(png_claiming(100000, 100000))
    (folder / "notes.png").write_text("just some notes, not a picture\n")
    return {
        "empty.jpg": "empty file",
        "truncated.jpg": "truncated JPEG: ",
        "random.jpg": "not an image (unrecognised format)",
        "page.jpg": "not an image (HTML text)",
        "huge.png": "too large: 100000x100000 pixels exceeds the 178956970-pixel limit",
        "notes.png": "not an image (text)",
    }


def test_broken_files_give_reasons(tmp_path):
    for name, reason in write_broken(tmp_path).items():
        with pytest.raises(ImageError) as caught:
            load_image(tmp_path / name)
        assert str(caught.value).startswith(reason), (name, str(caught.value))
        assert "\n" not in str(caught.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ImageError, match="cannot read file"):
        load_image(tmp_path / "gone.jpg")
    with pytest.raises(ImageError, match="cannot read file"):
        load_image(tmp_path)  # a directory


def test_max_pixels_per_call(tmp_path, monkeypatch):
    path = make_photo(tmp_path / "p.jpg", size=(96, 64))
    with pytest.raises(ImageError, match=r"too large: 96x64 pixels exceeds the 5000-pixel limit"):
        load_image(path, max_pixels=5000)
    # A limit above Pillow's global one is honoured without touching the global.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="exceeds the 2000-pixel limit"):
        load_image(path)
    assert load_image(path, max_pixels=10_000).size == (96, 64)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_decoding_imports_neither_torch_nor_open_clip():
    code = "import sys, searchfs.ingest.decode; print(sorted({'torch', 'open_clip'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
