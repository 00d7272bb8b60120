"""Several ranks, one decision: rank 0 reads the shared file system and every rank acts on what it found.

Under torch.distributed (torchrun, our SLURM links) every rank runs the same `train`. What they decide from the
shared file system (deleting the run directory for `--overwrite`, which checkpoint to resume, whether a chain link
is already trained) must be decided once: two nodes with stale NFS caches could otherwise see different
checkpoints, and two ranks deleting one directory trip over each other. `from_rank_zero(compute)` runs `compute`
on rank 0 only and hands its result, or the error it raised, to every rank; the other ranks wait meanwhile, so it
is also the barrier after rank 0 prepared the run directory.

The process group is needed before accelerate/Trainer would create it, so `init_from_env` creates it early from
the env:// variables (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`) that torchrun and our SLURM links set;
accelerate then uses that group instead of making its own. Objects travel over gloo (CPU tensors); with CUDA the
group is `cuda:nccl,cpu:gloo`, torch's own default, so training keeps NCCL.

Imports torch inside functions only: the train wing's cheap modules import this one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from vlmtune_cli.errors import UsageError, VlmtuneError
from vlmtune_cli.fsutil import is_rank_zero

if TYPE_CHECKING:
    from vlmtune_cli.config.schema import TuningSection

T = TypeVar("T")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_from_env() -> bool:
    """Create the default process group from the env:// variables when `WORLD_SIZE` > 1 and none exists yet.

    Returns True when a process group is in place (created here or before). Idempotent.
    """
    if world_size() <= 1:
        return False
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend="cuda:nccl,cpu:gloo" if torch.cuda.is_available() else "gloo")
    return True


def _distributed() -> bool:
    if world_size() <= 1:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def from_rank_zero(compute: Callable[[], T]) -> T:
    """`compute()` run on rank 0 only; its result (picklable) on every rank, or its error raised on every rank.

    A VlmtuneError keeps its exit code, message and hint on every rank (the same message everywhere); any other
    exception is raised as it is on rank 0 and as a VlmtuneError naming it on the others, so no rank is left
    waiting. In a single process this is just `compute()`.
    """
    if not _distributed():
        return compute()
    import torch
    import torch.distributed as dist

    payload: list[object] = [None]
    if is_rank_zero():
        try:
            value = compute()
        except VlmtuneError as exc:
            payload[0] = ("error", exc.exit_code, exc.message, exc.hint)
            dist.broadcast_object_list(payload, src=0, device=torch.device("cpu"))
            raise
        except BaseException as exc:
            payload[0] = ("error", 1, f"rank 0 failed: {type(exc).__name__}: {exc}", None)
            dist.broadcast_object_list(payload, src=0, device=torch.device("cpu"))
            raise
        payload[0] = ("ok", value)
        dist.broadcast_object_list(payload, src=0, device=torch.device("cpu"))
        return value
    dist.broadcast_object_list(payload, src=0, device=torch.device("cpu"))
    outcome = payload[0]
    assert isinstance(outcome, tuple)
    if outcome[0] == "error":
        _, exit_code, message, hint = outcome
        raise (UsageError if exit_code == UsageError.exit_code else VlmtuneError)(message, hint=hint)
    return outcome[1]  # type: ignore[return-value]


CROSS_ATTENTION_MODEL_TYPES = ("mllama",)
"""Families whose language model reads the image through cross-attention layers that text-only batches skip."""


def ddp_find_unused_parameters(tuning: TuningSection, model_type: str | None) -> bool:
    """DDP's `find_unused_parameters` for a tuning: True only where a trainable parameter can miss a backward pass.

    With it False, DDP skips walking the autograd graph at every step; with a trainable parameter that some
    forward pass does not reach, DDP would then fail at the next step ("Expected to have finished reduction").
    Which tunings can leave a trainable parameter without a gradient:
    - `vision` trains (lora/full): a micro-batch of text-only samples never runs the vision tower; some families
      also take features from an inner layer (LLaVA-style `vision_feature_layer = -2`), so the last layers get
      no gradient at all.
    - `projector` trains: text-only micro-batches skip it too.
    - `llm` trains in a cross-attention family (Mllama): text-only micro-batches skip the cross-attention layers.
    Otherwise (an `llm`-only tuning of a decoder-only language model, the common LoRA set-up) every trainable
    parameter takes part in every forward pass: False. `training.extra.ddp_find_unused_parameters` overrides it.
    """
    if tuning.vision != "frozen" or tuning.projector != "frozen":
        return True
    return tuning.llm != "frozen" and model_type in CROSS_ATTENTION_MODEL_TYPES
