"""Showing benchmark results: the terminal table, the comparison report, and its pictures.

Several runs give one table, a row per run, the best value of each column marked (highest, except the
parse-failure rate: lowest). Each comparison gets its own folder, `<runs_dir>/benchmark-reports/<time>-<runs>/`
(`new_report_dir`), and `<runs_dir>/benchmark-report` is a symbolic link to the newest (`link_latest`).
`write_report` puts `report.md` there with that table, each run's training loss curve and a few test images
with the predicted boxes in red and the true boxes in green.

Loss curves are drawn with matplotlib (the Agg canvas, imported only when a report is written), which gives
evenly spaced, readable ticks; the boxes on test images are drawn with Pillow.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from vlmtune_cli.eval.metrics import DETECTION_METRICS, LOWER_IS_BETTER, VQA_METRICS
from vlmtune_cli.runs import Target, write_atomic

if TYPE_CHECKING:
    from vlmtune_cli.eval.benchmark import BenchmarkResult

REPORT_DIR = "benchmark-report"
"""The newest comparison: a symbolic link into REPORTS_DIR."""
REPORTS_DIR = "benchmark-reports"
"""Every comparison, one folder each."""
HEADERS = {
    "samples": "n",
    "mean_iou": "mean IoU",
    "precision": "P@.5",
    "recall": "R@.5",
    "f1": "F1@.5",
    "accuracy_50": "acc@.5",
    "map_50": "mAP@.5",
    "map_50_95": "mAP@.5:.95",
    "parse_failure_rate": "parse fail",
    "exact_match": "exact match",
    "relaxed_match": "relaxed match",
}
PRED_COLOUR, TRUE_COLOUR = (220, 20, 20), (20, 170, 40)


def columns(results: Sequence[BenchmarkResult]) -> list[str]:
    """Metric keys to show: the tasks' metrics that at least one result has a value for."""
    keys = [k for k in (*DETECTION_METRICS, *VQA_METRICS) if any(r.metrics.get(k) is not None for r in results)]
    return ["samples", *keys]


def best_values(results: Sequence[BenchmarkResult], keys: Sequence[str]) -> dict[str, float]:
    """The best value of each metric column that tells the results apart (none for a single result)."""
    if len(results) < 2:
        return {}
    best = {}
    for key in keys:
        if key == "samples":
            continue
        values = [r.metrics[key] for r in results if r.metrics.get(key) is not None]
        if len(set(values)) > 1:  # a column where every run ties has no best to point at
            best[key] = min(values) if key in LOWER_IS_BETTER else max(values)
    return best


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _is_best(result: BenchmarkResult, key: str, best: dict[str, float]) -> bool:
    return key in best and result.metrics.get(key) is not None and math.isclose(result.metrics[key], best[key])


