"""vlmtune train [RECIPE] [--set KEY=VALUE ...] [--unset KEY ...] [--dry-run] [--resume] [--overwrite] [--json]

Train a recipe on this machine. Outputs go to `<runs_dir>/<variant>/`; a run directory that holds a
complete checkpoint of the same recipe is resumed from it automatically. SIGTERM or Ctrl-C saves a
checkpoint after the current step and exits with 128 + the signal number (143, 130).

    vlmtune train recipes/smoke.toml
    vlmtune train recipes/v2.toml --dry-run
    vlmtune train recipes/v2.toml --set training.lr=5e-5 --set data.max_samples=100
    vlmtune train recipes/smoke.toml --json      # one JSON object: run_dir, global_step, final_loss, ...
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from typing import Annotated

import typer
from rich.markup import escape

from vlmtune_cli.commands._options import JsonOpt, OverrideOpt, RecipeArg, UnsetOpt
from vlmtune_cli.config.recipe import dump_recipe, load_recipe
from vlmtune_cli.config.settings import load_settings, resolve_recipe_path
from vlmtune_cli.console import console, err_console


def train(
    recipe: RecipeArg = None,
    overrides: OverrideOpt = None,
    unset: UnsetOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved recipe as TOML and exit.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Require a checkpoint to resume from (it is used anyway when present).")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Delete the run directory of this variant and start over.")
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """Train a recipe here (resumes automatically from the run's newest complete checkpoint)."""
    settings = load_settings()
    path = resolve_recipe_path(recipe, settings)
    resolved = load_recipe(path, overrides or [], unset=unset or [])
    if dry_run:
        typer.echo(dump_recipe(resolved), nl=False)
        return
    from vlmtune_cli.train.trainer import train as run_training

    with _stop_with_checkpoint_on_signals() as received:
        result = run_training(resolved, settings, overwrite=overwrite, require_resume=resume, argv=sys.argv)
    if json_output:  # also when stopped by a signal: `finished` is then false
        resumed = str(result.resumed_from) if result.resumed_from else None
        typer.echo(
            json.dumps(
                {
                    "run_dir": str(result.run_dir),
                    "global_step": result.global_step,
                    "final_loss": result.final_loss,
                    "seconds": round(result.seconds, 3),
                    "resumed_from": resumed,
                    "finished": result.finished,
                }
            )
        )
    if received and not result.finished:
        err_console.print(
            f"[yellow]stopped by {received[0].name} at step {result.global_step}; a checkpoint is saved in "
            f"{escape(str(result.run_dir))}.[/] Resume with: "
            + escape(
                f"vlmtune train {path}"
                + "".join(f" --unset {u}" for u in unset or [])
                + "".join(f" --set {o}" for o in overrides or [])
            ),
            highlight=False,
        )
        raise typer.Exit(128 + received[0].value)
    if json_output:
        return
    loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
    console.print(
        f"trained {resolved.variant}: {result.global_step} steps, final loss {loss}, "
        f"{result.seconds:.0f} s → run directory {result.run_dir}",
        highlight=False,
        markup=False,
    )


@contextlib.contextmanager
def _stop_with_checkpoint_on_signals() -> Iterator[list[signal.Signals]]:
    """SIGTERM or a first Ctrl-C asks the trainer to save a checkpoint after the current step and stop.

    A second Ctrl-C interrupts at once (the newest complete checkpoint is then what a resume starts from).
    Yields the list of signals received.
    """
    from vlmtune_cli.train.callbacks import clear_stop_request, request_stop

    received: list[signal.Signals] = []
    clear_stop_request()

    def handler(signum: int, frame: object) -> None:
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signal.Signals(signum))
        err_console.print(
            f"[yellow]{signal.Signals(signum).name}: saving a checkpoint after this step, then "
            "stopping (Ctrl-C again to stop at once)[/]"
        )
        request_stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        clear_stop_request()
        for sig, old in previous.items():
            signal.signal(sig, old)
