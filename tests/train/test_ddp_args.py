"""DDP's find_unused_parameters follows the tuning: True only where a trainable parameter can miss a backward
pass (see train/ranks.py for the reasoning); the recipe's `training.extra` still wins."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from vlmtune_cli.config.recipe import load_recipe
from vlmtune_cli.models.families import family_for_model_type
from vlmtune_cli.runs import RunDir
from vlmtune_cli.train.sft_config import build_sft_config

from ..conftest import RECIPES

MODES = ("frozen", "lora", "full")


def expected(vision: str, projector: str, llm: str, model_type: str) -> bool:
    if vision != "frozen" or projector != "frozen":  # text-only micro-batches skip the vision side
        return True
    return llm != "frozen" and model_type == "mllama"  # text-only micro-batches skip Mllama's cross-attention


@pytest.mark.parametrize("model_type", ["qwen2_vl", "mllama"])
def test_find_unused_parameters_per_tuning(model_type: str, tmp_path: Path) -> None:
    seen = {}
    for vision, projector, llm in itertools.product(MODES, repeat=3):
        if (vision, projector, llm) == ("frozen", "frozen", "frozen"):
            continue  # nothing to train: refused when the recipe is checked
        recipe = load_recipe(
            RECIPES / "smoke.toml",
            [f"tuning.vision={vision}", f"tuning.projector={projector}", f"tuning.llm={llm}"],
            environ={},
        )
        args = build_sft_config(recipe, RunDir(tmp_path), has_eval=False, family=family_for_model_type(model_type))
        seen[(vision, projector, llm)] = args.ddp_find_unused_parameters
        assert args.ddp_find_unused_parameters is expected(vision, projector, llm, model_type), (vision, projector, llm)
    off = sorted(k for k, v in seen.items() if not v)
    assert off == ([] if model_type == "mllama" else [("frozen", "frozen", "full"), ("frozen", "frozen", "lora")])


def test_the_recipe_can_still_set_it(tmp_path: Path) -> None:
    recipe = load_recipe(RECIPES / "smoke.toml", ["training.extra.ddp_find_unused_parameters=false"], environ={})
    assert recipe.tuning.vision != "frozen"
    assert build_sft_config(recipe, RunDir(tmp_path), has_eval=False).ddp_find_unused_parameters is False
