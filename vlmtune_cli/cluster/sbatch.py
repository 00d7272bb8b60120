"""SLURM through submitit: the sbatch parameters of a recipe, the executor, and the job function of a chain link.

Parameters, highest precedence first: `vlmtune submit` flags (`--partition`, `--time`, `--nodes`,
`--gpus-per-node`), the recipe's `[slurm]` table, the workspace defaults (`[slurm]` in vlmtune.toml:
partition, account, qos). Flags and workspace defaults are not written into the recipe: the manifest
(`chain.json`) records the parameters each link was submitted with.

Mapping to sbatch (`sbatch_parameters`):
  time            `[D-]HH:MM:SS` (or any SLURM form) → whole minutes, rounded up
  nodes           --nodes;  one task per GPU: --ntasks-per-node = max(1, gpus_per_node), --gpus-per-node
  cpus_per_task, mem, constraint, partition, account, qos → the sbatch options of the same name
  extra           further `#SBATCH --key=value` lines (they win over everything above, e.g. `signal = "USR2@300"`);
                  `ntasks_per_node = 2` without GPUs runs two CPU processes (DDP over gloo)
  signal          `USR2@D`: D = time/8 clamped to 15..300 s before the time limit
  dependency      link k > 1: `afterok:<job of link k-1>` with `--kill-on-invalid-dep=yes`

The job runs `python -u -m submitit.core._submit` with the Python that submitted it (`sys.executable`: the
venv of this checkout), one process per task; its log is `<run_dir>/slurm/<job id>_0_log.out`.

Preemption and time limit (`ChainLink`): SLURM sends USR2 `signal_delay` seconds before the limit (and on
preemption when the cluster is configured so). submitit's handler would checkpoint at once, from inside whatever
the trainer is doing, so the link replaces it by `request_stop()`: the trainer finishes the current optimiser
step, saves a complete checkpoint (`StopOnRequest`, all ranks agreeing on the step), returns, and only then is
submitit's handler called: it asks `ChainLink.checkpoint()` for the resubmission (the same link: it resumes from
the newest complete checkpoint), requeues the job (same job id) and exits. Nothing trained before the signal is
lost except the step in flight. A signal that arrives before the link installed its handler (in the first
second of the job) is handled by submitit itself: no training has happened yet, the link is simply requeued.
A link requeues at most `slurm_max_num_timeout` times (`MAX_NUM_TIMEOUT`). A SIGKILL (scancel, the end of the
grace time) loses what was trained since the last complete checkpoint; the next run resumes from that.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import submitit

from vlmtune_cli.config.schema import Recipe
from vlmtune_cli.config.settings import Settings
from vlmtune_cli.config.slurm_time import slurm_time_seconds
from vlmtune_cli.errors import UsageError, VlmtuneError

MAX_NUM_TIMEOUT = 20
"""How many times one link may be requeued after its time-limit / preemption signal."""


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
    slurm: Any, settings: Settings, flags: SlurmFlags, *, job_name: str, dependency: str | None = None
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
    }
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


def make_executor(folder: Path, params: dict[str, Any], python: str | None = None) -> Any:
    """A SlurmExecutor logging to `folder/<job id>_0_log.out`; a link is requeued up to MAX_NUM_TIMEOUT times."""
    require_sbatch()
    executor = submitit.SlurmExecutor(folder=Path(folder), max_num_timeout=MAX_NUM_TIMEOUT, python=python)
    try:
        executor.update_parameters(**params)
    except ValueError as exc:
        raise UsageError(f"invalid SLURM parameters: {exc}") from None
    return executor


def submit_job(executor: Any, function: Any) -> str:
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


# --- the job function ----------------------------------------------------------------------------


@dataclass
class LinkSpec:
    """Everything a link needs, passed explicitly (the job must not depend on the submitter's environment)."""

    recipe: dict[str, Any]
    """The chain's effective recipe, resolved (`training.epochs` = total_jobs × epochs_per_job)."""
    link: int
    """1-based."""
    total_jobs: int
    epochs_per_job: int
    cwd: str
    runs_dir: str
    cache_dir: str
    argv: list[str] = field(default_factory=list)

    @property
    def stop_at_epoch(self) -> int | None:
        """None for the last link: it runs to the end and saves final/."""
        return None if self.link >= self.total_jobs else self.link * self.epochs_per_job

    def settings(self) -> Settings:
        return Settings(runs_dir=Path(self.runs_dir), cache_dir=Path(self.cache_dir))

    def load_recipe(self) -> Recipe:
        from vlmtune_cli.config.recipe import validate

        return validate(self.recipe, default_origin="chain manifest")


class ChainLink(submitit.helpers.Checkpointable):
    """One link of a chain as a submitit job: trains to its epoch boundary, requeues itself on USR2."""

    def __init__(self, spec: LinkSpec) -> None:
        self.spec = spec

    def __call__(self) -> dict[str, Any]:
        spec = self.spec
        os.chdir(spec.cwd)
        os.environ["VLMTUNE_RUNS_DIR"] = spec.runs_dir
        os.environ["VLMTUNE_CACHE_DIR"] = spec.cache_dir
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # env:// variables for torch.distributed (TRL/accelerate read them); one GPU per task, chosen by
            # LOCAL_RANK, so CUDA_VISIBLE_DEVICES is left as SLURM set it.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        from vlmtune_cli.cluster.chain import run_link
        from vlmtune_cli.train.callbacks import clear_stop_request, request_stop, stop_requested

        clear_stop_request()
        submitit_handler = signal.getsignal(signal.SIGUSR2)
        signal.signal(signal.SIGUSR2, lambda signum, frame: request_stop())
        outcome = run_link(spec, job_id=env.job_id, attempt=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0))
        if stop_requested() and not outcome["done"] and callable(submitit_handler):
            submitit_handler(signal.SIGUSR2, None)  # checkpoint() → requeue → exit; ranks > 0 just return
        return outcome

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """The resubmission after a requeue: the same link, resuming from the newest complete checkpoint."""
        return submitit.helpers.DelayedSubmission(ChainLink(self.spec))


def spec_as_dict(spec: LinkSpec) -> dict[str, Any]:
    return asdict(spec)
