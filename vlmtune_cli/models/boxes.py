"""Bounding boxes as each model family writes them, and back.

Every box outside this module is `(x1, y1, x2, y2)` in pixels of the ORIGINAL image (x to the right,
y down, `x1 <= x2`, `y1 <= y2`). The text form depends on the family, and the training targets and the
benchmark's parser must use the same one (`families.py` says which family uses which):

- `qwen2-vl-grid` (Qwen2-VL):
  `<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`, integers on a
  0-1000 grid relative to the image side; several boxes are concatenated. Without the markers (decoded with
  `skip_special_tokens=True`) `label(x1,y1),(x2,y2)` is read too.
- `qwen2.5-vl-json` (Qwen2.5-VL): `[{"bbox_2d": [x1, y1, x2, y2], "label": "..."}]` in integer pixels of the
  image *as the processor resized it* (`resized_size`), optionally inside a ```json fence.
- `qwen3-vl-json` (Qwen3-VL): the same JSON, but in integers on the 0-1000 grid relative to the image side
  (Qwen3-VL's grounding cookbooks; unlike Qwen2.5-VL, independent of the processor's resize).
- `gemini-json` (Gemma 3, which has no box syntax of its own): `[{"box_2d": [y1, x1, y2, x2], "label": "..."}]`,
  y first, integers on the 0-1000 grid. Chosen because it is the convention of Google's Gemini detection
  prompts, the model line Gemma 3 is distilled from, so an untuned Gemma 3 asked for boxes in JSON most
  often answers this way; a relative grid also fits Gemma's processor, which squashes every image to one
  square whatever its aspect ratio, so the model never sees original pixel sizes.
- `plain`: `[x1, y1, x2, y2]` in integer pixels of the original image, one list per line. It carries no
  labels: parsing returns `""` for each.

A thinking model's reasoning (`<think>...</think>`, or only its end when the prompt opened it) is skipped.
Every JSON format is parsed forgivingly: a list or a single object (or several objects in a row), fenced or
not, with prose before or after; the first JSON value holding boxes wins over lists inside it.

Rounding. Text coordinates are integers, so a round trip is exact only for boxes on the text's lattice and
otherwise within half a step: the 0-1000 grid formats `side / 2000` px, plain 0.5 px, `qwen2.5-vl-json`
`0.5 * side / resized_side` px. Integer pixel boxes in an image whose sides divide 1000 (200, 250, 500, 1000)
survive the grid formats and `plain` exactly; the synthetic data is built that way.

Parsing never raises on model output. Text around the boxes is ignored; anything wrong with a box
(truncated, non-numeric, outside the image, zero area) makes `ok` False with a `reason`, while `boxes`
still holds every box that did parse, so a caller can be strict (count a failure) or lenient. Reversed
corners (x2 < x1) are swapped rather than rejected: the region is unambiguous and models do emit them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from vlmtune_cli.errors import UsageError

Box = tuple[float, float, float, float]
Size = tuple[int, int]  # (width, height)

FORMATS = ("qwen2-vl-grid", "qwen2.5-vl-json", "plain", "qwen3-vl-json", "gemini-json")
GRID = 1000
# JSON formats: the key holding a box, and whether it is written y first ([y1, x1, y2, x2]).
_JSON_FORMATS = {
    "qwen2.5-vl-json": ("bbox_2d", False),
    "qwen3-vl-json": ("bbox_2d", False),
    "gemini-json": ("box_2d", True),
}
_GRID_FORMATS = ("qwen2-vl-grid", "qwen3-vl-json", "gemini-json")

_NUM = r"[-+]?\d+(?:\.\d+)?"
_PAIR = rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)"
_GRID_BOX = re.compile(rf"^\s*{_PAIR}\s*,\s*{_PAIR}\s*$")
_GRID_TOKENS = re.compile(
    r"<\|object_ref_start\|>(?P<ref>.*?)<\|object_ref_end\|>|<\|box_start\|>(?P<box>.*?)<\|box_end\|>", re.S
)
# Decoding with skip_special_tokens=True strips the markers and leaves `label(x1,y1),(x2,y2)`.
_BARE_GRID = re.compile(rf"([^()\n]*?){_PAIR}\s*,\s*{_PAIR}")
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)(?:```|$)", re.S)
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


@dataclass
class ParseResult:
    """Boxes in original-image pixels and their labels; `ok` False (with `reason`) if any part was wrong."""

    boxes: list[Box] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    ok: bool = True
    reason: str | None = None

    def _fail(self, reason: str) -> ParseResult:
        if self.ok:  # the first problem is the one worth reporting
            self.ok, self.reason = False, reason
        return self


def smart_resize(
    width: int, height: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280
) -> Size:
    """The (width, height) Qwen-VL processors resize an image to; mirrors transformers' `smart_resize`."""
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return w_bar, h_bar


