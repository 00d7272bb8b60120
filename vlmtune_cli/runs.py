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
import stat
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

COMPLETE_MARKER = "COMPLETE"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
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


def current_umask() -> int:
    """The process's umask (reading it means setting it: set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def respect_umask(path: Path) -> None:
    """Give `path` and everything under it the modes a plain open() or mkdir() would have given.

    safetensors (0.8) writes through a private temporary file and mkstemp/mkdtemp create 0600/0700 whatever the
    umask: weights, markers and cache entries would otherwise be unreadable to the other users of a shared
    project folder. Symbolic links are left alone.
    """
    mask = current_umask()
    for item in [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]:
        if item.is_symlink():
            continue
        want = (0o777 if item.is_dir() else 0o666) & ~mask
        if stat.S_IMODE(item.stat().st_mode) != want:
            item.chmod(want)


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
