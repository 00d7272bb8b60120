"""The weights a `Target` (runs.py) names, loaded for evaluation or export: checked to be of the recipe's family.

Importing this module is cheap (torch and transformers load inside the functions).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmtune_cli.errors import UsageError

if TYPE_CHECKING:
    from vlmtune_cli.models.families import Family
    from vlmtune_cli.runs import Target


def check_family(target: Target, family: Family) -> None:
    """Refuse weights of another model family than the run's recipe names. Raises UsageError."""
    weights = target.weights
    if weights is None:
        return
    adapter = weights / "adapter_model.safetensors"
    if (weights / "adapter_config.json").is_file():
        if not adapter.is_file():
            return  # an old-style .bin adapter: PEFT's own loading reports a mismatch
        from safetensors import safe_open

        from vlmtune_cli.models.families import find_component

        with safe_open(str(adapter), framework="numpy") as handle:  # key names only; no torch needed
            foreign = [key for key in handle.keys() if find_component(family, key) is None]
        if foreign:
            raise UsageError(
                f"{target.run_dir}: recipe.toml says model.name = {target.recipe.model.name!r} ({family.name}), "
                f"but the adapter in {weights} was trained on another model family ({foreign[0]} is no "
                f"{family.name} weight)",
                hint="restore model.name in recipe.toml to the model it was trained on",
            )
        return
    config = weights / "config.json"
    if not config.is_file():
        raise UsageError(f"{weights} holds neither a PEFT adapter nor a model (no adapter_config.json, no config.json)")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type not in family.model_types:
        raise UsageError(
            f"{target.run_dir}: recipe.toml says model.name = {target.recipe.model.name!r} ({family.name}), "
            f"but {weights} holds a {model_type!r} model",
            hint="restore model.name in recipe.toml to the model it was trained on",
        )


def load_processor_and_family(target: Target, cache_dir: Path) -> tuple[Any, Family]:
    """(processor, family) of a target: the processor saved with its weights, the recipe's pixel bounds.

    Raises UsageError for weights of another family than the recipe names (see `check_family`).
    """
    from vlmtune_cli.models import loading

    recipe = target.recipe
    family = loading.load_family(recipe.model, cache_dir)
    check_family(target, family)
    return loading.load_processor(recipe.model, recipe.data, cache_dir, from_dir=target.weights), family


def load_model(target: Target, cache_dir: Path) -> Any:
    """The target's model in eval mode (adapters merged), on the GPU when there is one."""
    import torch

    from vlmtune_cli.models import loading

    recipe = target.recipe
    if target.weights is None:
        model = loading.load_model(recipe.model, cache_dir)
    else:
        model = loading.load_trained_model(recipe.model, target.weights, cache_dir)
    if torch.cuda.is_available() and recipe.model.quantization == "none":
        model = model.to("cuda")  # pyright: ignore[reportArgumentType] transformers types `to` as generate's
    return model.eval()
