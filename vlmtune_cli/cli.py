"""The `vlmtune` command line: builds the Typer app, registers the commands, maps our errors to exits.

Nothing here, nor in `commands/`, imports torch at module level: `vlmtune --help` stays fast.
Set VLMTUNE_DEBUG=1 to see the traceback behind an error message.
"""

from __future__ import annotations

import os
import warnings
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup, TyperOption

from vlmtune_cli import __version__
from vlmtune_cli.commands import benchmark, chain, export, predict, recipes, submit, tokenize, train
from vlmtune_cli.console import err_console
from vlmtune_cli.errors import VlmtuneError


def _flags_take_no_value(command: Any, ctx: Any) -> None:
    """Typer 0.29's rich help prints a flag as `--dry-run <bool>` (even `--help`), although `--dry-run true` is
    refused: an empty metavar leaves the type column of a flag blank. Walks sub-groups (`chain`, `recipes`)."""
    _blank_flag_metavars(command.get_params(ctx))
    for sub in getattr(command, "commands", {}).values():
        _flags_take_no_value(sub, ctx)


def _blank_flag_metavars(params: list[Any]) -> list[Any]:
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class _FriendlyErrors(TyperGroup):
    """Turns our own exceptions into a message and an exit code, wherever the command runs."""

    def get_params(self, ctx: Any) -> Any:
        return _blank_flag_metavars(super().get_params(ctx))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _flags_take_no_value(command, ctx)
        return command

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except VlmtuneError as exc:
            if os.environ.get("VLMTUNE_DEBUG"):
                raise
            # Messages quote paths, keys and library errors: `[x]` in them is text, never rich markup.
            err_console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
            if exc.hint:
                err_console.print(f"[yellow]hint:[/] {escape(exc.hint)}", highlight=False)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    cls=_FriendlyErrors,
    name="vlmtune",
    help="Fine-tune vision-language models from TOML recipes, here or as SLURM job chains.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"vlmtune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Fine-tune vision-language models from TOML recipes, here or as SLURM job chains."""


app.command("train")(train.train)
app.command("tokenize")(tokenize.tokenize)
app.command("benchmark")(benchmark.benchmark)
app.command("submit")(submit.submit)
app.command("export")(export.export)
app.command("predict")(predict.predict)
app.add_typer(chain.app, name="chain")
app.add_typer(recipes.app, name="recipes")


def main() -> None:
    if not os.environ.get("VLMTUNE_DEBUG"):
        # Deprecation notices inside transformers/TRL/PEFT are for their developers, not for our users.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|trl|peft|accelerate)\.")
    app()
