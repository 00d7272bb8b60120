"""The one rule for paths in a recipe: relative to the file that wrote them, like `extends`.

A relative path in a recipe file (`data.source`, including the file of a plugin `my_data.py:function`, and
`model.name` when it names a local folder) is relative to that file's folder; in `--set` and `VLMTUNE_*` it is
relative to the current directory. `load_recipe` makes such a path absolute, so the resolved recipe (and the run
directory's recipe.toml) works from anywhere.

Backwards compatibility: vlmtune used to read `data.source` against the current directory. A path that does not
exist next to the recipe but does under the current directory is still found there, with a note saying how to
write it. A path found in neither place is made absolute against the recipe's folder, so the error that follows
names the place it should be; a hub id (`owner/name`) that is no local folder is left as it is.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

# Looks like a file the user meant to point at (as opposed to a hub id such as `owner/name`).
_FILE_LIKE = re.compile(r"(\.(jsonl|json|parquet|csv|arrow|py)$)|(^\.{1,2}[/\\])")
_PLUGIN = re.compile(r"^(?P<file>.+\.py):(?P<func>[^/\\]+)$")


def base_of(origin: str, cwd: Path) -> Path:
    """The folder a path set by `origin` (a recipe file, `--set ...` or a `VLMTUNE_*` variable) is relative to."""
    if origin.startswith("--set ") or origin.startswith("VLMTUNE_") or origin in ("recipe", "chain manifest"):
        return cwd
    return Path(origin).parent


def resolve_paths(data: dict[str, Any], origins: dict[tuple[str, ...], str], cwd: Path) -> list[str]:
    """Make the relative paths of merged recipe data absolute, in place; returns notes for the user."""
    notes: list[str] = []
    source = (data.get("data") or {}).get("source") if isinstance(data.get("data"), dict) else None
    if isinstance(source, str) and not source.startswith("builtin:"):
        origin = origins.get(("data", "source"), "recipe")
        plugin = _PLUGIN.match(source)
        file = plugin.group("file") if plugin else source
        resolved, note = _resolve(file, base_of(origin, cwd), cwd, origin, "data.source")
        if resolved is not None:
            data["data"]["source"] = f"{resolved}:{plugin.group('func')}" if plugin else resolved
        notes += note
    name = (data.get("model") or {}).get("name") if isinstance(data.get("model"), dict) else None
    if isinstance(name, str) and not name.startswith("builtin:"):
        origin = origins.get(("model", "name"), "recipe")
        resolved, note = _resolve(name, base_of(origin, cwd), cwd, origin, "model.name")
        # A hub id is only rewritten when a local folder of that name exists (the local folder wins, as in
        # transformers' from_pretrained).
        if resolved is not None and Path(resolved).is_dir():
            data["model"]["name"] = resolved
            notes += note
    return notes


def _resolve(text: str, base: Path, cwd: Path, origin: str, key: str) -> tuple[str | None, list[str]]:
    path = Path(text).expanduser()
    if path.is_absolute():
        return None, []
    here = _absolute(base / path)
    if os.path.exists(here):
        return here, []
    there = _absolute(cwd / path)
    if base != cwd and os.path.exists(there):
        relative = os.path.relpath(there, base)
        return there, [
            f"{origin}: {key}: {text!r} was found relative to the current directory; relative paths in a recipe are "
            f"relative to the recipe's folder, so write {relative!r} (the current-directory fallback will go)"
        ]
    if _FILE_LIKE.search(text):
        return here, []  # the error that follows names the place the rule says it should be
    return None, []


def _absolute(path: Path) -> str:
    return os.path.normpath(os.path.abspath(path))
