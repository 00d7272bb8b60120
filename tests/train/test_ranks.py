"""Several ranks as SLURM starts them: N plain processes with env:// variables (`srun` does not kill the others
when one dies unless told to), so a rank that stops alone shows up as a hang, caught by a timeout.

Each run is the tiny smoke recipe for a few steps under 2 gloo processes (~20–40 s on 2 free cores). The timeout
(300 s) is a hang detector, generous because the test machine is shared.
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
# A chain plans in epochs and refuses a step budget.
CHAIN_FEW_STEPS = [item for item in FEW_STEPS if not item.startswith("training.max_steps")]
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
    args: list[str],
    runs: Path,
    cache: Path,
    *,
    nproc: int = 2,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    rank_env: dict[int, dict[str, str]] | None = None,
) -> list[Rank]:
    """`args` run by `nproc` processes as srun would start them; returncode None for a rank still running at timeout
    (it is killed then). `rank_env` adds variables for single ranks, e.g. another VLMTUNE_RUNS_DIR standing for
    that rank's (stale) view of the shared run directory."""
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
            env={**base, "RANK": str(r), "LOCAL_RANK": str(r), **(rank_env or {}).get(r, {})},
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


def assert_stopped_at_step_2(ranks: list[Rank], runs: Path, message: str) -> None:
    for number, rank in enumerate(ranks):
        assert rank.returncode == 1, f"rank {number}: exit {rank.returncode}\n{rank.stderr[-3000:]}"
        text = one_line(rank.stderr)
        assert re.search(message, text), f"rank {number}:\n{rank.stderr[-3000:]}"
        assert f"the last good checkpoint is {runs / 'smoke' / 'checkpoints' / 'checkpoint-1'}" in text
    checkpoints = sorted(p.name for p in (runs / "smoke" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-1"], "nothing saved at or after the poisoned step"
    assert (runs / "smoke" / "checkpoints" / "checkpoint-1" / "COMPLETE").is_file()
    assert all_finite(runs / "smoke" / "checkpoints" / "checkpoint-1")
    assert not (runs / "smoke" / "final").exists()


@pytest.fixture(scope="module")
def stopped_by_an_infinite_loss(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, list[Rank]]:
    """A 2-rank run whose loss is infinite on rank 1 at step 2 (shared: the resume test goes on from it)."""
    runs = tmp_path_factory.mktemp("infinite-loss") / "runs"
    ranks = launch(train_args(script=str(INJECT)), runs, cache_dir, env={"VLMTUNE_TEST_FAULT": "loss:1:2"})
    return runs, ranks


def test_an_infinite_loss_on_one_rank_stops_every_rank_before_the_update(
    stopped_by_an_infinite_loss: tuple[Path, list[Rank]],
) -> None:
    runs, ranks = stopped_by_an_infinite_loss
    assert_stopped_at_step_2(
        ranks, runs, r"error: the loss became inf at step 2 on rank 1; training stopped before that step's update"
    )


def test_an_infinite_gradient_with_a_finite_loss_stops_every_rank_before_the_update(
    tmp_path: Path, cache_dir: Path
) -> None:
    runs = tmp_path / "runs"
    ranks = launch(train_args(script=str(INJECT)), runs, cache_dir, env={"VLMTUNE_TEST_FAULT": "grad:1:2"})
    assert_stopped_at_step_2(
        ranks,
        runs,
        r"error: the gradient norm became (nan|inf) at step 2 while the loss was finite; "
        r"training stopped before that step's update",
    )


# --- decisions read from the shared file system are rank 0's ------------------------------------------
# Rank 1 gets its own VLMTUNE_RUNS_DIR: its view of the run directory, as a node with a stale NFS cache sees it.


def finished_run(runs: Path, *overrides: str, chain: bool = False) -> Path:
    """A run directory holding a finished run of the smoke recipe (no training: the marker is what counts)."""
    from vlmtune_cli.cluster.chain import plan
    from vlmtune_cli.cluster.records import new_manifest, write_manifest
    from vlmtune_cli.config.recipe import load_recipe
    from vlmtune_cli.runs import mark_complete, prepare_run_dir, run_dir_for

    recipe = load_recipe(RECIPES / "smoke.toml", [*(CHAIN_FEW_STEPS if chain else FEW_STEPS), *overrides], environ={})
    if chain:
        recipe = plan(recipe, None)
    run = run_dir_for(recipe, runs)
    prepare_run_dir(run, recipe, overwrite=False)
    if chain:
        write_manifest(run.path, new_manifest(recipe, run, "local", RECIPES / "smoke.toml", []))
    run.final.mkdir()
    (run.final / "kept").write_text("rank 0 did not delete this\n")
    mark_complete(run.final)
    return run.path


def test_a_finished_run_only_rank_0_can_see_is_refused_on_every_rank(tmp_path: Path, cache_dir: Path) -> None:
    mine = finished_run(tmp_path / "rank0")
    ranks = launch(
        train_args(), tmp_path / "rank0", cache_dir, rank_env={1: {"VLMTUNE_RUNS_DIR": str(tmp_path / "rank1")}}
    )
    for number, rank in enumerate(ranks):
        assert rank.returncode == 2, f"rank {number}: exit {rank.returncode}\n{rank.stderr[-3000:]}"
        assert f"error: {mine} already holds a finished run of this recipe" in one_line(rank.stderr)
    assert not (tmp_path / "rank1").exists(), "rank 1 wrote nothing"


def test_overwrite_deletes_the_run_directory_on_rank_0_only(tmp_path: Path, cache_dir: Path) -> None:
    mine = finished_run(tmp_path / "rank0")
    theirs = finished_run(tmp_path / "rank1")
    # --resume after --overwrite: rank 0 deletes, then finds no checkpoint and says so; no training needed.
    ranks = launch(
        [*train_args(), "--overwrite", "--resume"],
        tmp_path / "rank0",
        cache_dir,
        rank_env={1: {"VLMTUNE_RUNS_DIR": str(tmp_path / "rank1")}},
    )
    for number, rank in enumerate(ranks):
        assert rank.returncode == 2, f"rank {number}: exit {rank.returncode}\n{rank.stderr[-3000:]}"
        assert f"error: --resume: {mine} has no complete checkpoint to resume from" in one_line(rank.stderr)
    assert not (mine / "final").exists() and (mine / "recipe.toml").is_file() and (mine / "env.json").is_file()
    assert (theirs / "final" / "kept").is_file(), "rank 1 deleted its view of the run directory"


def test_the_checkpoint_to_resume_is_rank_0s_choice(
    stopped_by_an_infinite_loss: tuple[Path, list[Rank]], tmp_path: Path, cache_dir: Path
) -> None:
    import json
    import shutil

    stopped, _ = stopped_by_an_infinite_loss
    mine, theirs = tmp_path / "rank0", tmp_path / "rank1"
    shutil.copytree(stopped, mine)
    shutil.copytree(stopped, theirs)
    (theirs / "smoke" / "checkpoints" / "checkpoint-1" / "COMPLETE").unlink()  # not yet visible on rank 1's node
    ranks = launch(train_args(), mine, cache_dir, rank_env={1: {"VLMTUNE_RUNS_DIR": str(theirs)}})
    for number, rank in enumerate(ranks):
        assert rank.returncode == 0, f"rank {number}: exit {rank.returncode}\n{rank.stderr[-3000:]}"
    summary = json.loads((mine / "smoke" / "summary.json").read_text())
    assert summary["resumed_from"] == str(mine / "smoke" / "checkpoints" / "checkpoint-1")
    assert summary["global_step"] == 2 and summary["finished"] is True
    assert (mine / "smoke" / "final" / "COMPLETE").is_file()


def test_a_chain_link_only_rank_0_sees_trained_is_done_on_every_rank(tmp_path: Path, cache_dir: Path) -> None:
    finished_run(tmp_path / "rank0", "chain.benchmark_at_end=false", chain=True)
    args = ["-m", "vlmtune_cli", "chain", "run", str(RECIPES / "smoke.toml")]
    for item in (*CHAIN_FEW_STEPS, "chain.benchmark_at_end=false"):
        args += ["--set", item]
    ranks = launch(args, tmp_path / "rank0", cache_dir, rank_env={1: {"VLMTUNE_RUNS_DIR": str(tmp_path / "rank1")}})
    for number, rank in enumerate(ranks):
        assert rank.returncode == 0, f"rank {number}: exit {rank.returncode}\n{rank.stderr[-3000:]}"
    assert not (tmp_path / "rank1").exists(), "rank 1 neither prepared nor trained anything"


def test_two_ranks_train_an_llm_only_tuning_without_the_unused_parameter_walk(tmp_path: Path, cache_dir: Path) -> None:
    """The common LoRA tuning (language model only) trains under DDP with find_unused_parameters False, and only
    rank 0 writes a TensorBoard event file."""
    import torch

    runs = tmp_path / "runs"
    ranks = launch(train_args("tuning.vision=frozen", "tuning.projector=frozen", "tuning.llm=lora"), runs, cache_dir)
    for number, rank in enumerate(ranks):
        assert rank.returncode == 0, f"rank {number}: exit {rank.returncode}\n{rank.stderr[-3000:]}"
    run = runs / "smoke"
    assert (run / "final" / "COMPLETE").is_file()
    args = torch.load(run / "checkpoints" / "checkpoint-2" / "training_args.bin", weights_only=False)
    assert args.ddp_find_unused_parameters is False and args.world_size == 2
    events = sorted(p.name for p in (run / "logs").rglob("events.out.tfevents.*"))
    assert len(events) == 1, events
