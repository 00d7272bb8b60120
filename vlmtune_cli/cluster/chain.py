"""Job chains: the plan and submit / resume / cancel / run-here (status: status.py; the job body: link.py).

A chain of N links with `chain.epochs_per_job` = E plans N × E epochs: its effective recipe sets
`training.epochs = N × E` and `chain.total_jobs = N` (so the run directory's recipe.toml says so, and the LR
schedule is planned for the whole chain from the first step). Link k (1-based) trains until epoch k × E,
resuming from the newest complete checkpoint, and ends with a checkpoint; the last link runs to the end and
saves final/. The result equals one `vlmtune train` of the effective recipe, bitwise on CPU.

The manifest (`chain.json`) and the per-link records (`chain-links/link-K.json`) are described in
records.py.

A submission that fails halfway leaves the manifest with the links that were submitted (job ids) and the
error of the one that was not; `chain resume` submits the rest.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from vlmtune_cli.cluster.link import LinkSpec, run_link
from vlmtune_cli.cluster.records import (
    MANIFEST,
    manifest_path,
    new_manifest,
    now,
    read_manifest,
    write_manifest,
)
from vlmtune_cli.cluster.sbatch import SlurmFlags, link_parameters, require_sbatch
from vlmtune_cli.cluster.status import SLURM_TIMEOUT_S, chain_status
from vlmtune_cli.config.recipe import validate
from vlmtune_cli.config.schema import Recipe
from vlmtune_cli.config.settings import Settings
from vlmtune_cli.errors import UsageError, VlmtuneError
from vlmtune_cli.runs import RunDir, prepare_run_dir, run_dir_for

# --- the plan ------------------------------------------------------------------------------------


def plan(recipe: Recipe, total_jobs: int | None) -> Recipe:
    """The chain's effective recipe: `chain.total_jobs` = N, `training.epochs` = N × epochs_per_job.

    Raises UsageError for fewer than one job, or a recipe that sets `training.max_steps`.
    """
    jobs = recipe.chain.total_jobs if total_jobs is None else total_jobs
    if jobs < 1:
        raise UsageError(f"a chain needs at least one job (got {jobs})", hint="pass --chain 1 or more")
    if recipe.training.max_steps is not None:
        # Links stop at epoch boundaries: a step budget would end the run inside some link and leave the later
        # ones nothing to train, while the chain's records count epochs that were never trained.
        raise UsageError(
            f"training.max_steps = {recipe.training.max_steps} cannot be combined with a chain, which plans in epochs "
            f"({jobs} jobs × chain.epochs_per_job = {recipe.chain.epochs_per_job})",
            hint='drop it for the chain (`--unset training.max_steps`, or `unset = ["training.max_steps"]` in the '
            "recipe), or train a step budget with `vlmtune train`",
        )
    data = recipe.model_dump(mode="json")
    data["chain"]["total_jobs"] = jobs
    data["training"]["epochs"] = jobs * recipe.chain.epochs_per_job
    return validate(data)


def link_specs(recipe: Recipe, settings: Settings, argv: list[str]) -> list[LinkSpec]:
    data = recipe.model_dump(mode="json")
    return [
        LinkSpec(
            recipe=data,
            link=k,
            total_jobs=recipe.chain.total_jobs,
            epochs_per_job=recipe.chain.epochs_per_job,
            cwd=os.getcwd(),
            runs_dir=str(Path(settings.runs_dir).resolve()),
            cache_dir=str(Path(settings.cache_dir).resolve()),
            argv=list(argv),
        )
        for k in range(1, recipe.chain.total_jobs + 1)
    ]


# --- submit / resume / cancel --------------------------------------------------------------------


def _submit_links(
    manifest: dict[str, Any],
    run: RunDir,
    specs: list[LinkSpec],
    settings: Settings,
    first: int,
    after: str | None,
    flags: SlurmFlags,
) -> list[str]:
    """Submit links `first`..N (each afterok on the previous), recording each in the manifest as it goes."""
    from vlmtune_cli.cluster.executor import make_executor, submit_job
    from vlmtune_cli.cluster.link import ChainLink

    recipe = validate(manifest["recipe"])
    folder = Path(manifest["submitit_folder"])
    submitted = []
    previous = after
    for spec in specs[first - 1 :]:
        entry = manifest["links"][spec.link - 1]
        params = link_parameters(recipe, settings, flags, spec.link, previous)
        try:
            executor = make_executor(folder, params, python=manifest.get("python"))
            job_id = submit_job(executor, ChainLink(spec))
        except VlmtuneError as exc:
            entry["error"] = exc.message
            write_manifest(run.path, manifest)
            if submitted:
                exc.message += (
                    f" (links {first}-{spec.link - 1} were submitted: jobs {', '.join(submitted)}; "
                    f"recorded in {manifest_path(run.path)})"
                )
                exc.hint = (
                    exc.hint + "; " if exc.hint else ""
                ) + "`vlmtune chain resume` submits the rest, `vlmtune chain cancel` cancels those"
            raise
        entry.update(job_id=job_id, error=None)
        entry["submissions"].append({"job_id": job_id, "submitted_at": now(), "parameters": params})
        write_manifest(run.path, manifest)
        submitted.append(job_id)
        previous = job_id
    return submitted


def _flags_dict(flags: Any) -> dict[str, Any]:
    return {k: v for k, v in flags.__dict__.items() if v is not None}


def submit_chain(
    recipe: Recipe,
    recipe_path: Path | None,
    settings: Settings,
    flags: SlurmFlags,
    argv: list[str],
) -> tuple[dict[str, Any], list[str]]:
    """Submit every link of the (effective) recipe's chain; returns the manifest and the job ids."""
    require_sbatch()
    run = run_dir_for(recipe, settings.runs_dir)
    if manifest_path(run.path).exists():
        existing = read_manifest(run.path)
        if any(link.get("job_id") for link in existing["links"]) or existing["backend"] == "local":
            raise UsageError(
                f"{run.path} already has a chain ({MANIFEST}); two chains cannot write one run directory",
                hint="`vlmtune chain status` / `vlmtune chain resume` for that one, or give this recipe its own "
                "`variant`",
            )
    prepare_run_dir(run, recipe, overwrite=False, start_over=f"delete {run.path}")
    manifest = new_manifest(recipe, run, "slurm", recipe_path, argv, _flags_dict(flags))
    write_manifest(run.path, manifest)
    specs = link_specs(recipe, settings, argv)
    return manifest, _submit_links(manifest, run, specs, settings, 1, None, flags)


