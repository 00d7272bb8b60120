"""vlmtune chain status|resume|cancel|run

    vlmtune chain status [RUN_DIR] [--json]   a table: link, job id, state, epochs, last checkpoint, log path
    vlmtune chain resume [RUN_DIR]            resubmit what is left after a failure or cancel
    vlmtune chain cancel [RUN_DIR]            scancel the links still queued or running
    vlmtune chain run [RECIPE] [--jobs N]     the same links one after another on this machine, no SLURM

RUN_DIR is a run directory (`<runs_dir>/<variant>`) or a recipe file (its variant's run directory); omitted,
the workspace's `default_recipe` names it. `status` never blocks: SLURM is asked with a timeout, and the run
directory's own records (chain-links/) say what was trained where SLURM cannot.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from vlmtune_cli.commands._options import JsonOpt, OverrideOpt, RecipeArg, UnsetOpt
from vlmtune_cli.config.settings import load_settings
from vlmtune_cli.config.slurm_time import describe
from vlmtune_cli.console import console, err_console
from vlmtune_cli.errors import UsageError

app = typer.Typer(help="Follow, resume, cancel a job chain, or run one here without SLURM.", no_args_is_help=True)

RunDirArg = Annotated[
    Path | None,
    typer.Argument(
        help="Run directory, or a recipe (its run directory). Omit it to use `default_recipe`.", show_default=False
    ),
]


@app.command("status")
def status(run_dir: RunDirArg = None, as_json: JsonOpt = False) -> None:
    """Each link's state, combining the manifest, SLURM and what the run directory shows was trained."""
    from rich.markup import escape

    from vlmtune_cli.cluster.chain import resolve_run_dir
    from vlmtune_cli.cluster.status import benchmark_outcome, chain_status, summary_line
    from vlmtune_cli.runs import RunDir

    path = resolve_run_dir(run_dir, load_settings())
    manifest, rows = chain_status(path)
    line = summary_line(manifest, rows, RunDir(path))
    benchmark = benchmark_outcome(path, manifest)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "run_dir": str(path),
                    "summary": line,
                    "backend": manifest["backend"],
                    "total_jobs": manifest["total_jobs"],
                    "total_epochs": manifest["total_epochs"],
                    "finished": RunDir(path).is_finished(),
                    "benchmark": benchmark,
                    "links": [r.as_dict() for r in rows],
                },
                indent=2,
            )
        )
        return
    from rich.table import Table

    table = Table(title=escape(line), title_justify="left")
    for column in ("link", "job id", "state", "epochs", "last checkpoint", "log"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            *(
                escape(text)
                for text in (
                    str(r.link),
                    r.job_id or "-",
                    r.state,
                    r.epochs or "-",
                    Path(r.checkpoint).name if r.checkpoint else "-",
                    r.log or "-",
                )
            )
        )
    console.print(table)
    if benchmark and "metrics" in benchmark:
        console.print(f"benchmark of final/: {benchmark['metrics']}", highlight=False, markup=False)
    elif benchmark:
        console.print(
            f"[red]benchmark of final/ failed:[/red] {escape(benchmark['error'])} "
            f"(repeat it with `vlmtune benchmark {escape(str(path))}`)"
        )


@app.command("resume")
def resume(
    run_dir: RunDirArg = None,
    partition: Annotated[
        str | None, typer.Option("--partition", help="SLURM partition from now on.", show_default=False)
    ] = None,
    time_limit: Annotated[
        str | None, typer.Option("--time", metavar="HH:MM:SS", help="Time limit from now on.", show_default=False)
    ] = None,
) -> None:
    """Resubmit the links not yet trained and not queued (after a failure or a cancel)."""
    from vlmtune_cli.cluster.chain import resolve_run_dir, resume_chain
    from vlmtune_cli.cluster.sbatch import SlurmFlags, time_to_seconds

    if time_limit is not None:
        time_to_seconds(time_limit)
        err_console.print(f"time limit per job: {describe(time_limit)}", markup=False)
    settings = load_settings()
    path = resolve_run_dir(run_dir, settings)
    job_ids = resume_chain(path, settings, SlurmFlags(partition=partition, time=time_limit), sys.argv)
    if not job_ids:
        console.print(f"nothing to resume: every link of {path} is trained", highlight=False, markup=False)
    else:
        console.print(f"resubmitted {len(job_ids)} links: jobs {', '.join(job_ids)}", highlight=False, markup=False)


@app.command("cancel")
def cancel(run_dir: RunDirArg = None) -> None:
    """Cancel the links still queued or running."""
    from vlmtune_cli.cluster.chain import cancel_chain, resolve_run_dir

    path = resolve_run_dir(run_dir, load_settings())
    ids = cancel_chain(path)
    console.print(f"cancelled jobs {', '.join(ids)}" if ids else "nothing to cancel", highlight=False, markup=False)


@app.command("run")
def run(
    recipe: RecipeArg = None,
    jobs: Annotated[
        int | None, typer.Option("--jobs", help="Number of links (default: chain.total_jobs).", show_default=False)
    ] = None,
    overrides: OverrideOpt = None,
    unset: UnsetOpt = None,
) -> None:
    """Run a chain's links one after another on this machine, without SLURM."""
    from vlmtune_cli.cluster.chain import plan, run_chain_locally
    from vlmtune_cli.config.recipe import load_recipe
    from vlmtune_cli.config.settings import resolve_recipe_path

    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs {jobs}: a chain needs at least one job")
    settings = load_settings()
    path = resolve_recipe_path(recipe, settings)
    effective = plan(load_recipe(path, overrides or [], unset=unset or []), jobs)
    outcomes = run_chain_locally(effective, path, settings, sys.argv)
    console.print(
        f"ran {effective.variant}: {len(outcomes)} links, {effective.training.epochs} epochs",
        highlight=False,
        markup=False,
    )
