"""vlmtune recipes list | show NAME | new PATH --from NAME | diff A B

Find, read, start and compare recipes. NAME is a path, a file stem (`v2`) or a variant (`v2-assistant-only`).

    vlmtune recipes list
    vlmtune recipes show v2
    vlmtune recipes new recipes/my-run.toml --from v2
    vlmtune recipes diff v2 v4            # which resolved keys differ
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from vlmtune_cli.commands._options import JsonOpt
from vlmtune_cli.config.catalog import find_recipe, list_recipes, new_recipe_text
from vlmtune_cli.config.recipe import dump_recipe, load_recipe, recipe_diff
from vlmtune_cli.config.settings import load_settings
from vlmtune_cli.console import console
from vlmtune_cli.errors import UsageError

app = typer.Typer(help="List, show, start and compare recipes.", no_args_is_help=True)
NameArg = Annotated[str, typer.Argument(help="A recipe path, file stem (v2) or variant name.", show_default=False)]


@app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """Shipped and workspace recipes: file, variant, model, description."""
    found = list_recipes(load_settings())
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "path": str(r.path),
                        "origin": r.origin,
                        "variant": r.variant,
                        "model": r.model,
                        "description": r.description,
                    }
                    for r in found
                ],
                indent=2,
            )
        )
        return
    from rich.table import Table

    table = Table("name", "variant", "model", "description", caption="--json shows each file's path")
    for r in found:
        table.add_row(
            *(
                escape(t)
                for t in (
                    r.path.stem + (" (shipped)" if r.origin == "shipped" else ""),
                    r.variant,
                    r.model,
                    r.description,
                )
            )
        )
    console.print(table)


@app.command()
def show(name: NameArg) -> None:
    """The fully resolved recipe as TOML."""
    typer.echo(dump_recipe(load_recipe(find_recipe(name, load_settings()))), nl=False)


@app.command()
def new(
    path: Annotated[Path, typer.Argument(help="The recipe file to create.", show_default=False)],
    parent: Annotated[str, typer.Option("--from", help="The recipe to extend (path, stem or variant).")] = "v2",
) -> None:
    """Create a recipe that extends another, with the commonly changed keys commented in."""
    if path.exists():
        raise UsageError(f"{path} exists already; choose another file name")
    if path.suffix != ".toml":
        raise UsageError(f"{path}: a recipe file name ends in .toml")
    source = find_recipe(parent, load_settings())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new_recipe_text(path, source), encoding="utf-8")
    load_recipe(path, environ={})  # the new file must load as it is
    console.print(
        f"created {path} (extends {source}); edit it, then: vlmtune train {path}", highlight=False, markup=False
    )


@app.command()
def diff(a: NameArg, b: NameArg, as_json: JsonOpt = False) -> None:
    """The keys whose resolved values differ between two recipes."""
    settings = load_settings()
    path_a, path_b = find_recipe(a, settings), find_recipe(b, settings)
    changed = recipe_diff(load_recipe(path_a), load_recipe(path_b))
    if as_json:
        typer.echo(json.dumps({key: {"a": va, "b": vb} for key, (va, vb) in changed.items()}, indent=2))
        return
    if not changed:
        console.print(f"{path_a} and {path_b} resolve to the same recipe", highlight=False, markup=False)
        return
    from rich.table import Table

    table = Table("key", escape(str(path_a)), escape(str(path_b)))
    for key, (va, vb) in changed.items():
        table.add_row(escape(key), escape(json.dumps(va)), escape(json.dumps(vb)))
    console.print(table)