def processor_resized_size(
    processor, image_size: Size, min_pixels: int | None = None, max_pixels: int | None = None
) -> Size:
    """The (width, height) a Qwen-VL processor resizes `image_size` to; `image_size` if there is no processor.

    `min_pixels`/`max_pixels` (the recipe's `[data]` keys) win over the processor's own limits.
    """
    if processor is None:
        return image_size
    ip = getattr(processor, "image_processor", processor)
    size = getattr(ip, "size", None) or {}
    lookup = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    min_pixels = min_pixels or lookup("shortest_edge") or getattr(ip, "min_pixels", None) or 56 * 56
    max_pixels = max_pixels or lookup("longest_edge") or getattr(ip, "max_pixels", None) or 28 * 28 * 1280
    factor = (getattr(ip, "patch_size", None) or 14) * (getattr(ip, "merge_size", None) or 2)
    return smart_resize(image_size[0], image_size[1], factor, min_pixels, max_pixels)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"unknown box format {fmt!r}; box formats: {', '.join(FORMATS)}")


def _scales(fmt: str, image_size: Size, resized_size: Size | None) -> Size:
    """Text units per image side: what an x or y equal to the full width or height is written as."""
    if fmt in _GRID_FORMATS:
        return GRID, GRID
    if fmt == "qwen2.5-vl-json":
        return resized_size or image_size
    return image_size


def format_boxes(
    fmt: str, boxes: list[Box], labels: list[str], image_size: Size, resized_size: Size | None = None
) -> str:
    """Write boxes (original pixels) as the text a model of the family is trained to produce.

    `resized_size` is the processor's (width, height) for `qwen2.5-vl-json`; without it the image is taken as
    not resized. Boxes outside the image or of zero area are an error in the ground truth (UsageError).
    """
    _check_format(fmt)
    if len(boxes) != len(labels):
        raise UsageError(f"{len(boxes)} boxes but {len(labels)} labels")
    width, height = image_size
    sx, sy = _scales(fmt, image_size, resized_size)
    written = []
    for i, box in enumerate(boxes):
        x1, x2 = sorted((box[0], box[2]))
        y1, y2 = sorted((box[1], box[3]))
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height or x1 == x2 or y1 == y2:
            raise UsageError(f"box #{i} {tuple(box)} is empty or outside the {width}x{height} image")
        # Multiply before dividing so integer inputs on the lattice stay exact in floating point.
        written.append(
            (round(x1 * sx / width), round(y1 * sy / height), round(x2 * sx / width), round(y2 * sy / height))
        )
    if fmt == "qwen2-vl-grid":
        return "".join(
            f"<|object_ref_start|>{label}<|object_ref_end|><|box_start|>({a},{b}),({c},{d})<|box_end|>"
            for label, (a, b, c, d) in zip(labels, written, strict=True)
        )
    if fmt in _JSON_FORMATS:
        key, y_first = _JSON_FORMATS[fmt]
        items = [
            {key: [b, a, d, c] if y_first else [a, b, c, d], "label": label}
            for (a, b, c, d), label in zip(written, labels, strict=True)
        ]
        return json.dumps(items)
    return "\n".join(f"[{a}, {b}, {c}, {d}]" for a, b, c, d in written) if written else "[]"


def _add(result: ParseResult, values: list, label: str, fmt: str, image_size: Size, scales: Size) -> None:
    """Validate one box in text units, map it to original pixels and append it, or record why not."""
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        result._fail(f"non-numeric coordinates {values!r}")
        return
    if len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
        result._fail(f"a box needs 4 finite numbers, got {values!r}")
        return
    sx, sy = scales
    x1, x2 = sorted((numbers[0], numbers[2]))
    y1, y2 = sorted((numbers[1], numbers[3]))
    if x1 < 0 or y1 < 0 or x2 > sx or y2 > sy:
        unit = "grid 0-1000" if fmt in _GRID_FORMATS else f"image {sx}x{sy}"
        result._fail(f"box {values!r} lies outside the {unit}")
        return
    if x1 == x2 or y1 == y2:
        result._fail(f"box {values!r} has zero area")
        return
    width, height = image_size
    result.boxes.append((x1 * width / sx, y1 * height / sy, x2 * width / sx, y2 * height / sy))
    result.labels.append(label)


