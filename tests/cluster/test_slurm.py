"""SLURM and chain logic that needs no cluster: sbatch scripts, parameter precedence, time limits, the chain plan,
the manifest (round trip, corruption), the run-directory lock, the stop-on-signal callback, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from vlmtune_cli.cli import app
from vlmtune_cli.cluster.chain import plan
from vlmtune_cli.cluster.records import new_manifest, read_manifest, trained_epochs, write_manifest
from vlmtune_cli.cluster.sbatch import SlurmFlags, sbatch_parameters, sbatch_script, time_to_seconds
from vlmtune_cli.config.recipe import load_recipe
from vlmtune_cli.config.settings import Settings, SlurmDefaults
from vlmtune_cli.errors import UsageError
from vlmtune_cli.runs import RunDir

from ..conftest import RECIPES

runner = CliRunner()
EXPECTED = Path(__file__).parent / "expected"
RICH = [
    "slurm.account=proj",
    "slurm.cpus_per_task=8",
    "slurm.mem=64G",
    "slurm.constraint=a100",
    "slurm.gpus_per_node=4",
    "slurm.nodes=2",
    "slurm.time=1-02:00:00",
    'slurm.extra.mail-type="END"',
]


def smoke(*overrides: str):
    return load_recipe(RECIPES / "smoke.toml", list(overrides), environ={})


def test_sbatch_script_of_a_dependent_link_matches_the_checked_in_file() -> None:
    recipe = smoke(*RICH)
    params = sbatch_parameters(
        recipe.slurm,
        Settings(slurm=SlurmDefaults(partition="gpu", qos="high")),
        SlurmFlags(),
        job_name="vlmtune-smoke-2of3",
        dependency="afterok:1234",
    )
    script = sbatch_script(params, Path("/runs/smoke/slurm"), python="/venv/bin/python")
    assert script == (EXPECTED / "sbatch_link2.sh").read_text()


def test_flags_beat_recipe_beat_workspace_defaults() -> None:
    settings = Settings(slurm=SlurmDefaults(partition="ws", account="ws-acct", qos="ws-qos"))
    recipe = smoke("slurm.partition=rec", "slurm.gpus_per_node=2")
    params = sbatch_parameters(recipe.slurm, settings, SlurmFlags(), job_name="j")
    assert (params["partition"], params["account"], params["qos"]) == ("rec", "ws-acct", "ws-qos")
    assert params["gpus_per_node"] == 2 and params["ntasks_per_node"] == 2, "one task per GPU"
    flags = SlurmFlags(partition="cli", time="00:30:00", nodes=3, gpus_per_node=0)
    params = sbatch_parameters(recipe.slurm, settings, flags, job_name="j")
    assert params["partition"] == "cli" and params["time"] == 30 and params["nodes"] == 3
    assert "gpus_per_node" not in params and params["ntasks_per_node"] == 1
    assert "dependency" not in params and "additional_parameters" not in params
    cpu_ddp = sbatch_parameters(smoke("slurm.extra.ntasks_per_node=2").slurm, Settings(), SlurmFlags(), job_name="j")
    assert cpu_ddp["ntasks_per_node"] == 2 and "additional_parameters" not in cpu_ddp


def test_gpu_jobs_get_cpu_and_memory_defaults_and_every_job_kills_its_ranks_on_a_bad_exit() -> None:
    gpu = sbatch_parameters(smoke("slurm.gpus_per_node=4").slurm, Settings(), SlurmFlags(), job_name="j")
    assert (gpu["cpus_per_task"], gpu["mem"]) == (8, "128G"), "8 cores and 32G per task (--mem is per node)"
    own = sbatch_parameters(
        smoke("slurm.gpus_per_node=2", "slurm.cpus_per_task=3", "slurm.mem=20G").slurm,
        Settings(),
        SlurmFlags(),
        job_name="j",
    )
    assert (own["cpus_per_task"], own["mem"]) == (3, "20G"), "the recipe wins"
    flag = sbatch_parameters(smoke().slurm, Settings(), SlurmFlags(gpus_per_node=1), job_name="j")
    assert (flag["cpus_per_task"], flag["mem"]) == (8, "32G")
    cpu = sbatch_parameters(smoke().slurm, Settings(), SlurmFlags(), job_name="j")
    assert "cpus_per_task" not in cpu and "mem" not in cpu, "CPU-only jobs keep the cluster's defaults"
    for params in (gpu, own, flag, cpu):
        script = sbatch_script(params, Path("/runs/x/slurm"), python="/venv/bin/python")
        srun = [line for line in script.splitlines() if line.startswith("srun ")]
        assert len(srun) == 1 and " --kill-on-bad-exit=1 " in srun[0]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("04:00:00", 4 * 3600),
        ("10", 600),
        ("1:30", 90),
        ("2-00", 2 * 86400),
        ("1-02:03", 86400 + 7200 + 180),
        ("1-02:03:04", 86400 + 7200 + 180 + 4),
    ],
)
def test_slurm_time_forms(text: str, seconds: int) -> None:
    assert time_to_seconds(text) == seconds


@pytest.mark.parametrize("text", ["abc", "1:2:3:4", "", "-1", "0", "1h"])
def test_malformed_time_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        time_to_seconds(text)


def test_chain_plan_sets_total_epochs() -> None:
    recipe = plan(smoke("chain.epochs_per_job=2"), 5)
    assert recipe.training.epochs == 10 and recipe.chain.total_jobs == 5
    assert plan(smoke(), None).training.epochs == 4  # smoke: 2 jobs × 2 epochs
    with pytest.raises(UsageError):
        plan(smoke(), 0)


def test_manifest_round_trip_and_corruption(tmp_path: Path) -> None:
    recipe = plan(smoke(), 3)
    run = RunDir(tmp_path / "smoke")
    run.path.mkdir()
    manifest = new_manifest(recipe, run, "slurm", RECIPES / "smoke.toml", ["vlmtune", "submit"], {"time": "1:00"})
    write_manifest(run.path, manifest)
    assert read_manifest(run.path) == manifest
    assert [link["stop_at_epoch"] for link in manifest["links"]] == [2, 4, None]
    assert not list(run.path.glob(".chain.json.*")), "no temporary file left behind"
    for corrupt in (
        "{not json",
        json.dumps([1, 2]),
        json.dumps({**manifest, "format": 99}),
        json.dumps({**manifest, "links": manifest["links"][:2]}),
    ):
        (run.path / "chain.json").write_text(corrupt)
        with pytest.raises(UsageError, match="is corrupt"):
            read_manifest(run.path)


def test_corrupt_manifest_on_the_command_line(workspace: Path) -> None:
    run = workspace / "runs" / "smoke"
    run.mkdir(parents=True)
    (run / "chain.json").write_text('{"format": 1, "links": [')
    for command in (["chain", "status", str(run)], ["chain", "resume", str(run)], ["chain", "cancel", str(run)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert "is corrupt" in result.stderr and "Traceback" not in result.output
    missing = runner.invoke(app, ["chain", "status", str(workspace)])
    assert missing.exit_code == 2 and "has no chain" in missing.stderr


def test_bad_submit_input(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = str(RECIPES / "smoke.toml")
    zero = runner.invoke(app, ["submit", recipe, "--chain", "0"])
    assert zero.exit_code == 2 and "at least one job" in zero.stderr
    bad_time = runner.invoke(app, ["submit", recipe, "--time", "ten minutes", "--dry-run"])
    assert bad_time.exit_code == 2 and "not a SLURM time limit" in bad_time.stderr
    no_jobs = runner.invoke(app, ["chain", "run", recipe, "--jobs", "0"])
    assert no_jobs.exit_code == 2
    no_recipe = runner.invoke(app, ["submit"])
    assert no_recipe.exit_code == 2 and "no recipe given" in no_recipe.stderr
    monkeypatch.setenv("PATH", str(workspace))  # no sbatch here
    no_sbatch = runner.invoke(app, ["submit", recipe])
    assert no_sbatch.exit_code == 2 and "no `sbatch` on PATH" in no_sbatch.stderr
    assert "vlmtune chain run" in no_sbatch.stderr and "Traceback" not in no_sbatch.output
    dry = runner.invoke(app, ["submit", recipe, "--chain", "3", "--dry-run"])  # needs no SLURM
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.count("#!/bin/bash") == 3 and dry.stdout.count("--kill-on-invalid-dep=yes") == 2
    assert not (workspace / "runs").exists(), "a dry run writes nothing"


def test_two_trainings_cannot_hold_one_run_directory(tmp_path: Path) -> None:
    from vlmtune_cli.train.run_lock import run_dir_lock

    run = RunDir(tmp_path / "runs" / "smoke")
    with run_dir_lock(run):
        with pytest.raises(UsageError, match="is being trained by pid"):
            with run_dir_lock(run):
                pass
    with run_dir_lock(run):  # released: the next one gets it
        pass


def test_stop_request_saves_and_stops_at_the_step_end() -> None:
    from transformers import TrainerControl

    from vlmtune_cli.train.callbacks import StopOnRequest, clear_stop_request, request_stop

    callback, args = StopOnRequest(), SimpleNamespace(world_size=1)
    control = callback.on_step_end(args, None, TrainerControl())
    assert not control.should_save and not control.should_training_stop
    request_stop()
    try:
        control = callback.on_step_end(args, None, TrainerControl())
        assert control.should_save and control.should_training_stop
    finally:
        clear_stop_request()


def test_a_link_pickled_before_the_wings_still_loads() -> None:
    """submitit pickles of chains queued before the restructure name `vlmtune_cli.slurm.ChainLink`: they must load
    (and requeue) as the link of today. The file was written by the code of the commit before the move."""
    import pickle

    from vlmtune_cli.cluster.link import ChainLink, LinkSpec

    delayed = pickle.loads((EXPECTED / "chainlink-before-wings.pkl").read_bytes())
    assert type(delayed.function) is ChainLink and type(delayed.function.spec) is LinkSpec
    assert delayed.function.spec.link == 2 and delayed.function.spec.stop_at_epoch == 2
    again = delayed.function.checkpoint()
    assert type(again.function) is ChainLink and again.function.spec == delayed.function.spec


def test_a_step_budget_is_refused_for_a_chain(workspace: Path) -> None:
    with pytest.raises(UsageError, match=r"training.max_steps = 5 cannot be combined with a chain"):
        plan(smoke("training.max_steps=5"), 2)
    for command in (["submit", "--dry-run"], ["chain", "run"]):
        result = runner.invoke(app, [*command, str(RECIPES / "smoke.toml"), "--set", "training.max_steps=5"])
        assert result.exit_code == 2, result.output
        assert "cannot be combined with a chain, which plans in epochs" in result.stderr
        assert "--unset training.max_steps" in result.stderr
    assert not (workspace / "runs").exists(), "nothing was started"


def test_status_counts_the_epochs_a_finished_run_trained(tmp_path: Path) -> None:
    """A run that ended before its plan (1.5 of 4 epochs) is not reported as 4 of 4."""
    run = RunDir(tmp_path / "smoke")
    (run.final).mkdir(parents=True)
    (run.final / "COMPLETE").write_text("{}")
    (run.summary_file).write_text(json.dumps({"epoch": 1.5, "global_step": 3}))
    assert trained_epochs(run, 4) == (1.5, None)
    (run.summary_file).write_text(json.dumps({"epoch": 4.0, "global_step": 8}))
    assert trained_epochs(run, 4) == (4.0, None)


def test_chain_run_hints_name_what_chain_run_can_do(workspace: Path) -> None:
    """`chain run` has no --overwrite: its hints must not suggest one."""
    from vlmtune_cli.config.recipe import dump_recipe

    run = workspace / "runs" / "smoke"
    run.mkdir(parents=True)
    (run / "recipe.toml").write_text(dump_recipe(smoke("training.lr=0.1")))
    result = runner.invoke(app, ["chain", "run", str(RECIPES / "smoke.toml")])
    assert result.exit_code == 2, result.output
    assert "holds a run of a different recipe" in result.stderr and "--overwrite" not in result.stderr
    assert f"delete {Path('runs') / 'smoke'}" in result.stderr.replace(str(workspace) + "/", "")
