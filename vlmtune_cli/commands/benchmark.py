"""vlmtune benchmark [RUN_DIR ...] [--recipe R [--base]] [--checkpoint NAME] [--split S] [--limit N]
                  [--batch-size B] [--max-new-tokens T] [--json]

Evaluate what training produced: generate answers for a split (greedy, batched), parse them per model family,
score them (`[benchmark] task`: detection or vqa) and write predictions.jsonl and metrics.json into the run
directory (`--limit N`: into metrics-limit-N.json and predictions-limit-N.jsonl, so a quick look never
replaces the full results). Several runs (or a run and --base) give one comparison table and a report.md with
loss curves and images with predicted (red) and true (green) boxes, in a folder of its own under
<runs_dir>/benchmark-reports/; <runs_dir>/benchmark-report links to the newest.

    vlmtune benchmark                                    # the most recent finished run in runs_dir
    vlmtune benchmark runs/v1 runs/v2                    # both runs, then one comparison table
    vlmtune benchmark --recipe recipes/v2.toml --base    # the untrained base model, as a baseline
    vlmtune benchmark runs/v2 --checkpoint checkpoint-600 --limit 50
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmtune_cli.commands._options import JsonOpt
from vlmtune_cli.config.recipe import load_recipe
from vlmtune_cli.config.settings import load_settings, resolve_recipe_path
from vlmtune_cli.console import console, err_console
from vlmtune_cli.errors import UsageError


def benchmark(
    runs: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="RUN_DIR",
            show_default=False,
            help="Run directories to benchmark. None: the run in runs_dir that finished last.",
        ),
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option(
            "--recipe",
            show_default=False,
            help="Evaluate this recipe's run (<runs_dir>/<variant>), or with --base its base model.",
        ),
    ] = None,
    base: Annotated[
        bool, typer.Option("--base", help="Also evaluate the untrained base model of --recipe (or default_recipe).")
    ] = False,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            metavar="NAME",
            show_default=False,
            help="Evaluate checkpoints/NAME (checkpoint-N or N) instead of final/.",
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option("--split", show_default=False, help="Split to evaluate (default: the recipe's benchmark.split)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, show_default=False, help="Evaluate at most N samples of the split.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, show_default=False, help="Samples per generation batch.")
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option("--max-new-tokens", min=1, show_default=False, help="Longest generated answer, in tokens."),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Evaluate runs on their test split: detection or VQA metrics from generated text."""
    from vlmtune_cli.eval import benchmark

    settings = load_settings()
    targets = []
    if base:
        targets.append(benchmark.base_target(resolve_recipe_path(recipe, settings), settings.runs_dir))
    elif recipe is not None:
        if runs:
            raise UsageError(
                "give run directories or --recipe, not both",
                hint="--recipe R picks R's run; --recipe R --base adds R's base model as a baseline",
            )
        runs = [settings.runs_dir / load_recipe(recipe).variant]
    if not runs and not base:
        runs = [benchmark.latest_run(settings.runs_dir)]
        err_console.print(f"benchmarking the most recent run: {runs[0]}", highlight=False, markup=False)
    targets += [benchmark.run_target(path, checkpoint) for path in runs or []]

    options = benchmark.BenchmarkOptions(split=split, limit=limit, batch_size=batch_size, max_new_tokens=max_new_tokens)
    results = []
    for target in targets:
        with _GenerationBar(target.name) as bar:
            result = benchmark.benchmark(target, settings.cache_dir, options, on_start=bar.start, on_batch=bar.advance)
        err_console.print(
            f"wrote {result.target.metrics_file} and {result.target.predictions_file.name}",
            highlight=False,
            markup=False,
        )
        results.append(result)

    from vlmtune_cli.eval import report

    report_path = None
    if len(results) > 1:
        report_path = report.write_report(results, report.new_report_dir(settings.runs_dir, results))
        report.link_latest(settings.runs_dir, report_path.parent)
    if json_output:
        typer.echo(report.as_json(results, report_path))
        return
    console.print(report.table(results))
    if report_path is not None:
        console.print(
            f"report: {report_path} (the newest is also {settings.runs_dir / report.REPORT_DIR})",
            highlight=False,
            markup=False,
        )


class _GenerationBar:
    """A progress bar on stderr that appears once generation starts (model loading prints its own)."""

    def __init__(self, name: str):
        self.name = name
        self.progress = None
        self.task = None

    def __enter__(self) -> _GenerationBar:
        return self

    def start(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("generating {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        self.progress.start()
        from rich.markup import escape

        self.task = self.progress.add_task(escape(self.name), total=total)  # a run's path is text, not markup

    def advance(self, done: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, done)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
