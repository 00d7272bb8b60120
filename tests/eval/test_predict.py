"""`vlmtune predict`: answers, parsed boxes and drawn copies for a few images; the default prompt; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from vlmtune_cli.cli import app
from vlmtune_cli.data.synthetic import draw_scene
from vlmtune_cli.eval import benchmark, predict
from vlmtune_cli.eval.report import PRED_COLOUR

from ..tiny_run import tiny_run

runner = CliRunner()


def _images(workspace: Path, n: int = 2) -> list[Path]:
    paths = []
    for i in range(n):
        paths.append(workspace / "photos" / f"shelf{i}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        draw_scene(5, i, {})[0].save(paths[-1])
    return paths


@pytest.mark.slow
def test_predict_end_to_end(workspace: Path, cache_dir: Path) -> None:
    run = tiny_run(cache_dir, workspace)
    images = _images(workspace)
    result = runner.invoke(app, ["predict", "smoke", *map(str, images), "--max-new-tokens", "8", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["prompt_source"].startswith("first training sample of builtin:synthetic-detection")
    assert "nutrition" in record["prompt"] and record["box_format"] == "qwen2-vl-grid"
    assert Path(record["out"]) == run / "predictions-images"
    assert [p["image"] for p in record["predictions"]] == [str(p) for p in images]
    for p in record["predictions"]:
        assert isinstance(p["output"], str) and Path(p["drawn"]).is_file()
    lines = (run / "predictions-images" / "predict.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["prompt"] == record["prompt"]

    table = runner.invoke(
        app,
        [
            "predict",
            str(run),
            str(images[0]),
            "--prompt",
            "Where is it?",
            "--out",
            "pred",
            "--checkpoint",
            "checkpoint-1",
            "--max-new-tokens",
            "4",
        ],
    )
    assert table.exit_code == 0, table.output
    assert "checkpoint-1" in table.stdout and "images with boxes: pred" in table.stdout
    assert (workspace / "pred" / "shelf0.png").is_file()


@pytest.mark.slow
def test_boxes_are_parsed_in_original_pixels_and_drawn(
    workspace: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_run(cache_dir, workspace)
    image = workspace / "a.png"
    Image.new("RGB", (200, 100), "white").save(image)
    twin = workspace / "other" / "a.png"  # the same file name twice: drawn as a.png and a-2.png
    twin.parent.mkdir()
    Image.new("RGB", (200, 100), "white").save(twin)
    answer = "<|object_ref_start|>table<|object_ref_end|><|box_start|>(100,200),(500,800)<|box_end|>"

    def fake_generate(model, processor, samples, **kwargs):
        assert samples[0]["messages"][-1]["content"][-1]["text"] == "Detect the table."
        return ["prompt"] * len(samples), [answer, "no box here"]

    monkeypatch.setattr(benchmark, "generate", fake_generate)
    result = runner.invoke(
        app, ["predict", "smoke", str(image), str(twin), "--prompt", "Detect the table.", "--out", "out", "--json"]
    )
    assert result.exit_code == 0, result.output
    first, second = json.loads(result.stdout)["predictions"]
    assert first["boxes"] == [[20.0, 20.0, 100.0, 80.0]] and first["labels"] == ["table"] and first["parsed_ok"]
    assert second["boxes"] == [] and not second["parsed_ok"] and second["reason"]
    assert [Path(p["drawn"]).name for p in (first, second)] == ["a.png", "a-2.png"]
    drawn = Image.open(first["drawn"]).convert("RGB")
    scale = drawn.width // 200  # draw_boxes enlarges small images
    assert drawn.getpixel((20 * scale, 50 * scale)) == PRED_COLOUR  # on the box's left edge
    assert drawn.getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.slow
def test_bad_input_gets_a_message_and_exit_code(workspace: Path, cache_dir: Path) -> None:
    run = tiny_run(cache_dir, workspace)
    images = _images(workspace, 1)
    missing = runner.invoke(app, ["predict", "smoke", str(images[0]), "nowhere.jpg"])
    assert missing.exit_code == 2 and "image nowhere.jpg does not exist" in missing.output
    (workspace / "broken.jpg").write_bytes(b"not a jpeg")
    broken = runner.invoke(app, ["predict", "smoke", "broken.jpg"])
    assert broken.exit_code == 2 and "broken.jpg cannot be read" in broken.output
    folder = runner.invoke(app, ["predict", "smoke", "photos"])
    assert folder.exit_code == 2 and "is a folder" in folder.output
    unknown = runner.invoke(app, ["predict", "other-run", str(images[0])])
    assert unknown.exit_code == 2 and "no such run directory" in unknown.output and "smoke" in unknown.output
    (run / "final" / "COMPLETE").unlink()
    unfinished = runner.invoke(app, ["predict", "smoke", str(images[0])])
    assert unfinished.exit_code == 2 and "no finished final/" in unfinished.output
    assert f"vlmtune predict {run} {images[0]} --checkpoint checkpoint-2" in unfinished.output
    for result in (missing, broken, folder, unknown, unfinished):
        assert "Traceback" not in result.output
    assert not (run / predict.DEFAULT_OUT).exists()  # nothing written for failed calls
