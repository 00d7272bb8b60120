"""Done-when of issue 18, end to end: one JSONL of own photos (mixed sizes, three stored sideways or upside down
with an EXIF Orientation tag, answers `{"type": "boxes"}`, truth in upright pixels) trains and benchmarks every
supported family, with answers written by vlmtune in the family's syntax and scored in original pixels.

Cheap: 6 photos (4 train, 2 test), 2 training steps per family; a few seconds per family on a CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from vlmtune_cli.cli import app
from vlmtune_cli.config.recipe import load_recipe
from vlmtune_cli.encode.build import read_rows, tokenize_recipe
from vlmtune_cli.encode.labels import IGNORE_INDEX
from vlmtune_cli.eval import benchmark
from vlmtune_cli.models import loading
from vlmtune_cli.models.boxes import format_boxes, processor_resized_size

from .conftest import RECIPES
from .photos import PHOTOS, write_photo_set

runner = CliRunner()
FAMILIES = {
    "qwen2-vl": ("smoke.toml", "qwen2-vl-grid", "<|im_end|>"),
    "qwen2.5-vl": ("smoke-qwen2.5-vl.toml", "qwen2.5-vl-json", "<|im_end|>"),
    "mllama": ("smoke-mllama.toml", "plain", "<|eot_id|>"),
}
RUN = [
    "data.split_ratio=0.67",
    "training.max_steps=2",
    "training.warmup_steps=0",
    "training.eval_steps=100",
    "training.save_steps=100",
    "training.logging_steps=1",
    "training.report_to=[]",
    "benchmark.max_new_tokens=8",
]


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_own_photos_train_and_benchmark_every_family(
    workspace: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, family: str
) -> None:
    recipe_name, box_format, end = FAMILIES[family]
    source = write_photo_set(workspace / "own")
    overrides = [f"data.source={source}", f"variant=own-{family}", *RUN]
    recipe_file = str(RECIPES / recipe_name)

    trained = runner.invoke(app, ["train", recipe_file, *_sets(overrides)])
    assert trained.exit_code == 0, trained.output + repr(trained.exception)
    run = workspace / "runs" / f"own-{family}"
    assert json.loads((run / "summary.json").read_text())["global_step"] == 2

    # What trained: each answer is the family's rendering of the upright-pixel truth, then the end of turn.
    recipe = load_recipe(RECIPES / recipe_name, overrides)
    processor = loading.load_processor(recipe.model, recipe.data, cache_dir)
    cached = tokenize_recipe(recipe, cache_dir, progress=False)
    assert cached.hit, "train built this very cache entry"
    rows = read_rows(cached, len(PHOTOS))
    assert len(rows) == len(PHOTOS) and {r["split"] for r in rows} == {"train", "test"}
    for row in rows:
        size, _, box = PHOTOS[row["id"]]
        resized = processor_resized_size(processor, size, recipe.data.min_pixels, recipe.data.max_pixels)
        answer = format_boxes(box_format, [box], ["nutrition table"], size, resized)
        trained_ids = [t for t in row["labels"] if t != IGNORE_INDEX]
        assert processor.tokenizer.decode(trained_ids, skip_special_tokens=False) == answer + end, row["id"]

    # A real benchmark: the truth it scores against is the JSONL's boxes, on the upright image.
    bench = runner.invoke(app, ["benchmark", str(run), "--json"])
    assert bench.exit_code == 0, bench.output + repr(bench.exception)
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 2
    for p in predictions:
        size, _, box = PHOTOS[p["id"]]
        assert p["image_size"] == list(size) and p["target"]["boxes"] == [list(map(float, box))]

    # Gold answers (the very text training saw) score perfectly: the family's text maps back to original pixels.
    def gold(model, processor, samples, **kwargs):
        return ["p"] * len(samples), [s["messages"][-1]["content"][0]["text"] for s in samples]

    monkeypatch.setattr(benchmark, "generate", gold)
    perfect = runner.invoke(app, ["benchmark", str(run), "--split", "train", "--json"])
    assert perfect.exit_code == 0, perfect.output + repr(perfect.exception)
    metrics = json.loads(perfect.stdout)["runs"][0]["metrics"]
    assert metrics["samples"] == 4 and metrics["parse_failure_rate"] == 0.0
    for key in ("precision", "recall", "f1", "accuracy_50", "map_50", "map_50_95"):
        assert metrics[key] == pytest.approx(1.0), key
    assert metrics["mean_iou"] > 0.98
    for p in (json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()):
        box = PHOTOS[p["id"]][2]
        assert all(abs(a - b) <= 1.5 for a, b in zip(p["parsed"]["boxes"][0], box, strict=True)), p
    monkeypatch.undo()

    # predict opens a sideways-stored photo upright too.
    photo = source.parent / "photos" / "p2.jpg"
    with Image.open(photo) as raw:
        assert raw.size == PHOTOS["p2"][0][::-1]  # stored 360 x 240
    predicted = runner.invoke(app, ["predict", str(run), str(photo), "--max-new-tokens", "4", "--json"])
    assert predicted.exit_code == 0, predicted.output + repr(predicted.exception)
    drawn = Image.open(json.loads(predicted.stdout)["predictions"][0]["drawn"]).convert("RGB")
    scale = drawn.width // 240  # drawn copies are enlarged by a whole factor
    assert drawn.size == (240 * scale, 360 * scale)
    r, g, b = drawn.getpixel((5 * scale, 5 * scale))
    assert b > 150 and r < 90 and g < 90, "the blue mark of the upright picture's top-left corner"
