"""`training.strategy = "fsdp"`: PyTorch's FSDP2 (`fully_shard`) through transformers' Trainer and accelerate.

Trainer and accelerate already own FSDP2 end to end: wrapping the family's blocks (`fsdp_blocks` in families.py),
sharded checkpoints written by every rank through torch.distributed.checkpoint (`pytorch_model_fsdp_0/`,
`optimizer_0/`: save time and memory per rank do not grow with the world size), resuming from them, gradient
clipping across shards and `no_sync` for gradient accumulation. vlmtune adds four things, here:
- the settings, from the recipe and the family table (`fsdp_settings`);
- FSDP without CUDA: accelerate turns its FSDP plugin on only for GPU-like devices and silently trains plain DDP on
  CPU. `configure_fsdp` switches the same plugin on there, so 2 gloo processes run exactly the code path of
  a GPU node (our tests and benchmarks, on machines without a GPU);
- reduction in float32 under bf16/fp16 (`mixed_precision_policy`): accelerate reduces gradients in the half
  dtype; summing N ranks' gradients in bf16 loses what float32 master weights are kept for;
- `final/` consolidated into ordinary safetensors (`full_state_dict`): every rank takes part in gathering the
  weights, rank 0 writes them.

Imports torch and accelerate inside functions only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vlmtune_cli.console import err_console
from vlmtune_cli.errors import UsageError
from vlmtune_cli.fsutil import is_rank_zero
from vlmtune_cli.train.ranks import world_size

if TYPE_CHECKING:
    from vlmtune_cli.config.schema import Recipe
    from vlmtune_cli.models.families import Family


def shards(recipe: Recipe) -> bool:
    """The run trains under FSDP: `training.strategy = "fsdp"` and more than one rank (one process ignores it)."""
    return recipe.training.strategy == "fsdp" and world_size() > 1


def check_sharding(recipe: Recipe) -> None:
    """Refuse (UsageError) what cannot shard on this machine, before anything is loaded; say when nothing shards."""
    if recipe.training.strategy != "fsdp":
        return
    if world_size() <= 1:
        if is_rank_zero():
            err_console.print('training.strategy = "fsdp" in a single process: nothing to shard, training as usual')
        return
    if recipe.training.fsdp.cpu_offload:
        import torch

        if not torch.cuda.is_available():
            raise UsageError(
                "training.fsdp.cpu_offload = true needs CUDA: it moves the sharded state from the GPUs to CPU memory, "
                "and without a GPU it is in CPU memory already",
                hint="set training.fsdp.cpu_offload = false on this machine",
            )


def fsdp_settings(recipe: Recipe, family: Family) -> dict[str, Any]:
    """`TrainingArguments(fsdp=True, fsdp_config=...)` for `recipe`: FSDP2, the family's blocks as units, sharded
    checkpoints. Empty when the run does not shard."""
    if not shards(recipe):
        return {}
    knobs = recipe.training.fsdp
    return {
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": list(family.fsdp_blocks),
            "state_dict_type": "SHARDED_STATE_DICT",
            "reshard_after_forward": knobs.reshard_after_forward,
            "cpu_offload": knobs.cpu_offload,
            "activation_checkpointing": knobs.activation_checkpointing,
        },
    }


def configure_fsdp(trainer: Any) -> None:
    """Finish accelerate's FSDP set-up for a trainer asked to shard (`fsdp_settings`), and say how the run shards.

    Switches the FSDP plugin on where accelerate left it off (no CUDA: a MULTI_CPU set-up) and sets the mixed
    precision policy (float32 reduction). Nothing happens for a trainer that does not shard.

    Written against accelerate 1.16 (`AcceleratorState.__init__` builds `fsdp_plugin` only for GPU-like distributed
    types) and transformers 5.24 (`Trainer.create_accelerator_and_postprocess` reads `is_fsdp_enabled` off it).
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    args = trainer.args
    if not args.fsdp_plugin_args:
        return
    state = trainer.accelerator.state
    if getattr(state, "fsdp_plugin", None) is None:
        plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
        state.fsdp_plugin = plugin
        state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        trainer.is_fsdp_enabled = True
    plugin = state.fsdp_plugin
    plugin.mixed_precision_policy = mixed_precision_policy(state.mixed_precision)
    if is_rank_zero():
        policy = plugin.mixed_precision_policy
        precision = (
            f"compute in {_dtype_name(policy.param_dtype)}, gradients reduced in {_dtype_name(policy.reduce_dtype)}"
            if policy is not None
            else "compute and gradient reduction in each parameter's dtype"
        )
        err_console.print(
            f"sharding: FSDP2 over {world_size()} ranks, units {', '.join(plugin.transformer_cls_names_to_wrap or [])}"
            f" and the rest as one; {precision}; reshard after forward: {plugin.reshard_after_forward}; "
            f"activation checkpointing: {plugin.activation_checkpointing}; sharded checkpoints",
            highlight=False,
            markup=False,
        )


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def mixed_precision_policy(mixed_precision: str) -> Any:
    """FSDP2's policy for accelerate's `mixed_precision`: compute in the half dtype, reduce gradients in float32.

    None for "no": parameters are gathered and gradients reduced in their own dtype (float32 when training fp32).
    """
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    if half is None:
        return None
    return MixedPrecisionPolicy(param_dtype=half, reduce_dtype=torch.float32)


def full_state_dict(trainer: Any) -> dict[str, Any] | None:
    """The trained weights gathered in CPU memory on rank 0 (an empty dict on the other ranks); None without FSDP.

    Every rank must call it (it is a collective). A LoRA run gathers only what trains: the frozen base model is
    the one `from_pretrained` loads anyway, and gathering 90B frozen weights onto one rank to drop them is waste.
    """
    if not trainer.is_fsdp_enabled:
        return None
    from peft import PeftModel
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    model = trainer.model
    options = StateDictOptions(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=isinstance(model, PeftModel)
    )
    return get_model_state_dict(model, options=options)
