"""A recipe → TRL's `SFTConfig` (the seed's `create_training_config`), and the precision it trains in on this machine.

Imports torch and TRL inside the functions only.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from vlmtune_cli.config.schema import Recipe
from vlmtune_cli.errors import UsageError
from vlmtune_cli.models.placement import Precision, auto_precision, training_precision
from vlmtune_cli.runs import RunDir
from vlmtune_cli.train.ranks import ddp_find_unused_parameters
from vlmtune_cli.train.sharding import fsdp_settings

if TYPE_CHECKING:
    from vlmtune_cli.models.families import Family


def build_sft_config(recipe: Recipe, run: RunDir, *, has_eval: bool, family: Family | None = None) -> Any:
    """The seed's `create_training_config`: a recipe → TRL's SFTConfig. Raises UsageError for bad `training.extra`.

    `family` (the model's) decides, with the tuning, DDP's find_unused_parameters (ranks.py), and names the blocks
    FSDP shards (sharding.py).
    """
    import torch
    from trl import SFTConfig

    t = recipe.training
    precision, _ = precision_for(recipe)
    evaluate = has_eval and t.eval_steps is not None
    kwargs: dict[str, Any] = dict(
        output_dir=str(run.checkpoints),
        run_name=recipe.variant,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=t.gradient_checkpointing,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=t.eval_steps if evaluate else None,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        seed=t.seed,
        report_to=[name for name in t.report_to if name not in ("tensorboard", "none")],
        dataloader_num_workers=t.dataloader_num_workers,
        # transformers 5 spells `group_by_length` as a sampling strategy; it reads the cache's `length` column.
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        dataloader_pin_memory=torch.cuda.is_available(),
        # Without CUDA, several SLURM tasks must train as one gloo process group, not each on its own.
        use_cpu=not torch.cuda.is_available(),
        # Our dataset is already encoded with our labels; TRL must neither re-tokenise nor drop columns.
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
        # TRL's default (True) walks the autograd graph at every step; only needed where a trainable parameter
        # can miss a backward pass (ranks.ddp_find_unused_parameters says which tunings).
        ddp_find_unused_parameters=ddp_find_unused_parameters(recipe.tuning, family.model_types[0] if family else None),
    )
    if family is not None:
        kwargs.update(fsdp_settings(recipe, family))
    known = set(SFTConfig.__dataclass_fields__)
    for key, value in t.extra.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean training.extra.{close[0]}?" if close else ""
            raise UsageError(f"training.extra.{key}: not an SFTConfig/TrainingArguments field{hint}")
        kwargs[key] = value
    try:
        return SFTConfig(**kwargs)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"the recipe's training settings are rejected by TRL: {exc}") from None


def precision_for(recipe: Recipe) -> tuple[Precision, str]:
    """The precision this machine trains `recipe` in, and why (for the log line)."""
    import torch

    cuda = torch.cuda.is_available()
    capability = torch.cuda.get_device_capability() if cuda else None
    precision = training_precision(recipe.training.precision, recipe.model.dtype, auto_precision(cuda, capability))
    if recipe.training.precision != "auto":
        return precision, "training.precision"
    if recipe.model.dtype in ("bfloat16", "float16"):
        return precision, f"auto: follows model.dtype = {recipe.model.dtype}"
    if capability is None:
        return precision, "auto: no CUDA GPU"
    native = "native bf16" if precision == "bf16" else "no native bf16, fp16 instead"
    return precision, f"auto: GPU compute capability {capability[0]}.{capability[1]}, {native}"
