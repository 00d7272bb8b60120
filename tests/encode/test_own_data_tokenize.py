"""tokenize on a user's own photos: upright images in the cache, answers checked per family, boxes checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from vlmtune_cli.cli import app
from vlmtune_cli.config.recipe import load_recipe
from vlmtune_cli.config.settings import load_settings
from vlmtune_cli.encode.build import read_rows, tokenize_recipe
from vlmtune_cli.models.boxes import format_boxes, smart_resize

from ..conftest import RECIPES
from ..photos import PHOTOS, red_box, write_photo_set

runner = CliRunner()
RECIPE = {"qwen2-vl": "smoke.toml", "qwen2.5-vl": "smoke-qwen2.5-vl.toml", "mllama": "smoke-mllama.toml"}
PIXELS = 50176  # the smoke recipes' min_pixels = max_pixels (224*224)


def tokenize(family: str, source: Path, *overrides: str, code: int = 0):
    sets = [f"data.source={source}", "data.split_ratio=1.0", *overrides]
    args = ["tokenize", str(RECIPES / RECIPE[family]), "--json", *(a for s in sets for a in ("--set", s))]
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output + repr(result.exception)
    assert "Traceback" not in result.output
    return json.loads(result.stdout) if code == 0 else result


@pytest.mark.parametrize("family", ["qwen2-vl", "mllama"])
def test_the_cache_holds_upright_images(workspace: Path, family: str) -> None:
    source = write_photo_set(workspace / "own")
    # A lower min_pixels than the smoke recipe's, so Qwen-VL's resize is stable and the cache stores resized images.
    qwen = ["data.min_pixels=3136"] if family == "qwen2-vl" else []
    recipe = load_recipe(RECIPES / RECIPE[family], [f"data.source={source}", "data.split_ratio=1.0", *qwen])
    result = tokenize_recipe(recipe, load_settings().cache_dir, progress=False)
    rows = read_rows(result, len(PHOTOS), ("id", "images", "image_sizes"))
    assert sorted(r["id"] for r in rows) == sorted(PHOTOS)
    for row in rows:
        size, _, box = PHOTOS[row["id"]]
        # Qwen-VL caches each image resized for the model, Mllama as it came: upright, not the sideways stored size.
        stored = smart_resize(*size, 28, 3136, PIXELS) if family == "qwen2-vl" else size
        assert row["image_sizes"] == [list(stored)]
        image = Image.frombytes("RGB", stored, row["images"][0])
        sx, sy = stored[0] / size[0], stored[1] / size[1]
        expected = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        assert all(abs(a - b) <= 3 for a, b in zip(red_box(image), expected, strict=True)), (row["id"], red_box(image))


def _own_answers(folder: Path, answer_of) -> Path:
    """The photo set with answers written by hand: `answer_of(id, size, box)` gives each answer's text."""
    source = write_photo_set(folder)
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    for row in rows:
        size, _, box = PHOTOS[row["id"]]
        row["messages"][-1]["content"] = [{"type": "text", "text": answer_of(row["id"], size, box)}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return source


def test_answers_in_another_familys_syntax_are_refused_or_reported(workspace: Path) -> None:
    def grid(sample_id, size, box):
        return format_boxes("qwen2-vl-grid", [box], ["nutrition table"], size)

    source = _own_answers(workspace / "own", grid)
    assert tokenize("qwen2-vl", source)["counts"]["train"]["unparsed_answers"] == 0  # its own syntax: fine
    error = tokenize("qwen2.5-vl", source, code=2)
    assert (
        f"6 answer(s) of {source} cannot be read as qwen2.5-vl boxes (qwen2.5-vl-json): p1, p2, p3, p4, p5, "
        f"... 1 more; the first: {source}, line 1 (id p1): no JSON list or object of boxes found: '<|object_ref_start|>"
    ) in error.stderr
    assert 'data.answer_check = "warn"' in error.stderr and '{"type": "boxes"}' in error.stderr
    warned = tokenize("qwen2.5-vl", source, "data.answer_check=warn")
    assert warned["counts"]["train"]["samples"] == 6 and warned["counts"]["train"]["unparsed_answers"] == 6
    assert warned["stats"]["splits"]["train"]["unparsed_answers"] == list(PHOTOS)
    assert tokenize("mllama", source, "data.answer_check=off")["counts"]["train"]["unparsed_answers"] == 0
    assert tokenize("mllama", source, "benchmark.task=vqa")["counts"]["train"]["unparsed_answers"] == 0
    # The statistics table says it too.
    args = ["tokenize", str(RECIPES / RECIPE["mllama"]), "--set", f"data.source={source}"]
    table = runner.invoke(app, [*args, "--set", "data.split_ratio=1.0", "--set", "data.answer_check=warn"])
    assert table.exit_code == 0, table.output
    assert "answers that do not parse" in table.stdout
    assert "train: 6 answer(s) do not parse as boxes (p1, p2, p3, p4, p5, ... 1 more); the first:" in table.stdout


def test_a_grid_value_over_1000_is_an_error_naming_the_sample(workspace: Path) -> None:
    def grid(sample_id, size, box):
        return "<|box_start|>(10,20),(1200,500)<|box_end|>" if sample_id == "p3" else "There is no table."

    source = _own_answers(workspace / "own", grid)
    error = tokenize("qwen2-vl", source, code=2)
    assert (
        f"1 answer(s) of {source} cannot be read as qwen2-vl boxes (qwen2-vl-grid): p3; the first: {source}, "
        "line 3 (id p3): box ['10', '20', '1200', '500'] lies outside the grid 0-1000"
    ) in error.stderr


def test_bad_target_boxes_at_tokenize_time(workspace: Path) -> None:
    source = write_photo_set(workspace / "own")
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    rows[1]["target"]["boxes"] = [[30, 100, 300, 200]]  # p2 is 240 wide upright (360 stored): outside
    rows[3]["target"]["boxes"] = [[20, 20, 20, 260]]  # p4: zero area
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    error = tokenize("qwen2-vl", source, code=2)
    assert f"{source}, line 2 (id p2): target box #0 [30, 100, 300, 200] lies outside the 240x360 image" in error.stderr
    dropped = tokenize("qwen2-vl", source, "data.bad_boxes=drop")
    assert dropped["counts"]["train"]["samples"] == 4 and dropped["counts"]["train"]["dropped_bad_boxes"] == 2
    assert dropped["stats"]["splits"]["train"]["dropped_bad_boxes"] == ["p2", "p4"]
    clipped = tokenize("qwen2-vl", source, "data.bad_boxes=clip")
    # p2 is clipped to the image; p4's box has no area left, so p4 keeps its sample but no box.
    assert clipped["counts"]["train"]["samples"] == 6 and clipped["stats"]["splits"]["train"]["clipped_boxes"] == [
        "p2",
        "p4",
    ]
