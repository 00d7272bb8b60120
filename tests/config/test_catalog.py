"""`vlmtune recipes`: list, show, new and diff, by path, file stem or variant name."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from typer.testing import CliRunner

from vlmtune_cli.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["recipes", *args])


def test_list_shows_shipped_and_workspace_recipes(workspace: Path) -> None:
    (workspace / "recipes").mkdir()
    (workspace / "recipes" / "mine.toml").write_text('# My own experiment.\nvariant = "mine"\n')
    (workspace / "recipes" / "broken.toml").write_text("[training\n")
    result = invoke("list", "--json")
    assert result.exit_code == 0, result.output
    found = {Path(r["path"]).stem: r for r in json.loads(result.stdout)}
    assert {"base", "smoke", "v1", "v2", "v3", "v4", "mine", "broken"} <= found.keys()
    assert found["v2"]["variant"] == "v2-assistant-only" and found["v2"]["origin"] == "shipped"
    assert found["v2"]["description"].startswith("v2 — loss on assistant turns only")
    assert found["mine"] == {**found["mine"], "origin": "workspace", "description": "My own experiment."}
    assert found["broken"]["variant"] == "?"
    table = invoke("list")
    assert table.exit_code == 0 and "v4-llm-only" in table.stdout


def test_show_by_stem_and_variant(workspace: Path) -> None:
    by_stem, by_variant = invoke("show", "v4"), invoke("show", "v4-llm-only")
    assert by_stem.exit_code == 0 and by_stem.stdout == by_variant.stdout
    assert tomllib.loads(by_stem.stdout)["tuning"]["vision"] == "frozen"


def test_new_recipe_extends_and_loads(workspace: Path) -> None:
    result = invoke("new", "recipes/exp.toml", "--from", "v2")
    assert result.exit_code == 0, result.output
    text = (workspace / "recipes" / "exp.toml").read_text()
    assert text.startswith("# exp:") and "# [training]" in text and 'variant = "exp"' in text
    shown = tomllib.loads(invoke("show", "exp").stdout)
    assert shown["variant"] == "exp" and shown["tuning"]["loss_on"] == "assistant"
    again = invoke("new", "recipes/exp.toml")
    assert again.exit_code == 2 and "exists already" in again.stderr


def test_diff_lists_exactly_the_changed_keys(workspace: Path) -> None:
    result = invoke("diff", "v2", "v4", "--json")
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)) == {"variant", "description", "tuning.vision", "tuning.projector"}
    same = invoke("diff", "v2", "v2-assistant-only")
    assert "resolve to the same recipe" in same.stdout


def test_unknown_name_lists_what_exists(workspace: Path) -> None:
    result = invoke("show", "v9")
    assert result.exit_code == 2
    assert "no recipe named 'v9'" in result.stderr and "v2" in result.stderr