def _parse_grid(text: str, result: ParseResult, image_size: Size) -> None:
    scales = (GRID, GRID)
    matches = list(_GRID_TOKENS.finditer(text))
    if not matches:
        bare = list(_BARE_GRID.finditer(text))
        for m in bare:
            _add(result, list(m.group(2, 3, 4, 5)), m.group(1).strip(), "qwen2-vl-grid", image_size, scales)
        if not bare:
            truncated = "<|box_start|>" in text or "<|object_ref_start|>" in text
            result._fail("output ends inside a box (truncated?)" if truncated else "no box found")
        return
    label, pending_ref = "", False
    for m in matches:
        if m.group("ref") is not None:
            if pending_ref:
                result._fail(f"object reference {label!r} has no box")
            label, pending_ref = m.group("ref").strip(), True
            continue
        pending_ref = False
        coords = _GRID_BOX.match(m.group("box"))
        if coords is None:
            result._fail(f"malformed box {m.group('box')!r}; expected (x1,y1),(x2,y2)")
            continue
        _add(result, list(coords.groups()), label, "qwen2-vl-grid", image_size, scales)
    tail = text[matches[-1].end() :]
    if pending_ref or any(tok in tail for tok in ("<|box_start|>", "<|object_ref_start|>")):
        result._fail("output ends inside a box (truncated?)")


def _json_items(text: str, result: ParseResult) -> list:
    """The box objects of a JSON answer: every list of objects or lone object, in order, wherever it stands.

    A fence is only a hint (its body is searched first); prose around the JSON is skipped. Decoding starts at each
    `[` or `{` in turn and a decoded value's inside is not searched again, so `{"bbox_2d": [...]}` is one object,
    not its coordinate list. Lists of non-objects (`[1, 2]`) are not boxes. Unbalanced brackets mean a cut-off
    answer: the complete objects are kept and `result` fails as truncated.
    """
    fenced = _FENCE.search(text)
    body = (fenced.group(1) if fenced else text).strip()
    decoder = json.JSONDecoder()
    items: list = []
    found = False
    i = 0
    while True:
        starts = [p for p in (body.find("[", i), body.find("{", i)) if p >= 0]
        if not starts:
            break
        start = min(starts)
        try:
            value, end = decoder.raw_decode(body, start)
        except ValueError:
            i = start + 1
            continue
        if isinstance(value, dict) or (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
            items += value if isinstance(value, list) else [value]
            found = True
            i = end
        else:
            i = start + 1
    if body.count("[") != body.count("]") or body.count("{") != body.count("}"):
        result._fail("not valid JSON (truncated?)")
        if not found:  # salvage the complete objects of a cut-off list
            return [obj for obj in (_loads(m.group(0)) for m in re.finditer(r"\{[^{}]*\}", body)) if obj]
    elif not found:
        result._fail("no JSON list or object of boxes found")
    return items


def _loads(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _parse_json(text: str, fmt: str, result: ParseResult, image_size: Size, resized_size: Size | None) -> None:
    scales = _scales(fmt, image_size, resized_size)
    key, y_first = _JSON_FORMATS[fmt]
    for item in _json_items(text, result):
        if not isinstance(item, dict) or not isinstance(item.get(key), list):
            result._fail(f"item without a {key} list: {item!r}"[:200])
            continue
        label = item.get("label", "")
        values = item[key]
        if y_first and len(values) == 4:
            values = [values[1], values[0], values[3], values[2]]
        _add(result, values, label if isinstance(label, str) else str(label), fmt, image_size, scales)


def _parse_plain(text: str, result: ParseResult, image_size: Size) -> None:
    groups = _BRACKETS.findall(text)
    for group in groups:
        if group.strip():  # `[]` and the outer brackets of `[[...], [...]]` hold no box
            _add(result, [v.strip() for v in group.split(",")], "", "plain", image_size, image_size)
    if text.count("[") != text.count("]"):
        result._fail("unbalanced brackets (truncated?)")
    elif not groups:
        result._fail("no [x1, y1, x2, y2] list found")


def parse_boxes(fmt: str, text: str, image_size: Size, resized_size: Size | None = None) -> ParseResult:
    """Read the boxes of a model's answer, in original-image pixels. Never raises on bad output."""
    _check_format(fmt)
    result = ParseResult()
    if not isinstance(text, str) or not text.strip():
        return result._fail("empty output")
    # A thinking model (Qwen3.5) reasons before it answers, and its drafts may hold boxes: the answer is what
    # follows the last `</think>`. Its prompt already opens the block, so the output may hold only the close.
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    elif "<think>" in text:
        return result._fail("output ends inside a think block (truncated?)")
    if fmt == "qwen2-vl-grid":
        _parse_grid(text, result, image_size)
    elif fmt in _JSON_FORMATS:
        _parse_json(text, fmt, result, image_size, resized_size)
    else:
        _parse_plain(text, result, image_size)
    return result