def table(results: Sequence[BenchmarkResult]) -> Any:
    """A rich Table: one row per result, best values in bold green with a `*`."""
    from rich import box
    from rich.table import Table

    keys = columns(results)
    best = best_values(results, keys)
    sizes = {r.metrics.get("samples") for r in results}
    if len(sizes) == 1:  # the same for every run: say it once, keep the width for the metrics
        keys.remove("samples")
    title = f"benchmark · {results[0].record['split']} split" + (f" · {sizes.pop()} samples" if len(sizes) == 1 else "")
    # Compact, two-line headers: nine metric columns and a run name fit an 80-column terminal.
    view = Table(
        title=title,
        title_justify="left",
        caption="* best in its column" if best else None,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    view.add_column("run", overflow="fold", min_width=min(14, max(len(r.target.name) for r in results)))
    for key in keys:
        view.add_column(
            HEADERS.get(key, key).replace(" ", "\n", 1).replace("@", "\n@", 1)
            if " " not in HEADERS.get(key, key)
            else HEADERS.get(key, key).replace(" ", "\n", 1),
            justify="right",
            no_wrap=True,
        )
    for result in results:
        cells = [escape(result.target.name)]
        for key in keys:
            text = _cell(result.metrics.get(key))
            cells.append(f"[bold green]{text}*[/]" if _is_best(result, key, best) else text)
        view.add_row(*cells)
    return view


def markdown_table(results: Sequence[BenchmarkResult]) -> str:
    """The same table in Markdown, best values in bold."""
    keys = columns(results)
    best = best_values(results, keys)
    lines = [
        "| run | " + " | ".join(HEADERS.get(k, k) for k in keys) + " |",
        "| --- | " + " | ".join("---:" for _ in keys) + " |",
    ]
    for result in results:
        cells = [
            f"**{_cell(result.metrics.get(k))}**" if _is_best(result, k, best) else _cell(result.metrics.get(k))
            for k in keys
        ]
        lines.append(f"| {result.target.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def as_json(results: Sequence[BenchmarkResult], report: Path | None) -> str:
    """One JSON object for scripts: every run's metrics.json content, the best values, the report's path."""
    best = best_values(results, columns(results))
    return json.dumps(
        {"runs": [r.record for r in results], "best": best, "report": str(report) if report else None}, indent=2
    )


# --- report.md -------------------------------------------------------------------------------------------


def new_report_dir(runs_dir: Path, results: Sequence[Any]) -> Path:
    """A new, empty folder for one comparison: `<runs_dir>/benchmark-reports/<YYYYmmdd-HHMMSS>-<run names>`."""
    names = "_vs_".join(re.sub(r"[^A-Za-z0-9._-]+", "_", r.target.name).strip("_") for r in results)
    stem = f"{datetime.now():%Y%m%d-%H%M%S}-{names[:80]}"
    parent = runs_dir / REPORTS_DIR
    parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):  # two comparisons within one second keep separate folders
        directory = parent / (stem if attempt == 1 else f"{stem}-{attempt}")
        try:
            directory.mkdir()
        except FileExistsError:
            continue
        return directory
    raise FileExistsError(f"no free report folder name under {parent}")


def link_latest(runs_dir: Path, directory: Path) -> Path:
    """Point `<runs_dir>/benchmark-report` at `directory` (atomically); returns the link.

    A `benchmark-report` folder written by an older vlmtune is kept: it moves into benchmark-reports/ first.
    """
    link = runs_dir / REPORT_DIR
    if link.is_dir() and not link.is_symlink():
        link.rename(runs_dir / REPORTS_DIR / f"before-{datetime.fromtimestamp(link.stat().st_mtime):%Y%m%d-%H%M%S}")
    tmp = runs_dir / f".{REPORT_DIR}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(directory.relative_to(runs_dir) if directory.is_relative_to(runs_dir) else directory.resolve())
    os.replace(tmp, link)
    return link


def write_report(results: Sequence[BenchmarkResult], directory: Path) -> Path:
    """Write report.md and its pictures into `directory` (replacing an older report); return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.png"):
        old.unlink()
    split = results[0].record["split"] if results else "?"
    lines = [
        f"# Benchmark report ({datetime.now():%Y-%m-%d %H:%M})",
        "",
        f"Split `{split}`; predicted boxes red, true boxes green. Best value per column in bold (parse fail: lowest).",
        "",
        markdown_table(results),
    ]
    for index, result in enumerate(results):
        slug = f"{index + 1}-" + re.sub(r"[^A-Za-z0-9._-]+", "_", result.target.name).strip("_")
        lines += [
            f"## {result.target.name}",
            "",
            f"`{result.record['model']}`, {result.target.checkpoint}; results in `{result.target.metrics_file}`.",
            "",
        ]
        history = _loss_history(result.target)
        if history:
            draw_loss_curve(history, directory / f"{slug}-loss.png", title=f"{result.target.name}: training loss")
            lines += [f"![training loss]({slug}-loss.png)", ""]
        for k, example in enumerate(result.examples):
            if "image" in example:
                name = f"{slug}-boxes-{k + 1}.png"
                draw_boxes(example["image"], example["pred"], example["truth"], directory / name)
                lines.append(f"![{example['id']}]({name})")
            else:
                lines.append(
                    f"- {example['id']}: {example['question']!r} → `{example['output']}` (answer `{example['answer']}`)"
                )
        lines.append("")
    path = directory / "report.md"
    write_atomic(path, "\n".join(lines))
    return path


def _loss_history(target: Target) -> list[tuple[float, float, str]]:
    """(step, loss, "train" | "eval") from the run's summary.json; empty for the base model or no summary."""
    if target.checkpoint == "base":
        return []
    try:
        history = json.loads((target.run_dir / "summary.json").read_text()).get("log_history", [])
    except (OSError, ValueError):
        return []
    points = []
    for entry in history:
        for key, kind in (("loss", "train"), ("eval_loss", "eval")):
            value = entry.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value) and "step" in entry:
                points.append((float(entry["step"]), float(value), kind))
    return points


def draw_loss_curve(
    points: list[tuple[float, float, str]], path: Path, title: str = "training loss", size: tuple[int, int] = (640, 360)
) -> None:
    """A line chart of loss against step (matplotlib): training loss blue, evaluation loss orange.

    Drawn on a bare `Figure` with the Agg canvas, never through pyplot: no display is needed, no global backend
    is switched in the caller's process, and nothing is imported until a chart is drawn.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    dpi = 100
    figure = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for kind, colour in (("train", "tab:blue"), ("eval", "tab:orange")):
        steps = [s for s, _, k in points if k == kind]
        losses = [v for _, v, k in points if k == kind]
        if steps:
            axes.plot(steps, losses, color=colour, marker="o", markersize=3, linewidth=1.5, label=kind)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)


def draw_boxes(
    image: Any, predicted: Sequence[Sequence[float]], true: Sequence[Sequence[float]], path: Path, min_side: int = 400
) -> None:
    """The image with true boxes in green and predicted boxes in red, enlarged so small images stay legible."""
    from PIL import Image, ImageDraw

    scale = max(1, math.ceil(min_side / max(1, min(image.size))))
    canvas = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for boxes, colour in ((true, TRUE_COLOUR), (predicted, PRED_COLOUR)):
        for box in boxes:
            draw.rectangle([v * scale for v in box], outline=colour, width=3)
    canvas.save(path)
