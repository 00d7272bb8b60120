"""The sbatch parameters of a recipe and the script they make. Pure: nothing here submits, and submitit is
imported only to render a script for `--dry-run` (executor.py submits, link.py is the job body).

Parameters, highest precedence first: `vlmtune submit` flags (`--partition`, `--time`, `--nodes`,
`--gpus-per-node`), the recipe's `[slurm]` table, the workspace defaults (`[slurm]` in vlmtune.toml:
partition, account, qos). Flags and workspace defaults are not written into the recipe: the manifest
(`chain.json`) records the parameters each link was submitted with.

Mapping to sbatch (`sbatch_parameters`):
  time            `[D-]HH:MM:SS` (or any SLURM form) → whole minutes, rounded up
  nodes           --nodes;  one task per GPU: --ntasks-per-node = max(1, gpus_per_node), --gpus-per-node
  cpus_per_task, mem, constraint, partition, account, qos → the sbatch options of the same name
  defaults        a job with GPUs gets `--cpus-per-task=8` (the training process and its data-loader workers:
                  decoding and resizing images runs on the CPU, ~4 cores per GPU at 1024 px) and `--mem` of 32G per
                  task (`--mem` is per node: 128G for 4 GPUs; a rank holds the model in host memory while loading);
                  `slurm.cpus_per_task` / `slurm.mem` in the recipe override them. A CPU-only job (gpus_per_node = 0,
                  the smoke recipes) keeps the cluster's own defaults: it is a test run on whatever node it gets.
  srun            `--kill-on-bad-exit=1`: when one task (rank) fails, SLURM ends the others at once instead of
                  leaving them waiting in a collective until the time limit
  extra           further `#SBATCH --key=value` lines (they win over everything above, e.g. `signal = "USR2@300"`);
                  `ntasks_per_node = 2` without GPUs runs two CPU processes (DDP over gloo)
  signal          `USR2@D`: D = time/8 clamped to 15..300 s before the time limit
  dependency      link k > 1: `afterok:<job of link k-1>` with `--kill-on-invalid-dep=yes`

The job runs `python -u -m submitit.core._submit` with the Python that submitted it (`sys.executable`: the
venv of this checkout), one process per task; its log is `<run_dir>/slurm/<job id>_0_log.out`.
"""

from __future__ import annotations

import math
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmtune_cli.config.schema import Recipe, SlurmSection
from vlmtune_cli.config.settings import Settings
from vlmtune_cli.config.slurm_time import slurm_time_seconds
from vlmtune_cli.errors import UsageError

DEFAULT_CPUS_PER_GPU_TASK = 8
DEFAULT_MEM_GB_PER_GPU_TASK = 32
SRUN_ARGS = ["--kill-on-bad-exit=1"]


@dataclass(frozen=True)
class SlurmFlags:
    """`vlmtune submit` flags that override the recipe's `[slurm]` table (None: not given)."""

    partition: str | None = None
    time: str | None = None
    nodes: int | None = None
    gpus_per_node: int | None = None


def time_to_seconds(text: str) -> int:
    """A SLURM time limit in seconds (`config.slurm_time`: the parser the recipe schema uses too).

    Raises UsageError for anything that is not a SLURM time limit.
    """
    try:
        return slurm_time_seconds(text)
    except ValueError as exc:
        raise UsageError(str(exc), hint="write HH:MM:SS or D-HH:MM:SS, e.g. 04:00:00") from None


def sbatch_parameters(
    slurm: SlurmSection, settings: Settings, flags: SlurmFlags, *, job_name: str, dependency: str | None = None
) -> dict[str, Any]:
    """The parameters for submitit's `SlurmExecutor.update_parameters` (native sbatch names)."""
    time_text = flags.time if flags.time is not None else slurm.time
    seconds = time_to_seconds(time_text)
    gpus = flags.gpus_per_node if flags.gpus_per_node is not None else slurm.gpus_per_node
    nodes = flags.nodes if flags.nodes is not None else slurm.nodes
    if nodes < 1:
        raise UsageError(f"--nodes {nodes}: at least 1")
    if gpus < 0:
        raise UsageError(f"--gpus-per-node {gpus}: cannot be negative")
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": max(1, math.ceil(seconds / 60)),
        "nodes": nodes,
        "ntasks_per_node": max(1, gpus),
        "signal_delay_s": max(15, min(300, seconds // 8)),
        "stderr_to_stdout": True,
        "srun_args": list(SRUN_ARGS),
    }
    if gpus:  # see the module docstring: defaults for GPU jobs only, the recipe's values win
        params["cpus_per_task"] = DEFAULT_CPUS_PER_GPU_TASK
        params["mem"] = f"{DEFAULT_MEM_GB_PER_GPU_TASK * gpus}G"
    optional = {
        "partition": flags.partition or slurm.partition or settings.slurm.partition,
        "account": slurm.account or settings.slurm.account,
        "qos": slurm.qos or settings.slurm.qos,
        "gpus_per_node": gpus or None,
        "cpus_per_task": slurm.cpus_per_task,
        "mem": slurm.mem,
        "constraint": slurm.constraint,
        "dependency": dependency,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    additional: dict[str, Any] = {}
    if dependency is not None:
        additional["kill-on-invalid-dep"] = "yes"
    additional.update({str(k).replace("_", "-"): v for k, v in slurm.extra.items()})
    if "ntasks-per-node" in additional:  # e.g. 2 CPU processes (gloo DDP) without GPUs: submitit must know too
        params["ntasks_per_node"] = int(additional.pop("ntasks-per-node"))
    if additional:
        params["additional_parameters"] = additional
    return params


def job_command(folder: Path, python: str | None = None) -> str:
    """The command each task of a link runs (what submitit puts after `srun`)."""
    return " ".join([python or shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])


def sbatch_script(params: dict[str, Any], folder: Path, python: str | None = None) -> str:
    """The sbatch script submitit writes for these parameters (for `--dry-run` and the tests)."""
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command=job_command(Path(folder), python), folder=folder, **params)


def require_sbatch() -> None:
    """UsageError when this machine cannot submit to SLURM."""
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise UsageError(
            "no `sbatch` on PATH: this machine cannot submit SLURM jobs",
            hint="run the same chain here without SLURM: `vlmtune chain run RECIPE`",
        )


def link_parameters(
    recipe: Recipe, settings: Settings, flags: SlurmFlags, link: int, previous_job: str | None
) -> dict[str, Any]:
    """The sbatch parameters of link `link` of the recipe's chain, after `previous_job` (None for the first).

    `vlmtune submit --dry-run` and the real submission both call this, so the printed scripts are the ones sent.
    """
    total = recipe.chain.total_jobs
    return sbatch_parameters(
        recipe.slurm,
        settings,
        flags,
        job_name=f"vlmtune-{recipe.variant}-{link}of{total}",
        dependency=f"afterok:{previous_job}" if previous_job else None,
    )
