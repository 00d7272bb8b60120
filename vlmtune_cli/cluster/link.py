"""The body of one chain link: what a SLURM job (or `chain run`) executes, and how it survives a time limit.

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

`vlmtune_cli.slurm` re-exports `ChainLink` and `LinkSpec` for one release: submitit pickles of chains queued
before the move name that module, and must still load when they requeue.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import submitit

from vlmtune_cli.cluster.records import link_trained, now, read_link_record, trained_epochs, write_link_record
from vlmtune_cli.config.schema import Recipe
from vlmtune_cli.config.settings import Settings
from vlmtune_cli.errors import VlmtuneError
from vlmtune_cli.fsutil import is_rank_zero
from vlmtune_cli.runs import RunDir, run_dir_for


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


def run_link(spec: LinkSpec, *, job_id: str | None = None, attempt: int = 0) -> dict[str, Any]:
    """Train one link (here, or inside a SLURM job), recording its start and end in the run directory."""
    from vlmtune_cli.train.ranks import from_rank_zero, init_from_env
    from vlmtune_cli.train.trainer import train

    recipe = spec.load_recipe()
    settings = spec.settings()
    run = run_dir_for(recipe, settings.runs_dir)
    total = recipe.training.epochs
    init_from_env()
    # Rank 0 reads the run directory and every rank acts on what it found: two nodes with stale NFS caches
    # could otherwise disagree on whether this link is already trained (one trains, the other waits for ever).
    epoch_start, already = from_rank_zero(
        lambda: (trained_epochs(run, total)[0], link_trained(run, spec.stop_at_epoch, total))
    )
    previous = read_link_record(run.path, spec.link) if is_rank_zero() else None
    history = previous.get("history", []) + [{k: v for k, v in previous.items() if k != "history"}] if previous else []
    record: dict[str, Any] = {
        "link": spec.link,
        "state": "running",
        "job_id": job_id,
        "attempt": attempt,
        "host": socket.gethostname(),
        "world_size": int(os.environ.get("WORLD_SIZE", "1") or 1),
        "stop_at_epoch": spec.stop_at_epoch,
        "started": now(),
        "ended": None,
        "epoch_start": epoch_start,
        "epoch_end": None,
        "global_step": None,
        "checkpoint": None,
        "error": None,
        "history": history,
    }
    if already:
        record.update(state="done", ended=now(), epoch_end=epoch_start, note="already trained: nothing to do")
        _benchmark_at_end(spec, recipe, run, settings, record)
        write_link_record(run.path, record)
        return {"link": spec.link, "done": True, "global_step": None}
    write_link_record(run.path, record)
    try:
        result = train(recipe, settings, stop_at_epoch=spec.stop_at_epoch, argv=spec.argv or sys.argv)
    except BaseException as exc:
        record.update(state="failed", ended=now(), error=getattr(exc, "message", None) or repr(exc))
        write_link_record(run.path, record)
        raise

    def outcome() -> tuple[float, Path | None, bool]:
        epoch_end, checkpoint = trained_epochs(run, total)
        return epoch_end, checkpoint, result.final_dir is not None or link_trained(run, spec.stop_at_epoch, total)

    # Rank 0 saved final/ (the others have final_dir None) and reads the checkpoints: its answer is everyone's.
    epoch_end, checkpoint, done = from_rank_zero(outcome)
    record.update(
        state="done" if done else "interrupted",
        ended=now(),
        epoch_end=epoch_end,
        global_step=result.global_step,
        checkpoint=str(checkpoint) if checkpoint else None,
    )
    if done:
        _benchmark_at_end(spec, recipe, run, settings, record)
    write_link_record(run.path, record)
    return {"link": spec.link, "done": done, "global_step": result.global_step}


def _benchmark_at_end(spec: LinkSpec, recipe: Recipe, run: RunDir, settings: Settings, record: dict[str, Any]) -> None:
    """The last link benchmarks final/ when the recipe asks (`chain.benchmark_at_end`), once per run.

    A failing benchmark does not fail the link: training is done and saved. The error goes into the link record
    (and `chain status`); `vlmtune benchmark RUN_DIR` repeats it by hand.
    """
    if (
        spec.stop_at_epoch is not None
        or not recipe.chain.benchmark_at_end
        or not run.is_finished()
        or not is_rank_zero()
    ):
        return
    from vlmtune_cli.eval import benchmark

    target = benchmark.run_target(run.path)
    if target.metrics_file.is_file():
        record["benchmark"] = str(target.metrics_file)
        return
    try:
        result = benchmark.benchmark(target, settings.cache_dir)
    except VlmtuneError as exc:
        record["benchmark_error"] = exc.message
        print(f"benchmark after the last link failed: {exc.message}", file=sys.stderr)
        return
    record["benchmark"] = str(result.target.metrics_file)
