"""submitit's SLURM executor for a chain's links, and submission with SLURM's refusals turned into messages."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit

from vlmtune_cli.cluster.sbatch import require_sbatch
from vlmtune_cli.errors import UsageError, VlmtuneError

if TYPE_CHECKING:
    from collections.abc import Callable

MAX_NUM_TIMEOUT = 20
"""How many times one link may be requeued after its time-limit / preemption signal."""


def make_executor(folder: Path, params: dict[str, Any], python: str | None = None) -> Any:
    """A SlurmExecutor logging to `folder/<job id>_0_log.out`; a link is requeued up to MAX_NUM_TIMEOUT times."""
    require_sbatch()
    executor = submitit.SlurmExecutor(folder=Path(folder), max_num_timeout=MAX_NUM_TIMEOUT, python=python)
    try:
        executor.update_parameters(**params)
    except ValueError as exc:
        raise UsageError(f"invalid SLURM parameters: {exc}") from None
    return executor


def submit_job(executor: Any, function: Callable[[], object]) -> str:
    """Submit `function`; returns the job id. sbatch's refusal becomes a UsageError carrying SLURM's message."""
    try:
        job = executor.submit(function)
    except Exception as exc:  # submitit wraps sbatch's stderr in FailedJobError / FailedSubmissionError
        message = str(exc).strip()
        detail = " ".join(line.strip() for line in message.splitlines() if "error" in line.lower()) or message
        if "generic resource" in message.lower() or "gres" in message.lower():
            raise UsageError(
                f"SLURM refused the GPU request: {detail}",
                hint="this cluster has no such GPUs: set slurm.gpus_per_node = 0 in the recipe (or --gpus-per-node 0)",
            ) from None
        if "unable to contact" in message.lower() or "connect" in message.lower():
            raise VlmtuneError(f"SLURM did not answer: {detail}", hint="is the cluster up? (`sinfo`)") from None
        if "sbatch" in message.lower():
            raise UsageError(f"SLURM refused the job: {detail}") from None
        raise VlmtuneError(f"submitting to SLURM failed: {detail}") from None
    return str(job.job_id)
