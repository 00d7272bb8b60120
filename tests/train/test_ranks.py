"""Several ranks as SLURM starts them: N plain processes with env:// variables (`srun` does not kill the others
when one dies unless told to), so a rank that stops alone shows up as a hang, caught by a timeout.

Each run is the tiny smoke recipe for a few steps under 2 gloo processes (~20–40 s on 2 cores).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..conftest import RECIPES, REPO

pytestmark = pytest.mark.slow

# 16 samples → 13 train → 7 per rank: 2 steps per epoch at batch 4, 2 steps in all; a checkpoint after each.
FEW_STEPS = [
    "data.num_samples=16",
    "data.max_samples=16",
    "training.max_steps=2",
    "training.save_steps=1",
    "training.save_total_limit=50",
    "training.logging_steps=1",
    "training.eval_steps=100",
]
INJECT = Path(__file__).with_name("inject_faults.py")


@dataclass
class Rank:
    returncode: int | None
    stderr: str


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(
    args: list[str], runs: Path, cache: Path, *, nproc: int = 2, timeout: float = 90, env: dict[str, str] | None = None
) -> list[Rank]:
    """`args` run by `nproc` processes as srun would start them; returncode None for a rank still running at timeout
    (it is killed then)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("VLMTUNE_")}
    base.update(
        VLMTUNE_RUNS_DIR=str(runs),
        VLMTUNE_CACHE_DIR=str(cache),
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(REPO),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
        OMP_NUM_THREADS="1",
        **(env or {}),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, *args],
            env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
            cwd=runs.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(nproc)
    ]
    ranks = []
    for proc in procs:
        try:
            _, stderr = proc.communicate(timeout=timeout)
            ranks.append(Rank(proc.returncode, stderr))
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
            ranks.append(Rank(None, stderr))
    return ranks


def train_args(*extra: str, script: str | None = None) -> list[str]:
    args = [script] if script else ["-m", "vlmtune_cli"]
    args += ["train", str(RECIPES / "smoke.toml")]
    for item in (*FEW_STEPS, *extra):
        args += ["--set", item]
    return args


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def all_finite(checkpoint: Path) -> bool:
    from safetensors.torch import load_file

    return all(bool(t.isfinite().all()) for t in load_file(checkpoint / "adapter_model.safetensors").values())


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("loss", r"error: the loss became inf at step 2 on rank 1; training stopped before that step's update"),
        (
            "grad",
            r"error: the gradient norm became (nan|inf) at step 2 while the loss was finite; "
            r"training stopped before that step's update",
        ),
    ],
    ids=["loss", "grad"],
)
def test_a_non_finite_step_on_one_rank_stops_every_rank_before_the_update(
    fault: str, message: str, tmp_path: Path, cache_dir: Path
) -> None:
    runs = tmp_path / "runs"
    ranks = launch(
        train_args(script=str(INJECT)), runs, cache_dir, env={"VLMTUNE_TEST_FAULT": f"{fault}:1:2"}, timeout=90
    )
    for number, rank in enumerate(ranks):
        assert rank.returncode == 1, f"rank {number}: exit {rank.returncode}\n{rank.stderr[-3000:]}"
        text = one_line(rank.stderr)
        assert re.search(message, text), f"rank {number}:\n{rank.stderr[-3000:]}"
        assert f"the last good checkpoint is {runs / 'smoke' / 'checkpoints' / 'checkpoint-1'}" in text
    checkpoints = sorted(p.name for p in (runs / "smoke" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-1"], "nothing saved at or after the poisoned step"
    assert all_finite(runs / "smoke" / "checkpoints" / "checkpoint-1")
    assert not (runs / "smoke" / "final").exists()
