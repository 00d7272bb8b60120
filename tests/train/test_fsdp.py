"""`training.strategy = "fsdp"` over 2 gloo processes: the same weights as one process and as DDP, sharded
checkpoints that resume exactly, `final/` as ordinary safetensors.

Every run of the matrix trains the same 8 samples in 3 optimizer steps of all 8 (one process: batch 1 × 8
accumulated; two ranks: batch 1 × 4 each), so the three set-ups see the same samples in every step whatever order
their samplers draw them in. If any set-up failed to clear its gradients after a step, its second and third updates
would differ from the others' and the comparison would fail (FSDP replaces every parameter when it shards the model:
a list of them taken before would clear stale gradients, see sft_trainer.py).
"""

from __future__ import annotations

import functools
import json
import re
import shutil
from pathlib import Path

import pytest

from ..conftest import RECIPES
from .test_ranks import launch, one_line

pytestmark = pytest.mark.slow

SAMPLES = 8  # the train split of 10 samples at split_ratio 0.8
SETTINGS = [
    "data.num_samples=10",
    "data.max_samples=10",
    "training.max_steps=3",
    "training.save_steps=1",
    "training.save_total_limit=50",
    "training.logging_steps=1",
    "training.eval_steps=100",
    "training.batch_size=1",
]
TUNINGS = {
    "lora": [],  # the smoke recipes' own: LoRA on vision, projector and language model
    "full": ["tuning.vision=full", "tuning.projector=full", "tuning.llm=full"],
    # All three modes at once, inside the same FSDP units: PEFT's modules_to_save beside adapters and frozen weights.
    "mixed": ["tuning.vision=full", "tuning.projector=frozen", "tuning.llm=lora"],
}
RECIPE_FILES = {
    "qwen2-vl": "smoke.toml",
    "mllama": "smoke-mllama.toml",
    "qwen2.5-vl": "smoke-qwen2.5-vl.toml",
    "qwen3-vl": "smoke-qwen3-vl.toml",
    "gemma3": "smoke-gemma3.toml",
    "qwen3.5": "smoke-qwen3.5.toml",
}
RELATIVE = 1e-5
# A key projection's bias adds the same amount to every attention score of a query, which softmax cancels: its
# gradient is zero up to rounding, and AdamW turns that rounding noise into lr-sized steps that differ from set-up to
# set-up (1e-4 relative here between one process and two ranks). Nothing about sharding can be read off them.
ZERO_GRADIENT = re.compile(r"\.k_proj\.bias$")


def train_args(recipe: str, tuning: str, nproc: int, strategy: str, *extra: str) -> list[str]:
    items = [*SETTINGS, *TUNINGS[tuning], f"training.grad_accum={SAMPLES // nproc}", f"training.strategy={strategy}"]
    items += extra
    return ["-m", "vlmtune_cli", "train", str(RECIPES / RECIPE_FILES[recipe])] + [
        a for item in items for a in ("--set", item)
    ]


@functools.cache
def _trained(root: Path, cache: Path, recipe: str, tuning: str, setup: str, *extra: str) -> Path:
    """The run directory of `recipe` with `tuning` trained by `setup`: "one" (the fsdp recipe in one process, which
    ignores the strategy), "ddp" or "fsdp" (2 ranks). Rank 0's stderr is kept next to it (`rank0.stderr`)."""
    nproc, strategy = (1, "fsdp") if setup == "one" else (2, setup)
    runs = root / "-".join((recipe, tuning, setup, *extra)).replace("=", "_")
    ranks = launch(train_args(recipe, tuning, nproc, strategy, *extra), runs, cache, nproc=nproc)
    for number, rank in enumerate(ranks):
        assert rank.returncode == 0, f"{runs} rank {number}: exit {rank.returncode}\n{rank.stderr[-4000:]}"
    (runs / "rank0.stderr").write_text(ranks[0].stderr)
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    return run


