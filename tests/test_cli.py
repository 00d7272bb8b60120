"""The command line: fast start-up, exit codes, messages instead of tracebacks, workspace defaults."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmtune_cli.cli import app

from .conftest import RECIPES

runner = CliRunner()
HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")


def _modules_loaded_by(argv: list[str]) -> tuple[int, set[str]]:
    probe = (
        "import sys\n"
        "from vlmtune_cli.cli import main\n"
        f"sys.argv = {['vlmtune', *argv]!r}\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code or 0\nelse:\n    code = 0\n"
        f"print(code, ' '.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=RECIPES.parent, check=False
    )
    last = done.stderr.strip().splitlines()[-1].split()
    return int(last[0]), set(last[1:])


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["train", "--help"],
        ["train", "recipes/v2.toml", "--dry-run"],
        ["train", "recipes/v2.toml", "--set", "training.lrr=1"],
    ],
)
def test_light_paths_import_no_ml_library(argv: list[str]) -> None:
    code, heavy = _modules_loaded_by(argv)
    assert heavy == set()
    assert code == (2 if "training.lrr=1" in argv else 0)


def test_module_entry_point_answers() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vlmtune_cli", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("vlmtune ")


def test_dry_run_prints_the_resolved_recipe_as_toml(workspace: Path) -> None:
    result = runner.invoke(
        app,
        ["train", str(RECIPES / "v2.toml"), "--dry-run", "--set", "training.lr=5e-5", "--set", "data.max_samples=100"],
    )
    assert result.exit_code == 0, result.output
    resolved = tomllib.loads(result.stdout)
    assert resolved["variant"] == "v2-assistant-only"
    assert (resolved["training"]["lr"], resolved["data"]["max_samples"]) == (5e-5, 100)
    assert resolved["training"]["grad_accum"] == 8  # from base.toml, through extends
    assert "extends" not in resolved


def test_bad_recipe_is_a_message_with_exit_code_2(workspace: Path) -> None:
    (workspace / "bad.toml").write_text('extends = "' + str(RECIPES / "v2.toml") + '"\n[training]\nlrr = 1\n')
    result = runner.invoke(app, ["train", "bad.toml"])
    assert result.exit_code == 2
    assert "bad.toml: training.lrr: unknown key; did you mean training.lr?" in result.stderr
    assert "Traceback" not in result.output


def test_missing_recipe_file(workspace: Path) -> None:
    result = runner.invoke(app, ["train", "nope.toml"])
    assert result.exit_code == 2
    assert "nope.toml: recipe file not found" in result.stderr


def test_no_recipe_and_no_default_says_what_to_do(workspace: Path) -> None:
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 2
    assert "no recipe given and no workspace default" in result.stderr


def test_workspace_default_recipe_from_vlmtune_toml(workspace: Path) -> None:
    (workspace / "vlmtune.toml").write_text(f'default_recipe = "{RECIPES / "v4.toml"}"\n')
    result = runner.invoke(app, ["train", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert 'variant = "v4-llm-only"' in result.stdout


def test_workspace_default_from_pyproject(workspace: Path) -> None:
    (workspace / "pyproject.toml").write_text(f'[tool.vlmtune]\ndefault_recipe = "{RECIPES / "v3.toml"}"\n')
    result = runner.invoke(app, ["train", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert 'variant = "v3-encoder-only"' in result.stdout


def test_settings_precedence_env_over_file(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vlmtune_cli.config.settings import load_settings

    (workspace / "vlmtune.toml").write_text('runs_dir = "from-file"\n[slurm]\npartition = "gpu"\n')
    (workspace / "pyproject.toml").write_text('[tool.vlmtune]\nruns_dir = "from-pyproject"\ncache_dir = "c"\n')
    monkeypatch.delenv("VLMTUNE_RUNS_DIR")
    monkeypatch.delenv("VLMTUNE_CACHE_DIR")
    settings = load_settings()
    assert (settings.runs_dir, settings.cache_dir, settings.slurm.partition) == (Path("from-file"), Path("c"), "gpu")
    monkeypatch.setenv("VLMTUNE_RUNS_DIR", "from-env")
    monkeypatch.setenv("VLMTUNE_SLURM__PARTITION", "cpu")
    settings = load_settings()
    assert (settings.runs_dir, settings.slurm.partition) == (Path("from-env"), "cpu")


def test_invalid_workspace_file_is_a_message(workspace: Path) -> None:
    (workspace / "vlmtune.toml").write_text("runs_dir = [\n")
    result = runner.invoke(app, ["train", str(RECIPES / "v2.toml"), "--dry-run"])
    assert result.exit_code == 2
    assert "workspace settings" in result.stderr


def test_messages_are_printed_verbatim_even_with_square_brackets(workspace: Path) -> None:
    """Messages quote paths and library errors (gloo: "[.../pair.cc:553] Connection closed"); rich must not read
    them as markup (it raised MarkupError instead of printing the message)."""
    result = CliRunner().invoke(app, ["train", "missing[/x].toml"])
    assert result.exit_code == 2
    assert "error: missing[/x].toml: recipe file not found" in " ".join(result.stderr.split())
