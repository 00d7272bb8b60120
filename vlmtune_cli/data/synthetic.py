"""Built-in synthetic datasets: the user's nutrition-label task in miniature, drawn with PIL.

Each image is a light canvas with distractors (ellipses, lines, packaging words, one coloured square) and
one "nutrition table": a bordered box titled "Nutrition Facts" with rows such as "Energy 120 kcal".

- `synthetic-detection`: "Detect the nutrition table." (a few phrasings) -> the table's box in the recipe's
  box format; target `{"boxes": [[x1, y1, x2, y2]], "labels": ["nutrition table"], "image_size": [w, h]}`.
- `synthetic-vqa`: how many rows the table has, the square's colour, the energy in kcal; short answers;
  target `{"answer": ...}`.

Sample `i` depends only on `(seed, i)`, so the same seed gives identical pixels and texts whatever
`num_samples` is, and only the samples a subset keeps are ever drawn. Canvas sides default to 200 or 250
pixels: both divide 1000, so integer-pixel boxes are exact on Qwen2-VL's 0-1000 grid. With
`options.image_size` set to another size, box corners are snapped to pixels that lie on the grid.
"""

from __future__ import annotations

import math
import random
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont

from vlmtune_cli.errors import UsageError
from vlmtune_cli.models.boxes import GRID, format_boxes, processor_resized_size

if TYPE_CHECKING:
    from vlmtune_cli.config.schema import DataSection

KINDS = ("synthetic-detection", "synthetic-vqa")
# Part of the tokenised-data cache fingerprint: bump whenever a built-in set draws or words its samples differently.
DATA_VERSION = 1
LABEL = "nutrition table"
DETECT_PROMPTS = (
    "Detect the nutrition table.",
    "Find the nutrition table in this image.",
    "Where is the nutrition facts table? Give its bounding box.",
    "Locate the nutrition table.",
)
SIZES = (200, 250)
MIN_SIDE = 128
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
    "orange": (240, 130, 20),
    "purple": (140, 50, 170),
}
NUTRIENTS = (
    ("Fat", "g", 0.5, 30.0),
    ("Carbohydrate", "g", 1.0, 80.0),
    ("Sugars", "g", 0.0, 40.0),
    ("Protein", "g", 0.5, 25.0),
    ("Salt", "g", 0.0, 3.0),
    ("Fibre", "g", 0.0, 12.0),
)
WORDS = ("ORGANIC", "Best before", "500 g", "Ingredients", "SALE", "Recycle", "Net wt", "New!", "Lot 42")


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _image_size(options: dict[str, Any], rng: random.Random) -> tuple[int, int]:
    value = options.get("image_size")
    if value is None:
        return rng.choice(SIZES), rng.choice(SIZES)
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= MIN_SIDE for v in value)
    ):
        raise UsageError(
            f"data.options.image_size must be an integer or [width, height] of at least "
            f"{MIN_SIDE} pixels, got {value!r}"
        )
    return value[0], value[1]


def _overlaps(a: tuple, b: tuple, margin: int = 3) -> bool:
    return not (a[2] + margin < b[0] or b[2] + margin < a[0] or a[3] + margin < b[1] or b[3] + margin < a[1])


def _place(rng: random.Random, size: tuple[int, int], w: int, h: int, taken: list[tuple]) -> tuple | None:
    for _ in range(20):
        x, y = rng.randint(0, size[0] - w - 1), rng.randint(0, size[1] - h - 1)
        box = (x, y, x + w, y + h)
        if not any(_overlaps(box, other) for other in taken):
            taken.append(box)
            return box
    return None


