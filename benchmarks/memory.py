"""Measurement 7, memory: peak RSS of `tokenize` at two dataset sizes (`bench_tokenize.peak_rss`)."""

from __future__ import annotations

from . import bench_tokenize
from .suite import Figure, Suite


def measure(suite: Suite) -> None:
    sizes = (200, 2000) if suite.quick else (1000, 10000)
    figures: dict[str, float] = {}
    bench_tokenize.peak_rss(sizes, figures)
    small, large = (figures[f"peak RSS, {n} samples, MB"] for n in sizes)
    suite.add(
        Figure(
            7,
            f"memory: peak RSS of `tokenize`, {sizes[1]:,} samples",
            f"{large:.0f} MB",
            f"{sizes[0]:,} samples {small:.0f} MB",
            large / small,
            "≤ 1.3",
            large / small <= 1.3,
        )
    )