def rank0_says(run: Path) -> str:
    return one_line((run.parent / "rank0.stderr").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):
    root = tmp_path_factory.mktemp("fsdp")
    return functools.partial(_trained, root, cache_dir)


def final_weights(run: Path) -> dict:
    assert (run / "final" / "COMPLETE").is_file()
    weights = final_weights_of(run / "final")
    assert weights, f"no safetensors in {run / 'final'}"
    return weights


def largest_relative_difference(a: dict, b: dict) -> tuple[float, str]:
    """The largest ‖a − b‖ / ‖b‖ over the tensors both hold (the same names), and which tensor it is."""
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:5]
    worst, where = 0.0, ""
    for name in a:
        if ZERO_GRADIENT.search(name):
            continue
        x, y = a[name].double(), b[name].double()
        assert x.shape == y.shape, name
        difference = (x - y).norm().item() / max(y.norm().item(), 1e-12)
        if difference > worst:
            worst, where = difference, name
    return worst, where


@pytest.mark.parametrize("tuning", ["lora", "full"])
@pytest.mark.parametrize("recipe", ["qwen2-vl", "mllama"])
def test_fsdp_trains_the_weights_of_one_process_and_of_ddp(trained, recipe: str, tuning: str) -> None:
    fsdp = trained(recipe, tuning, "fsdp")
    sharded = fsdp / "checkpoints" / "checkpoint-3"
    assert (sharded / "pytorch_model_fsdp_0" / ".metadata").is_file() and (sharded / "optimizer_0").is_dir()
    assert sorted(p.name for p in (sharded / "pytorch_model_fsdp_0").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    weights = final_weights(fsdp)
    for setup in ("one", "ddp"):
        other = final_weights(trained(recipe, tuning, setup))
        difference, where = largest_relative_difference(weights, other)
        print(f"{recipe} {tuning}: FSDP vs {setup}: {difference:.2e} ({where})")
        assert difference <= RELATIVE, f"FSDP vs {setup}: {where} differs by {difference:.2e} (relative)"
    summary = json.loads((fsdp / "summary.json").read_text())
    assert summary["global_step"] == 3 and summary["finished"] is True
    assert "sharding: FSDP2 over 2 ranks" in rank0_says(fsdp) and "sharding:" not in rank0_says(
        trained(recipe, tuning, "ddp")
    )
    assert 'training.strategy = "fsdp" in a single process: nothing to shard' in rank0_says(
        trained(recipe, tuning, "one")
    )


def overall_relative_difference(a: dict, b: dict) -> float:
    """‖a − b‖ / ‖b‖ over all the weights at once (key biases excepted, see ZERO_GRADIENT)."""
    names = [name for name in b if not ZERO_GRADIENT.search(name)]
    apart = sum((a[n].double() - b[n].double()).norm().item() ** 2 for n in names)
    return (apart / sum(b[n].double().norm().item() ** 2 for n in names)) ** 0.5


@pytest.mark.parametrize("recipe", ["qwen2.5-vl", "qwen3-vl", "gemma3", "qwen3.5"])
def test_every_other_family_trains_a_mixed_tuning_under_fsdp_to_the_weights_of_one_process(
    trained, recipe: str
) -> None:
    """The other families' units (families.py `fsdp_blocks`) with frozen, LoRA and full components in one run.

    Over all weights at once within 1e-6; tensor by tensor within 1e-4 only: on Qwen3-VL and Qwen3.5 a single
    element of a small LoRA B matrix (32 or 512 elements) has a gradient near AdamW's epsilon, where AdamW turns
    rounding noise into a visible part of an lr-sized step: 2e-5 of that tensor's norm between one process and
    FSDP, 7e-6 between one process and DDP, while all weights together agree within 3e-7.
    """
    fsdp, one = final_weights(trained(recipe, "mixed", "fsdp")), final_weights(trained(recipe, "mixed", "one"))
    overall = overall_relative_difference(fsdp, one)
    per_tensor, where = largest_relative_difference(fsdp, one)
    print(f"{recipe} mixed: FSDP vs one: {overall:.1e} overall, {per_tensor:.1e} in {where}")
    assert overall <= RELATIVE / 10 and per_tensor <= 10 * RELATIVE, (overall, per_tensor, where)


def test_training_moved_every_weight_far_beyond_the_tolerance(trained, cache_dir: Path) -> None:
    """The equality above says something only if each weight moved well beyond it: every one of them trains here."""
    from vlmtune_cli.models.loading import resolve_model_path

    trained_weights = final_weights(trained("qwen2-vl", "full", "fsdp"))
    original = final_weights_of(Path(resolve_model_path("builtin:tiny-qwen2-vl", cache_dir)))
    assert set(original) == set(trained_weights)
    still = [
        name
        for name in original
        if not ZERO_GRADIENT.search(name)
        and largest_relative_difference({name: original[name]}, {name: trained_weights[name]})[0] < 100 * RELATIVE
    ]
    assert not still, f"{len(still)} weights barely moved, e.g. {still[:3]}"


def final_weights_of(directory: Path) -> dict:
    from safetensors.torch import load_file

    weights = {}
    for file in sorted(directory.glob("*.safetensors")):
        weights.update(load_file(file))
    return weights


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_a_sharded_checkpoint_resumes_to_the_uninterrupted_fsdp_run_bitwise(
    trained, tmp_path: Path, cache_dir: Path, tuning: str
) -> None:
    """A run stopped after its step-2 checkpoint (what a kill leaves: checkpoint-2 complete, nothing after it)
    resumes from the sharded checkpoint, each rank loading its own shard, optimizer state and RNG state."""
    uninterrupted = trained("qwen2-vl", tuning, "fsdp")
    runs = tmp_path / "runs"
    stopped = runs / uninterrupted.name
    shutil.copytree(uninterrupted, stopped)
    for later in ("checkpoints/checkpoint-3", "final", "summary.json"):
        target = stopped / later
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    ranks = launch(train_args("qwen2-vl", tuning, 2, "fsdp"), runs, cache_dir)
    for number, rank in enumerate(ranks):
        assert rank.returncode == 0, f"rank {number}: exit {rank.returncode}\n{rank.stderr[-4000:]}"
    assert f"resuming from {stopped / 'checkpoints' / 'checkpoint-2'} (step 2" in one_line(ranks[0].stderr)
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["resumed_from"] == str(stopped / "checkpoints" / "checkpoint-2") and summary["global_step"] == 3
    import torch

    resumed, reference = final_weights(stopped), final_weights(uninterrupted)
    assert resumed.keys() == reference.keys()
    assert [name for name in resumed if not torch.equal(resumed[name], reference[name])] == []


def test_the_fsdp_knobs_reach_fsdp_and_keep_the_weights(trained) -> None:
    """No resharding after forward and FSDP's activation checkpointing change memory and speed, not the weights."""
    knobs = ("training.fsdp.reshard_after_forward=false", "training.fsdp.activation_checkpointing=true")
    run = trained("qwen2-vl", "full", "fsdp", *knobs)
    assert "reshard after forward: False; activation checkpointing: True" in rank0_says(run)
    difference, where = largest_relative_difference(
        final_weights(run), final_weights(trained("qwen2-vl", "full", "one"))
    )
    assert difference <= RELATIVE, f"{where} differs by {difference:.2e} (relative)"


def update_deviation(run: Path, reference: Path, initial: dict) -> float:
    """‖Δrun − Δreference‖ / ‖Δreference‖ over all weights, Δ = final − initial (key biases excepted, see above)."""
    ours, theirs = final_weights(run), final_weights(reference)
    apart = total = 0.0
    for name, start in initial.items():
        if ZERO_GRADIENT.search(name):
            continue
        mine, reference_update = ours[name].double() - start.double(), theirs[name].double() - start.double()
        apart += (mine - reference_update).norm().item() ** 2
        total += reference_update.norm().item() ** 2
    return (apart / total) ** 0.5


def test_bf16_under_fsdp_reduces_in_float32_and_stays_as_close_to_fp32_training_as_ddp(
    trained, cache_dir: Path
) -> None:
    """bf16 differs from fp32 by its rounding; FSDP's (weights gathered in bf16, gradients reduced in float32) by
    no more than DDP's autocast does. Measured: 3.5% and 3.4% of the fp32 update."""
    from vlmtune_cli.models.loading import resolve_model_path

    initial = final_weights_of(Path(resolve_model_path("builtin:tiny-qwen2-vl", cache_dir)))
    fp32 = trained("qwen2-vl", "full", "one")
    fsdp = trained("qwen2-vl", "full", "fsdp", "training.precision=bf16")
    ddp = trained("qwen2-vl", "full", "ddp", "training.precision=bf16")
    assert "compute in bfloat16, gradients reduced in float32" in rank0_says(fsdp)
    fsdp_off, ddp_off = update_deviation(fsdp, fp32, initial), update_deviation(ddp, fp32, initial)
    print(f"bf16 update deviation from fp32: FSDP {fsdp_off:.2e}, DDP {ddp_off:.2e}")
    assert 0 < ddp_off < 0.1 and fsdp_off <= 1.5 * ddp_off


def test_cpu_offload_without_cuda_is_refused_before_anything_loads(workspace: Path) -> None:
    from typer.testing import CliRunner

    from vlmtune_cli.cli import app

    args = ["train", str(RECIPES / "smoke.toml"), "--set", "training.strategy=fsdp"]
    result = CliRunner().invoke(app, [*args, "--set", "training.fsdp.cpu_offload=true"], env={"WORLD_SIZE": "2"})
    assert result.exit_code == 2, result.output
    assert "training.fsdp.cpu_offload = true needs CUDA" in one_line(result.stderr)
    assert not (workspace / "runs").exists()


def test_benchmark_export_and_predict_read_a_consolidated_final_unchanged(trained, workspace: Path) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from vlmtune_cli.cli import app

    runner = CliRunner()
    lora, full = trained("qwen2-vl", "lora", "fsdp"), trained("qwen2-vl", "full", "fsdp")
    for run in (lora, full):
        result = runner.invoke(app, ["benchmark", str(run), "--limit", "2", "--max-new-tokens", "8"])
        assert result.exit_code == 0, result.output
        assert list(run.glob("metrics*.json")), "no metrics written"
    merged = workspace / "merged"
    result = runner.invoke(app, ["export", str(lora), "--merge", "--out", str(merged)])
    assert result.exit_code == 0, result.output
    assert (merged / "config.json").is_file() and list(merged.glob("*.safetensors"))
    Image.new("RGB", (64, 48), (200, 40, 40)).save(workspace / "probe.png")
    result = runner.invoke(app, ["predict", str(full), str(workspace / "probe.png"), "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output


def test_a_sharded_checkpoint_is_not_resumed_by_a_single_process(trained, tmp_path: Path, cache_dir: Path) -> None:
    """The same recipe started without its ranks meets a checkpoint it cannot read: exit 2, saying how to resume."""
    runs = tmp_path / "runs"
    stopped = runs / trained("qwen2-vl", "full", "fsdp").name
    shutil.copytree(trained("qwen2-vl", "full", "fsdp"), stopped)
    for later in ("checkpoints/checkpoint-3", "final", "summary.json"):
        target = stopped / later
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    (rank,) = launch(train_args("qwen2-vl", "full", 2, "fsdp"), runs, cache_dir, nproc=1)
    assert rank.returncode == 2, rank.stderr[-3000:]
    said = one_line(rank.stderr)
    assert (
        f"error: {stopped / 'checkpoints' / 'checkpoint-2'} is sharded" in said and "torchrun --nproc_per_node" in said
    )
    assert not (stopped / "final").exists() and (stopped / "checkpoints" / "checkpoint-2" / "COMPLETE").is_file()
