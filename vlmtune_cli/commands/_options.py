"""Options shared by several commands, defined once so every signature stays short and consistent."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

RecipeArg = Annotated[
    Path | None,
    typer.Argument(
        help="Recipe TOML file. Omit it to use `default_recipe` from vlmtune.toml / \\[tool.vlmtune].",
        show_default=False,
    ),
]
OverrideOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override a recipe key, e.g. --set training.lr=5e-5 (value parsed as TOML). Repeatable.",
        show_default=False,
    ),
]
UnsetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--unset",
        metavar="KEY",
        help="Drop a key the recipe or its parents set, back to its default, e.g. --unset training.max_steps. "
        "Repeatable; --set wins over it.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts instead of tables.")]
