"""The run directory: its layout, what it records, and which checkpoints in it can be trusted.

    <runs_dir>/<variant>/
      recipe.toml            the fully resolved recipe (re-run it exactly with `vlmtune train recipe.toml`)
      env.json               package versions, git commit, command line, host
      checkpoints/checkpoint-N/   written by the trainer; `COMPLETE` inside once every file is on disk
      final/                 the trained adapter or model with its processor; `COMPLETE` inside when whole
      logs/                  TensorBoard event files
      summary.json           steps, epochs, final loss, duration of the last `train`

A checkpoint without its `COMPLETE` marker was cut short (a kill during a save) and is never resumed from.
Writing the marker last, atomically, is what makes "complete" mean complete.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from vlmtune_cli.config.recipe import dump_recipe, load_recipe, recipe_diff
from vlmtune_cli.config.schema import Recipe
from vlmtune_cli.errors import UsageError
from vlmtune_cli.fsutil import current_umask

COMPLETE_MARKER = "COMPLETE"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_CHECKPOINT_NAME = re.compile(r"^(?:checkpoint-)?(\d+)$")
_RECORDED_PACKAGES = (
    "vlmtune",
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "tokenizers",
    "submitit",
    "pillow",
)


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def recipe_file(self) -> Path:
        return self.path / "recipe.toml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final(self) -> Path:
        return self.path / "final"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    def is_finished(self) -> bool:
        return is_complete(self.final)

    def complete_checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        return [p for p in self._numbered_checkpoints() if is_complete(p)]

    def incomplete_checkpoints(self) -> list[Path]:
        return [p for p in self._numbered_checkpoints() if not is_complete(p)]

    def latest_checkpoint(self) -> Path | None:
        found = self.complete_checkpoints()
        return found[-1] if found else None

    def _numbered_checkpoints(self) -> list[Path]:
        if not self.checkpoints.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoints.iterdir() if (m := _CHECKPOINT_RE.match(p.name))]
        return [p for _, p in sorted(found)]


def run_dir_for(recipe: Recipe, runs_dir: Path) -> RunDir:
    return RunDir(runs_dir / recipe.variant)


def is_complete(directory: Path) -> bool:
    return (directory / COMPLETE_MARKER).is_file()


def mark_complete(directory: Path, info: dict[str, Any] | None = None) -> None:
    write_atomic(directory / COMPLETE_MARKER, json.dumps(info or {}, indent=2) + "\n")


def write_atomic(path: Path, text: str) -> None:
    """Write a file so a reader sees the old content or the new, never a half-written one (mode as the umask says)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would otherwise become the file's mode
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare_run_dir(run: RunDir, recipe: Recipe, *, overwrite: bool, start_over: str = "pass --overwrite") -> None:
    """Make the run directory ready for `recipe`, refusing to mix two different recipes in one directory.

    `start_over` is how the calling command starts a run over (the hints name it: not every command has
    `--overwrite`). Raises UsageError when the directory holds a finished run or a run of another recipe (unless
    overwrite).
    """
    if overwrite and run.path.exists():
        shutil.rmtree(run.path)
    if run.recipe_file.exists():
        try:
            previous = load_recipe(run.recipe_file, environ={}, quiet=True)
        except UsageError:
            previous = None
        changed = recipe_diff(previous, recipe) if previous else {"recipe.toml": ("unreadable", "")}
        if changed:
            keys = ", ".join(list(changed)[:6]) + (" ..." if len(changed) > 6 else "")
            raise UsageError(
                f"{run.path} holds a run of a different recipe (differs in: {keys})",
                hint=f"give this recipe its own `variant`, or {start_over} to start that run over",
            )
        if run.is_finished():
            raise UsageError(
                f"{run.path} already holds a finished run of this recipe",
                hint=f"{start_over} to train it again, or change `variant` to keep both",
            )
    try:
        run.path.mkdir(parents=True, exist_ok=True)
        write_atomic(run.recipe_file, dump_recipe(recipe))
    except OSError as exc:
        raise UsageError(
            f"cannot write the run directory {run.path}: {exc.strerror or exc}",
            hint="set runs_dir in vlmtune.toml or VLMTUNE_RUNS_DIR to a writable folder",
        ) from None


