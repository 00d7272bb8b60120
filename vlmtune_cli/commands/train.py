"""vlmtune train [RECIPE] [--set KEY=VALUE ...] [--dry-run] [--resume] [--overwrite]

Train a recipe on this machine. Outputs go to `<runs_dir>/<variant>/`; a run directory that holds a
complete checkpoint of the same recipe is resumed from it automatically.

    vlmtune train recipes/smoke.toml
    vlmtune train recipes/v2.toml --dry-run
    vlmtune train recipes/v2.toml --set training.lr=5e-5 --set data.max_samples=100
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from vlmtune_cli.commands._options import OverrideOpt, RecipeArg
from vlmtune_cli.console import console
from vlmtune_cli.recipe import dump_recipe, load_recipe
from vlmtune_cli.settings import load_settings, resolve_recipe_path


def train(
    recipe: RecipeArg = None,
    overrides: OverrideOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved recipe as TOML and exit.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Require a checkpoint to resume from (it is used anyway when present).")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Delete the run directory of this variant and start over.")
    ] = False,
) -> None:
    """Train a recipe here (resumes automatically from the run's newest complete checkpoint)."""
    settings = load_settings()
    path = resolve_recipe_path(recipe, settings)
    resolved = load_recipe(path, overrides or [])
    if dry_run:
        typer.echo(dump_recipe(resolved), nl=False)
        return
    from vlmtune_cli.trainer import train as run_training

    result = run_training(resolved, settings, overwrite=overwrite, require_resume=resume, argv=sys.argv)
    loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
    console.print(
        f"trained {resolved.variant}: {result.global_step} steps, final loss {loss}, "
        f"{result.seconds:.0f} s → run directory {result.run_dir}",
        highlight=False,
    )
