"""Measurement 1, start-up: `vlmtune --help` as a whole process against `python -c "from trl import SFTTrainer"`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from .suite import Figure, Suite, median


def measure(suite: Suite) -> None:
    vlmtune = Path(sys.executable).with_name("vlmtune")
    ours = [str(vlmtune), "--help"] if vlmtune.exists() else [sys.executable, "-m", "vlmtune_cli", "--help"]
    reference = [sys.executable, "-c", "from trl import SFTTrainer"]

    def wall(argv: list[str]) -> float:
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        return time.perf_counter() - started

    wall(ours), wall(reference)  # warm the page cache
    times: dict[str, list[float]] = {"ours": [], "ref": []}
    for _ in range(suite.repeats):
        times["ours"].append(wall(ours))
        times["ref"].append(wall(reference))
    a, b = median(times["ours"]), median(times["ref"])
    suite.add(
        Figure(
            1,
            "start-up: `vlmtune --help`",
            f"{a:.2f} s",
            f"`from trl import SFTTrainer` {b:.2f} s",
            a / b,
            "≤ 0.1",
            a / b <= 0.1,
        )
    )
