"""Finding recipes by name: the shipped ones and the workspace's, their one-line descriptions, new recipes.

Shipped recipes are the `recipes/` folder next to the vlmtune source (present in a checkout or an editable
install). Workspace recipes are `*.toml` files in `./recipes/` and beside the workspace's `default_recipe`.
A name is a path, a file stem (`v2`) or a variant (`v2-assistant-only`).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from vlmtune_cli.config.settings import Settings
from vlmtune_cli.errors import UsageError

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "recipes"

# Keys people change most often, commented into a new recipe so they only need uncommenting.
_COMMON_KEYS = """\
# [model]
# name = "Qwen/Qwen2-VL-7B-Instruct"
#
# [data]
# source = "DATA_EXAMPLE"
#   a path is relative to THIS file's folder (that one is ./data/train.jsonl where you ran `recipes new`);
#   or builtin:..., a dataset folder, a hub id, path/to/file.py:function
# max_samples = 100
# max_pixels = 200704              # 256 visual tokens per image
#
# [tuning]
# loss_on = "assistant"            # "all" | "assistant"
# vision = "frozen"                # "frozen" | "lora" | "full", likewise projector and llm
#
# [training]
# epochs = 3
# lr = 2e-5
# batch_size = 1
# grad_accum = 8
#
# [chain]
# total_jobs = 10
# epochs_per_job = 1
#
# [slurm]
# partition = "gpu"
# time = "04:00:00"
"""


@dataclass(frozen=True)
class RecipeFile:
    path: Path
    origin: str  # "shipped" or "workspace"
    variant: str
    model: str
    description: str


def recipe_dirs(settings: Settings) -> list[tuple[Path, str]]:
    dirs = [(SHIPPED_DIR, "shipped"), (Path("recipes"), "workspace")]
    if settings.default_recipe is not None:
        dirs.append((settings.default_recipe.parent, "workspace"))
    seen: set[Path] = set()
    unique = []
    for directory, origin in dirs:
        resolved = directory.resolve()
        if resolved not in seen and directory.is_dir():
            seen.add(resolved)
            unique.append((directory, origin))
    return unique


def list_recipes(settings: Settings) -> list[RecipeFile]:
    """Every recipe file found, shipped first. Files that do not load still appear, described as broken."""
    from vlmtune_cli.config.recipe import load_recipe

    found = []
    for directory, origin in recipe_dirs(settings):
        for path in sorted(directory.glob("*.toml")):
            try:
                recipe = load_recipe(path, environ={}, quiet=True)
                variant, model = recipe.variant, recipe.model.name
            except UsageError:
                variant, model = "?", "?"
            found.append(RecipeFile(_display(path), origin, variant, model, header_description(path)))
    return found


def find_recipe(name: str, settings: Settings) -> Path:
    """A recipe path from a path, a file stem or a variant name. Raises UsageError listing what exists."""
    if Path(name).is_file():
        return Path(name)
    candidates = list_recipes(settings)
    for recipe in candidates:
        if name in (recipe.path.stem, recipe.variant):
            return recipe.path
    known = ", ".join(sorted({r.path.stem for r in candidates})) or "none found"
    raise UsageError(f"no recipe named {name!r}", hint=f"known recipes: {known}; or give a path to a .toml file")


def header_description(path: Path) -> str:
    """The first comment line of a recipe file (its one-line description), else its `description` key."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and not stripped.lstrip("# ").startswith("vlmtune "):
            return stripped.lstrip("# ").strip()
        if stripped and not stripped.startswith("#"):
            break
    try:
        return str(tomllib.loads(text).get("description", ""))
    except tomllib.TOMLDecodeError:
        return ""


def new_recipe_text(path: Path, parent: Path) -> str:
    """A new recipe that extends `parent`, with the commonly changed keys commented in."""
    folder = path.resolve().parent
    relative = os.path.relpath(parent.resolve(), folder)
    if relative.startswith(os.path.join("..", "..")):  # far outside the new file's folder: say where, plainly
        relative = str(parent.resolve())
    return (
        f"# {path.stem}: describe what this recipe changes in one line.\n"
        f"#   vlmtune train {_display(path)}\n"
        f'extends = "{relative}"\n'
        f'variant = "{path.stem}"\n'
        f'description = ""\n\n'
        + _COMMON_KEYS.replace(
            "DATA_EXAMPLE", Path(os.path.relpath(Path.cwd() / "data" / "train.jsonl", folder)).as_posix()
        )
    )


def _display(path: Path) -> Path:
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path
