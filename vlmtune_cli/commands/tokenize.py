"""vlmtune tokenize [RECIPE] [--set KEY=VALUE ...] [--show N] [--force] [--json] [--workers N]

Tokenise a recipe's dataset into the cache (chat template, processor, labels for `loss_on`) and print its token
statistics and what `training.packing` would give (rows, fill rate, tokens per row). Run again with the same
inputs, it is a cache hit that loads no model library; `vlmtune train` reads the same cache (and builds it first
when it is missing).

    vlmtune tokenize recipes/v2.toml --show 2      # statistics, and 2 samples with their trained tokens marked
    vlmtune tokenize recipes/smoke.toml --json     # one JSON object for scripts
    vlmtune tokenize recipes/v2.toml --set data.max_length=1024 --force
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape

from vlmtune_cli.commands._options import JsonOpt, OverrideOpt, RecipeArg, UnsetOpt
from vlmtune_cli.config.recipe import load_recipe
from vlmtune_cli.config.settings import load_settings, resolve_recipe_path
from vlmtune_cli.console import console


def tokenize(
    recipe: RecipeArg = None,
    overrides: OverrideOpt = None,
    unset: UnsetOpt = None,
    show: Annotated[
        int,
        typer.Option(
            "--show", min=0, metavar="N", help="Print N samples with trained tokens highlighted, masked ones dimmed."
        ),
    ] = 0,
    force: Annotated[bool, typer.Option("--force", help="Rebuild the cache entry even if it exists.")] = False,
    json_output: JsonOpt = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers", min=0, metavar="N", help="Worker processes; 0 picks from the dataset size and cores."
        ),
    ] = 0,
) -> None:
    """Tokenise a recipe's dataset into the cache and print token statistics (a cache hit loads no model library)."""
    settings = load_settings()
    resolved = load_recipe(resolve_recipe_path(recipe, settings), overrides or [], unset=unset or [])
    from vlmtune_cli.encode.build import read_rows, tokenize_recipe
    from vlmtune_cli.encode.packing import tokenize_report
    from vlmtune_cli.encode.stats import sample_segments

    result = tokenize_recipe(resolved, settings.cache_dir, force=force, workers=workers)
    packing = tokenize_report(resolved, result)
    samples = []
    if show:
        samples = sample_segments(read_rows(result, show), result.model_path, result.manifest["image_token_id"])
    if json_output:
        payload = _payload(result, samples)
        payload["packing"] = packing if isinstance(packing, str) else packing.as_dict()
        typer.echo(json.dumps(payload))
        return
    _print(result, samples)
    console.print(packing if isinstance(packing, str) else packing.describe(), highlight=False)


def _payload(result: Any, samples: list[dict[str, Any]]) -> dict[str, Any]:
    splits = result.stats["splits"]
    payload = {
        "cache": str(result.path),
        "fingerprint": result.key,
        "hit": result.hit,
        "seconds": round(result.seconds, 3),
        "miss_reason": result.miss_reason,
        "counts": {
            name: {
                "samples": s["samples"],
                "dropped_overlength": len(s["dropped_overlength"]),
                "dropped_untrained": len(s["dropped_untrained"]),
                "dropped_bad_boxes": len(s["dropped_bad_boxes"]),
                "clipped_boxes": len(s["clipped_boxes"]),
                "unparsed_answers": len(s["unparsed_answers"]),
            }
            for name, s in splits.items()
        },
        "stats": result.stats,
    }
    if samples:
        payload["samples"] = [
            {**s, "segments": [{"kind": p.kind, "text": p.text} for p in s["segments"]]} for s in samples
        ]
    return payload


def _print(result: Any, samples: list[dict[str, Any]]) -> None:
    from vlmtune_cli.encode.stats import legend, print_stats, render_sample

    counts = ", ".join(f"{name} {s['samples']:,}" for name, s in result.stats["splits"].items())
    how = "cache hit" if result.hit else "built"
    console.print(
        f"tokenized {escape(str(result.stats['source']))} ({escape(counts)}) → {escape(str(result.path))} "
        f"[bold]{how}[/] in {result.seconds:.2f} s",
        highlight=False,
    )
    if result.miss_reason:
        console.print(
            f"[dim]changed since the last entry of this source: {escape(result.miss_reason)}[/]", highlight=False
        )
    print_stats(console, result.stats)
    for report in result.reports():
        if (drops := report.describe_drops()) is not None:
            console.print(f"[yellow]{escape(drops)}[/]", highlight=False)
        for line in report.describe_fixes():
            console.print(f"[yellow]{escape(line)}[/]", highlight=False)
    if samples:
        colour = console.is_terminal and console.color_system is not None
        console.print(legend(colour))
        for sample in samples:
            title = f"{sample['split']} · {sample['id']} · {sample['length']} tokens"
            console.print(render_sample(title, sample["segments"], colour), end="", highlight=False, markup=False)
