"""Loading recipes: `extends`, overrides, validation messages a user can act on, and dumping.

Layers, lowest precedence first:
  1. the parents named by `extends` (each relative to the file that names it), deep-merged;
  2. the recipe file itself; its `unset = ["table.key", ...]` first drops keys its parents set;
  3. `VLMTUNE_<TABLE>__<KEY>` environment variables (e.g. `VLMTUNE_TRAINING__LR=5e-5`);
  4. `--unset table.key` flags (drop a key whatever layer set it), then `--set table.key=value` flags, in order.
A dropped key takes the schema's default (`training.max_steps` → none, `data.min_pixels` → the processor's).
Relative paths (`data.source`, a local `model.name`) are relative to the file that wrote them, or to the current
directory for layers 3 and 4, and made absolute here (paths.py).
Values from layers 3 and 4 are parsed as TOML (`5e-5`, `true`, `["a", "b"]`); a value that is not valid
TOML is taken as a bare string, so `--set model.name=Qwen/Qwen2-VL-7B-Instruct` needs no quotes.

Every value remembers where it came from, so an error names the file (or flag, or variable) to fix.
Imports nothing heavy: `vlmtune train --dry-run` and recipe tests never load torch.
"""

from __future__ import annotations

import datetime
import difflib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel, ValidationError

from vlmtune_cli.config.paths import resolve_paths
from vlmtune_cli.config.schema import TABLES, Recipe
from vlmtune_cli.console import err_console
from vlmtune_cli.errors import RecipeError

ENV_PREFIX = "VLMTUNE_"
Origins = dict[tuple[str, ...], str]


def load_recipe(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    environ: Mapping[str, str] | None = None,
    *,
    unset: list[str] | tuple[str, ...] = (),
    quiet: bool = False,
) -> Recipe:
    """Read, merge, override and validate a recipe; `quiet` leaves out the notes about old-style paths.

    Raises RecipeError naming the file and dotted key for anything malformed or invalid.
    """
    path = Path(path)
    data, origins = _read_with_parents(path, chain=())
    for variable, key, raw in _recipe_env_vars(os.environ if environ is None else environ):
        _set_dotted(data, origins, key, raw, origin=variable)
    for key in unset:
        _unset_dotted(data, origins, key.strip(), origin="--unset")
    for item in overrides:
        key, raw = _split_override(item)
        _set_dotted(data, origins, key, raw, origin=f"--set {item}")
    for note in resolve_paths(data, origins, Path.cwd()):
        if not quiet:
            err_console.print(f"note: {note}", highlight=False, markup=False)
    return validate(data, origins, default_origin=str(path))


def validate(data: dict[str, Any], origins: Origins | None = None, default_origin: str = "recipe") -> Recipe:
    """Validate merged recipe data; every error names its origin and dotted key."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(err, origins or {}, default_origin) for err in exc.errors()]
        raise RecipeError(
            "invalid recipe:\n" + "\n".join(f"  {line}" for line in lines),
            hint="fix the keys above; `vlmtune train RECIPE --dry-run` shows the resolved recipe",
        ) from None


def dump_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe as TOML (tomli-w cannot write None: unset keys are left out)."""
    return tomli_w.dumps(recipe.model_dump(mode="json", exclude_none=True))


