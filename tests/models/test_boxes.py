"""Box formats: round trips per family, and bad model output as a parse failure, never an exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmtune_cli.errors import UsageError
from vlmtune_cli.models.boxes import FORMATS, format_boxes, parse_boxes, processor_resized_size, smart_resize

SIZE = (200, 250)
BOXES = [(10, 20, 110, 90), (0, 0, 200, 250), (57, 133, 58, 134)]
LABELS = ["nutrition table", "whole image", "speck"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_several_boxes_is_exact_on_the_lattice(fmt: str) -> None:
    text = format_boxes(fmt, BOXES, LABELS, SIZE)
    result = parse_boxes(fmt, text, SIZE)
    assert result.ok, result.reason
    assert result.boxes == BOXES
    assert result.labels == (LABELS if fmt != "plain" else ["", "", ""])


def test_grid_text_is_qwen2_vl_syntax() -> None:
    text = format_boxes("qwen2-vl-grid", [(10, 20, 110, 90)], ["table"], SIZE)
    assert text == "<|object_ref_start|>table<|object_ref_end|><|box_start|>(50,80),(550,360)<|box_end|>"


def test_json_uses_resized_pixels_and_maps_back() -> None:
    resized = (400, 500)  # twice the original: every coordinate doubles in the text
    text = format_boxes("qwen2.5-vl-json", [(10, 20, 110, 90)], ["table"], SIZE, resized)
    assert json.loads(text) == [{"bbox_2d": [20, 40, 220, 180], "label": "table"}]
    assert parse_boxes("qwen2.5-vl-json", text, SIZE, resized).boxes == [(10, 20, 110, 90)]


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(28, 2000),
    height=st.integers(28, 2000),
    corners=st.tuples(*[st.floats(0, 1) for _ in range(4)]),
    fmt=st.sampled_from(FORMATS),
)
def test_round_trip_within_documented_tolerance(width, height, corners, fmt) -> None:
    fx1, fx2 = sorted((corners[0], corners[2]))
    fy1, fy2 = sorted((corners[1], corners[3]))
    box = (fx1 * width, fy1 * height, fx2 * width, fy2 * height)
    resized = smart_resize(width, height)
    text_units = {"qwen2.5-vl-json": resized, "plain": (width, height)}.get(fmt, (1000, 1000))
    step_x, step_y = width / text_units[0], height / text_units[1]
    if box[2] - box[0] < 2 * step_x or box[3] - box[1] < 2 * step_y:
        return  # may legitimately collapse to a zero-area box once rounded
    result = parse_boxes(fmt, format_boxes(fmt, [box], ["x"], (width, height), resized), (width, height), resized)
    assert result.ok, result.reason
    for got, want, step in zip(result.boxes[0], box, (step_x, step_y, step_x, step_y), strict=True):
        assert abs(got - want) <= step / 2 + 1e-9


def test_reversed_corners_are_swapped() -> None:
    result = parse_boxes("plain", "[110, 90, 10, 20]", SIZE)
    assert result.ok and result.boxes == [(10, 20, 110, 90)]
    assert format_boxes("plain", [(110, 90, 10, 20)], [""], SIZE) == "[10, 20, 110, 90]"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("text", ["", "   \n", "I cannot see a table.", "<|im_end|>", "{}", "[1, 2]"])
def test_junk_and_empty_output_is_a_failure(fmt: str, text: str) -> None:
    result = parse_boxes(fmt, text, SIZE)
    assert not result.ok and result.reason and result.boxes == []


@pytest.mark.parametrize(
    "fmt, text",
    [
        (
            "qwen2-vl-grid",
            "<|object_ref_start|>t<|object_ref_end|><|box_start|>(50,80),(550,360)<|box_end|>"
            "<|object_ref_start|>t<|object_ref_end|><|box_start|>(10,10),(2",
        ),
        ("qwen2.5-vl-json", '```json\n[{"bbox_2d": [10, 20, 110, 90], "label": "t"}, {"bbox_2d": [5, 5'),
        ("plain", "[10, 20, 110, 90]\n[5, 5, 3"),
    ],
)
def test_truncated_output_fails_but_keeps_the_complete_boxes(fmt: str, text: str) -> None:
    result = parse_boxes(fmt, text, SIZE)
    assert not result.ok and "truncated" in result.reason
    assert len(result.boxes) == 1


@pytest.mark.parametrize(
    "fmt, text, why",
    [
        ("qwen2-vl-grid", "<|box_start|>(-5,80),(550,360)<|box_end|>", "outside"),
        ("qwen2-vl-grid", "<|box_start|>(50,80),(1001,360)<|box_end|>", "outside"),
        ("qwen2-vl-grid", "<|box_start|>(50,80),(50,360)<|box_end|>", "zero area"),
        ("qwen2-vl-grid", "<|box_start|>(a,b),(c,d)<|box_end|>", "malformed"),
        ("qwen2.5-vl-json", '[{"bbox_2d": [-1, 20, 110, 90]}]', "outside"),
        ("qwen2.5-vl-json", '[{"bbox_2d": [10, 20, 110, 900]}]', "outside"),
        ("qwen2.5-vl-json", '[{"bbox_2d": [10, 20, 110]}]', "4 finite numbers"),
        ("qwen2.5-vl-json", '[{"bbox_2d": ["x", 20, 110, 90]}]', "non-numeric"),
        ("qwen2.5-vl-json", '[{"box": [10, 20, 110, 90]}]', "bbox_2d"),
        ("qwen2.5-vl-json", '"just a string"', "JSON list"),
        ("plain", "[-10, 20, 110, 90]", "outside"),
        ("plain", "[10, 20, 110, 251]", "outside"),
        ("plain", "[10, 20, 110]", "4 finite numbers"),
        ("plain", "[table, 20, 110, 90]", "non-numeric"),
    ],
)
def test_bad_boxes_are_rejected_with_a_reason(fmt: str, text: str, why: str) -> None:
    result = parse_boxes(fmt, text, SIZE)
    assert not result.ok and why in result.reason and result.boxes == []


@pytest.mark.parametrize(
    "text",
    [
        '```json\n[{"bbox_2d": [10, 20, 110, 90], "label": "t"}]\n```',
        '```\n[{"bbox_2d": [10, 20, 110, 90], "label": "t"}]\n```',
        'Here it is: [{"bbox_2d": [10, 20, 110, 90], "label": "t"}] hope that helps',
        '{"bbox_2d": [10, 20, 110, 90], "label": "t"}',
    ],
)
def test_json_fences_prose_and_single_objects(text: str) -> None:
    result = parse_boxes("qwen2.5-vl-json", text, SIZE)
    assert result.ok, result.reason
    assert result.boxes == [(10, 20, 110, 90)] and result.labels == ["t"]


def test_grid_without_special_tokens_and_shared_reference() -> None:
    stripped = parse_boxes("qwen2-vl-grid", "nutrition table(50,80),(550,360)", SIZE)
    assert stripped.ok and stripped.boxes == [(10, 20, 110, 90)] and stripped.labels == ["nutrition table"]
    shared = parse_boxes(
        "qwen2-vl-grid",
        "<|object_ref_start|>t<|object_ref_end|><|box_start|>(50,80),(550,360)<|box_end|>"
        "<|box_start|>(0,0),(1000,1000)<|box_end|><|im_end|>",
        SIZE,
    )
    assert shared.ok and shared.labels == ["t", "t"] and shared.boxes[1] == (0, 0, 200, 250)


def test_empty_box_lists() -> None:
    assert parse_boxes("qwen2.5-vl-json", "[]", SIZE).ok
    assert parse_boxes("plain", format_boxes("plain", [], [], SIZE), SIZE).ok


def test_format_rejects_bad_ground_truth() -> None:
    with pytest.raises(UsageError, match="unknown box format"):
        format_boxes("yolo", [], [], SIZE)
    with pytest.raises(UsageError, match="outside"):
        format_boxes("plain", [(0, 0, 201, 10)], ["x"], SIZE)
    with pytest.raises(UsageError, match="labels"):
        format_boxes("plain", [(0, 0, 20, 10)], [], SIZE)
    with pytest.raises(UsageError, match="unknown box format"):
        parse_boxes("yolo", "[1, 2, 3, 4]", SIZE)


def test_resized_size_follows_the_processor() -> None:
    class ImageProcessor:
        size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
        patch_size, merge_size = 14, 2

    class Processor:
        image_processor = ImageProcessor()

    assert processor_resized_size(None, (200, 250)) == (200, 250)
    assert processor_resized_size(Processor(), (200, 250)) == (196, 252)
    assert processor_resized_size(Processor(), (1000, 1000), max_pixels=448 * 448) == (448, 448)


def test_qwen3_vl_json_is_relative_to_1000_whatever_the_resize() -> None:
    text = format_boxes("qwen3-vl-json", [(10, 20, 110, 90)], ["table"], SIZE, resized_size=(400, 500))
    assert json.loads(text) == [{"bbox_2d": [50, 80, 550, 360], "label": "table"}]
    result = parse_boxes("qwen3-vl-json", text, SIZE, resized_size=(999, 999))  # the resize plays no part
    assert result.ok and result.boxes == [(10, 20, 110, 90)]
    assert not parse_boxes("qwen3-vl-json", '[{"bbox_2d": [0, 0, 1001, 10]}]', SIZE).ok  # off the grid


def test_gemini_json_is_y_first_on_the_grid() -> None:
    text = format_boxes("gemini-json", [(10, 20, 110, 90)], ["table"], SIZE)
    assert json.loads(text) == [{"box_2d": [80, 50, 360, 550], "label": "table"}]
    result = parse_boxes("gemini-json", text, SIZE)
    assert result.ok and result.boxes == [(10, 20, 110, 90)] and result.labels == ["table"]
    wrong_key = parse_boxes("gemini-json", '[{"bbox_2d": [80, 50, 360, 550]}]', SIZE)
    assert not wrong_key.ok and "box_2d" in wrong_key.reason


# Answers shaped like the model cards' and cookbooks' examples, each with the boxes they mean in a 200x250 image.
CARD_ANSWERS = [
    # Qwen2.5-VL cookbook: a fenced list in pixels of the resized image (resized = original here).
    (
        "qwen2.5-vl-json",
        '```json\n[\n\t{"bbox_2d": [10, 20, 110, 90], "label": "nutrition table"},\n'
        '\t{"bbox_2d": [0, 0, 200, 250], "label": "pack"}\n]\n```',
        [(10, 20, 110, 90), (0, 0, 200, 250)],
    ),
    # Qwen3-VL cookbook: the same shape in 0-1000 coordinates.
    (
        "qwen3-vl-json",
        '```json\n[\n\t{"bbox_2d": [50, 80, 550, 360], "label": "nutrition table"},\n'
        '\t{"bbox_2d": [0, 0, 1000, 1000], "label": "pack"}\n]\n```',
        [(10, 20, 110, 90), (0, 0, 200, 250)],
    ),
    # Gemini's detection docs: a fenced list of box_2d, y first, 0-1000.
    (
        "gemini-json",
        '```json\n[\n  {"box_2d": [80, 50, 360, 550], "label": "nutrition table"}\n]\n```',
        [(10, 20, 110, 90)],
    ),
    # Qwen2-VL card: reference and box tokens on the 0-1000 grid.
    (
        "qwen2-vl-grid",
        "<|object_ref_start|>nutrition table<|object_ref_end|><|box_start|>(50,80),(550,360)<|box_end|><|im_end|>",
        [(10, 20, 110, 90)],
    ),
    ("plain", "The table is at [10, 20, 110, 90].", [(10, 20, 110, 90)]),
]


@pytest.mark.parametrize("fmt, text, boxes", CARD_ANSWERS, ids=[c[0] for c in CARD_ANSWERS])
def test_model_card_shaped_answers(fmt: str, text: str, boxes: list) -> None:
    result = parse_boxes(fmt, text, SIZE)
    assert result.ok, result.reason
    assert result.boxes == boxes


JSON_FORMATS = ["qwen2.5-vl-json", "qwen3-vl-json", "gemini-json"]


@pytest.mark.parametrize("fmt", JSON_FORMATS)
@pytest.mark.parametrize(
    "shape",
    [
        "The table: {OBJ} and nothing else.",  # the issue's example: prose around one unfenced object
        "{OBJ}",
        "[{OBJ}]",
        "Sure! Here you go:\n```json\n[{OBJ}]\n```\nLet me know if you need more.",
        "```\n{OBJ}\n```",
        "Found it [see below]: [{OBJ}] (one box).",  # a bracket in the prose that is no JSON
        "{OBJ}\n{OBJ2}",  # objects one per line, no list around them
    ],
)
def test_json_is_forgiving_for_every_json_family(fmt: str, shape: str) -> None:
    key, corners = ("box_2d", [80, 50, 360, 550]) if fmt == "gemini-json" else ("bbox_2d", [50, 80, 550, 360])
    if fmt == "qwen2.5-vl-json":
        corners = [10, 20, 110, 90]  # pixels (resized = original)
    obj = json.dumps({key: corners, "label": "nutrition table"})
    obj2 = json.dumps({key: [0, 0, 1000, 1000] if fmt != "qwen2.5-vl-json" else [0, 0, 200, 250], "label": "pack"})
    result = parse_boxes(fmt, shape.replace("{OBJ2}", obj2).replace("{OBJ}", obj), SIZE)
    assert result.ok, result.reason
    expected = [(10, 20, 110, 90)] + ([(0, 0, 200, 250)] if "OBJ2" in shape else [])
    assert result.boxes == expected and result.labels[0] == "nutrition table"


def test_the_issues_example_parses() -> None:
    text = 'The table: {"bbox_2d": [25, 8, 139, 151], "label": "nutrition table"} and nothing else.'
    result = parse_boxes("qwen3-vl-json", text, (1000, 1000))
    assert result.ok and result.boxes == [(25, 8, 139, 151)] and result.labels == ["nutrition table"]
    result = parse_boxes("qwen2.5-vl-json", text, SIZE)
    assert result.ok and result.boxes == [(25, 8, 139, 151)]


def test_a_think_block_before_the_answer_is_skipped() -> None:
    obj = '{"bbox_2d": [50, 80, 550, 360], "label": "nutrition table"}'
    draft = '{"bbox_2d": [0, 0, 10, 10], "label": "draft"}'
    # Qwen3.5's generation prompt opens `<think>\n`: the output starts inside the block.
    for text in (f"Maybe {draft}? No.\n</think>\n\n[{obj}]", f"<think>\n{draft}\n</think>\n\n{obj}"):
        result = parse_boxes("qwen3-vl-json", text, SIZE)
        assert result.ok and result.boxes == [(10, 20, 110, 90)] and result.labels == ["nutrition table"]
    cut = parse_boxes("qwen3-vl-json", f"<think>\nFirst {draft} then", SIZE)
    assert not cut.ok and "think" in cut.reason
