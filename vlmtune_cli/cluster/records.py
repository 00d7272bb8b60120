"""What a chain leaves on disk: the manifest and the per-link records, both written atomically.

Files in the run directory:
  chain.json              the manifest, written atomically by `submit` / `resume` / `cancel` / `chain run`:
      format            1
      backend           "slurm" or "local"
      variant, run_dir, recipe_path, cwd, python, command (argv), created
      recipe            the effective recipe, resolved (what every link trains)
      total_jobs, epochs_per_job, total_epochs
      slurm_flags       the submit flags given (partition, time, nodes, gpus_per_node)
      submitit_folder   `<run_dir>/slurm`: sbatch scripts, pickles, `<job id>_0_log.out` logs
      links             [{link, stop_at_epoch, job_id (the latest), submissions: [{job_id, submitted_at,
                          parameters}], error (a submission that failed: SLURM's message)}]
      cancelled_at      set by `chain cancel`
  chain-links/link-K.json written by the link itself (rank 0) when it starts and ends:
      link, state ("running" | "done" | "interrupted" | "failed"), job_id, attempt, host, world_size,
      started, ended, epoch_start, epoch_end, global_step, checkpoint, error, history (earlier attempts)

A submission that fails halfway leaves the manifest with the links that were submitted (job ids) and the
error of the one that was not; `chain resume` submits the rest.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from vlmtune_cli.config.recipe import validate
from vlmtune_cli.config.schema import Recipe
from vlmtune_cli.errors import UsageError
from vlmtune_cli.fsutil import is_rank_zero
from vlmtune_cli.runs import RunDir, write_atomic

MANIFEST = "chain.json"
LINKS_DIR = "chain-links"
FORMAT = 1


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# --- the manifest --------------------------------------------------------------------------------


def manifest_path(run_dir: Path) -> Path:
    return Path(run_dir) / MANIFEST


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    write_atomic(manifest_path(run_dir), json.dumps(manifest, indent=2) + "\n")


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The manifest of `run_dir`. UsageError when there is none or it is corrupt."""
    path = manifest_path(run_dir)
    if not path.is_file():
        raise UsageError(
            f"{run_dir} has no chain ({MANIFEST} is missing)",
            hint="start one with `vlmtune submit RECIPE --chain N` or `vlmtune chain run RECIPE`",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(
            f"the chain manifest {path} is corrupt: {exc}",
            hint="its job ids are in the sbatch logs under <run_dir>/slurm/; delete the run directory to start over",
        ) from None
    problems = _manifest_problems(data)
    if problems:
        raise UsageError(
            f"the chain manifest {path} is corrupt: {problems}", hint="delete the run directory to start over"
        ) from None
    return data


def _manifest_problems(data: Any) -> str | None:
    if not isinstance(data, dict):
        return "not a JSON object"
    if data.get("format") != FORMAT:
        return f"unknown format {data.get('format')!r} (expected {FORMAT})"
    for key, kind in (
        ("recipe", dict),
        ("links", list),
        ("total_jobs", int),
        ("epochs_per_job", int),
        ("backend", str),
    ):
        if not isinstance(data.get(key), kind):
            return f"`{key}` is missing or not a {kind.__name__}"
    if len(data["links"]) != data["total_jobs"]:
        return f"{len(data['links'])} links for total_jobs = {data['total_jobs']}"
    for i, link in enumerate(data["links"], 1):
        if not isinstance(link, dict) or link.get("link") != i or not isinstance(link.get("submissions"), list):
            return f"link {i} is malformed"
    try:
        validate(data["recipe"])
    except UsageError as exc:
        return f"its recipe is invalid ({exc.message.splitlines()[-1].strip()})"
    return None


def new_manifest(
    recipe: Recipe,
    run: RunDir,
    backend: str,
    recipe_path: Path | None,
    argv: list[str],
    slurm_flags: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "backend": backend,
        "variant": recipe.variant,
        "run_dir": str(run.path.resolve()),
        "recipe_path": str(Path(recipe_path).resolve()) if recipe_path else None,
        "cwd": os.getcwd(),
        "python": sys.executable,
        "command": list(argv),
        "created": now(),
        "recipe": recipe.model_dump(mode="json"),
        "total_jobs": recipe.chain.total_jobs,
        "epochs_per_job": recipe.chain.epochs_per_job,
        "total_epochs": recipe.training.epochs,
        "slurm_flags": slurm_flags or {},
        "submitit_folder": str((run.path / "slurm").resolve()),
        "links": [
            {
                "link": k,
                "stop_at_epoch": None if k == recipe.chain.total_jobs else k * recipe.chain.epochs_per_job,
                "job_id": None,
                "submissions": [],
                "error": None,
            }
            for k in range(1, recipe.chain.total_jobs + 1)
        ],
    }


# --- what the run directory shows ----------------------------------------------------------------


def link_record_path(run_dir: Path, link: int) -> Path:
    return Path(run_dir) / LINKS_DIR / f"link-{link}.json"


def read_link_record(run_dir: Path, link: int) -> dict[str, Any] | None:
    try:
        return json.loads(link_record_path(run_dir, link).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_link_record(run_dir: Path, record: dict[str, Any]) -> None:
    if is_rank_zero():
        write_atomic(link_record_path(run_dir, record["link"]), json.dumps(record, indent=2) + "\n")


def trained_epochs(run: RunDir, total_epochs: int) -> tuple[float, Path | None]:
    """Epochs the run directory shows trained and its newest complete checkpoint.

    A finished run counts what its last `train` recorded (summary.json), not the plan: a run that ended early
    (a step budget) must not be reported as every planned epoch trained.
    """
    checkpoint = run.latest_checkpoint()
    if run.is_finished():
        try:
            epoch = json.loads(run.summary_file.read_text()).get("epoch")
        except (OSError, ValueError, AttributeError):
            epoch = None
        return (float(epoch) if isinstance(epoch, (int, float)) else float(total_epochs)), checkpoint
    if checkpoint is None:
        return 0.0, None
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        return float(state.get("epoch") or 0.0), checkpoint
    except (OSError, ValueError):
        return 0.0, checkpoint


def link_trained(run: RunDir, stop_at_epoch: int | None, total_epochs: int) -> bool:
    if run.is_finished():
        return True
    if stop_at_epoch is None:
        return False
    return trained_epochs(run, total_epochs)[0] >= stop_at_epoch - 1e-6
