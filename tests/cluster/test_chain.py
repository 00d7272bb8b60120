"""Job chains for real: `chain run` here, and `submit` / `chain status|resume|cancel` on a real SLURM cluster
(the local one from scripts/local-slurm.sh; tests marked `slurm` skip without it). Every chain must give the
same final weights, bitwise, as one uninterrupted `vlmtune train` planned for the same total epochs."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmtune_cli.cli import app

from ..conftest import RECIPES
from ..slurm_cluster import requires_slurm, sacct_state

pytestmark = pytest.mark.slow
runner = CliRunner()
slurm = [pytest.mark.slurm, requires_slurm]

# 24 samples → 19 train → 5 steps per epoch at batch 4; 1 epoch per link; a checkpoint every 3 steps.
TINY = [
    "data.num_samples=24",
    "data.max_samples=24",
    "chain.epochs_per_job=1",
    "training.save_steps=3",
    "training.save_total_limit=20",
    "training.eval_steps=100",
    "training.logging_steps=1",
]
JOBS = 3
_results: dict[str, dict] = {}


def sets(*items: str) -> list[str]:
    return sum((["--set", s] for s in (*TINY, *items)), [])


def assert_bitwise_equal(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


FULL = ["tuning.vision=full", "tuning.projector=full", "tuning.llm=frozen"]  # the v3 shape
_references: dict[tuple[str, ...], dict] = {}


def final_weights(run: Path) -> dict:
    """final/'s trained weights: the adapter (LoRA) or the whole model (full fine-tuning)."""
    from safetensors.torch import load_file

    adapter_file = run / "final" / "adapter_model.safetensors"
    return load_file(adapter_file if adapter_file.exists() else run / "final" / "model.safetensors")


def uninterrupted(cache_dir: Path, runs: Path, *tuning: str) -> dict:
    """One uninterrupted `vlmtune train` of the chain's effective recipe (training.epochs = 3 × 1), once per session."""
    if tuning not in _references:
        result = runner.invoke(
            app,
            ["train", str(RECIPES / "smoke.toml"), *sets(f"training.epochs={JOBS}", *tuning)],
            env={"VLMTUNE_RUNS_DIR": str(runs), "VLMTUNE_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1"},
        )
        assert result.exit_code == 0, result.output
        _references[tuning] = final_weights(runs / "smoke")
    return _references[tuning]


