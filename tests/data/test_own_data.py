"""A user's own data: images opened upright (EXIF), target boxes checked against them, answers written per family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlmtune_cli.config.schema import DataSection
from vlmtune_cli.data.images import open_image
from vlmtune_cli.data.sources import lazy_splits, load_splits
from vlmtune_cli.errors import UsageError
from vlmtune_cli.eval.predict import open_images
from vlmtune_cli.models.box_checks import box_problem, clip_box
from vlmtune_cli.models.boxes import (
    BOX_FORMATS,
    FORMATS,
    format_boxes,
    parse_boxes,
    smart_resize,
)

from ..photos import PHOTOS, red_box, write_photo, write_photo_set


class QwenProcessor:  # the attributes processor_resized_size reads off a Qwen-VL image processor
    class image_processor:  # noqa: N801
        size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
        patch_size, merge_size = 14, 2


def _near(a: tuple, b: tuple, tolerance: float) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


# --- 1. EXIF orientation -------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [6, 8, 3, 1])
def test_photos_open_upright_whatever_their_exif_orientation(tmp_path: Path, orientation: int) -> None:
    size, box = (240, 360), (30, 100, 150, 300)
    path = write_photo(tmp_path / "p.jpg", size, orientation, box)
    with Image.open(path) as raw:  # what PIL alone gives: the sensor's pixels, sideways for 6 and 8
        assert raw.getexif()[0x0112] == orientation
        assert raw.size == (size if orientation in (1, 3) else size[::-1])
        stored = red_box(raw)
    image = open_image(path)
    assert image.mode == "RGB" and image.size == size
    assert _near(red_box(image), box, 2), red_box(image)  # JPEG blurs the edges by a pixel or so
    if orientation != 1:
        assert not _near(stored, box, 2), "the test photo must really be stored turned"
    # predict opens images through the same helper
    assert open_images([path])[0].tobytes() == image.tobytes()


def test_jsonl_samples_carry_upright_images(tmp_path: Path) -> None:
    ids = ("p2", "p3")
    source = write_photo_set(tmp_path, ids)
    samples = {
        s["id"]: s for s in load_splits(DataSection(source=str(source), split_ratio=1.0), box_format="plain")["train"]
    }
    for sample_id, sample in samples.items():
        size, _, box = PHOTOS[sample_id]
        assert sample["images"][0].size == size
        assert _near(red_box(sample["images"][0]), box, 2)
        assert sample["where"] == f"{source}, line {ids.index(sample_id) + 1} (id {sample_id})"


# --- 2. answers written per family ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_boxes_part_is_written_in_the_family_format_from_the_pixel_target(tmp_path: Path, fmt: str) -> None:
    source = write_photo_set(tmp_path)
    data = DataSection(source=str(source), split_ratio=1.0)
    samples = load_splits(data, box_format=fmt, processor=QwenProcessor())["train"]
    assert len(samples) == len(PHOTOS)
    for sample in samples:
        size, _, box = PHOTOS[sample["id"]]
        resized = smart_resize(*size)
        answer = sample["messages"][-1]["content"]
        assert answer == [{"type": "text", "text": format_boxes(fmt, [box], ["nutrition table"], size, resized)}]
        assert sample["rendered"] is True and sample["target"]["boxes"] == [list(box)]
        parsed = parse_boxes(fmt, answer[0]["text"], size, resized)
        assert parsed.ok and parsed.labels == (["nutrition table"] if fmt != "plain" else [""])
        # Back in original pixels within the format's rounding: grid side/2000, JSON half a resized pixel.
        grid = max(size) / 2000
        step = {"qwen2-vl-grid": grid, "qwen3-vl-json": grid, "gemini-json": grid}.get(fmt, 0)
        step = 0.5 * size[0] / resized[0] + 0.01 if fmt == "qwen2.5-vl-json" else step
        assert _near(parsed.boxes[0], box, step + 0.51)
    assert smart_resize(240, 360) == (252, 364)
    p2 = next(s for s in samples if s["id"] == "p2")["messages"][-1]["content"][0]["text"]
    expected = {
        "qwen2-vl-grid": "(125,278),(625,833)",  # 0-1000 grid of the upright 240x360 image
        "qwen2.5-vl-json": "[32, 101, 158, 303]",  # pixels of the 252x364 image the processor makes
        "plain": "[30, 100, 150, 300]",  # original pixels
        "qwen3-vl-json": "[125, 278, 625, 833]",  # the 0-1000 grid again, as JSON
        "gemini-json": "[278, 125, 833, 625]",  # the grid, y first
    }[fmt]
    assert expected in p2, p2


def test_text_around_a_boxes_part_stays_and_misplaced_parts_are_refused(tmp_path: Path) -> None:
    write_photo(tmp_path / "a.jpg", (200, 100), 1, (10, 10, 50, 50))

    def load_row(row: dict) -> dict:
        (tmp_path / "s.jsonl").write_text(json.dumps(row) + "\n")
        data = DataSection(source=str(tmp_path / "s.jsonl"), split_ratio=1.0)
        return load_splits(data, box_format="plain")["train"][0]

    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find it."}]}
    target = {"boxes": [[10, 10, 50, 50]], "labels": ["x"]}
    sample = load_row(
        {
            "images": ["a.jpg"],
            "messages": [user, {"role": "assistant", "content": ["Here: ", {"type": "boxes"}]}],
            "target": target,
        }
    )
    assert [p["text"] for p in sample["messages"][-1]["content"]] == ["Here: ", "[10, 10, 50, 50]"]
    with pytest.raises(UsageError, match=r's\.jsonl, line 1: a \{"type": "boxes"\} part belongs in an assistant'):
        load_row({"images": ["a.jpg"], "messages": [{"role": "user", "content": [{"type": "boxes"}]}]})
    inline = {"type": "boxes", "boxes": [[10, 10, 50, 50]]}
    with pytest.raises(UsageError, match=r'line 1: a \{"type": "boxes"\} part takes no other keys \(got boxes, type\)'):
        load_row({"images": ["a.jpg"], "messages": [user, {"role": "assistant", "content": [inline]}]})
    with pytest.raises(UsageError, match=r"line 1 \(id q\): an assistant part .* but no target\.boxes"):
        load_row(
            {"id": "q", "images": ["a.jpg"], "messages": [user, {"role": "assistant", "content": [{"type": "boxes"}]}]}
        )


def test_a_new_format_is_one_table_entry() -> None:
    from vlmtune_cli.models import boxes

    # Qwen3-VL's JSON in relative 0-1000 coordinates, written as the module docstring says a format is added.
    relative = boxes.BoxFormat(
        boxes._grid_units, boxes._json_writer("bbox_2d"), boxes._json_reader("bbox_2d"), "grid 0-1000"
    )
    original = dict(BOX_FORMATS)
    try:
        del BOX_FORMATS["qwen3-vl-json"]
        BOX_FORMATS["qwen3-vl-json"] = relative
        text = format_boxes("qwen3-vl-json", [(30, 100, 150, 300)], ["t"], (240, 360), (224, 336))
        assert json.loads(text) == [{"bbox_2d": [125, 278, 625, 833], "label": "t"}]
        parsed = parse_boxes("qwen3-vl-json", '[{"bbox_2d": [125, 278, 1200, 833]}]', (240, 360))
        assert not parsed.ok and parsed.reason == "box [125, 278, 1200, 833] lies outside the grid 0-1000"
    finally:
        BOX_FORMATS.clear()
        BOX_FORMATS.update(original)


# --- 3. box checks -------------------------------------------------------------------------------------


def test_box_problems_and_clipping() -> None:
    size = (200, 100)
    assert box_problem([10, 10, 50, 50], size) is None
    assert box_problem([0, 0, 200, 100], size) is None
    assert box_problem([10, 10, 210, 50], size) == "[10, 10, 210, 50] lies outside the 200x100 image"
    assert box_problem([-1, 10, 50, 50], size) == "[-1, 10, 50, 50] lies outside the 200x100 image"
    assert box_problem([50, 10, 10, 50], size).startswith("[50, 10, 10, 50] is inverted")
    assert box_problem([120, 40, 30, 20], size).endswith("(x2 < x1 or y2 < y1; an [x, y, width, height] box?)")
    assert box_problem([10, 10, 10, 50], size) == "[10, 10, 10, 50] has zero area"
    assert box_problem([10, 10, 50], size) == "[10, 10, 50] is not 4 numbers x1, y1, x2, y2"
    assert box_problem([10, "a", 50, 60], size) == "[10, 'a', 50, 60] is not 4 finite numbers"
    assert clip_box((-5, 10, 250, 120), size) == (0.0, 10.0, 200.0, 100.0)
    assert clip_box((50, 10, 10, 50), size) == (10.0, 10.0, 50.0, 50.0)
    assert clip_box((210, 10, 250, 50), size) is None  # wholly outside: nothing left


def _bad_set(tmp_path: Path) -> Path:
    write_photo(tmp_path / "photos" / "a.jpg", (240, 360), 6, (30, 100, 150, 300))  # upright 240 x 360
    rows = [
        {"id": "ok", "target": {"boxes": [[30, 100, 150, 300]], "labels": ["t"]}},
        # Fits the stored (sideways, 360 x 240) image but not the upright one.
        {"id": "wide", "target": {"boxes": [[30, 100, 300, 200], [10, 10, 20, 20]], "labels": ["t", "u"]}},
        {"id": "inv", "target": {"boxes": [[150, 100, 30, 300]], "labels": ["t"]}},
    ]
    lines = []
    for row in rows:
        row["images"] = ["photos/a.jpg"]
        row["messages"] = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find it."}]},
            {"role": "assistant", "content": [{"type": "boxes"}]},
        ]
        lines.append(json.dumps(row))
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_boxes_error_names_file_line_and_sample(tmp_path: Path) -> None:
    data = DataSection(source=str(_bad_set(tmp_path)), split_ratio=1.0)
    with pytest.raises(UsageError) as caught:
        load_splits(data, box_format="plain")
    assert caught.value.message == (
        f"{tmp_path / 'bad.jsonl'}, line 2 (id wide): target box #0 [30, 100, 300, 200] lies outside the 240x360 image"
    )
    assert 'data.bad_boxes = "drop"' in caught.value.hint


def test_bad_boxes_drop_and_clip(tmp_path: Path) -> None:
    source = str(_bad_set(tmp_path))
    dropped = lazy_splits(DataSection(source=source, split_ratio=1.0, bad_boxes="drop"), box_format="plain")["train"]
    marks = {dropped[k]["id"]: dropped[k].get("dropped") for k in range(len(dropped))}
    assert marks == {
        "ok": None,
        "wide": "box #0 [30, 100, 300, 200] lies outside the 240x360 image",
        "inv": "box #0 [150, 100, 30, 300] is inverted (x2 < x1 or y2 < y1; an [x, y, width, height] box?)",
    }
    kept = load_splits(DataSection(source=source, split_ratio=1.0, bad_boxes="drop"), box_format="plain")["train"]
    assert [s["id"] for s in kept] == ["ok"]  # the benchmark never sees a dropped sample

    clipped = load_splits(DataSection(source=source, split_ratio=1.0, bad_boxes="clip"), box_format="plain")["train"]
    by_id = {s["id"]: s for s in clipped}
    assert by_id["wide"]["target"] == {"boxes": [[30.0, 100.0, 240.0, 200.0], [10, 10, 20, 20]], "labels": ["t", "u"]}
    assert by_id["wide"]["clipped"] == 1 and "clipped" not in by_id["ok"]
    assert by_id["wide"]["messages"][-1]["content"][0]["text"] == "[30, 100, 240, 200]\n[10, 10, 20, 20]"
    assert by_id["inv"]["target"]["boxes"] == [[30.0, 100.0, 150.0, 300.0]] and by_id["inv"]["clipped"] == 1


def test_malformed_boxes_are_errors_under_every_setting(tmp_path: Path) -> None:
    write_photo(tmp_path / "a.jpg", (200, 100), 1, (10, 10, 50, 50))
    row = {"images": ["a.jpg"], "messages": [{"role": "user", "content": "q"}], "target": {"boxes": [[1, 2, 3]]}}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    for policy in ("error", "drop", "clip"):
        data = DataSection(source=str(tmp_path / "m.jsonl"), split_ratio=1.0, bad_boxes=policy)
        with pytest.raises(UsageError, match=r"m\.jsonl, line 1: target box #0 \[1, 2, 3\] is not 4 numbers"):
            load_splits(data, box_format="plain")
    row["target"] = {"boxes": [[1, 2, 3, 4]], "labels": ["a", "b"]}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(UsageError, match=r"line 1: target\.labels must be a list of 1 strings, one per box"):
        load_splits(DataSection(source=str(tmp_path / "m.jsonl"), split_ratio=1.0), box_format="plain")
