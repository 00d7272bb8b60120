"""Measurement 5, generation: `benchmark.generate` at batch 16 against batch 1 (`bench_generation.measure`)."""

from __future__ import annotations

from . import bench_generation
from .suite import Figure, Suite, median


def measure(suite: Suite) -> None:
    samples, new = (16, 16) if suite.quick else (32, 48)
    result = bench_generation.measure(samples=samples, batch_size=16, max_new_tokens=new, repeats=suite.repeats)
    a, b = median(result["batch1_seconds"]), median(result["batched_seconds"])
    suite.add(
        Figure(
            5,
            f"generation at batch 16, samples/s ({new} new tokens)",
            f"{samples / b:.1f}",
            f"batch 1 {samples / a:.1f}",
            a / b,
            "≥ 5",
            a / b >= 5,
            [f"identical outputs {result['identical']}/{result['samples']}"],
        )
    )
