"""`vlmtune export`: merged and adapter exports load with plain transformers (no vlmtune import) and generate
what the run's adapter generates; checkpoints, full fine-tunes, overwriting, atomicity and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmtune_cli.cli import app
from vlmtune_cli.models import export

from ..tiny_run import tiny_run

runner = CliRunner()

# Runs in a fresh interpreter that never imports vlmtune: loads both exports with plain transformers (+ peft for
# the adapter), checks the processor files, and generates greedily from inputs the test prepared.
_PLAIN_LOAD = r"""
import json, sys
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

merged, adapter, inputs_file, *images = sys.argv[1:]
inputs = torch.load(inputs_file)
pixels = AutoImageProcessor.from_pretrained(merged)([Image.open(p).convert("RGB") for p in images],
                                                   return_tensors="pt")
tokenizer = AutoTokenizer.from_pretrained(merged)
tokens = {}
for name, path in (("merged", merged), ("adapter", adapter)):
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False, num_beams=1,
                             pad_token_id=tokenizer.pad_token_id)
    tokens[name] = out[:, inputs["input_ids"].shape[1]:].tolist()
print(json.dumps({
    "vlmtune_imported": any(m.split(".")[0] == "vlmtune_cli" for m in sys.modules),
    "processor_class": json.load(open(f"{merged}/processor_config.json"))["processor_class"],
    "pixel_values_equal": torch.equal(pixels["pixel_values"], inputs["pixel_values"]),
    "grid_equal": torch.equal(pixels["image_grid_thw"], inputs["image_grid_thw"]),
    "tokens": tokens,
}))
"""


def _adapter_tokens(run: Path, cache_dir: Path, image_paths: list[Path], inputs_file: Path) -> list[list[int]]:
    """Greedy tokens of the run's unmerged adapter (PEFT on the base model); saves the inputs it used."""
    import torch
    from peft import PeftModel
    from PIL import Image

    from vlmtune_cli.config.recipe import load_recipe
    from vlmtune_cli.models import loading

    recipe = load_recipe(run / "recipe.toml", environ={})
    processor = loading.load_processor(recipe.model, recipe.data, cache_dir, from_dir=run / "final")
    processor.tokenizer.padding_side = "left"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Detect the table."}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images = [Image.open(p).convert("RGB") for p in image_paths]
    inputs = processor(text=[prompt] * len(images), images=images, padding=True, return_tensors="pt")
    torch.save(dict(inputs), inputs_file)
    model = PeftModel.from_pretrained(loading.load_model(recipe.model, cache_dir), run / "final").eval()
    with torch.inference_mode():
        out = model.generate(
            **inputs, max_new_tokens=12, do_sample=False, num_beams=1, pad_token_id=processor.tokenizer.pad_token_id
        )
    return out[:, inputs["input_ids"].shape[1] :].tolist()


@pytest.mark.slow
def test_merged_export_generates_what_the_adapter_generates_without_vlmtune(workspace: Path, cache_dir: Path) -> None:
    from vlmtune_cli.data.synthetic import draw_scene

    run = tiny_run(cache_dir, workspace)
    merged = runner.invoke(app, ["export", "smoke", "--merge", "--json"])
    assert merged.exit_code == 0, merged.output
    record = json.loads(merged.stdout)
    assert record["kind"] == "merged" and Path(record["out"]) == run / "export" / "merged"
    assert {"config.json", "model.safetensors", "processor_config.json", "recipe.toml"} <= set(record["files"])
    assert not any(name.startswith("adapter_") for name in record["files"])
    adapter = runner.invoke(app, ["export", str(run), "--out", "adapter-out", "--json"])
    assert adapter.exit_code == 0, adapter.output
    adapter_config = json.loads((workspace / "adapter-out" / "adapter_config.json").read_text())
    assert Path(adapter_config["base_model_name_or_path"]).is_absolute()  # the built-in model, in the cache
    assert not list(workspace.glob("**/.*staging*"))

    image_paths = []
    for i in range(2):
        image_paths.append(workspace / f"scene{i}.png")
        draw_scene(3, i, {})[0].save(image_paths[-1])
    inputs_file = workspace / "inputs.pt"
    expected = _adapter_tokens(run, cache_dir, image_paths, inputs_file)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMTUNE_")}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _PLAIN_LOAD,
            str(run / "export" / "merged"),
            str(workspace / "adapter-out"),
            str(inputs_file),
            *map(str, image_paths),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=workspace,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    plain = json.loads(done.stdout.strip().splitlines()[-1])
    assert plain["vlmtune_imported"] is False
    assert plain["processor_class"] == "Qwen2VLProcessor"
    assert plain["pixel_values_equal"] and plain["grid_equal"]  # the exported processor keeps the pixel bounds
    assert plain["tokens"]["merged"] == expected
    assert plain["tokens"]["adapter"] == expected


