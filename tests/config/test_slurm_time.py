"""SLURM time limits: one parser for `--time` and `[slurm] time`, TOML times kept as typed, the reading printed."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmtune_cli.cli import app
from vlmtune_cli.config.recipe import load_recipe
from vlmtune_cli.config.slurm_time import describe, slurm_time_seconds

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
runner = CliRunner()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("02:00:00", 7200), ("2-00", 2 * 86400), ("1-02:03", 86400 + 7380), ("2:00", 120), ("120", 7200)],
)
def test_recipe_accepts_every_form_sbatch_does(tmp_path: Path, text: str, seconds: int) -> None:
    """`2-00` used to pass `--time` and fail in a recipe: both now use the same parser."""
    path = tmp_path / "r.toml"
    path.write_text(f'[slurm]\ntime = "{text}"\n')
    assert load_recipe(path, environ={}).slurm.time == text
    assert slurm_time_seconds(text) == seconds


def test_set_and_environment_keep_a_time_as_typed(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text("")
    assert load_recipe(path, ["slurm.time=02:00:00"], environ={}).slurm.time == "02:00:00"
    assert load_recipe(path, environ={"VLMTUNE_SLURM__TIME": "02:00:00"}).slurm.time == "02:00:00"
    # A string field that TOML would read as a date stays a string too.
    assert load_recipe(path, ["description=2026-01-01"], environ={}).description == "2026-01-01"
    # Unquoted in the file, TOML gives a time of day: read back as the same text.
    path.write_text("[slurm]\ntime = 02:00:00\n")
    assert load_recipe(path, environ={}).slurm.time == "02:00:00"


def test_how_a_limit_is_read() -> None:
    assert describe("2:00") == "2:00 = 2 min (SLURM reads M:S; write 2:00:00 for hours)"
    assert describe("120") == "120 = 2 h (SLURM reads a bare number as minutes)"
    assert describe("1-02:03:04") == "1-02:03:04 = 1 d 2 h 3 min 4 s"
    with pytest.raises(ValueError, match="not a SLURM time limit"):
        describe("2 hours")


def test_submit_prints_how_it_read_the_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VLMTUNE_RUNS_DIR", str(tmp_path / "runs"))
    recipe = str(RECIPES / "smoke.toml")
    result = runner.invoke(app, ["submit", recipe, "--time", "2:00", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "time limit per job: 2:00 = 2 min (SLURM reads M:S; write 2:00:00 for hours)" in result.stderr
    assert "#SBATCH --time=2\n" in result.stdout
    # The environment variable that used to break every command is the recipe's slurm.time.
    monkeypatch.setenv("VLMTUNE_SLURM__TIME", "2-00")
    result = runner.invoke(app, ["submit", recipe, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "time limit per job: 2-00 = 2 d" in result.stderr
    assert "#SBATCH --time=2880\n" in result.stdout
