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


@pytest.mark.parametrize(
    ("file", "text", "expected"),
    [
        ("vlmtune.toml", 'runz_dir = "x"\n', "vlmtune.toml: runz_dir: unknown key; did you mean runs_dir?"),
        (
            "pyproject.toml",
            '[tool.vlmtune]\ncache_dri = "x"\n',
            "pyproject.toml [tool.vlmtune]: cache_dri: unknown key; did you mean cache_dir?",
        ),
        ("vlmtune.toml", '[slurm]\npartitoin = "gpu"\n', "slurm.partitoin: unknown key; did you mean slurm.partition?"),
        ("vlmtune.toml", '[slurm]\ntime = "1:00:00"\n', "slurm.time: not a workspace default; set it in the recipe"),
    ],
)
def test_unknown_workspace_key_is_named_with_the_nearest(workspace: Path, file: str, text: str, expected: str) -> None:
    (workspace / file).write_text(text)
    result = runner.invoke(app, ["train", str(RECIPES / "v2.toml"), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert "[slurm]" in result.stderr, "the hint's [slurm] is text, not rich markup"


def test_slurm_variables_agree_between_workspace_and_recipe(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vlmtune_cli.config.settings import load_settings

    monkeypatch.setenv("VLMTUNE_SLURM__TIME", "02:00:00")
    monkeypatch.setenv("VLMTUNE_SLURM__PARTITION", "cpu")
    result = runner.invoke(app, ["train", str(RECIPES / "v2.toml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    slurm = tomllib.loads(result.stdout)["slurm"]
    assert (slurm["time"], slurm["partition"]) == ("02:00:00", "cpu")
    assert load_settings().slurm.partition == "cpu"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[training]\nlearning_rate = 1e-4\n", "training.learning_rate: unknown key; did you mean training.lr"),
        ("num_train_epochs = 2\n", "num_train_epochs: unknown key; did you mean training.epochs"),
        (
            "[training]\nper_device_train_batch_size = 2\n",
            "did you mean training.batch_size (`per_device_train_batch_size` upstream)?",
        ),
        ("[lora]\nlora_alpha = 8\n", "did you mean lora.alpha"),
    ],
)
def test_upstream_names_point_at_ours(workspace: Path, text: str, expected: str) -> None:
    (workspace / "r.toml").write_text(text)
    result = runner.invoke(app, ["train", "r.toml", "--dry-run"])
    assert result.exit_code == 2 and expected in result.stderr, result.output


def test_square_brackets_in_messages_are_printed_as_text(workspace: Path) -> None:
    result = runner.invoke(app, ["train", "recipes/[bold]x[/y].toml"])
    assert result.exit_code == 2, result.output
    assert "error: recipes/[bold]x[/y].toml: recipe file not found" in result.stderr
    assert isinstance(result.exception, SystemExit), result.exception  # not rich's MarkupError
    help_text = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).stdout
    assert "vlmtune.toml / [tool.vlmtune]" in help_text


def test_unset_flag_drops_an_inherited_key(workspace: Path) -> None:
    (workspace / "steps.toml").write_text(f'extends = "{RECIPES / "smoke.toml"}"\n[training]\nmax_steps = 5\n')
    kept = runner.invoke(app, ["train", "steps.toml", "--dry-run"])
    assert kept.exit_code == 0 and tomllib.loads(kept.stdout)["training"]["max_steps"] == 5
    dropped = runner.invoke(app, ["train", "steps.toml", "--dry-run", "--unset", "training.max_steps"])
    assert dropped.exit_code == 0, dropped.output
    assert "max_steps" not in tomllib.loads(dropped.stdout)["training"]
    # The chain that refused the step budget runs once it is dropped.
    chain = runner.invoke(app, ["submit", "steps.toml", "--dry-run", "--unset", "training.max_steps"])
    assert chain.exit_code == 0, chain.output


@pytest.mark.parametrize(
    "command",
    [[], ["train"], ["tokenize"], ["benchmark"], ["submit"], ["export"], ["chain", "run"], ["recipes", "list"]],
    ids=lambda c: " ".join(c) or "vlmtune",
)
def test_help_shows_flags_as_flags(command: list[str]) -> None:
    """`--dry-run <bool>` suggested a value that the flag refuses."""
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.stdout
    flag = {"": "--version", "train": "--dry-run", "tokenize": "--force", "benchmark": "--base"}.get(
        " ".join(command), "--help"
    )
    line = next(line for line in result.stdout.splitlines() if f"{flag} " in line)
    assert line.split(flag, 1)[1].split()[0] not in ("<bool>", "BOOLEAN"), line


def test_a_flag_refuses_a_value(workspace: Path) -> None:
    result = runner.invoke(app, ["train", str(RECIPES / "smoke.toml"), "--dry-run", "true"])
    assert result.exit_code == 2 and "unexpected extra argument" in result.stderr


def test_messages_are_printed_verbatim_even_with_square_brackets(workspace: Path) -> None:
    """Messages quote paths and library errors (gloo: "[.../pair.cc:553] Connection closed"); rich must not read
    them as markup (it raised MarkupError instead of printing the message)."""
    result = CliRunner().invoke(app, ["train", "missing[/x].toml"])
    assert result.exit_code == 2
    assert "error: missing[/x].toml: recipe file not found" in " ".join(result.stderr.split())
