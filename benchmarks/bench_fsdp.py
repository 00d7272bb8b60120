"""FSDP against DDP at world size 2 on this machine's CPU (gloo): state bytes per rank and steps/s, in one run.

    python -m benchmarks.bench_fsdp            # from the repository root, ~2 minutes on 2 cores
    python -m benchmarks.bench_fsdp training.fsdp.reshard_after_forward=false    # FSDP with these recipe keys

Both set-ups train the same recipe (the built-in tiny Qwen2-VL, full fine-tuning of every component, fp32, AdamW)
as two processes started the way SLURM starts a job's tasks. Inside each rank a probe reads, at the last optimizer
step (gradients present, optimizer state built), the bytes of the tensors this rank holds: its parameters, their
gradients and the optimizer state (for FSDP the local shards, `DTensor.to_local()`). Goals (issue 15): FSDP/DDP state
bytes per rank ≤ 0.55; steps/s FSDP/DDP ≥ 0.7 (reported, not a test: the machine is shared). Steps/s is the Trainer's
own `train_steps_per_second` (the whole training loop, checkpoints off), taken in turns, median of the repeats.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STEPS = 30
SETTINGS = [
    "data.num_samples=80",
    "data.max_samples=80",
    f"training.max_steps={STEPS}",
    "training.batch_size=2",
    "training.grad_accum=1",
    "training.save_steps=100000",
    "training.eval_steps=100000",
    "training.logging_steps=100000",
    "training.report_to=[]",
    "tuning.vision=full",
    "tuning.projector=full",
    "tuning.llm=full",
]


def probe() -> None:
    """Run inside each rank: `vlmtune train` with a hook that writes this rank's state bytes at the last step."""
    from vlmtune_cli.train import sft_trainer

    original = sft_trainer.VlmtuneTrainer._get_grad_norm

    def measured(self, model, grad_norm=None):  # noqa: ANN001, ANN202 (the patched private method's signature)
        if self.state.global_step == STEPS - 1:
            _write_state_bytes(model, self.optimizer)
        return original(self, model, grad_norm)

    sft_trainer.VlmtuneTrainer._get_grad_norm = measured
    from vlmtune_cli.cli import main

    sys.argv = ["vlmtune", *sys.argv[2:]]
    main()


def _local_bytes(tensor) -> int:  # noqa: ANN001
    from torch.distributed.tensor import DTensor

    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def _write_state_bytes(model, optimizer) -> None:  # noqa: ANN001
    import torch

    parameters = list(model.parameters())
    state = {
        "parameters": sum(_local_bytes(p) for p in parameters),
        "gradients": sum(_local_bytes(p.grad) for p in parameters if p.grad is not None),
        "optimizer": sum(
            _local_bytes(value)
            for per_parameter in optimizer.state.values()
            for value in per_parameter.values()
            if isinstance(value, torch.Tensor) and value.dim() > 0  # Adam's step counters are scalars
        ),
    }
    Path(os.environ["VLMTUNE_BENCH_OUT"] + f".rank{os.environ['RANK']}").write_text(json.dumps(state))


def _run(strategy: str, work: Path, cache: Path, round_: int, extra: list[str]) -> tuple[list[dict], float]:
    from tests.train.test_ranks import launch

    runs = work / f"{strategy}-{round_}"
    args = [str(Path(__file__).resolve()), "--probe", "train", str(REPO / "recipes" / "smoke.toml")]
    items = [*SETTINGS, f"training.strategy={strategy}", *(extra if strategy == "fsdp" else [])]
    args += [a for item in items for a in ("--set", item)]
    out = work / f"{strategy}-{round_}.json"
    ranks = launch(args, runs, cache, env={"VLMTUNE_BENCH_OUT": str(out)}, timeout=900)
    for number, rank in enumerate(ranks):
        if rank.returncode != 0:
            sys.exit(f"{strategy} rank {number} failed:\n{rank.stderr[-3000:]}")
    states = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(2)]
    summary = json.loads((runs / "smoke" / "summary.json").read_text())
    speed = next(e["train_steps_per_second"] for e in summary["log_history"] if "train_steps_per_second" in e)
    return states, speed


def main(fsdp_settings: list[str], repeats: int = 2) -> None:
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="bench-fsdp-") as tmp:
        work = Path(tmp)
        cache = work / "cache"
        states: dict[str, list[dict]] = {}
        speeds: dict[str, list[float]] = {"ddp": [], "fsdp": []}
        for round_ in range(repeats):
            for strategy in ("ddp", "fsdp"):  # in turns: the load of a shared machine hits both alike
                states[strategy], speed = _run(strategy, work, cache, round_, fsdp_settings)
                speeds[strategy].append(speed)
    per_rank = {s: max(sum(rank.values()) for rank in states[s]) for s in states}
    ratio = per_rank["fsdp"] / per_rank["ddp"]
    speed_ratio = statistics.median(speeds["fsdp"]) / statistics.median(speeds["ddp"])
    if fsdp_settings:
        print(f"FSDP with {', '.join(fsdp_settings)}\n")
    print("| per rank, world size 2 | DDP | FSDP | FSDP/DDP |\n| --- | ---: | ---: | ---: |")
    for part in ("parameters", "gradients", "optimizer"):
        ddp, fsdp = (max(rank[part] for rank in states[s]) for s in ("ddp", "fsdp"))
        print(f"| {part} bytes | {ddp:,} | {fsdp:,} | {fsdp / ddp:.3f} |")
    print(f"| **state bytes** | {per_rank['ddp']:,} | {per_rank['fsdp']:,} | **{ratio:.3f}** (goal ≤ 0.55) |")
    ddp_speed, fsdp_speed = statistics.median(speeds["ddp"]), statistics.median(speeds["fsdp"])
    print(
        f"| steps/s (median of {repeats}) | {ddp_speed:.2f} | {fsdp_speed:.2f} | **{speed_ratio:.2f}** (goal ≥ 0.7) |"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        sys.path.insert(0, str(REPO))
        probe()
    else:
        main(sys.argv[1:])
