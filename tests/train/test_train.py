"""`vlmtune train` end to end on the tiny model: loss goes down, outputs land where promised, resuming from a
checkpoint equals an uninterrupted run (LoRA and full fine-tuning), frozen weights stay bit-identical."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmtune_cli.cli import app

from ..conftest import RECIPES

pytestmark = pytest.mark.slow
runner = CliRunner()

# A small smoke run: 24 samples → 19 train → 5 steps per epoch at batch 4; a checkpoint every 3 steps.
SMALL = [
    "data.num_samples=24",
    "data.max_samples=24",
    "training.epochs=2",
    "training.save_steps=3",
    "training.save_total_limit=20",
    "training.eval_steps=5",
    "training.logging_steps=1",
]
FULL = ["tuning.vision=full", "tuning.projector=full", "tuning.llm=frozen"]  # the v3 shape


def train(*overrides: str, extra: tuple[str, ...] = ()) -> Path:
    args = ["train", str(RECIPES / "smoke.toml")]
    for item in (*SMALL, *overrides):
        args += ["--set", item]
    result = runner.invoke(app, [*args, *extra])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return Path("runs") / "smoke"


def tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def assert_bitwise_equal(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []


def interrupt_after(run: Path, step: int, into: Path) -> Path:
    """The run directory as a kill right after checkpoint `step` would have left it."""
    copy = into / run.name
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "final")
    (copy / "summary.json").unlink()
    for checkpoint in (copy / "checkpoints").glob("checkpoint-*"):
        if int(checkpoint.name.split("-")[1]) > step:
            shutil.rmtree(checkpoint)
    return copy


def test_smoke_training_learns_and_records_the_run(workspace: Path) -> None:
    result = runner.invoke(app, ["train", str(RECIPES / "smoke.toml")])
    assert result.exit_code == 0, result.output
    run = workspace / "runs" / "smoke"
    assert f"run directory {Path('runs') / 'smoke'}" in result.stdout.replace(str(workspace) + "/", "")
    summary = json.loads((run / "summary.json").read_text())
    losses = [entry["loss"] for entry in summary["log_history"] if "loss" in entry]
    assert losses[-1] < losses[0] - 0.3, losses
    assert summary["finished"] is True
    assert (run / "final" / "COMPLETE").is_file() and (run / "final" / "adapter_model.safetensors").is_file()
    assert (run / "final" / "tokenizer.json").is_file(), "the processor is saved with the adapter"
    env = json.loads((run / "env.json").read_text())
    assert {"torch", "transformers", "trl", "peft"} <= env["packages"].keys()
    assert "smoke" in (run / "recipe.toml").read_text()
    # TensorBoard really logged the training loss.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "logs"))
    events.Reload()
    assert len(events.Scalars("train/loss")) >= 5


def test_lora_resume_equals_uninterrupted_run(workspace: Path) -> None:
    run = train()
    reference = tensors(run / "final" / "adapter_model.safetensors")
    # Killed mid-epoch 1 right after checkpoint 3; checkpoint 6 was being written (no COMPLETE marker).
    copy = interrupt_after(run, 6, workspace / "second")
    (copy / "checkpoints" / "checkpoint-6" / "COMPLETE").unlink()
    result = runner.invoke(
        app,
        ["train", str(RECIPES / "smoke.toml"), *sum((["--set", s] for s in SMALL), [])],
        env={"VLMTUNE_RUNS_DIR": str(workspace / "second")},
    )
    assert result.exit_code == 0, result.output
    assert "skipping incomplete checkpoint" in result.stderr and "checkpoint-6" in result.stderr
    assert "resuming from" in result.stderr and "checkpoint-3 (step 3" in result.stderr
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-3")
    assert "step 4 · loss" in result.stderr and "step 3 · loss" not in result.stderr, "steps 1-3 ran again"
    resumed = tensors(copy / "final" / "adapter_model.safetensors")
    assert_bitwise_equal(resumed, reference)
    at_checkpoint = tensors(copy / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors")
    with pytest.raises(AssertionError):
        assert_bitwise_equal(at_checkpoint, reference)  # training did move the weights after step 3


def test_full_fine_tuning_resume_restores_weights_and_frozen_llm_is_untouched(workspace: Path, cache_dir: Path) -> None:
    import torch

    run = train(*FULL)
    reference = tensors(run / "final" / "model.safetensors")
    copy = interrupt_after(run, 3, workspace / "second")
    result = runner.invoke(
        app,
        ["train", str(RECIPES / "smoke.toml"), *sum((["--set", s] for s in (*SMALL, *FULL)), [])],
        env={"VLMTUNE_RUNS_DIR": str(workspace / "second")},
    )
    assert result.exit_code == 0, result.output
    assert "checkpoint-3 (step 3" in result.stderr
    assert_bitwise_equal(tensors(copy / "final" / "model.safetensors"), reference)

    base = tensors(cache_dir / "models" / "tiny-qwen2-vl" / "model.safetensors")
    # Checkpoints keep the legacy key names: `visual.*` is the vision tower and merger, the rest the LLM.
    trained = [k for k in reference if k.startswith("visual.")]
    frozen = [k for k in reference if not k.startswith("visual.")]
    assert frozen and trained
    assert all(torch.equal(reference[k], base[k]) for k in frozen), "a frozen LLM weight changed"
    assert all(not torch.equal(reference[k], base[k]) for k in trained if k.endswith("weight")), (
        "a vision or merger weight did not train"
    )


@pytest.mark.parametrize("tuning", [(), tuple(FULL)], ids=["lora", "full"])
def test_skipping_the_trainers_module_walks_changes_nothing_but_speed(
    workspace: Path, tuning: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """step_overhead.py: weights, gradient norms and FLOP counts equal those of Trainer's own per-step walks."""
    from vlmtune_cli.config.recipe import load_recipe
    from vlmtune_cli.config.settings import load_settings
    from vlmtune_cli.train import trainer

    def run(skip: bool, where: str) -> tuple[dict, list]:
        monkeypatch.setenv("VLMTUNE_RUNS_DIR", str(workspace / where))
        path = workspace / where / "smoke"
        recipe = load_recipe(RECIPES / "smoke.toml", [*SMALL, "training.epochs=1", *tuning])
        trainer.train(recipe, load_settings(), per_step_walks=not skip)
        weights = next(f for f in ("adapter_model.safetensors", "model.safetensors") if (path / "final" / f).exists())
        history = json.loads((path / "summary.json").read_text())["log_history"]
        logged = [(h.get("grad_norm"), h.get("total_flos"), h.get("loss")) for h in history]
        return tensors(path / "final" / weights), logged

    skipping, stock = run(True, "skipping"), run(False, "stock")
    assert_bitwise_equal(skipping[0], stock[0])
    assert skipping[1] == stock[1] and any(g is not None for g, _, _ in stock[1])