def _table_box(rng: random.Random, size: tuple[int, int], w: int, h: int) -> tuple[int, int, int, int]:
    """A box whose corners lie on the 0-1000 grid so `format_boxes` -> `parse_boxes` is exact."""
    step_x, step_y = size[0] // math.gcd(size[0], GRID), size[1] // math.gcd(size[1], GRID)
    w, h = math.ceil(w / step_x) * step_x, math.ceil(h / step_y) * step_y
    if w > size[0] - 1 or h > size[1] - 1:
        raise UsageError(
            f"a {size[0]}x{size[1]} canvas is too small for the table; use image sizes that "
            "divide 1000 (200, 250, 500) or larger ones"
        )
    x = step_x * rng.randint(0, (size[0] - 1 - w) // step_x)
    y = step_y * rng.randint(0, (size[1] - 1 - h) // step_y)
    return x, y, x + w, y + h


def draw_scene(seed: int, index: int, options: dict[str, Any]) -> tuple[Image.Image, dict[str, Any]]:
    """One canvas and what is on it (table box, nutrient rows, square colour); pure function of its inputs."""
    rng = random.Random(f"vlmtune-synthetic:{seed}:{index}")
    size = _image_size(options, rng)
    image = Image.new("RGB", size, tuple(rng.randint(225, 250) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    font_size = max(7, min(size) // 20)
    font, line = _font(font_size), font_size + 3

    energy = rng.randint(40, 450)
    rows = [("Energy", f"{energy} kcal")]
    for name, unit, low, high in rng.sample(NUTRIENTS, rng.randint(2, 5)):
        rows.append((name, f"{rng.uniform(low, high):.1f} {unit}"))
    texts = ["Nutrition Facts"] + [f"{name} {value}" for name, value in rows]
    width = max(draw.textlength(t, font=font) for t in texts) + 8
    table = _table_box(rng, size, math.ceil(width), line * len(texts) + 6)
    taken = [table]

    draw.rectangle(table, fill=(255, 255, 255), outline=(0, 0, 0), width=1)
    for i, text in enumerate(texts):
        top = table[1] + 3 + i * line
        draw.text((table[0] + 4, top), text, fill=(0, 0, 0), font=font)
        if i:
            draw.line((table[0], top - 1, table[2], top - 1), fill=(90, 90, 90))

    colour = rng.choice(sorted(COLOURS))
    side = rng.randint(14, 28)
    square = _place(rng, size, side, side, taken)
    if square is not None:
        draw.rectangle(square, fill=COLOURS[colour])
    for _ in range(rng.randint(2, 4)):
        shape = _place(rng, size, rng.randint(10, 40), rng.randint(6, 20), taken)
        if shape is not None:
            draw.ellipse(shape, outline=tuple(rng.randint(60, 200) for _ in range(3)), width=2)
    for word in rng.sample(WORDS, 2):
        spot = _place(rng, size, math.ceil(draw.textlength(word, font=font)), line, taken)
        if spot is not None:
            draw.text(spot[:2], word, fill=tuple(rng.randint(40, 150) for _ in range(3)), font=font)
    return image, {
        "rng": rng,
        "size": size,
        "table": table,
        "rows": rows,
        "energy": energy,
        "colour": colour if square is not None else None,
    }


def _conversation(prompt: str, answer: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]


def make_sample(kind: str, index: int, data: DataSection, box_format: str, processor=None) -> dict[str, Any]:
    """Sample `index` of the built-in set `kind` (`synthetic-detection` or `synthetic-vqa`)."""
    image, scene = draw_scene(data.seed, index, data.options)
    rng = scene["rng"]
    if kind == "synthetic-detection":
        resized = processor_resized_size(processor, scene["size"], data.min_pixels, data.max_pixels)
        answer = format_boxes(box_format, [scene["table"]], [LABEL], scene["size"], resized)
        messages = _conversation(rng.choice(DETECT_PROMPTS), answer)
        target = {"boxes": [list(scene["table"])], "labels": [LABEL], "image_size": list(scene["size"])}
    else:
        questions = [
            ("How many rows are below the title of the table?", str(len(scene["rows"]))),
            ("How many kilocalories does the table list for energy?", str(scene["energy"])),
        ]
        if scene["colour"]:
            questions.append(("What colour is the square?", scene["colour"]))
        question, answer = rng.choice(questions)
        messages = _conversation(question, answer)
        target = {"answer": answer}
    return {"id": f"{kind}-{index:05d}", "messages": messages, "images": [image], "target": target}
