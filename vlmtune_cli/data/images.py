"""Opening images the way a person sees them: every image vlmtune reads goes through `open_image` or `upright`.

Phone cameras store pixels as the sensor read them and an EXIF Orientation tag saying how to turn them (6: rotate
90° clockwise to view, 8: 90° counter-clockwise, 3: 180°, and mirrored variants). Image viewers and annotation
tools show the turned image, so boxes are drawn on it; PIL's `Image.open` ignores the tag. `upright` applies it
(`PIL.ImageOps.exif_transpose`), so tokenize, train (via the cache), benchmark and predict all see the image
whose pixels the boxes refer to, and `image.size` is the upright (width, height).
"""

from __future__ import annotations

import os
from typing import IO

from PIL import Image, ImageOps


def upright(image: Image.Image) -> Image.Image:
    """`image` turned as its EXIF Orientation tag says, as RGB (decoded now; no tag: the same pixels)."""
    turned = ImageOps.exif_transpose(image)
    return (turned if turned is not None else image).convert("RGB")


def open_image(source: str | os.PathLike[str] | IO[bytes]) -> Image.Image:
    """Decode an image file (path or binary file object) now, upright and RGB.

    Raises what PIL raises: FileNotFoundError, UnidentifiedImageError, OSError, Image.DecompressionBombError.
    """
    with Image.open(source) as image:
        image.load()  # decode now, so a corrupt file fails here, where the caller can name it
        return upright(image)