@pytest.mark.slow
def test_checkpoint_export_and_a_run_without_final(workspace: Path, cache_dir: Path) -> None:
    run = tiny_run(cache_dir, workspace)
    (run / "final" / "COMPLETE").unlink()
    refused = runner.invoke(app, ["export", str(run)])
    assert refused.exit_code == 2
    assert "no finished final/" in refused.output and "checkpoint-1, checkpoint-2" in refused.output
    assert "--checkpoint checkpoint-2" in refused.output and "Traceback" not in refused.output

    missing = runner.invoke(app, ["export", str(run), "--checkpoint", "7"])
    assert missing.exit_code == 2 and "checkpoint-7 does not exist" in missing.output

    done = runner.invoke(app, ["export", str(run), "--checkpoint", "1", "--json"])
    assert done.exit_code == 0, done.output
    record = json.loads(done.stdout)
    assert record["checkpoint"] == "checkpoint-1" and record["kind"] == "adapter"
    out = Path(record["out"])
    assert out == run / "export" / "adapter-checkpoint-1"
    assert not {"optimizer.pt", "scheduler.pt", "trainer_state.json", "COMPLETE"} & set(os.listdir(out))
    info = json.loads((out / export.EXPORT_INFO).read_text())
    assert info["checkpoint"] == "checkpoint-1" and info["processor_class"] == "Qwen2VLProcessor"


@pytest.mark.slow
def test_out_is_never_overwritten_without_force_and_a_failed_export_leaves_nothing(
    workspace: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_run(cache_dir, workspace)
    (workspace / "out").mkdir()
    (workspace / "out" / "keep.txt").write_text("mine")
    refused = runner.invoke(app, ["export", "smoke", "--out", "out"])
    assert refused.exit_code == 2 and "already exists and is not empty" in refused.output
    assert "--force" in refused.output
    assert (workspace / "out" / "keep.txt").read_text() == "mine"

    def broken(*args: object) -> str:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(export, "_save_processor", broken)
        failed = runner.invoke(app, ["export", "smoke", "--out", "out", "--force"])
    assert failed.exit_code == 1 and "No space left on device" in failed.output
    assert (workspace / "out" / "keep.txt").read_text() == "mine"  # the old export survives a failed one
    assert sorted(p.name for p in workspace.iterdir() if p.name.startswith(".")) == []

    forced = runner.invoke(app, ["export", "smoke", "--out", "out", "--force"])
    assert forced.exit_code == 0, forced.output
    assert not (workspace / "out" / "keep.txt").exists() and (workspace / "out" / "adapter_config.json").is_file()
    for inside in ("runs/smoke", "runs", ".", "runs/smoke/final"):  # never replaces the run it exports
        danger = runner.invoke(app, ["export", "smoke", "--out", inside, "--force"])
        assert danger.exit_code == 2 and "run's own files" in danger.output, inside
    assert (workspace / "runs" / "smoke" / "final" / "COMPLETE").is_file()
    (workspace / "empty").mkdir()
    assert runner.invoke(app, ["export", "smoke", "--out", "empty"]).exit_code == 0  # an empty folder is fine


@pytest.mark.slow
def test_a_full_fine_tune_is_copied(workspace: Path, cache_dir: Path) -> None:
    run = tiny_run(cache_dir, workspace)
    assert runner.invoke(app, ["export", "smoke", "--merge", "--out", "merged"]).exit_code == 0
    # A run whose final/ holds a whole model, as full fine-tuning saves it.
    shutil.rmtree(run / "final")
    shutil.copytree(workspace / "merged", run / "final")
    (run / "final" / "COMPLETE").write_text("{}")
    result = runner.invoke(app, ["export", "smoke", "--merge", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["kind"] == "full" and Path(record["out"]) == run / "export" / "full"
    assert (run / "export" / "full" / "model.safetensors").read_bytes() == (
        workspace / "merged" / "model.safetensors"
    ).read_bytes()
    assert "COMPLETE" not in record["files"]


def test_unknown_run(workspace: Path) -> None:
    result = runner.invoke(app, ["export", "nope", "--merge"])
    assert result.exit_code == 2
    assert "nope: no such run directory" in result.output and "Traceback" not in result.output
    assert "vlmtune train" in result.output  # no runs yet: says how to make one
