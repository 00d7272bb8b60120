"""Batched generation against batch size 1 on the same samples: samples per second and their ratio.

    python -m benchmarks.bench_generation [--samples 32] [--batch-size 16] [--max-new-tokens 48]   # from the repo root

The goal (issue 4) is at least 5x the samples per second at batch 16. It runs `vlmtune benchmark`'s own
generation (`benchmark.generate`: chat template, left padding, greedy) with the built-in tiny Qwen2-VL on the
smoke recipe's synthetic detection samples and resolution (64 visual tokens per image). The tiny model's
random weights never emit an end token, so every answer runs to `--max-new-tokens`: the same work at any batch
size, and no early-finishing rows to flatter batching. The two modes alternate `--repeats` times and each keeps
its fastest time, the least noisy figure on a shared machine. Not a test: it prints numbers, it asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_generation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "smoke.toml")
    args = parser.parse_args()
    result = measure(args.samples, args.batch_size, args.max_new_tokens, args.repeats, args.threads, args.recipe)
    single, batched = min(result["batch1_seconds"]), min(result["batched_seconds"])
    n = result["samples"]
    print(
        f"{n} samples, {args.max_new_tokens} new tokens each, {result['threads']} CPU threads, best of {args.repeats}"
    )
    print(f"batch 1:  {n / single:7.1f} samples/s")
    print(f"batch {args.batch_size}: {n / batched:7.1f} samples/s")
    print(
        f"ratio:    {single / batched:7.1f}x   (goal: >= 5x at batch 16); identical outputs: {result['identical']}/{n}"
    )


def measure(
    samples: int = 32,
    batch_size: int = 16,
    max_new_tokens: int = 48,
    repeats: int = 3,
    threads: int = 0,
    recipe_path: Path = REPO / "recipes" / "smoke.toml",
) -> dict:
    """Time `benchmark.generate` at batch 1 and at `batch_size`, alternating, `repeats` times each.

    Returns {"samples", "threads", "identical", "batch1_seconds": [...], "batched_seconds": [...]}.
    """
    import torch

    from vlmtune_cli.config.recipe import load_recipe
    from vlmtune_cli.config.settings import load_settings
    from vlmtune_cli.data.sources import load_splits
    from vlmtune_cli.eval import benchmark
    from vlmtune_cli.models import loading

    settings = load_settings()
    recipe = load_recipe(
        recipe_path, [f"data.num_samples={samples}", f"data.max_samples={samples}", "data.split_ratio=1.0"], environ={}
    )
    model = loading.load_model(recipe.model, settings.cache_dir).eval()
    processor = loading.load_processor(recipe.model, recipe.data, settings.cache_dir)
    family = loading.load_family(recipe.model, settings.cache_dir)
    data = load_splits(recipe.data, box_format=family.box_format, processor=processor)[recipe.data.train_split]

    def timed(size: int) -> tuple[float, list[str]]:
        started = time.perf_counter()
        _, outputs = benchmark.generate(model, processor, data, batch_size=size, max_new_tokens=max_new_tokens)
        return time.perf_counter() - started, outputs

    if threads:
        torch.set_num_threads(threads)
    benchmark.generate(model, processor, data[:2], batch_size=2, max_new_tokens=4)  # warm-up
    # Alternate the two modes so a change in the machine's load hits both alike.
    single: list[float] = []
    batched: list[float] = []
    for _ in range(repeats):
        seconds, single_out = timed(1)
        single.append(seconds)
        seconds, batched_out = timed(batch_size)
        batched.append(seconds)
    same = sum(a == b for a, b in zip(single_out, batched_out, strict=True))
    return {
        "samples": len(data),
        "threads": torch.get_num_threads(),
        "identical": same,
        "batch1_seconds": single,
        "batched_seconds": batched,
    }


if __name__ == "__main__":
    main()
