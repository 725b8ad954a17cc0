"""JPEG XL for Pillow, decoded by imagecodecs (BSD-licensed libjxl bindings).

Pillow has no JPEG XL decoder of its own, and the Pillow plugin on PyPI is GPL-3.0 while searchfs is
MIT, so this small plugin decodes through imagecodecs instead. Importing the module registers it (as
decode.register_jxl does, once). libjxl decodes a whole picture in one call, so the picture is decoded
when Pillow loads it; decode.py reads its size from the codestream header before that, to apply the pixel
limit first.
"""

from __future__ import annotations

import io

import imagecodecs
import numpy as np
from PIL import Image, ImageFile

CODESTREAM = b"\xff\x0a"
CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def _accept(prefix: bytes) -> bool:
    return prefix.startswith((CODESTREAM, CONTAINER))


def _eight_bit(pixels: np.ndarray) -> np.ndarray:
    """libjxl hands back uint8, uint16 or float pictures; the model wants 8 bits."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.uint16:
        return (pixels >> 8).astype(np.uint8)
    return (np.clip(pixels.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class JXLImageFile(ImageFile.ImageFile):
    format = "JXL"
    format_description = "JPEG XL (imagecodecs)"

    def _open(self) -> None:
        source = self.fp
        if source is None or not _accept(source.read(12)):
            raise SyntaxError("not a JPEG XL file")
        source.seek(0)
        pixels = _eight_bit(imagecodecs.jpegxl_decode(source.read()))
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        height, width, channels = pixels.shape
        if channels not in _MODES:
            raise SyntaxError(f"JPEG XL picture with {channels} channels")
        self._mode = _MODES[channels]
        self._size = (width, height)
        # Served to Pillow's raw decoder from memory: the file was read and decoded above.
        self.fp = io.BytesIO(np.ascontiguousarray(pixels).tobytes())
        self.tile = [ImageFile._Tile("raw", (0, 0, width, height), 0, (self._mode, 0, 1))]


Image.register_open(JXLImageFile.format, JXLImageFile, _accept)
Image.register_extension(JXLImageFile.format, ".jxl")
Image.register_mime(JXLImageFile.format, "image/jxl")
