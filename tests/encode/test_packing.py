"""The packing planner (first-fit decreasing over shuffled windows), the default row length, the epoch-seeded row
order, the recipe checks, and what `vlmtune tokenize` reports. No model is loaded here (tests/train/test_packing.py
runs the models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmtune_cli.cli import app
from vlmtune_cli.config.recipe import load_recipe
from vlmtune_cli.encode.packing import PackingReport, default_packing_length, plan_rows
from vlmtune_cli.errors import RecipeError

from ..conftest import RECIPES

runner = CliRunner()


def spread_lengths(n: int = 500, shortest: int = 60, seed: int = 0) -> list[int]:
    """Lengths from 1× to 8× the shortest, as the benchmark's set."""
    import numpy as np

    return np.random.default_rng(seed).integers(shortest, 8 * shortest + 1, n).tolist()


def test_first_fit_decreasing_by_hand() -> None:
    # Decreasing: 7 (#2), 5 (#0), 4 (#4), 3 (#1), 2 (#3) into rows of 10. 7 opens row 0; 5 does not fit there and
    # opens row 1; 4 goes to row 1 (row 0 has 3 left); 3 fills row 0; 2 fits nowhere (0 and 1 left): row 2.
    assert plan_rows([5, 3, 7, 2, 4], 10, seed=0) == [[2, 1], [0, 4], [3]]
    assert plan_rows([5, 3, 7, 2, 4], 10, seed=123) == [[2, 1], [0, 4], [3]]  # distinct lengths: no tie to shuffle


def test_rows_hold_every_sample_once_within_the_length_and_depend_on_the_seed_only() -> None:
    lengths = spread_lengths()
    length = default_packing_length(lengths, max_length=4096)
    rows = plan_rows(lengths, length, seed=7, window=128)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))  # never split, never dropped
    assert all(sum(lengths[i] for i in row) <= length for row in rows)
    assert plan_rows(lengths, length, seed=7, window=128) == rows
    assert plan_rows(lengths, length, seed=8, window=128) != rows
    report = PackingReport.of(lengths, rows, length, derived=True)
    assert report.rows == len(rows) and report.tokens == sum(lengths)
    assert report.fill_rate > 0.9, report.describe()  # rows of the longest sample: long ones only pair with short
    longer = PackingReport.of(lengths, plan_rows(lengths, 2 * length, seed=7, window=128), 2 * length, derived=False)
    assert longer.fill_rate > 0.97, longer.describe()
    # Windows: a sample only ever shares a row with samples of its own window of the shuffled order.
    import numpy as np

    order = np.random.default_rng(7).permutation(len(lengths)).tolist()
    window_of = {index: position // 128 for position, index in enumerate(order)}
    assert all(len({window_of[i] for i in row}) == 1 for row in rows)


def test_a_sample_longer_than_a_row_is_refused_not_split() -> None:
    with pytest.raises(ValueError, match="a sample of 30 tokens does not fit in a row of 20"):
        plan_rows([10, 30, 5], 20, seed=0)


def test_default_packing_length_is_the_longest_sample() -> None:
    assert default_packing_length(list(range(1, 101)), max_length=4096) == 100
    assert default_packing_length([10] * 99 + [500], max_length=4096) == 500


def test_row_order_is_a_function_of_seed_and_epoch() -> None:
    from vlmtune_cli.train.sampling import epoch_seeded_shuffle

    a, b = epoch_seeded_shuffle(50, seed=3), epoch_seeded_shuffle(50, seed=3)
    import torch

    torch.manual_seed(999)  # the global RNG does not matter
    first = list(a)
    assert sorted(first) == list(range(50)) and list(b) == first and len(a) == 50
    a.set_epoch(1)
    second = list(a)
    assert second != first
    b.set_epoch(1)
    assert list(b) == second
    assert list(epoch_seeded_shuffle(50, seed=4)) != first


def test_recipe_checks() -> None:
    smoke = str(RECIPES / "smoke.toml")
    with pytest.raises(RecipeError, match="packing and group_by_length exclude each other"):
        load_recipe(smoke, ["training.packing=true", "training.group_by_length=true"])
    with pytest.raises(RecipeError, match=r"training.packing_length \(600\) is above data.max_length \(512\)"):
        load_recipe(smoke, ["training.packing_length=600"])
    assert load_recipe(smoke, ["training.packing=true", "training.packing_length=512"]).training.packing_length == 512


def test_tokenize_reports_what_packing_would_give(workspace: Path) -> None:
    from vlmtune_cli.config.settings import load_settings
    from vlmtune_cli.encode.build import tokenize_recipe
    from vlmtune_cli.encode.packing import cached_lengths

    args = ["tokenize", str(RECIPES / "smoke.toml"), "--set", "data.num_samples=30", "--set", "data.max_samples=30"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    packing = json.loads(result.stdout)["packing"]
    recipe = load_recipe(RECIPES / "smoke.toml", ["data.num_samples=30", "data.max_samples=30"])
    cached = tokenize_recipe(recipe, load_settings().cache_dir)
    lengths = cached_lengths(cached, "train")
    assert len(lengths) == packing["samples"] == 24
    length = default_packing_length(lengths, 512)
    rows = plan_rows(lengths, length, seed=42)
    assert packing == PackingReport.of(lengths, rows, length, derived=True).as_dict()
    assert packing["rows"] == len(rows) and 0 < packing["fill_rate"] <= 1
    text = runner.invoke(app, [*args, "--set", "training.packing_length=400"])
    assert text.exit_code == 0
    report = PackingReport.of(lengths, plan_rows(lengths, 400, seed=42), 400, derived=False)
    assert report.describe() in " ".join(text.stdout.split())
    short = runner.invoke(app, [*args, "--set", "training.packing_length=100", "--json"])
    assert json.loads(short.stdout)["packing"].startswith("packing: training.packing_length = 100 is shorter than 24")