@pytest.fixture
def reference(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict:
    return uninterrupted(cache_dir, tmp_path_factory.mktemp("reference"))


def status(run: Path) -> dict:
    result = runner.invoke(app, ["chain", "status", str(run), "--json"])
    if result.exit_code != 0 and result.exc_info and not isinstance(result.exception, SystemExit):
        import traceback

        pytest.fail("".join(traceback.format_exception(*result.exc_info)))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def wait_finished(run: Path, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = status(run)
        if state["finished"]:
            return state
        if not any(link["active"] for link in state["links"]) and not state["finished"]:
            time.sleep(3)  # a requeue or the final save may be between two states
            state = status(run)
            if not state["finished"] and not any(link["active"] for link in state["links"]):
                pytest.fail(f"chain stopped unfinished: {json.dumps(state, indent=1)}")
        time.sleep(1)
    pytest.fail(f"chain not finished after {timeout} s: {json.dumps(status(run), indent=1)}")


def submit(*args: str) -> list[str]:
    result = runner.invoke(app, ["submit", str(RECIPES / "smoke.toml"), "--chain", str(JOBS), *sets(), *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["job_ids"]


# --- 1. a chain of 3 equals the uninterrupted run --------------------------------------------------


@pytest.mark.parametrize("tuning", [(), tuple(FULL)], ids=["lora", "full"])
@pytest.mark.slurm
@requires_slurm
def test_submitted_chain_of_three_equals_uninterrupted_run(
    workspace: Path, cache_dir: Path, tuning: tuple[str, ...]
) -> None:
    reference = uninterrupted(cache_dir, workspace / "reference", *tuning)
    job_ids = submit(*(arg for item in tuning for arg in ("--set", item)))
    run = workspace / "runs" / "smoke"
    manifest = json.loads((run / "chain.json").read_text())
    assert [link["job_id"] for link in manifest["links"]] == job_ids and manifest["total_epochs"] == JOBS
    assert "epochs = 3" in (run / "recipe.toml").read_text()
    state = wait_finished(run)
    assert [link["state"] for link in state["links"]] == ["COMPLETED"] * JOBS
    records = [json.loads((run / "chain-links" / f"link-{k}.json").read_text()) for k in (1, 2, 3)]
    assert [(r["epoch_start"], r["epoch_end"]) for r in records] == [(0, 1), (1, 2), (2, 3)]
    assert [r["job_id"] for r in records] == job_ids
    starts = [r["started"] for r in records]
    ends = [r["ended"] for r in records]
    assert ends[0] <= starts[1] and ends[1] <= starts[2], "links ran in order"
    deadline = time.monotonic() + 30  # the last job still exits after final/ is written
    while any(sacct_state(j) not in ("COMPLETED", "") for j in job_ids) and time.monotonic() < deadline:
        time.sleep(1)
    assert [sacct_state(j) for j in job_ids] in (["COMPLETED"] * JOBS, [""] * JOBS)
    weights = final_weights(run)
    assert_bitwise_equal(weights, reference)
    if not tuning:
        _results["slurm_chain"] = weights
    again = runner.invoke(app, ["submit", str(RECIPES / "smoke.toml"), "--chain", str(JOBS), *sets()])
    assert again.exit_code == 2 and "already has a chain" in again.stderr


# --- 2. the time limit hits mid-epoch --------------------------------------------------------------

# SLURM's shortest limit is one minute. vlmtune asks for USR2 15 s before it, and slurmctld checks limits every
# 30 s, so the signal lands 15-45 s into the job. The link is one epoch of single-sample steps sized, from a
# calibration run on this machine, to need ~50 s of training: its first attempt is always interrupted, and since
# the whole run is one epoch, always mid-epoch. The reference run tokenizes the data first, so the job spends its
# minute training rather than tokenizing.
TRAIN_SECONDS = 50
ONE_EPOCH = [
    "training.batch_size=1",
    "training.epochs=1",
    "chain.epochs_per_job=1",
    "training.save_steps=100000",
    "training.eval_steps=100000",
    "training.logging_steps=100",
]


def single_sample_steps_per_second() -> float:
    calibration = runner.invoke(
        app,
        ["train", str(RECIPES / "smoke.toml"), *sets(*ONE_EPOCH, "data.num_samples=200", "data.max_samples=200")],
        env={"VLMTUNE_RUNS_DIR": "calibration"},
    )
    assert calibration.exit_code == 0, calibration.output
    history = json.loads(Path("calibration/smoke/summary.json").read_text())["log_history"]
    return next(entry["train_steps_per_second"] for entry in history if "train_steps_per_second" in entry)


@pytest.mark.slurm
@requires_slurm
def test_time_limit_mid_epoch_checkpoints_requeues_and_still_equals_uninterrupted(workspace: Path) -> None:
    steps = int(TRAIN_SECONDS * single_sample_steps_per_second())
    samples = steps * 5 // 4  # 80 % of the synthetic samples are the train split
    long_run = [*ONE_EPOCH, f"data.num_samples={samples}", f"data.max_samples={samples}"]
    direct = runner.invoke(
        app, ["train", str(RECIPES / "smoke.toml"), *sets(*long_run)], env={"VLMTUNE_RUNS_DIR": "reference"}
    )
    assert direct.exit_code == 0, direct.output
    job = runner.invoke(
        app, ["submit", str(RECIPES / "smoke.toml"), "--chain", "1", "--time", "00:01:00", *sets(*long_run), "--json"]
    )
    assert job.exit_code == 0, job.output
    job_id = json.loads(job.stdout)["job_ids"][0]
    run = workspace / "runs" / "smoke"
    wait_finished(run, timeout=600)

    record = json.loads((run / "chain-links" / "link-1.json").read_text())
    attempts = [*record["history"], record]
    assert [a["state"] for a in attempts][-1] == "done"
    interrupted = [a for a in attempts if a["state"] == "interrupted"]
    assert interrupted, f"the time limit never interrupted the link: {attempts}"
    assert {a["job_id"] for a in attempts} == {job_id}, "requeued under the same job id"
    assert [a["attempt"] for a in attempts] == list(range(len(attempts))), "SLURM's restart count, one per requeue"
    for stop, after in zip(interrupted, attempts[1:], strict=False):
        assert 0 < stop["epoch_end"] < 1, f"stopped mid-epoch: {stop}"
        assert Path(stop["checkpoint"]).name == f"checkpoint-{stop['global_step']}", "a checkpoint at the stop"
        assert after["epoch_start"] == stop["epoch_end"], "the next attempt resumes where this one stopped"
    summaries = [json.loads((r / "summary.json").read_text()) for r in (run, workspace / "reference" / "smoke")]
    assert summaries[0]["global_step"] == summaries[1]["global_step"] >= steps - 1
    assert_bitwise_equal(final_weights(run), final_weights(workspace / "reference" / "smoke"))


# --- 3. cancelling link 2 --------------------------------------------------------------------------


@pytest.mark.slurm
@requires_slurm
def test_cancelled_link_stops_the_chain_and_resume_finishes_it(workspace: Path, reference: dict) -> None:
    job_ids = submit()
    run = workspace / "runs" / "smoke"
    subprocess.run(["scancel", job_ids[1]], check=True, timeout=10)
    started = time.monotonic()
    while True:
        links = status(run)["links"]
        if links[1]["state"] == "CANCELLED" and links[2]["state"] == "CANCELLED":
            break
        assert time.monotonic() - started < 15, links
        time.sleep(0.5)
    assert not (run / "chain-links" / "link-3.json").exists(), "link 3 must not run"
    table = runner.invoke(app, ["chain", "status", str(run)])
    assert table.exit_code == 0 and "CANCELLED" in table.stdout
    resumed = runner.invoke(app, ["chain", "resume", str(run)])
    assert resumed.exit_code == 0, resumed.output
    assert "resubmitted 2 links" in resumed.stdout
    manifest = json.loads((run / "chain.json").read_text())
    assert manifest["links"][0]["job_id"] == job_ids[0]
    assert [len(link["submissions"]) for link in manifest["links"]] == [1, 2, 2]
    state = wait_finished(run)
    assert [link["state"] for link in state["links"]] == ["COMPLETED"] * JOBS
    assert_bitwise_equal(final_weights(run), reference)
    nothing = runner.invoke(app, ["chain", "resume", str(run)])
    assert nothing.exit_code == 0 and "nothing to resume" in nothing.stdout


# --- 5. `chain run` here ---------------------------------------------------------------------------


def test_chain_run_here_equals_uninterrupted_and_submitted_chain(workspace: Path, reference: dict) -> None:
    result = runner.invoke(app, ["chain", "run", str(RECIPES / "smoke.toml"), "--jobs", str(JOBS), *sets()])
    assert result.exit_code == 0, result.output
    run = workspace / "runs" / "smoke"
    assert "step 6 · loss" in result.stderr and "resuming from" in result.stderr
    weights = final_weights(run)
    assert_bitwise_equal(weights, reference)
    if "slurm_chain" in _results:  # the SLURM chain of test 1, when it ran in this session
        assert_bitwise_equal(weights, _results["slurm_chain"])
    state = status(run)
    assert state["backend"] == "local" and [link["state"] for link in state["links"]] == ["COMPLETED"] * JOBS
    again = runner.invoke(app, ["chain", "run", str(RECIPES / "smoke.toml"), "--jobs", str(JOBS), *sets()])
    assert again.exit_code == 0, again.output  # every link already trained: nothing to do


def test_last_link_benchmarks_final_when_the_recipe_asks(workspace: Path) -> None:
    result = runner.invoke(
        app,
        [
            "chain",
            "run",
            str(RECIPES / "smoke.toml"),
            "--jobs",
            "2",
            *sets("chain.benchmark_at_end=true", "benchmark.limit=3", "benchmark.max_new_tokens=8"),
        ],
    )
    assert result.exit_code == 0, result.output
    run = workspace / "runs" / "smoke"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["samples"] == 3 and metrics["checkpoint"] == "final" and metrics["split"] == "test"
    assert len((run / "predictions.jsonl").read_text().splitlines()) == 3
    records = [json.loads((run / "chain-links" / f"link-{k}.json").read_text()) for k in (1, 2)]
    assert "benchmark" not in records[0], "only the last link benchmarks"
    assert records[1]["benchmark"] == str(run / "metrics.json")
    state = status(run)
    assert state["benchmark"] == {"metrics": str(run / "metrics.json")}
    table = runner.invoke(app, ["chain", "status", str(run)])
    assert "benchmark of final/: " in table.stdout


# --- bad input SLURM answers ----------------------------------------------------------------------


@pytest.mark.slurm
@requires_slurm
def test_slurm_refusals_are_passed_on_and_recorded(workspace: Path) -> None:
    bad = runner.invoke(app, ["submit", str(RECIPES / "smoke.toml"), "--partition", "nope"])
    assert bad.exit_code == 2, bad.output
    assert "invalid partition" in bad.stderr.lower() and "Traceback" not in bad.output
    manifest = json.loads((workspace / "runs" / "smoke" / "chain.json").read_text())
    assert manifest["links"][0]["error"] and manifest["links"][0]["job_id"] is None
    gpus = runner.invoke(app, ["submit", str(RECIPES / "smoke.toml"), "--gpus-per-node", "1"])
    assert gpus.exit_code == 2, gpus.output
    assert "generic resource" in gpus.stderr.lower() and "slurm.gpus_per_node" in gpus.stderr


# --- 4. two tasks: DDP over gloo ------------------------------------------------------------------


@pytest.mark.slurm
@requires_slurm
def test_two_task_job_trains_with_ddp_into_one_checkpoint(workspace: Path) -> None:
    result = runner.invoke(
        app,
        [
            "submit",
            str(RECIPES / "smoke.toml"),
            "--chain",
            "1",
            *sets("slurm.extra.ntasks_per_node=2", "slurm.cpus_per_task=1", "training.save_steps=100"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    run = workspace / "runs" / "smoke"
    wait_finished(run, timeout=180)
    record = json.loads((run / "chain-links" / "link-1.json").read_text())
    assert record["world_size"] == 2
    state = json.loads((run / "summary.json").read_text())
    assert state["global_step"] == 3, "19 samples at 2 × batch 4 per step: 3 steps, not 5"
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-3"] and (run / "checkpoints" / "checkpoint-3" / "COMPLETE").is_file()
    assert (run / "final" / "COMPLETE").is_file() and not (run / "final.partial").exists()


# --- 5. FSDP: two tasks per link, sharded checkpoints between links ----------------------------------


@pytest.mark.slurm
@requires_slurm
def test_two_link_fsdp_chain_of_two_tasks_equals_the_uninterrupted_fsdp_run(workspace: Path, cache_dir: Path) -> None:
    """Link 2 resumes link 1's sharded checkpoint (each rank its own shard, its own RNG state) and ends with the
    final/ weights of one uninterrupted 2-rank FSDP run planned for the same 2 epochs, bitwise."""
    from ..train.test_ranks import launch

    fsdp = ["training.strategy=fsdp", "slurm.extra.ntasks_per_node=2", "slurm.cpus_per_task=1"]
    reference_runs = workspace / "reference"
    args = ["-m", "vlmtune_cli", "train", str(RECIPES / "smoke.toml"), *sets(*fsdp, "training.epochs=2")]
    for number, rank in enumerate(launch(args, reference_runs, cache_dir)):
        assert rank.returncode == 0, f"reference rank {number}: exit {rank.returncode}\n{rank.stderr[-3000:]}"
    result = runner.invoke(app, ["submit", str(RECIPES / "smoke.toml"), "--chain", "2", *sets(*fsdp), "--json"])
    assert result.exit_code == 0, result.output
    run = workspace / "runs" / "smoke"
    state = wait_finished(run, timeout=300)
    assert [link["state"] for link in state["links"]] == ["COMPLETED"] * 2
    records = [json.loads((run / "chain-links" / f"link-{k}.json").read_text()) for k in (1, 2)]
    assert [r["world_size"] for r in records] == [2, 2]
    assert [(r["epoch_start"], r["epoch_end"]) for r in records] == [(0, 1), (1, 2)]
    between = run / "checkpoints" / "checkpoint-3"  # link 1's last: 19 samples at 2 ranks × batch 4, 3 steps
    assert sorted(p.name for p in (between / "pytorch_model_fsdp_0").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    assert (between / "COMPLETE").is_file() and not (between / "model.safetensors").exists()
    assert_bitwise_equal(final_weights(run), final_weights(reference_runs / "smoke"))