def test_finished_run_and_other_recipe_are_refused_without_overwrite(workspace: Path) -> None:
    train("training.epochs=1")
    again = runner.invoke(
        app,
        ["train", str(RECIPES / "smoke.toml"), *sum((["--set", s] for s in SMALL), []), "--set", "training.epochs=1"],
    )
    assert again.exit_code == 2 and "already holds a finished run" in again.stderr
    other = runner.invoke(app, ["train", str(RECIPES / "smoke.toml"), "--set", "training.lr=0.1"])
    assert other.exit_code == 2 and "holds a run of a different recipe" in other.stderr
    assert "training.lr" in other.stderr
    fresh = runner.invoke(
        app,
        [
            "train",
            str(RECIPES / "smoke.toml"),
            *sum((["--set", s] for s in SMALL), []),
            "--set",
            "training.epochs=1",
            "--overwrite",
        ],
    )
    assert fresh.exit_code == 0, fresh.output


def test_resume_flag_without_checkpoint_is_a_usage_error(workspace: Path) -> None:
    result = runner.invoke(app, ["train", str(RECIPES / "smoke.toml"), "--resume"])
    assert result.exit_code == 2
    assert "no complete checkpoint to resume from" in result.stderr


def test_unknown_training_extra_key_is_named(workspace: Path) -> None:
    result = runner.invoke(
        app,
        [
            "train",
            str(RECIPES / "smoke.toml"),
            *sum((["--set", s] for s in SMALL), []),
            "--set",
            "training.extra.warmup_ratoi=0.1",
        ],
    )
    assert result.exit_code == 2
    assert "training.extra.warmup_ratoi: not an SFTConfig/TrainingArguments field" in result.stderr


