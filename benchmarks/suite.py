"""What every measurement shares: the figures and the suite that collects them, the trainer they time, and the
machine, package versions and RESULTS.md writing of the driver (`python -m benchmarks.run`)."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlmtune_cli.config.schema import Recipe
    from vlmtune_cli.train.sft_trainer import VlmtuneTrainer

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SMOKE = REPO / "recipes" / "smoke.toml"


@dataclass
class Figure:
    number: int
    name: str
    value: str
    reference: str
    ratio: float | None
    goal: str
    met: bool | None
    notes: list[str] = field(default_factory=list)


@dataclass
class Suite:
    quick: bool
    repeats: int
    work: Path
    figures: list[Figure] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        verdict = {True: "met", False: "NOT met", None: "-"}[figure.met]
        ratio = "" if figure.ratio is None else f"ratio {figure.ratio:.3g}  "
        print(
            f"[{figure.number}] {figure.name}: {figure.value} vs {figure.reference}  {ratio}"
            f"(goal {figure.goal}: {verdict})",
            flush=True,
        )
        for note in figure.notes:
            print(f"      {note}", flush=True)

    def note(self, text: str) -> None:
        self.details.append(text)
        print(f"      {text}", flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def module_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with the repository first on PYTHONPATH, for `python -m benchmarks.<script>` in a subprocess whose
    working directory is the scratch workspace (the package is found without editing sys.path)."""
    paths = [str(REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}


def trainer_for(
    suite: Suite,
    recipe: Recipe,
    processor: Any,
    train_set: Any,
    model: Any = None,
    name: str = "bench",
    per_step_walks: bool = False,
) -> VlmtuneTrainer:
    """vlmtune's own SFTTrainer (`trainer.build_trainer`) for `recipe`, in a scratch run directory."""
    from vlmtune_cli.config.settings import load_settings
    from vlmtune_cli.models import loading
    from vlmtune_cli.models.tuning import apply_tuning
    from vlmtune_cli.runs import RunDir
    from vlmtune_cli.train import trainer

    if model is None:
        cache_dir = load_settings().cache_dir
        model = apply_tuning(
            loading.load_model(recipe.model, cache_dir), recipe.tuning, recipe.lora, seed=recipe.training.seed
        )
    run = RunDir(suite.work / "runs" / name)
    run.path.mkdir(parents=True, exist_ok=True)
    return trainer.build_trainer(recipe, run, model, processor, train_set, None, per_step_walks=per_step_walks)


def machine() -> dict[str, str]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = int(
        next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    )
    return {
        "CPU": model,
        "cores available": str(len(os.sched_getaffinity(0))),
        "RAM": f"{mem_kb / 1024**2:.1f} GiB",
        "OS": platform.platform(),
        "Python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in (
        "vlmtune",
        "torch",
        "transformers",
        "trl",
        "accelerate",
        "datasets",
        "peft",
        "tokenizers",
        "numpy",
        "pillow",
        "pyarrow",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def write_results(suite: Suite, path: Path, loads: tuple[str, str], seconds: float) -> None:
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python -m benchmarks.run{' --quick' if suite.quick else ''}` on "
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} (git {git.stdout.strip() or '?'}, working tree may "
        f"differ), {seconds / 60:.1f} minutes. Medians of {suite.repeats} repeats, measured and reference runs in "
        f"turns. Load average at start / end: {loads[0]} / {loads[1]}. torch/OpenMP threads per process: "
        f"{os.environ.get('OMP_NUM_THREADS', 'default')}.",
        "",
        "| machine | |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in machine().items()],
        "",
        "| package | version |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in versions().items()],
        "",
        "| # | figure | value | reference (same run) | ratio | goal | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in suite.figures:
        ratio = "" if f.ratio is None else f"{f.ratio:.3g}"
        met = {True: "yes", False: "**no**", None: "-"}[f.met]
        lines.append(f"| {f.number} | {f.name} | {f.value} | {f.reference} | {ratio} | {f.goal} | {met} |")
    notes = [n for f in suite.figures for n in f.notes] + suite.details
    if notes:
        lines += ["", "Notes:", "", *[f"- {n}" for n in notes]]
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
