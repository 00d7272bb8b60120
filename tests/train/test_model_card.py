"""The run's model card: true facts in final/README.md, no TRL/PEFT boilerplate anywhere in the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmtune_cli.config.recipe import load_recipe
from vlmtune_cli.train.model_card import model_card

from ..conftest import RECIPES
from ..tiny_run import tiny_run


def test_card_of_a_full_fine_tune_names_what_trained() -> None:
    recipe = load_recipe(RECIPES / "v3.toml", environ={}, unset=["data.max_samples"])
    history = [{"loss": 2.5, "step": 10}, {"eval_loss": 2.25, "step": 10}, {"loss": 1.5, "step": 20}]
    card = model_card(recipe, global_step=20, epoch=2.0, log_history=history)
    assert card.startswith(f"---\nbase_model: {recipe.model.name}\nlibrary_name: transformers\n")
    assert "| weights here | full weights of the vision encoder, projector |" in card
    assert "| frozen | language model |" in card
    assert "| final training loss | 1.5000 (step 20) |" in card
    assert "| final evaluation loss | 2.2500 (step 10) |" in card
    assert f"| data | `{recipe.data.source}`, train split `train`, test split `test`, seed 42 |" in card


@pytest.mark.slow
def test_a_trained_run_has_a_true_card_and_no_boilerplate(cache_dir: Path, workspace: Path) -> None:
    run = tiny_run(cache_dir, workspace)
    cards = sorted(p.relative_to(run).as_posix() for p in run.rglob("README.md"))
    assert cards == ["final/README.md"], "no TRL card in checkpoints/, no PEFT card in checkpoint-N/"
    card = (run / "final" / "README.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert "[None]" not in card and "More Information Needed" not in card
    assert "library_name: peft" in card and "base_model:" not in card, "a built-in model is no hub id"
    assert "| base model | `builtin:tiny-qwen2-vl` |" in card
    recipe = load_recipe(run / "recipe.toml", environ={})
    lora = f"(r={recipe.lora.r}, alpha={recipe.lora.alpha}, dropout={recipe.lora.dropout:g}, targets: all-linear)"
    assert f"| weights here | LoRA adapter on the vision encoder, projector, language model {lora} |" in card
    assert f"| training | {summary['global_step']} optimizer steps, {summary['epoch']:g} epochs (max_steps 2)" in card
    assert f"| final training loss | {summary['final_loss']:.4f} (step 2) |" in card
    assert "| data | `builtin:synthetic-detection`, train split `train`, test split `test`, at most 16 samples" in card