def resolve_run_dir(target: Path | None, settings: Settings) -> Path:
    """RUN_DIR as given (a run directory, or a recipe whose variant's run directory is meant)."""
    from vlmtune_cli.config.recipe import load_recipe
    from vlmtune_cli.config.settings import resolve_recipe_path

    if target is None:
        target = resolve_recipe_path(None, settings)
    target = Path(target)
    if target.is_file() and target.suffix == ".toml":
        return run_dir_for(load_recipe(target), settings.runs_dir).path
    if not target.is_dir():
        raise UsageError(f"{target}: no such run directory")
    return target


def resume_chain(run_dir: Path, settings: Settings, flags: SlurmFlags, argv: list[str]) -> list[str]:
    """Resubmit the links not done and not queued; returns their new job ids ([] when nothing is left)."""
    manifest, rows = chain_status(run_dir)
    if manifest["backend"] != "slurm":
        raise UsageError(f"{run_dir} holds a local chain", hint="continue it with `vlmtune chain run`")
    run = RunDir(Path(run_dir))
    todo = [r for r in rows if not r.done]
    if not todo:
        return []
    first = next((r for r in todo if not r.active), None)
    if first is None:
        raise UsageError(f"nothing to resume: link {todo[0].link} is {todo[0].state}")
    later_active = [r for r in rows if r.link > first.link and r.active]
    if later_active:
        raise UsageError(
            f"link {later_active[0].link} is still {later_active[0].state} after link {first.link}",
            hint="`vlmtune chain cancel` first, then resume",
        )
    require_sbatch()
    before = rows[first.link - 2] if first.link > 1 else None
    after = before.job_id if before is not None and before.active else None
    merged = SlurmFlags(**{**manifest.get("slurm_flags", {}), **_flags_dict(flags)})
    manifest["slurm_flags"] = _flags_dict(merged)
    manifest.pop("cancelled_at", None)
    manifest.setdefault("resumed", []).append({"at": now(), "command": list(argv), "from_link": first.link})
    recipe = validate(manifest["recipe"])
    specs = link_specs(recipe, settings, argv)
    for spec in specs:  # the links run where the chain was submitted from
        spec.cwd = manifest.get("cwd") or spec.cwd
        spec.runs_dir = str(Path(manifest["run_dir"]).parent)
    return _submit_links(manifest, run, specs, settings, first.link, after, merged)


def cancel_chain(run_dir: Path) -> list[str]:
    """scancel the links that are queued or running (or whose state SLURM does not tell); returns their ids."""
    manifest, rows = chain_status(run_dir)
    if manifest["backend"] != "slurm":
        raise UsageError(f"{run_dir} holds a local chain: stop it with Ctrl-C where it runs")
    ids = [r.job_id for r in rows if r.job_id and not r.done and (r.active or r.state in ("UNKNOWN", "RUNNING?"))]
    if ids:
        try:
            proc = subprocess.run(
                ["scancel", *ids], capture_output=True, text=True, timeout=SLURM_TIMEOUT_S, check=False
            )
        except FileNotFoundError:
            raise UsageError("no `scancel` on PATH: this machine cannot talk to SLURM") from None
        except subprocess.TimeoutExpired:
            raise VlmtuneError(f"scancel did not answer within {SLURM_TIMEOUT_S} s") from None
        if proc.returncode != 0 and "already completed" not in proc.stderr:
            raise VlmtuneError(f"scancel failed: {proc.stderr.strip()}")
    manifest["cancelled_at"] = now()
    write_manifest(Path(run_dir), manifest)
    return ids


# --- here, without SLURM -------------------------------------------------------------------------


def run_chain_locally(
    recipe: Recipe,
    recipe_path: Path | None,
    settings: Settings,
    argv: list[str],
) -> list[dict[str, Any]]:
    """Run the links one after another in this process (the same `run_link` a SLURM job runs).

    Under torch.distributed (`torchrun ... -m vlmtune_cli chain run`) rank 0 alone checks and prepares the run
    directory; the other ranks wait for its answer (train/ranks.py).
    """
    from vlmtune_cli.train.ranks import from_rank_zero, init_from_env

    init_from_env()
    from_rank_zero(lambda: _prepare_local_chain(recipe, recipe_path, settings, argv))
    return [run_link(spec) for spec in link_specs(recipe, settings, argv)]


def _prepare_local_chain(recipe: Recipe, recipe_path: Path | None, settings: Settings, argv: list[str]) -> None:
    run = run_dir_for(recipe, settings.runs_dir)
    if manifest_path(run.path).exists():
        existing = read_manifest(run.path)
        if existing["backend"] == "slurm":
            _, rows = chain_status(run.path)
            if any(r.active for r in rows):
                raise UsageError(
                    f"{run.path} has a SLURM chain in progress", hint="`vlmtune chain cancel` it first, or wait for it"
                )
        if existing["recipe"] != recipe.model_dump(mode="json"):
            raise UsageError(
                f"{run.path} holds a chain of a different recipe or length", hint="give this recipe its own `variant`"
            )
    else:
        prepare_run_dir(run, recipe, overwrite=False, start_over=f"delete {run.path}")
        write_manifest(run.path, new_manifest(recipe, run, "local", recipe_path, argv))
