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

Each format is one `BoxFormat` entry in `BOX_FORMATS`: its text units per image side, a writer (the renderer
vlmtune uses to write answers from a sample's `target.boxes`) and a reader (the parser of model output and of
answers users wrote). A family with a new syntax adds one entry; Qwen3-VL's JSON in relative 0-1000
coordinates is `BoxFormat(_grid_units, _json_writer("bbox_2d"), _json_reader("bbox_2d"), "grid 0-1000")`.

Parsing never raises on model output. Text around the boxes is ignored; anything wrong with a box
(truncated, non-numeric, outside the image, zero area) makes `ok` False with a `reason`, while `boxes`
still holds every box that did parse, so a caller can be strict (count a failure) or lenient. Reversed
corners (x2 < x1) are swapped rather than rejected: the region is unambiguous and models do emit them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from vlmtune_cli.errors import UsageError

Box = tuple[float, float, float, float]
Size = tuple[int, int]  # (width, height)

GRID = 1000

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
    assert min_pixels is not None and max_pixels is not None  # each falls back to a number above
    return smart_resize(image_size[0], image_size[1], factor, min_pixels, max_pixels)


def _check_format(fmt: str) -> BoxFormat:
    if fmt not in BOX_FORMATS:
        raise UsageError(f"unknown box format {fmt!r}; box formats: {', '.join(BOX_FORMATS)}")
    return BOX_FORMATS[fmt]


def format_boxes(
    fmt: str, boxes: list[Box], labels: list[str], image_size: Size, resized_size: Size | None = None
) -> str:
    """Write boxes (original pixels) as the text a model of the family is trained to produce: the renderer of
    answers vlmtune writes itself.

    `resized_size` is the processor's (width, height) for `qwen2.5-vl-json`; without it the image is taken as
    not resized. Boxes outside the image or of zero area are an error in the ground truth (UsageError).
    """
    box_format = _check_format(fmt)
    if len(boxes) != len(labels):
        raise UsageError(f"{len(boxes)} boxes but {len(labels)} labels")
    width, height = image_size
    sx, sy = box_format.units(image_size, resized_size)
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
    return box_format.write(written, labels)


def _add(result: ParseResult, values: list, label: str, unit: str, image_size: Size, scales: Size) -> None:
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
        result._fail(f"box {values!r} lies outside the {unit or f'image {sx}x{sy}'}")
        return
    if x1 == x2 or y1 == y2:
        result._fail(f"box {values!r} has zero area")
        return
    width, height = image_size
    result.boxes.append((x1 * width / sx, y1 * height / sy, x2 * width / sx, y2 * height / sy))
    result.labels.append(label)


# --- the formats: units, writer, reader ----------------------------------------------------------------

Written = list[tuple[int, int, int, int]]
AddBox = Callable[[list, str], None]


def _grid_units(image_size: Size, resized_size: Size | None) -> Size:
    return GRID, GRID


def _resized_units(image_size: Size, resized_size: Size | None) -> Size:
    return resized_size or image_size


def _pixel_units(image_size: Size, resized_size: Size | None) -> Size:
    return image_size


def _write_grid(written: Written, labels: list[str]) -> str:
    return "".join(
        f"<|object_ref_start|>{label}<|object_ref_end|><|box_start|>({a},{b}),({c},{d})<|box_end|>"
        for label, (a, b, c, d) in zip(labels, written, strict=True)
    )


def _json_writer(key: str, y_first: bool = False) -> Callable[[Written, list[str]], str]:
    """JSON objects `{key: [x1, y1, x2, y2], "label": ...}` (`[y1, x1, y2, x2]` when `y_first`)."""

    def write(written: Written, labels: list[str]) -> str:
        return json.dumps(
            [
                {key: [b, a, d, c] if y_first else [a, b, c, d], "label": label}
                for (a, b, c, d), label in zip(written, labels, strict=True)
            ]
        )

    return write