def recipe_diff(a: Recipe, b: Recipe) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose resolved values differ between two recipes."""
    flat_a, flat_b = _flatten(a.model_dump(mode="json")), _flatten(b.model_dump(mode="json"))
    return {
        k: (flat_a.get(k), flat_b.get(k))
        for k in sorted(flat_a.keys() | flat_b.keys())
        if flat_a.get(k) != flat_b.get(k)
    }


def parse_value(raw: str) -> Any:
    """A `--set`/environment value as TOML; a bare string when it is not valid TOML.

    TOML reads `02:00:00` as a time of day and `2026-01-01` as a date; no recipe key holds either, so such a
    value stays the string the user typed (`--set slurm.time=02:00:00` is a time limit, not 2 a.m.).
    """
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
    return raw if isinstance(value, (datetime.date, datetime.time)) else value


# --- reading and merging -------------------------------------------------------------------------


def _read_with_parents(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], Origins]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise RecipeError(f"{path}: `extends` forms a cycle: {cycle}")
    data = _read_toml(path, named_by=chain[-1] if chain else None)
    parent = data.pop("extends", None)
    dropped = data.pop("unset", [])
    if not isinstance(dropped, list) or not all(isinstance(k, str) for k in dropped):
        raise RecipeError(f'{path}: unset: must be a list of dotted keys, e.g. unset = ["training.max_steps"]')
    own = data
    merged: dict[str, Any] = {}
    origins: Origins = {}
    if parent is not None:
        if not isinstance(parent, str):
            raise RecipeError(f"{path}: extends: must be a file name (a string), not {parent!r}")
        merged, origins = _read_with_parents(path.parent / parent, (*chain, resolved))
    for key in dropped:
        _unset_dotted(merged, origins, key, origin=f"{path}: unset")
    _deep_merge(merged, origins, own, origin=str(path))
    return merged, origins


def _read_toml(path: Path, named_by: Path | None) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        where = f" (named by `extends` in {named_by})" if named_by else ""
        raise RecipeError(f"{path}: recipe file not found{where}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}") from None


def _deep_merge(
    into: dict[str, Any], origins: Origins, new: dict[str, Any], origin: str, prefix: tuple[str, ...] = ()
) -> None:
    for key, value in new.items():
        dotted = (*prefix, key)
        if not prefix and key in TABLES and isinstance(value, dict):
            table = into.get(key)
            if not isinstance(table, dict):
                table = into[key] = {}
            _deep_merge(table, origins, value, origin, dotted)
        else:
            # Leaves, free-form dicts such as `data.options` and unknown tables are replaced whole.
            into[key] = value
            origins[dotted] = origin


def _split_override(item: str) -> tuple[str, str]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {item}: expected KEY=VALUE, e.g. --set training.lr=5e-5")
    return key.strip(), raw.strip()


def _recipe_env_vars(environ: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """`VLMTUNE_TRAINING__LR=x` → (name, "training.lr", "x"); settings such as VLMTUNE_RUNS_DIR are not ours."""
    found = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        table, *rest = name[len(ENV_PREFIX) :].lower().split("__")
        if table in TABLES:
            found.append((name, ".".join([table, *rest]), raw))
    return found


def _set_dotted(data: dict[str, Any], origins: Origins, key: str, raw: str, origin: str) -> None:
    parts = tuple(key.split("."))
    if any(not p for p in parts):
        raise RecipeError(f"{origin}: {key!r} is not a dotted key such as training.lr")
    node = data
    for i, part in enumerate(parts[:-1]):
        if part not in node:
            origins.setdefault(parts[: i + 1], origin)
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"{origin}: {'.'.join(parts[: i + 1])} is a value, not a table")
        node = child
    node[parts[-1]] = parse_value(raw)
    origins[parts] = origin


def _unset_dotted(data: dict[str, Any], origins: Origins, key: str, origin: str) -> None:
    """Drop `key` (and what lies under it) so the schema's default applies; RecipeError for an unknown key."""
    parts = tuple(key.split("."))
    if any(not p for p in parts) or not _is_recipe_key(parts):
        suggestion = _closest_key(parts) if all(parts) else None
        hint = f"; did you mean {suggestion}?" if suggestion else ""
        raise RecipeError(f"{origin}: {key}: not a recipe key{hint}")
    node: Any = data
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(parts[-1], None)
    for dotted in [d for d in origins if d[: len(parts)] == parts]:
        del origins[dotted]


def _is_recipe_key(parts: tuple[str, ...]) -> bool:
    """A key of the schema (`training.max_steps`), or one inside a free-form table (`data.options.colour`)."""
    model: type[BaseModel] = Recipe
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
            continue
        return i == len(parts) - 1 or "dict" in str(annotation)
    return True


# --- error messages ------------------------------------------------------------------------------


def _describe(err: Mapping[str, Any], origins: Origins, default_origin: str) -> str:
    loc = tuple(str(p) for p in err["loc"])
    dotted = ".".join(loc) or "(recipe)"
    origin = _origin_of(loc, origins, default_origin)
    if err["type"] == "extra_forbidden":
        suggestion = _closest_key(loc)
        hint = f"; did you mean {suggestion}?" if suggestion else ""
        return f"{origin}: {dotted}: unknown key{hint}"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] not in ("missing",) and "input" in err and not isinstance(err["input"], dict):
        message += f" (got {err['input']!r})"
    return f"{origin}: {dotted}: {message}"


def _origin_of(loc: tuple[str, ...], origins: Origins, default: str) -> str:
    for end in range(len(loc), 0, -1):
        if loc[:end] in origins:
            return origins[loc[:end]]
    return default


# Names from transformers' TrainingArguments / PEFT's LoraConfig that users bring along, and where they live here.
UPSTREAM_NAMES = {
    "learning_rate": "training.lr",
    "num_train_epochs": "training.epochs",
    "per_device_train_batch_size": "training.batch_size",
    "per_device_eval_batch_size": "training.eval_batch_size",
    "gradient_accumulation_steps": "training.grad_accum",
    "lr_scheduler_type": "training.lr_scheduler",
    "bf16": "training.precision",
    "fp16": "training.precision",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "lora_r": "lora.r",
    "model_name_or_path": "model.name",
    "dataset_name": "data.source",
    "max_seq_length": "data.max_length",
}


def _closest_key(loc: tuple[str, ...]) -> str | None:
    """For an unknown key, the nearest valid key at the same place (or anywhere, for a misplaced one)."""
    if loc[-1] in UPSTREAM_NAMES:
        return f"{UPSTREAM_NAMES[loc[-1]]} (`{loc[-1]}` upstream)"
    model: type[BaseModel] = Recipe
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    prefix = ".".join(loc[:-1])
    match = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.75)
    if match:
        return f"{prefix}.{match[0]}" if prefix else match[0]
    # A key put in the wrong table ("lr" at top level or in [model]) is worth pointing at where it lives.
    for table in TABLES:
        if loc[-1] in Recipe.model_fields[table].annotation.model_fields:  # type: ignore[union-attr]
            return f"{table}.{loc[-1]}"
    match = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    if match:
        return f"{prefix}.{match[0]}" if prefix else match[0]
    return None


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and key in TABLES and not prefix:
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat
