"""vlmtune submit [RECIPE] [--chain N] [--set KEY=VALUE ...] [--partition P] [--time HH:MM:SS] [--nodes N]
               [--gpus-per-node G] [--dry-run] [--json]

Submit a recipe to SLURM as a chain of N jobs (default `chain.total_jobs`), each `afterok` on the previous
one. The chain plans N × `chain.epochs_per_job` epochs; link k trains until epoch k × epochs_per_job and the
last one saves final/. Flags win over the recipe's `[slurm]` table, which wins over the workspace defaults.
A manifest, `<run_dir>/chain.json`, records what was submitted; `vlmtune chain status` shows the chain.

    vlmtune submit recipes/v2.toml --chain 10
    vlmtune submit recipes/v2.toml --partition gpu --time 08:00:00 --gpus-per-node 4 --dry-run
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from vlmtune_cli.commands._options import JsonOpt, OverrideOpt, RecipeArg, UnsetOpt
from vlmtune_cli.config.recipe import load_recipe
from vlmtune_cli.config.settings import load_settings, resolve_recipe_path
from vlmtune_cli.config.slurm_time import describe
from vlmtune_cli.console import console, err_console
from vlmtune_cli.errors import UsageError


def submit(
    recipe: RecipeArg = None,
    chain: Annotated[
        int | None, typer.Option("--chain", help="Number of jobs (default: chain.total_jobs).", show_default=False)
    ] = None,
    overrides: OverrideOpt = None,
    unset: UnsetOpt = None,
    partition: Annotated[str | None, typer.Option("--partition", help="SLURM partition.", show_default=False)] = None,
    time_limit: Annotated[
        str | None,
        typer.Option(
            "--time",
            metavar="HH:MM:SS",
            help="Time limit of each job, as sbatch reads it (2:00 is two minutes; the reading is printed).",
            show_default=False,
        ),
    ] = None,
    nodes: Annotated[int | None, typer.Option("--nodes", help="Nodes per job.", show_default=False)] = None,
    gpus_per_node: Annotated[
        int | None, typer.Option("--gpus-per-node", help="GPUs (= tasks) per node.", show_default=False)
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the sbatch scripts; submit nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Submit a recipe to SLURM as a chain of jobs (checkpointing and requeueing on the time limit)."""
    from vlmtune_cli.cluster import chain as chains
    from vlmtune_cli.cluster.sbatch import SlurmFlags, link_parameters, sbatch_script, time_to_seconds

    if chain is not None and chain < 1:
        raise UsageError(f"--chain {chain}: a chain needs at least one job")
    if time_limit is not None:
        try:
            time_to_seconds(time_limit)
        except UsageError as exc:
            raise UsageError(f"--time: {exc.message}", hint=exc.hint) from None
    flags = SlurmFlags(partition=partition, time=time_limit, nodes=nodes, gpus_per_node=gpus_per_node)
    settings = load_settings()
    path = resolve_recipe_path(recipe, settings)
    effective = chains.plan(load_recipe(path, overrides or [], unset=unset or []), chain)
    # `2:00` is two minutes to SLURM: say how the limit was read before anything is submitted.
    err_console.print(f"time limit per job: {describe(time_limit or effective.slurm.time)}", markup=False)
    if dry_run:
        from vlmtune_cli.runs import run_dir_for

        folder = run_dir_for(effective, settings.runs_dir).path.resolve() / "slurm"
        scripts = []
        for k in range(1, effective.chain.total_jobs + 1):
            params = link_parameters(effective, settings, flags, k, f"<job id of link {k - 1}>" if k > 1 else None)
            scripts.append(sbatch_script(params, folder))
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "variant": effective.variant,
                        "total_jobs": effective.chain.total_jobs,
                        "total_epochs": effective.training.epochs,
                        "scripts": scripts,
                    },
                    indent=2,
                )
            )
        else:
            for k, script in enumerate(scripts, 1):
                typer.echo(f"# ---- link {k} of {len(scripts)} ----")
                typer.echo(script)
        return
    manifest, job_ids = chains.submit_chain(effective, path, settings, flags, sys.argv)
    if as_json:
        typer.echo(
            json.dumps(
                {"run_dir": manifest["run_dir"], "job_ids": job_ids, "total_epochs": manifest["total_epochs"]}, indent=2
            )
        )
        return
    console.print(
        f"submitted {effective.variant}: {len(job_ids)} jobs ({', '.join(job_ids)}), "
        f"{manifest['total_epochs']} epochs → run directory {manifest['run_dir']}\n"
        f"follow it with `vlmtune chain status {manifest['run_dir']}`",
        highlight=False,
        markup=False,
    )
