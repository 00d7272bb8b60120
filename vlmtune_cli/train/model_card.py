"""The model card of a run's final/: what the weights are, in facts vlmtune knows, instead of the boilerplate TRL and
PEFT would write ("a fine-tuned version of [None]", "[More Information Needed]").

Written when final/ is saved, so it holds what training knows: base model, recipe, data, steps, losses. Benchmark
metrics come later, into `metrics.json` next to final/; the card says how to get them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from vlmtune_cli import __version__

if TYPE_CHECKING:
    from vlmtune_cli.config.schema import Recipe


def model_card(recipe: Recipe, *, global_step: int, epoch: float, log_history: list[dict[str, Any]]) -> str:
    """The README.md of final/ (Markdown with the hub's YAML header)."""
    t, d, tuning, lora = recipe.training, recipe.data, recipe.tuning, recipe.lora
    components = {"vision encoder": tuning.vision, "projector": tuning.projector, "language model": tuning.llm}
    by_mode = {mode: [name for name, m in components.items() if m == mode] for mode in ("lora", "full", "frozen")}
    hub_id = not recipe.model.name.startswith(("builtin:", "/", ".", "~"))
    header = ["---"]
    if hub_id:
        header.append(f"base_model: {recipe.model.name}")
    header += [
        f"library_name: {'peft' if recipe.uses_lora else 'transformers'}",
        "pipeline_tag: image-text-to-text",
        "tags:",
        "- vlmtune",
        f"- {'lora' if recipe.uses_lora else 'full-fine-tune'}",
        "---",
        "",
    ]
    weights = []
    if by_mode["lora"]:
        targets = lora.target_modules if isinstance(lora.target_modules, str) else ", ".join(lora.target_modules)
        weights.append(
            f"LoRA adapter on the {', '.join(by_mode['lora'])} (r={lora.r}, alpha={lora.alpha}, "
            f"dropout={lora.dropout:g}, targets: {targets})"
        )
    if by_mode["full"]:
        weights.append(f"full weights of the {', '.join(by_mode['full'])}")
    revision = f" (revision `{recipe.model.revision}`)" if recipe.model.revision else ""
    budget = f"max_steps {t.max_steps}" if t.max_steps else f"{t.epochs} epochs planned"
    rows = [
        ("base model", f"`{recipe.model.name}`{revision}"),
        ("weights here", "; ".join(weights)),
        ("frozen", ", ".join(by_mode["frozen"]) or "nothing"),
        ("loss on", "assistant turns" if tuning.loss_on == "assistant" else "every token but image and padding"),
        (
            "data",
            f"`{d.source}`, train split `{d.train_split}`, test split `{d.test_split}`"
            + (f", at most {d.max_samples} samples" if d.max_samples else "")
            + f", seed {d.seed}",
        ),
        (
            "training",
            f"{global_step} optimizer steps, {epoch:g} epochs ({budget}); lr {t.lr:g} ({t.lr_scheduler}, "
            f"{t.warmup_steps} warm-up steps), batch {t.batch_size} × grad accum {t.grad_accum} per device, "
            f"precision {t.precision}, seed {t.seed}",
        ),
        ("final training loss", _last(log_history, "loss")),
        ("final evaluation loss", _last(log_history, "eval_loss")),
    ]
    lines = [
        f"# {recipe.variant}",
        "",
        *([recipe.description, ""] if recipe.description else []),
        f"Fine-tuned with vlmtune {__version__}. The fully resolved recipe is `recipe.toml` in the run directory "
        "(the folder above this one); `vlmtune train recipe.toml` repeats the run.",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {key} | {value} |" for key, value in rows),
        "",
        "Benchmark metrics are not part of training: `vlmtune benchmark <run directory>` writes `metrics.json` "
        "next to this folder. `vlmtune export <run directory> --merge` makes a standalone model.",
        "",
    ]
    return "\n".join(header + lines)


def _last(history: list[dict[str, Any]], key: str) -> str:
    for entry in reversed(history):
        value = entry.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return f"{value:.4f} (step {entry.get('step', '?')})"
    return "not logged"
