"""The data-pipeline changes of the performance work (issue 6): length grouping read from the cache.
The benchmark suite itself (python -m benchmarks.run) is not a test; one smoke run checks that it starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vlmtune_cli.config.recipe import load_recipe

from ..conftest import RECIPES, REPO

SMOKE = RECIPES / "smoke.toml"


@pytest.mark.parametrize("grouped", [False, True])
def test_group_by_length_reads_the_stored_lengths(
    workspace: Path, cache_dir: Path, grouped: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from vlmtune_cli.config.settings import load_settings
    from vlmtune_cli.encode import inputs
    from vlmtune_cli.encode.build import open_splits, read_rows, tokenize_recipe
    from vlmtune_cli.models import loading
    from vlmtune_cli.models.tuning import apply_tuning
    from vlmtune_cli.runs import run_dir_for
    from vlmtune_cli.train import trainer

    recipe = load_recipe(
        SMOKE,
        [
            "data.split_ratio=1.0",
            "data.num_samples=40",
            "data.max_samples=40",
            "training.batch_size=4",
            "training.report_to=['none']",
            f"training.group_by_length={str(grouped).lower()}",
        ],
    )
    processor = loading.load_processor(recipe.model, recipe.data, cache_dir)
    result = tokenize_recipe(recipe, cache_dir, processor=processor)
    train_set, _ = open_splits(result, processor)
    lengths = [len(row["input_ids"]) for row in read_rows(result, 40)]
    assert list(train_set.with_format(None)["length"]) == lengths
    model = loading.load_model(recipe.model, cache_dir)
    model = apply_tuning(model, recipe.tuning, recipe.lora, seed=42)
    built = trainer.build_trainer(
        recipe, run_dir_for(recipe, load_settings().runs_dir), model, processor, train_set, None
    )
    calls = []
    original = inputs.ModelInputs.__call__
    monkeypatch.setattr(inputs.ModelInputs, "__call__", lambda self, b: calls.append(1) or original(self, b))
    sampler = built._get_train_sampler()
    assert calls == []  # finding the lengths loaded no sample
    if not grouped:
        assert not isinstance(sampler, LengthGroupedSampler)
        return
    assert isinstance(sampler, LengthGroupedSampler) and sampler.lengths == lengths
    batch = next(iter(built.get_train_dataloader()))
    order = list(iter(sampler))
    assert sorted(order) == list(range(40))
    assert batch["input_ids"].shape[0] == 4 and batch["attention_mask"].shape[1] == max(
        int(n) for n in batch["attention_mask"].sum(1)
    )


@pytest.mark.slow
def test_grouped_resume_equals_uninterrupted_run(workspace: Path) -> None:
    from .test_train import assert_bitwise_equal, interrupt_after, tensors, train

    grouped = ("training.group_by_length=true",)
    run = train(*grouped)
    reference = tensors(run / "final" / "adapter_model.safetensors")
    copy = interrupt_after(run, 3, workspace / "second")  # mid-epoch 1 (5 steps per epoch)
    from typer.testing import CliRunner

    from vlmtune_cli.cli import app

    from .test_train import SMALL

    result = CliRunner().invoke(
        app,
        ["train", str(SMOKE), *sum((["--set", s] for s in (*SMALL, *grouped)), [])],
        env={"VLMTUNE_RUNS_DIR": str(workspace / "second")},
    )
    assert result.exit_code == 0, result.output
    assert "checkpoint-3 (step 3" in result.stderr
    assert_bitwise_equal(tensors(copy / "final" / "adapter_model.safetensors"), reference)


@pytest.mark.slow
def test_benchmark_suite_starts(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--only", "startup", "--repeats", "1", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "start-up" in out.read_text()