def write_env(run: RunDir, argv: list[str] | None = None) -> None:
    """Record what produced this run: package versions, git commit, command line, machine."""
    versions = {}
    for name in _RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    env = {
        "command": argv if argv is not None else sys.argv,
        "cwd": os.getcwd(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": platform.node(),
        "packages": versions,
        "git_commit": _git_commit(Path.cwd()),
        "vlmtune_git_commit": _git_commit(Path(__file__).resolve().parent),
    }
    write_atomic(run.path / "env.json", json.dumps(env, indent=2) + "\n")


def _git_commit(directory: Path) -> str | None:
    """The commit checked out where `directory` lies (the workspace, or vlmtune's own source), if any."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False, cwd=directory
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# --- what a command evaluates or exports: a run's final/, one of its checkpoints, or a base model -----


@dataclass(frozen=True)
class Target:
    """One thing to benchmark: a run's final weights, one of its checkpoints, or a recipe's base model."""

    name: str
    """How tables and the report name it."""
    run_dir: Path
    """Where the result files go."""
    recipe: Recipe
    checkpoint: str
    """`final`, `checkpoint-N` or `base`."""
    weights: Path | None
    """The directory holding the weights and processor; None for the base model."""
    limit: int | None = None
    """`--limit N` of the command line: the results go to their own files (`-limit-N`)."""

    def _file(self, stem: str, suffix: str) -> Path:
        tag = "" if self.checkpoint == "final" else f"-{self.checkpoint}"
        if self.limit is not None:
            tag += f"-limit-{self.limit}"
        return self.run_dir / f"{stem}{tag}{suffix}"

    @property
    def metrics_file(self) -> Path:
        return self._file("metrics", ".json")

    @property
    def predictions_file(self) -> Path:
        return self._file("predictions", ".jsonl")


def checkpoint_name(value: str | None) -> str:
    """`final`, or `checkpoint-N` from `N` / `checkpoint-N`. Raises UsageError for anything else."""
    if value is None or value == "final":
        return "final"
    match = _CHECKPOINT_NAME.match(value)
    if match is None:
        raise UsageError(f"--checkpoint {value!r}: expected final, checkpoint-N or N (e.g. checkpoint-600)")
    return f"checkpoint-{match.group(1)}"


def run_target(path: Path, checkpoint: str | None = None, command: str = "benchmark", args: str = "") -> Target:
    """The run in `path`, at its final weights or a named complete checkpoint (N or checkpoint-N).

    Raises UsageError for a directory that is not a run, a run that did not finish (listing its checkpoints and
    suggesting `vlmtune {command} {path}{args} --checkpoint ...`), or a checkpoint that is missing or incomplete.
    """
    run = RunDir(Path(path))
    if not run.path.is_dir():
        raise UsageError(f"{path}: no such run directory")
    if not run.recipe_file.is_file():
        raise UsageError(
            f"{path} is not a run directory (no recipe.toml in it)",
            hint="a run directory is <runs_dir>/<variant>/, as `vlmtune train` writes it",
        )
    recipe = load_recipe(run.recipe_file, environ={}, quiet=True)
    name = checkpoint_name(checkpoint)
    complete = [p.name for p in run.complete_checkpoints()]
    hint = (
        f"use a checkpoint: vlmtune {command} {path}{args} --checkpoint {complete[-1]}"
        if complete
        else f"train it first: vlmtune train {run.recipe_file}"
    )
    if name == "final":
        if not run.is_finished():
            raise UsageError(f"{path} has no finished final/ (training did not finish){_listing(run)}", hint=hint)
        return Target(_display(run.path), run.path, recipe, name, run.final)
    weights = run.checkpoints / name
    if not is_complete(weights):
        state = "is incomplete (cut short while saving)" if weights.is_dir() else "does not exist"
        raise UsageError(f"{path}: checkpoint {name} {state}{_listing(run)}", hint=hint)
    return Target(f"{_display(run.path)}@{name}", run.path, recipe, name, weights)


def _display(path: Path) -> str:
    """A path as tables show it: relative to the current directory when it lies below it."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _listing(run: RunDir) -> str:
    complete = [p.name for p in run.complete_checkpoints()]
    incomplete = [p.name for p in run.incomplete_checkpoints()]
    text = f"; complete checkpoints: {', '.join(complete)}" if complete else "; it has no complete checkpoint"
    return text + (f"; incomplete: {', '.join(incomplete)}" if incomplete else "")


def latest_run(runs_dir: Path) -> Path:
    """The run in `runs_dir` whose final/ was completed last. Raises UsageError when there is none."""
    runs_dir = Path(runs_dir)
    dirs = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    finished = [p for p in dirs if is_complete(p / "final")]
    if finished:
        return max(finished, key=lambda p: (p / "final" / COMPLETE_MARKER).stat().st_mtime)
    unfinished = [p.name for p in dirs if (p / "recipe.toml").is_file()]
    if unfinished:
        raise UsageError(
            f"no run in {runs_dir} has finished; unfinished runs: {', '.join(unfinished)}",
            hint=f"name one with a checkpoint: vlmtune benchmark {runs_dir / unfinished[0]} --checkpoint checkpoint-N",
        )
    raise UsageError(
        f"no runs in {runs_dir} yet", hint="train one (vlmtune train recipes/smoke.toml) or name a run directory"
    )


def base_target(recipe_path: Path, runs_dir: Path) -> Target:
    """The untrained base model of a recipe, evaluated with the recipe's data; results go next to its run."""
    recipe = load_recipe(recipe_path)
    return Target(f"{recipe.variant} (base model)", Path(runs_dir) / recipe.variant, recipe, "base", None)
