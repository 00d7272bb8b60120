"""Own photos as a user brings them: JPEGs of mixed sizes, some stored sideways with an EXIF Orientation tag,
each with one red "nutrition table" whose box is given in pixels of the upright image (as a viewer shows it)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

ORIENTATION = 0x0112
# What the camera stores for each tag, given the upright picture (exif_transpose undoes exactly this).
_STORED = {
    1: None,
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,  # tag 6 = "rotate 90° clockwise to view": stored turned counter-clockwise
    8: Image.Transpose.ROTATE_270,  # tag 8 = "rotate 90° counter-clockwise to view"
}
# id -> (upright width, height), EXIF orientation, the table's box (x1, y1, x2, y2) in upright pixels
PHOTOS = {
    "p1": ((320, 200), 1, (40, 30, 200, 150)),
    "p2": ((240, 360), 6, (30, 100, 150, 300)),
    "p3": ((300, 260), 8, (100, 40, 280, 200)),
    "p4": ((200, 300), 6, (20, 20, 120, 260)),
    "p5": ((360, 240), 8, (180, 60, 340, 220)),
    "p6": ((260, 260), 3, (60, 80, 220, 240)),
}
RED = (220, 20, 20)
PROMPT = "Detect the nutrition table."


def upright_picture(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """A grey picture with a red box and a blue mark in its top-left corner (so a turn is visible)."""
    image = Image.new("RGB", size, (200, 200, 190))
    image.paste(RED, box)
    image.paste((20, 20, 220), (0, 0, 12, 12))
    return image


def write_photo(path: Path, size: tuple[int, int], orientation: int, box: tuple[int, int, int, int]) -> Path:
    """A JPEG whose stored pixels are the upright picture turned as a camera would, tagged `orientation`."""
    picture = upright_picture(size, box)
    stored = picture if _STORED[orientation] is None else picture.transpose(_STORED[orientation])
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, "JPEG", quality=95, exif=exif)
    return path


def red_box(image: Image.Image) -> tuple[int, int, int, int]:
    """The bounding box (x1, y1, x2, y2, exclusive ends) of the clearly red pixels of an image."""
    import numpy as np

    pixels = np.asarray(image.convert("RGB")).astype(int)
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 90) & (pixels[..., 2] < 90)
    ys, xs = np.nonzero(red)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def write_photo_set(folder: Path, ids: tuple[str, ...] = tuple(PHOTOS)) -> Path:
    """`folder/labels.jsonl` with one sample per photo: answer `{"type": "boxes"}`, truth in upright pixels."""
    rows = []
    for sample_id in ids:
        size, orientation, box = PHOTOS[sample_id]
        write_photo(folder / "photos" / f"{sample_id}.jpg", size, orientation, box)
        rows.append(
            {
                "id": sample_id,
                "images": [f"photos/{sample_id}.jpg"],
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]},
                    {"role": "assistant", "content": [{"type": "boxes"}]},
                ],
                "target": {"boxes": [list(box)], "labels": ["nutrition table"]},
            }
        )
    path = folder / "labels.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
