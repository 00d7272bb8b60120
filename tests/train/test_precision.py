"""bf16 on CPU as on a GPU: weights loaded in bfloat16, `training.precision = "bf16"` (autocast). Full components
train in float32 so that every one of their tensors moves at the default learning rate (in bf16 weights 70% of
the elements and the norm weights did not move at all), frozen ones stay bit-identical; a full fine-tune resumes
bit for bit by restoring weights in place from the checkpoint's shards, without loading a second model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from vlmtune_cli.cli import app
from vlmtune_cli.config.schema import ModelSection
from vlmtune_cli.errors import VlmtuneError
from vlmtune_cli.models.loading import load_model, resolve_model_path

from ..conftest import RECIPES

runner = CliRunner()
# 24 samples → 19 train → batch 4; 6 steps at the default lr 2e-5, constant; a checkpoint every 3 steps.
BF16_FULL = [
    "data.num_samples=24",
    "data.max_samples=24",
    "training.max_steps=6",
    "training.save_steps=3",
    "training.save_total_limit=5",
    "training.eval_steps=100",
    "training.logging_steps=1",
    "training.lr=2e-5",
    "training.lr_scheduler=constant",
    "training.warmup_steps=0",
    "training.report_to=[]",
    "model.dtype=bfloat16",
    "training.precision=bf16",
    "tuning.vision=full",
    "tuning.projector=full",
    "tuning.llm=frozen",
]


def _train(runs: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, int]:
    """Train the smoke recipe with BF16_FULL into `runs`; (stderr, number of `from_pretrained` calls)."""
    from transformers import AutoModelForImageTextToText

    loads: list[str] = []
    original = AutoModelForImageTextToText.from_pretrained
    monkeypatch.setattr(
        AutoModelForImageTextToText, "from_pretrained", lambda path, **kw: loads.append(path) or original(path, **kw)
    )
    args = ["train", str(RECIPES / "smoke.toml"), *(a for o in BF16_FULL for a in ("--set", o))]
    result = runner.invoke(app, args, env={"VLMTUNE_RUNS_DIR": str(runs)})
    monkeypatch.undo()
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.stderr, len(loads)


@pytest.mark.slow
def test_bf16_full_components_train_every_tensor_in_float32_and_resume_bit_for_bit(
    workspace: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stderr, _ = _train(workspace / "runs", monkeypatch)
    assert "precision: bf16 autocast, trainable weights in float32 (training.precision)" in stderr
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in stderr.splitlines()[1:]
        if line.count("│") == 7
    }
    assert rows["vision"][3:] == rows["projector"][3:] == ["float32", "-"] and rows["llm"][3:] == ["-", "bfloat16"]

    run = workspace / "runs" / "smoke"
    final = load_file(run / "final" / "model.safetensors")
    base = load_file(Path(resolve_model_path("builtin:tiny-qwen2-vl", cache_dir)) / "model.safetensors")
    # Checkpoints keep the legacy key names: `visual.*` is the vision tower and merger, the rest the LLM.
    trained = [k for k in final if k.startswith("visual.")]
    frozen = [k for k in final if not k.startswith("visual.")]
    assert len(trained) == 31 and frozen
    assert {final[k].dtype for k in trained} == {torch.float32} and {final[k].dtype for k in frozen} == {torch.bfloat16}
    assert [k for k in frozen if not torch.equal(final[k], base[k].to(torch.bfloat16))] == []
    start = {k: base[k].to(torch.bfloat16).float() for k in trained}  # what training started from
    assert [k for k in trained if torch.equal(final[k], start[k])] == [], "a trainable tensor did not change"
    changed = sum(int(final[k].ne(start[k]).sum()) for k in trained) / sum(final[k].numel() for k in trained)
    assert changed > 0.99, changed  # measured 0.99999 (one element of 87,872 kept); bf16 weights: 0.305

    # Killed after checkpoint 3: the resume restores weights in place and ends where the whole run ended.
    second = workspace / "second"
    shutil.copytree(run, second / "smoke")
    shutil.rmtree(second / "smoke" / "final")
    (second / "smoke" / "summary.json").unlink()
    shutil.rmtree(second / "smoke" / "checkpoints" / "checkpoint-6")
    stderr, loads = _train(second, monkeypatch)
    assert "checkpoint-3 (step 3" in stderr
    assert loads == 1, "the resume loaded a second model to take the checkpoint's weights from"
    resumed = load_file(second / "smoke" / "final" / "model.safetensors")
    assert resumed.keys() == final.keys() and [k for k in final if not torch.equal(resumed[k], final[k])] == []


def test_restoring_full_weights_in_place_is_strict(tmp_path: Path, cache_dir: Path) -> None:
    from vlmtune_cli.models.restore import restore_full_weights

    section = ModelSection(name="builtin:tiny-mllama", dtype="float32")
    saved = load_model(section, cache_dir)
    with torch.no_grad():
        for param in saved.parameters():
            param.add_(1.0)
    saved.save_pretrained(tmp_path / "ckpt")
    keys = load_file(tmp_path / "ckpt" / "model.safetensors")
    assert not any(k.startswith("model.") for k in keys), "Mllama checkpoints use legacy names (mapped on restore)"

    model = load_model(section, cache_dir)
    restore_full_weights(model, tmp_path / "ckpt")
    expected, got = saved.state_dict(), model.state_dict()
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []

    shards = load_file(tmp_path / "ckpt" / "model.safetensors")
    dropped = sorted(shards)[-1]
    save_file({k: v for k, v in shards.items() if k != dropped}, tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(VlmtuneError, match="lacks 1 weights of the model"):
        restore_full_weights(load_model(section, cache_dir), tmp_path / "ckpt")
    shards[dropped] = torch.zeros(3, 3)
    save_file(shards, tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(VlmtuneError, match=r"has shape \(3, 3\)"):
        restore_full_weights(load_model(section, cache_dir), tmp_path / "ckpt")
