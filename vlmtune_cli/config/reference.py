"""The recipe reference, generated from the schema's field docstrings (so docs and code cannot drift).

python -m vlmtune_cli.config.reference > docs/recipes.md     # a test fails when the file is out of date
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from vlmtune_cli.config.schema import TABLES, Recipe


def render() -> str:
    lines = [
        "# Recipe reference",
        "",
        "Generated from `vlmtune_cli/config/schema.py` by `python -m vlmtune_cli.config.reference > docs/recipes.md`.",
        "Every key can be overridden with `--set table.key=value` or `VLMTUNE_TABLE__KEY=value`.",
        "",
        "## Top level",
        "",
        *_table(Recipe, skip=TABLES),
        "| `extends` | — | Parent recipe file, relative to this one; deep-merged under this file's keys. |",
        "| `unset` | — | Dotted keys the parents set that this recipe drops, back to their defaults "
        '(`unset = ["training.max_steps", "data.min_pixels"]`); `--unset KEY` does the same on the command line. |',
    ]
    for table in TABLES:
        model = Recipe.model_fields[table].annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        lines += ["", f"## [{table}]", "", *_table(model, prefix=f"{table}.")]
    return "\n".join(lines) + "\n"


def _table(model: type[BaseModel], prefix: str = "", skip: tuple[str, ...] = ()) -> list[str]:
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        if isinstance(field.default, BaseModel):  # a nested table, e.g. [training.fsdp]: its keys, dotted
            rows += _table(type(field.default), prefix=f"{prefix}{name}.")[2:]
            continue
        description = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | {_default(field.default)} | {description} |")
    return rows


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    return f"`{json.dumps(value)}`".replace("|", "\\|")


if __name__ == "__main__":
    print(render(), end="")
