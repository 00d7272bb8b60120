"""Where a chain is: each link's state from the manifest, SLURM and the run directory, never blocking.

Link states (`chain_status`) combine the manifest, SLURM (`sacct` and `squeue`, each with a 10 s timeout:
never submitit's `job.result()`, which blocks forever on a cancelled job without accounting) and the run
directory: a link whose record says done, or whose stop epoch the newest complete checkpoint has reached, is
COMPLETED whatever SLURM says or does not say.
"""

from __future__ import annotations

import getpass
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmtune_cli.cluster.records import link_trained, read_link_record, read_manifest, trained_epochs
from vlmtune_cli.runs import RunDir

ACTIVE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "COMPLETING",
    "RESIZING",
    "SUSPENDED",
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
    "RESV_DEL_HOLD",
}
SLURM_TIMEOUT_S = 10


# --- what SLURM says -----------------------------------------------------------------------------


def _run_quietly(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SLURM_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def slurm_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id → (state, reason) from sacct, then squeue (fresher); jobs neither knows are left out."""
    ids = [str(j) for j in job_ids if j]
    if not ids:
        return {}
    states: dict[str, tuple[str, str]] = {}
    out = _run_quietly(["sacct", "-n", "-X", "-P", "-j", ",".join(ids), "-o", "JobIDRaw,State"])
    for line in (out or "").splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0] in ids and parts[1]:
            states[parts[0]] = (parts[1].split()[0], "")
    out = _run_quietly(["squeue", "-h", "-t", "all", "-u", getpass.getuser(), "-o", "%i|%T|%r"])
    for line in (out or "").splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 3 and parts[0] in ids:
            states[parts[0]] = (parts[1], parts[2] if parts[2] not in ("None", "(null)") else "")
    return states


# --- status --------------------------------------------------------------------------------------


@dataclass
class LinkStatus:
    link: int
    job_id: str | None
    state: str
    stop_at_epoch: int | None
    epochs: str
    checkpoint: str | None
    log: str | None
    done: bool
    active: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def chain_status(run_dir: Path) -> tuple[dict[str, Any], list[LinkStatus]]:
    """The manifest and each link's state; never blocks longer than the SLURM command timeouts."""
    manifest = read_manifest(run_dir)
    run = RunDir(Path(run_dir))
    total_epochs = int(manifest.get("total_epochs") or 0)
    states = slurm_states([link.get("job_id") for link in manifest["links"]]) if manifest["backend"] == "slurm" else {}
    folder = Path(manifest.get("submitit_folder") or run.path / "slurm")
    rows = []
    for link in manifest["links"]:
        k, job_id = link["link"], link.get("job_id")
        record = read_link_record(run.path, k)
        done = bool(record and record.get("state") == "done") or link_trained(
            run, link.get("stop_at_epoch"), total_epochs
        )
        slurm_state, reason = states.get(str(job_id), ("", "")) if job_id else ("", "")
        if done:
            state = "COMPLETED"
        elif slurm_state:
            state = slurm_state + (f" ({reason})" if reason and slurm_state == "PENDING" else "")
        elif record:
            state = {
                "running": "RUNNING?" if manifest["backend"] == "slurm" else "INTERRUPTED",
                "interrupted": "REQUEUED",
                "failed": "FAILED",
            }.get(str(record.get("state")), "UNKNOWN")
        elif job_id:
            state = "UNKNOWN"
        elif link.get("error"):
            state = "NOT SUBMITTED (submission failed)"
        else:
            state = "NOT STARTED" if manifest["backend"] == "local" else "NOT SUBMITTED"
        epochs = ""
        if record and record.get("epoch_start") is not None:
            end = record.get("epoch_end")
            epochs = f"{record['epoch_start']:g}→{end:g}" if end is not None else f"{record['epoch_start']:g}→"
        log = str(folder / f"{job_id}_0_log.out") if job_id else None
        rows.append(
            LinkStatus(
                k,
                str(job_id) if job_id else None,
                state,
                link.get("stop_at_epoch"),
                epochs,
                record.get("checkpoint") if record else None,
                log,
                done,
                not done and slurm_state in ACTIVE,
            )
        )
    return manifest, rows


def benchmark_outcome(run_dir: Path, manifest: dict[str, Any]) -> dict[str, str] | None:
    """What the last link's benchmark left (`chain.benchmark_at_end`): {"metrics": path} or {"error": message}."""
    record = read_link_record(Path(run_dir), int(manifest["total_jobs"])) or {}
    if record.get("benchmark"):
        return {"metrics": record["benchmark"]}
    if record.get("benchmark_error"):
        return {"error": record["benchmark_error"]}
    return None


def summary_line(manifest: dict[str, Any], rows: list[LinkStatus], run: RunDir) -> str:
    trained, checkpoint = trained_epochs(run, int(manifest.get("total_epochs") or 0))
    if run.is_finished():
        where = "finished: final/ is complete"
    elif any(r.active for r in rows):
        where = "in progress"
    else:
        where = "stopped: `vlmtune chain resume` submits what is left"
        if manifest["backend"] == "local":
            where = "stopped: `vlmtune chain run` again continues it"
    return (
        f"{manifest['variant']}: {trained:g} of {manifest.get('total_epochs')} epochs trained "
        f"({manifest['total_jobs']} links × {manifest['epochs_per_job']}); {where}"
    )
