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

from ..conftest import RECIPES, REPO

pytestmark = pytest.mark.slow

# 24 samples → 19 train → 5 steps per epoch; 4 epochs = 20 steps; a checkpoint every 2 steps.
RUN = [
    "data.num_samples=24",
    "data.max_samples=24",
    "training.epochs=4",
    "training.save_steps=2",
    "training.save_total_limit=50",
    "training.eval_steps=100",
    "training.logging_steps=1",
]


# 16 samples → 13 train → 4 steps per epoch; 3 steps, a checkpoint after each.
TINY = [
    "data.num_samples=16",
    "data.max_samples=16",
    "training.max_steps=3",
    "training.save_steps=1",
    "training.eval_steps=100",
    "training.logging_steps=1",
]


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
def test_kill_9_then_resume_equals_uninterrupted(moment: str, reference: dict, tmp_path: Path, cache_dir: Path) -> None:
    import torch

    env = environment(tmp_path / "runs", cache_dir)
    run = tmp_path / "runs" / "smoke"
    victim = subprocess.Popen(command(), env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not (run / "checkpoints").exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if moment == "during a checkpoint save":
        # Skip the first save, then kill while a later one is being written.
        while (
            victim.poll() is None
            and time.monotonic() < deadline
            and not (len(list((run / "checkpoints").glob("checkpoint-*"))) >= 2 and _saving(run))
        ):
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


def test_sigterm_saves_a_checkpoint_says_how_to_resume_and_resume_completes(
    reference: dict, tmp_path: Path, cache_dir: Path
) -> None:
    import torch

    env = environment(tmp_path / "runs", cache_dir)
    run = tmp_path / "runs" / "smoke"
    victim = subprocess.Popen(
        command(), env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
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
    checkpoints = sorted(
        int(p.parent.name.split("-")[1])
        for p in (workspace / "runs" / "smoke" / "checkpoints").glob("checkpoint-*/COMPLETE")
    )
    assert checkpoints and max(checkpoints) == step - 1, (checkpoints, step)
    assert not (workspace / "runs" / "smoke" / "final").exists()


@pytest.fixture
def tiny_filesystem(tmp_path: Path):
    """A real 1.3 MB file system (tmpfs): room for two checkpoints of the smoke run, not three."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1300k", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_during_a_save_keeps_the_previous_checkpoint_and_says_so(
    tiny_filesystem: Path, tmp_path: Path, cache_dir: Path, reference: dict
) -> None:
    import torch

    env = environment(tiny_filesystem, cache_dir)
    failed = subprocess.run(command(), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1, failed.stderr
    assert "error: the disk is full while training into" in failed.stderr
    assert "Traceback" not in failed.stderr
    run = tiny_filesystem / "smoke"
    complete = [p.parent for p in (run / "checkpoints").glob("checkpoint-*/COMPLETE")]
    assert complete, "the checkpoint before the full disk must survive"
    newest = max(complete, key=lambda p: int(p.name.split("-")[1]))
    assert f"it resumes from {newest}" in failed.stderr.replace("\n", "")
    assert not (run / "final" / "COMPLETE").exists()
    # Make room (as the hint says) by moving the run to a roomy disk; resuming finishes it with the same weights.
    roomy = tmp_path / "roomy"
    roomy.mkdir()
    subprocess.run(["cp", "-a", str(run), str(roomy)], check=True)
    resumed = subprocess.run(
        command(), env=environment(roomy, cache_dir), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {roomy / 'smoke' / 'checkpoints' / newest.name}" in resumed.stderr.replace("\n", "")
    weights = adapter(roomy / "smoke")
    assert all(torch.equal(weights[k], reference[k]) for k in reference)


def test_second_trainer_on_the_same_run_directory_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    env = environment(tmp_path / "runs", cache_dir)
    long_run = command("--set", "training.epochs=2000")  # outlives the second process's start-up on any machine
    first = subprocess.Popen(long_run, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "runs" / "smoke" / "recipe.toml").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run(long_run, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert (
            "is being trained by pid" in second.stderr
            and "two trainings cannot write one run directory" in second.stderr
        )
    finally:
        first.kill()
        first.wait()
    # The kernel dropped the dead holder's lock: the next train is not stuck.
    again = subprocess.run(command("--overwrite"), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr


def test_unwritable_runs_dir_is_a_message(workspace: Path) -> None:
    from typer.testing import CliRunner

    from vlmtune_cli.cli import app

    (workspace / "file").write_text("not a folder")
    result = CliRunner().invoke(
        app, ["train", str(RECIPES / "smoke.toml")], env={"VLMTUNE_RUNS_DIR": str(workspace / "file" / "runs")}
    )
    assert result.exit_code == 2, result.output
    assert "cannot write to runs_dir" in result.stderr and "VLMTUNE_RUNS_DIR" in result.stderr


def test_secrets_in_the_environment_never_reach_the_run_directory(tmp_path: Path, cache_dir: Path) -> None:
    secret = "sk-FAKE-SECRET-7f3a9c"
    env = environment(tmp_path / "runs", cache_dir)
    env.update(WANDB_API_KEY=secret, HF_TOKEN=f"hf_{secret}", AWS_SECRET_ACCESS_KEY=secret)
    done = subprocess.run(
        command("--set", "training.epochs=1"), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    dry = subprocess.run(
        [sys.executable, "-m", "vlmtune_cli", "submit", str(RECIPES / "smoke.toml"), "--dry-run"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert secret not in dry.stdout + dry.stderr
    leaks = [str(p) for p in (tmp_path / "runs").rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaks == []
    assert secret not in done.stdout + done.stderr


def test_with_save_total_limit_1_a_kill_before_the_new_checkpoint_is_marked_keeps_the_old_one(
    tmp_path: Path, cache_dir: Path
) -> None:
    """Trainer deleted the older checkpoints before the new one was marked complete: a kill in between left none."""
    inject = Path(__file__).with_name("inject_faults.py")
    env = {**environment(tmp_path / "runs", cache_dir), "VLMTUNE_TEST_FAULT": "kill:0:2"}
    env["PYTHONPATH"] = str(REPO)
    args = ["train", str(RECIPES / "smoke.toml")]
    for item in (*TINY, "training.save_total_limit=1"):
        args += ["--set", item]
    killed = subprocess.run(
        [sys.executable, str(inject), *args], env=env, cwd=tmp_path, capture_output=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    checkpoints = tmp_path / "runs" / "smoke" / "checkpoints"
    assert (checkpoints / "checkpoint-2").is_dir() and not (checkpoints / "checkpoint-2" / "COMPLETE").exists()
    assert (checkpoints / "checkpoint-1" / "COMPLETE").is_file(), "the older complete checkpoint is still there"
    del env["VLMTUNE_TEST_FAULT"]
    resumed = subprocess.run(
        [sys.executable, "-m", "vlmtune_cli", *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    text = " ".join(resumed.stderr.split())
    assert f"resuming from {checkpoints / 'checkpoint-1'}" in text
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-3"], "rotated after marking, to 1"
    assert (checkpoints / "checkpoint-3" / "COMPLETE").is_file()
