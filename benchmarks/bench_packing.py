"""Packing (issue 16): padding efficiency and trained tokens/s, packed vs padded, in one run, with a FLOP count.

    python -m benchmarks.bench_packing --quick      # from the repository root; ~5 minutes on 2 shared cores
    python -m benchmarks.bench_packing --repeats 3

The tiny built-in Qwen2-VL trains (LoRA, as recipes/smoke.toml) one epoch of a synthetic set whose lengths run from
1× to 8× the shortest sample, under five settings taken in turns (so the machine's load hits all alike): padded
batches of 8 in random order (the reference), padded with `group_by_length`, and packed rows at three row lengths
(the longest sample, the default; 2 × p95; 4 × p95). Packed batches hold as many rows as give about the real tokens
of a padded batch of 8, so every setting pays about the same per-step overhead (optimizer, clipping, logging).

Figures: padding efficiency (real / processed tokens over the epoch; processed = rows × the longest row of each
batch) and trained tokens/s (real tokens of the samples trained per second, from the end of the first step to the
end of the epoch; over a whole epoch every setting trains the same samples, so this is also the ratio of loss
tokens/s). Then a FLOP count of the same batches: sdpa computes attention over whole rows (masked blocks included),
flash-attention's varlen kernel over each sample only; for the tiny model and for Qwen2-VL-2B's language model.

Writes (or replaces) the "Packing" section of benchmarks/RESULTS.md. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path

from .suite import HERE, SMOKE, Suite, median, trainer_for

# The heading RESULTS.md already has: a rerun replaces that section (the file's path is unchanged).
SECTION = "## Packing (issue 16, `benchmarks/bench_packing.py`)"


def spread_set(folder: Path, n: int) -> Path:
    """n samples of ~40 to ~320 tokens (1× to 8× the shortest), uniform, one small image each (4-16 visual tokens)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n):
        side = int(rng.choice([56, 84, 112]))
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        target = int(rng.integers(40, 321))
        words = max(1, round((target - 34 - (side // 28) ** 2) / 1.5))
        answer = " ".join(["red", "blue", "table", "box"][k % 4] for k in range(words))
        rows.append(
            {
                "id": f"s{i}",
                "images": [f"{i}.png"],
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]},
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]},
                ],
            }
        )
    (folder / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "set.jsonl"


class Counting:
    """Wraps a collator; records each batch's (real tokens, processed tokens, per-row sample lengths)."""

    def __init__(self, inner):
        self.inner = inner
        self.batches: list[tuple[int, int, list[list[int]]]] = []

    def __call__(self, items):
        batch = self.inner(items)
        rows = [
            [len(s["input_ids"]) for s in item["packed_samples"]]
            if "packed_samples" in item
            else [len(item["input_ids"])]
            for item in items
        ]
        self.batches.append((sum(map(sum, rows)), batch["input_ids"].numel(), rows))
        return batch


def flops(batches: list[tuple[int, int, list[list[int]]]], params: int, width: int, layers: int, varlen: bool) -> float:
    """Training FLOPs of the language model (forward + backward = 3 × forward) over `batches`: 2 × params per
    processed token, plus attention's QKᵀ and AV (4 × width per query-key pair per layer), over whole rows on sdpa
    (the mask is applied to a dense matrix) or over each sample on flash-attention varlen; causal halves both."""
    linear = attention = 0.0
    for _, processed, rows in batches:
        longest = processed // len(rows)
        linear += 2 * params * processed
        pairs = sum(sum(n * n for n in row) for row in rows) if varlen else len(rows) * longest * longest
        attention += 4 * width * layers * pairs / 2
    return 3 * (linear + attention)


def measure(suite: Suite, n: int) -> list[str]:
    import torch
    from transformers import TrainerCallback

    from vlmtune_cli.config.recipe import load_recipe
    from vlmtune_cli.config.settings import load_settings
    from vlmtune_cli.encode.build import open_splits, tokenize_recipe
    from vlmtune_cli.encode.packing import default_packing_length
    from vlmtune_cli.models import loading
    from vlmtune_cli.models.tuning import apply_tuning

    source = spread_set(suite.work / "spread", n)
    cache_dir = load_settings().cache_dir
    base = [
        f"data.source={source}",
        "data.min_pixels=3136",
        "data.max_pixels=12544",
        "data.max_length=4096",
        "data.split_ratio=1.0",
        f"data.max_samples={n}",
        "training.grad_accum=1",
        "training.epochs=1",
        "training.save_steps=100000",
        "training.logging_steps=100000",
        "training.report_to=['none']",
        "training.eval_steps=100000",
    ]
    recipe = load_recipe(SMOKE, base, environ={})
    processor = loading.load_processor(recipe.model, recipe.data, cache_dir)
    family = loading.load_family(recipe.model, cache_dir)
    result = tokenize_recipe(recipe, cache_dir, processor=processor, family=family, progress=False)
    train_set, _ = open_splits(result, processor)
    lengths = sorted(train_set.with_format(None)["length"])
    p95 = lengths[max(0, -(-95 * len(lengths) // 100) - 1)]
    mean = sum(lengths) / len(lengths)
    default = default_packing_length(lengths, 4096)
    suite.note(
        f"set: {len(lengths)} samples, lengths {lengths[0]}–{lengths[-1]} ({lengths[-1] / lengths[0]:.1f}× the "
        f"shortest), mean {mean:.0f}, p95 {p95}; default packing_length {default}"
    )
    settings = {
        "padded, random order": ["training.batch_size=8"],
        "group_by_length": ["training.batch_size=8", "training.group_by_length=true"],
    }
    for label, length in (("longest, the default", default), ("2 × p95", 2 * p95), ("4 × p95", 4 * p95)):
        rows = max(1, round(8 * mean / length))
        settings[f"packed at {length} ({label}), {rows} row(s) per batch"] = [
            "training.packing=true",
            f"training.packing_length={length}",
            f"training.batch_size={rows}",
        ]

    def one_epoch(overrides: list[str]) -> tuple[float, list]:
        r = load_recipe(SMOKE, [*base, *overrides], environ={})
        model = apply_tuning(loading.load_model(r.model, cache_dir), r.tuning, r.lora, seed=42)
        built = trainer_for(suite, r, processor, train_set, model=model, name="packing")
        counting = Counting(built.data_collator)
        built.data_collator = counting
        stamps: list[tuple[float, float]] = []

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
                stamps.append((time.process_time(), time.perf_counter()))

        built.add_callback(Clock())
        built.train()
        real = sum(b[0] for b in counting.batches[1 : len(stamps)])
        cpu, wall = (stamps[-1][k] - stamps[0][k] for k in (0, 1))
        return real / cpu, real / wall, counting.batches

    rates: dict[str, list[float]] = {name: [] for name in settings}
    walls: dict[str, list[float]] = {name: [] for name in settings}
    batches: dict[str, list] = {}
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    for _ in range(suite.repeats):
        for name, overrides in settings.items():
            rate, wall, batches[name] = one_epoch(overrides)
            rates[name].append(rate)
            walls[name].append(wall)
    reference = median(rates["padded, random order"])
    grouped = median(rates["group_by_length"])
    table: list[str] = []
    for name, bs in batches.items():
        rate, efficiency = median(rates[name]), sum(b[0] for b in bs) / sum(b[1] for b in bs)
        if name.startswith("packed"):
            goals = [rate >= 1.2 * reference, rate >= grouped, efficiency >= 0.99]
            verdict = ", ".join(("yes" if ok else "**no**") for ok in goals)
        else:
            verdict = "-"
        runs = ", ".join(f"{v:,.0f}" for v in rates[name])
        wall = median(walls[name]) / median(walls["padded, random order"])
        table.append(
            f"| {name} | {efficiency:.3f} | {rate:,.0f} ({runs}) | {rate / reference:.2f} | {rate / grouped:.2f} "
            f"| {wall:.2f} | {verdict} |"
        )
        print(
            f"{name}: efficiency {efficiency:.3f}, {rate:,.0f} tokens/s ({runs}), {rate / reference:.2f}× padded, "
            f"{rate / grouped:.2f}× grouped",
            flush=True,
        )
    # FLOPs of the very batches above. Tiny model: text hidden 64, 2 layers, its language model's parameters.
    # Qwen2-VL-2B: hidden 1536, 28 layers, ~1.5e9 language-model parameters (vision tower left out: the same images
    # go through it in every setting).
    llm = sum(p.numel() for n, p in loading.load_model(recipe.model, cache_dir).named_parameters() if "visual" not in n)
    for model_name, params, width, layers in (("tiny", llm, 64, 2), ("Qwen2-VL-2B", 1.5e9, 1536, 28)):
        padded = flops(batches["padded, random order"], params, width, layers, varlen=False)
        parts = [f"group_by_length {padded / flops(batches['group_by_length'], params, width, layers, False):.2f}×"]
        for name in settings:
            if name.startswith("packed"):
                short = name.split(" (")[0]
                sdpa = padded / flops(batches[name], params, width, layers, varlen=False)
                varlen = padded / flops(batches[name], params, width, layers, varlen=True)
                parts.append(f"{short}: sdpa {sdpa:.2f}×, flash varlen {varlen:.2f}×")
        suite.note(
            f"FLOP count, {model_name} ({params:.3g} LLM params), fewer FLOPs than padded random: " + "; ".join(parts)
        )
    return table


def write_section(suite: Suite, table: list[str], path: Path, seconds: float, loads: tuple[str, str]) -> None:
    lines = [
        SECTION,
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} by "
        f"`python -m benchmarks.bench_packing{' --quick' if suite.quick else ''}`, {seconds / 60:.1f} minutes, "
        f"medians of {suite.repeats} repeat(s) taken in turns, 1 torch thread; load "
        f"average {loads[0]} → {loads[1]} on 2 cores shared by several jobs. Tokens/s are per CPU second of the "
        "training process (one thread, no loader workers), which another job's load moves far less than wall-clock "
        "time; wall-clock ratios are shown too and swing by 2× between repeats at this load.",
        "",
        "| setting | padding efficiency | trained tokens per CPU second, median (runs) | × padded random "
        "| × group_by_length | wall-clock × padded random | goals met: ≥ 1.2× padded, ≥ 1.0× grouped, "
        "efficiency ≥ 0.99 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *table,
        "",
        *[f"- {d}" for d in suite.details],
        "",
    ]
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    text = re.sub(re.escape(SECTION) + r".*?(?=\n## |\Z)", "", text, flags=re.S).rstrip() + "\n\n"
    path.write_text(text + "\n".join(lines))
    print(f"wrote the packing section of {path}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_packing", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="192 samples, 1 repeat")
    parser.add_argument("--repeats", type=int, default=0, help="repeats (default 2, quick 1)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    args.out = args.out.resolve()  # measured in a scratch directory
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    started, load_start = time.perf_counter(), " ".join(f"{x:.1f}" for x in os.getloadavg())
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="vlmtune-bench-packing-") as tmp:
        work = Path(tmp)
        os.environ["VLMTUNE_CACHE_DIR"] = str(work / "cache")
        os.environ["VLMTUNE_RUNS_DIR"] = str(work / "runs")
        os.chdir(work)
        suite = Suite(args.quick, args.repeats or (1 if args.quick else 2), work)
        table = measure(suite, 192 if args.quick else 384)
        os.chdir(cwd)
    loads = (load_start, " ".join(f"{x:.1f}" for x in os.getloadavg()))
    write_section(suite, table, args.out, time.perf_counter() - started, loads)


if __name__ == "__main__":
    main()
