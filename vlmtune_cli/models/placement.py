"""Where and in which precision a model lives on this machine: pure functions of what the hardware and the
launcher report, so that the choices a GPU node makes are unit-tested on a CPU.

Imports nothing heavy; `machine_precision` imports torch when called.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

Precision = Literal["bf16", "fp16", "fp32"]

# The dtype frozen weights are loaded in when `model.dtype = "auto"`, per training precision.
LOAD_DTYPE: dict[Precision, str] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_PRECISION_OF_DTYPE: dict[str, Precision] = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def auto_precision(cuda_available: bool, capability: tuple[int, int] | None) -> Precision:
    """`training.precision = "auto"` on a machine: bf16 where the GPU computes it natively (compute capability
    8.0 or newer: A100, H100, L4, RTX 30xx/40xx), fp16 on older GPUs (V100 7.0, T4 7.5), fp32 without CUDA.

    `torch.cuda.is_bf16_supported()` is not asked: it is True on V100 and T4 too, where bf16 is emulated (slow).
    fp16 rather than fp32 on those: it runs on their tensor cores and halves frozen-weight memory; the Trainer
    scales the loss (GradScaler) and the trainable weights stay in float32, which the scaler requires.
    """
    if not cuda_available:
        return "fp32"
    if capability is not None and tuple(capability) >= (8, 0):
        return "bf16"
    return "fp16"


def machine_precision() -> Precision:
    """`auto_precision` for this machine's first visible GPU (all GPUs of a node are assumed alike)."""
    import torch

    cuda = torch.cuda.is_available()
    return auto_precision(cuda, torch.cuda.get_device_capability() if cuda else None)


def training_precision(precision: str, model_dtype: str, machine: Precision) -> Precision:
    """The precision a run trains in: `training.precision` unless "auto"; "auto" follows an explicit half
    `model.dtype` (bf16 weights train with bf16 autocast), else the machine's pick."""
    if precision != "auto":
        return precision  # type: ignore[return-value]
    return _PRECISION_OF_DTYPE[model_dtype] if model_dtype in ("bfloat16", "float16") else machine


def training_load_dtype(model_dtype: str, precision: Precision) -> str:
    """The dtype weights are loaded in for training: `model.dtype` unless "auto", which follows the precision
    (a float32 load under bf16 autocast would double the frozen weights' memory for nothing)."""
    return LOAD_DTYPE[precision] if model_dtype == "auto" else model_dtype


def describe_precision(precision: Precision, machine_note: str) -> str:
    """One line for the training log: what the run computes in and what its trainable weights are kept in."""
    if precision == "fp32":
        return f"precision: fp32 ({machine_note})"
    scaler = ", loss scaling (GradScaler)" if precision == "fp16" else ""
    return f"precision: {precision} autocast{scaler}, trainable weights in float32 ({machine_note})"


def local_device_map(cuda_available: bool, env: Mapping[str, str]) -> dict[str, int] | None:
    """`device_map` for `from_pretrained`: every weight on this process's own GPU (`LOCAL_RANK`, set by torchrun
    and by vlmtune's SLURM tasks; 0 for a single process), loaded straight there rather than through host
    memory. Without it bitsandbytes puts every rank's quantised copy on GPU 0. None without CUDA."""
    if not cuda_available:
        return None
    return {"": int(env.get("LOCAL_RANK", "0") or 0)}