def _write_plain(written: Written, labels: list[str]) -> str:
    return "\n".join(f"[{a}, {b}, {c}, {d}]" for a, b, c, d in written) if written else "[]"


def _read_grid(text: str, result: ParseResult, add: AddBox) -> None:
    matches = list(_GRID_TOKENS.finditer(text))
    if not matches:
        bare = list(_BARE_GRID.finditer(text))
        for m in bare:
            add(list(m.group(2, 3, 4, 5)), m.group(1).strip())
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
        add(list(coords.groups()), label)
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


def _json_reader(key: str, y_first: bool = False) -> Callable[[str, ParseResult, AddBox], None]:
    """Reads what `_json_writer(key, y_first)` writes, forgivingly (see `_json_items`)."""

    def read(text: str, result: ParseResult, add: AddBox) -> None:
        for item in _json_items(text, result):
            if not isinstance(item, dict) or not isinstance(item.get(key), list):
                result._fail(f"item without a {key} list: {item!r}"[:200])
                continue
            values = item[key]
            if y_first and len(values) == 4:
                values = [values[1], values[0], values[3], values[2]]
            label = item.get("label", "")
            add(values, label if isinstance(label, str) else str(label))

    return read


def _read_plain(text: str, result: ParseResult, add: AddBox) -> None:
    groups = _BRACKETS.findall(text)
    for group in groups:
        if group.strip():  # `[]` and the outer brackets of `[[...], [...]]` hold no box
            add([v.strip() for v in group.split(",")], "")
    if text.count("[") != text.count("]"):
        result._fail("unbalanced brackets (truncated?)")
    elif not groups:
        result._fail("no [x1, y1, x2, y2] list found")


@dataclass(frozen=True)
class BoxFormat:
    """One text syntax for boxes. Text coordinates are integers in `units(image_size, resized_size)` per side."""

    units: Callable[[Size, Size | None], Size]
    """Text units per image side: what an x equal to the full width (a y equal to the height) is written as."""
    write: Callable[[Written, list[str]], str]
    """Boxes already in text units (integers) and their labels → the answer text."""
    read: Callable[[str, ParseResult, AddBox], None]
    """Text → calls `add(values, label)` per box found (values in text units); records syntax problems."""
    unit_name: str = ""
    """How messages name the units ("grid 0-1000"); empty: "image WxH"."""


BOX_FORMATS: dict[str, BoxFormat] = {
    "qwen2-vl-grid": BoxFormat(_grid_units, _write_grid, _read_grid, "grid 0-1000"),
    "qwen2.5-vl-json": BoxFormat(_resized_units, _json_writer("bbox_2d"), _json_reader("bbox_2d")),
    "plain": BoxFormat(_pixel_units, _write_plain, _read_plain),
    "qwen3-vl-json": BoxFormat(_grid_units, _json_writer("bbox_2d"), _json_reader("bbox_2d"), "grid 0-1000"),
    "gemini-json": BoxFormat(
        _grid_units, _json_writer("box_2d", y_first=True), _json_reader("box_2d", y_first=True), "grid 0-1000"
    ),
}
FORMATS = tuple(BOX_FORMATS)


def parse_boxes(fmt: str, text: str, image_size: Size, resized_size: Size | None = None) -> ParseResult:
    """Read the boxes of a model's answer, in original-image pixels. Never raises on bad output."""
    box_format = _check_format(fmt)
    result = ParseResult()
    if not isinstance(text, str) or not text.strip():
        return result._fail("empty output")
    # A thinking model (Qwen3.5) reasons before it answers, and its drafts may hold boxes: the answer is what
    # follows the last `</think>`. Its prompt already opens the block, so the output may hold only the close.
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    elif "<think>" in text:
        return result._fail("output ends inside a think block (truncated?)")
    scales = box_format.units(image_size, resized_size)

    def add(values: list, label: str) -> None:
        _add(result, values, label, box_format.unit_name, image_size, scales)

    box_format.read(text, result, add)
    return result
