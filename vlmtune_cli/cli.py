"""The `vlmtune` command line: builds the Typer app, registers the commands, maps our errors to exits.

Nothing here, nor in `commands/`, imports torch at module level: `vlmtune --help` stays fast.
Set VLMTUNE_DEBUG=1 to see the traceback behind an error message.
"""

from __future__ import annotations

import os
import warnings
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from vlmtune_cli import __version__
from vlmtune_cli.commands import benchmark, chain, export, predict, recipes, submit, tokenize, train
from vlmtune_cli.console import err_console
from vlmtune_cli.errors import VlmtuneError


class _FriendlyErrors(TyperGroup):
    """Turns our own exceptions into a message and an exit code, wherever the command runs."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except VlmtuneError as exc:
            if os.environ.get("VLMTUNE_DEBUG"):
                raise
            from rich.markup import escape  # messages quote library errors, e.g. gloo's "[.../pair.cc:553]"

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
