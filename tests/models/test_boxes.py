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
    text_units = {"qwen2-vl-grid": (1000, 1000), "qwen2.5-vl-json": resized, "plain": (width, height)}[fmt]
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
