"""Checks of ground-truth boxes (a sample's `target.boxes`, original pixels) against their image: what is wrong
with one, and the box clipped into the image. Model output is checked by the parsers in boxes.py instead.
"""

from __future__ import annotations

import math

from vlmtune_cli.models.boxes import Box, Size


def is_box(value: object) -> bool:
    """True for 4 finite numbers (a list or tuple), whatever they say geometrically."""
    return (
        isinstance(value, (list, tuple))
        and len(value) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )


def box_problem(box: object, image_size: Size) -> str | None:
    """What is wrong with a ground-truth box `(x1, y1, x2, y2)` in pixels of an image of `image_size`, or None.

    Problems: not 4 finite numbers, inverted corners (x2 < x1 or y2 < y1: often an `[x, y, w, h]` box), zero
    area, any part outside the image.
    """
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return f"{box!r} is not 4 numbers x1, y1, x2, y2"[:120]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
        return f"{list(box)!r} is not 4 finite numbers"[:120]
    x1, y1, x2, y2 = box
    width, height = image_size
    if x2 < x1 or y2 < y1:
        return f"{list(box)} is inverted (x2 < x1 or y2 < y1; an [x, y, width, height] box?)"
    if x1 == x2 or y1 == y2:
        return f"{list(box)} has zero area"
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        return f"{list(box)} lies outside the {width}x{height} image"
    return None


def clip_box(box: Box, image_size: Size) -> Box | None:
    """A box (4 finite numbers) with its corners ordered and clamped into the image; None if no area is left."""
    width, height = image_size
    x1, x2 = sorted((min(max(float(box[0]), 0.0), width), min(max(float(box[2]), 0.0), width)))
    y1, y2 = sorted((min(max(float(box[1]), 0.0), height), min(max(float(box[3]), 0.0), height)))
    return (x1, y1, x2, y2) if x1 < x2 and y1 < y2 else None
