"""Faults injected for real: `kill -9` of a training process at random moments (during checkpoint saves too)
never loses the run — the next `vlmtune train` resumes from the newest complete checkpoint and ends with the
weights of an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import RECIPES

pytestmark = pytest.mark.slow

# 24 samples → 19 train → 5 steps per epoch; 4 epochs = 20 steps; a checkpoint every 2 steps.
RUN = ["data.num_samples=24", "data.max_samples=24", "training.epochs=4", "training.save_steps=2",
       "training.save_total_limit=50", "training.eval_steps=100", "training.logging_steps=1"]


def command(*extra: str) -> list[str]:
    args = [sys.executable, "-m", "vlmtune_cli", "train", str(RECIPES / "smoke.toml")]
    for item in RUN:
        args += ["--set", item]
    return [*args, *extra]


def environment(runs: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMTUNE_")}
    env.update(VLMTUNE_RUNS_DIR=str(runs), VLMTUNE_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1")
    return env


def adapter(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "final" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict:
    runs = tmp_path_factory.mktemp("reference")
    subprocess.run(command(), env=environment(runs, cache_dir), check=True, capture_output=True, cwd=runs)
    return adapter(runs / "smoke")


def _saving(run: Path) -> bool:
    """True while a checkpoint directory exists without its COMPLETE marker: the trainer is writing it."""
    return any(not (c / "COMPLETE").exists() for c in (run / "checkpoints").glob("checkpoint-*"))


@pytest.mark.parametrize("moment", ["during a checkpoint save", "at a random step"])
def test_kill_9_then_resume_equals_uninterrupted(moment: str, reference: dict, tmp_path: Path,
                                                 cache_dir: Path) -> None:
    import torch

    env = environment(tmp_path / "runs", cache_dir)
    run = tmp_path / "runs" / "smoke"
    victim = subprocess.Popen(command(), env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not (run / "checkpoints").exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if moment == "during a checkpoint save":
        # Skip the first save, then kill while a later one is being written.
        while victim.poll() is None and time.monotonic() < deadline and not (
                len(list((run / "checkpoints").glob("checkpoint-*"))) >= 2 and _saving(run)):
            time.sleep(0.002)
    else:
        time.sleep(random.Random(7).uniform(0.2, 1.5))
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    cut_short = _saving(run)
    complete = sorted((run / "checkpoints").glob("checkpoint-*/COMPLETE"))
    assert not (run / "final" / "COMPLETE").exists() or victim.returncode == 0
    resumed = subprocess.run(command(), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    if victim.returncode == 0:  # finished before the kill landed: nothing to resume, the run is refused as done
        assert resumed.returncode == 2 and "already holds a finished run" in resumed.stderr
    else:
        assert resumed.returncode == 0, resumed.stderr
        if cut_short:
            assert "skipping incomplete checkpoint" in resumed.stderr
        if complete:
            newest = max(complete, key=lambda p: int(p.parent.name.split("-")[1])).parent
            assert f"resuming from {newest}" in resumed.stderr.replace("\n", "")
    weights = adapter(run)
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[k], reference[k]) for k in reference)


def test_sigterm_saves_a_checkpoint_says_how_to_resume_and_resume_completes(reference: dict, tmp_path: Path,
                                                                            cache_dir: Path) -> None:
    import torch

    env = environment(tmp_path / "runs", cache_dir)
    run = tmp_path / "runs" / "smoke"
    victim = subprocess.Popen(command(), env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    deadline = time.monotonic() + 180
    while not list((run / "checkpoints").glob("checkpoint-*/COMPLETE")) and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGTERM)
    _, stderr = victim.communicate(timeout=120)
    if victim.returncode == 0:
        pytest.skip("training finished before SIGTERM landed")
    assert victim.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM at step" in stderr and "Resume with: vlmtune train" in stderr
    stopped_at = int(stderr.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert (run / "checkpoints" / f"checkpoint-{stopped_at}" / "COMPLETE").is_file(), "no checkpoint at the stop"
    assert not (run / "final").exists()
    resumed = subprocess.run(command(), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"checkpoint-{stopped_at} (step {stopped_at}" in resumed.stderr
    weights = adapter(run)
    assert all(torch.equal(weights[k], reference[k]) for k in reference)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(workspace: Path) -> None:
    from typer.testing import CliRunner

    from vlmtune_cli.cli import app

    args = ["train", str(RECIPES / "smoke.toml")]
    for item in (*RUN, "training.lr=1e30", "training.warmup_steps=0", "training.save_steps=1"):
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "the loss became" in result.stderr and "at step" in result.stderr
    step = int(result.stderr.split("at step ")[1].split(";")[0])
    assert "the last good checkpoint is" in result.stderr
    checkpoints = sorted(int(p.parent.name.split("-")[1]) for p in
                         (workspace / "runs" / "smoke" / "checkpoints").glob("checkpoint-*/COMPLETE"))
    assert checkpoints and max(checkpoints) == step - 1, (checkpoints, step)
    assert not (workspace / "runs" / "smoke" / "final").exists()
