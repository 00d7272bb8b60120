"""One tiny smoke run shared by test_export.py and test_predict.py: trained once per session, copied per test."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from vlmtune_cli.cli import app

from .conftest import RECIPES

# 16 samples, 2 steps at batch 4, a checkpoint after each step, no evaluation: a few seconds.
TINY_RUN = [
    "data.num_samples=16",
    "data.max_samples=16",
    "training.max_steps=2",
    "training.save_steps=1",
    "training.logging_steps=1",
    "training.eval_steps=100",
]


@functools.cache
def _trained(cache_dir: Path) -> Path:
    runs = cache_dir.parent / "tiny-run-runs"
    args = ["train", str(RECIPES / "smoke.toml"), "--json"] + [a for o in TINY_RUN for a in ("--set", o)]
    result = CliRunner().invoke(app, args, env={"VLMTUNE_CACHE_DIR": str(cache_dir), "VLMTUNE_RUNS_DIR": str(runs)})
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])  # train --json: one object on stdout
    assert record["finished"] is True and record["global_step"] == 2 and record["resumed_from"] is None
    assert set(record) == {"run_dir", "global_step", "final_loss", "seconds", "resumed_from", "finished"}
    return Path(record["run_dir"])


def tiny_run(cache_dir: Path, workspace: Path) -> Path:
    """A fresh copy of the trained smoke run at `<workspace>/runs/smoke` (tests may change it freely)."""
    target = workspace / "runs" / "smoke"
    shutil.copytree(_trained(cache_dir), target)
    return target