def test_quickstart_command_succeeds_when_repeated(workspace: Path) -> None:
    """scripts/smoke.sh's command, run twice as a new user would (small, so the test stays cheap)."""
    import shlex

    script = (RECIPES.parent / "scripts" / "smoke.sh").read_text()
    command = shlex.split(next(line for line in script.splitlines() if line.startswith("exec ")))
    assert command[:2] == ["exec", ".venv/bin/vlmtune"] and command[-1] == "$@"
    tiny = ("data.num_samples=8", "data.max_samples=8", "training.max_steps=1", "training.eval_steps=100")
    small = [a for s in tiny for a in ("--set", s)]
    argv = [str(RECIPES.parent / a) if a.endswith(".toml") else a for a in command[2:-1]] + small
    for attempt in (1, 2):
        result = runner.invoke(app, argv)
        assert result.exit_code == 0, f"attempt {attempt}: {result.output}"
        assert (workspace / "runs" / "smoke" / "final" / "COMPLETE").is_file()


def test_files_follow_the_umask(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights, markers, the built-in model and the tokenised cache are as readable as the umask allows: safetensors
    and mkstemp/mkdtemp would make them 0600/0700, hiding a run from the others sharing a project folder."""
    import os
    import stat

    monkeypatch.setenv("VLMTUNE_CACHE_DIR", str(workspace / "own-cache"))  # built here, under this umask
    previous = os.umask(0o027)
    try:
        train("data.num_samples=8", "data.max_samples=8", "training.max_steps=1", "training.save_steps=1")
    finally:
        os.umask(previous)
    modes = {}
    for root in (workspace / "runs" / "smoke", workspace / "own-cache"):
        for path in (root, *root.rglob("*")):
            if not path.is_symlink() and not path.name.endswith(".lock"):
                modes[path.relative_to(workspace)] = stat.S_IMODE(path.stat().st_mode)
    expected = {path: 0o750 if (workspace / path).is_dir() else 0o640 for path in modes}
    assert modes == expected
    names = {path.name for path in modes}
    assert {"adapter_model.safetensors", "model.safetensors", "COMPLETE", "recipe.toml", "summary.json"} <= names


def test_the_base_model_under_peft_trains_in_train_mode(cache_dir: Path) -> None:
    """PEFT's wrapper reports `training` while the base model it wraps was loaded in eval mode: the first
    `train()` must still walk every module, or dropout and gradient checkpointing stay off until an evaluation."""
    from vlmtune_cli.config.recipe import load_recipe
    from vlmtune_cli.models import loading
    from vlmtune_cli.models.tuning import apply_tuning
    from vlmtune_cli.train.step_overhead import without_per_step_module_walks

    recipe = load_recipe(RECIPES / "smoke.toml")
    model = apply_tuning(loading.load_model(recipe.model, cache_dir), recipe.tuning, recipe.lora, seed=0)
    assert model.training and any(not m.training for m in model.modules()), "the situation this test is about"
    without_per_step_module_walks(model)
    model.train()
    assert all(m.training for m in model.modules())
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
