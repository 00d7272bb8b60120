"""vlmtune predict RUN IMAGE... [--prompt TEXT] [--out DIR] [--checkpoint NAME] [--max-new-tokens T] [--json]

Ask a trained run about a few images: greedy answers with the run's processor and chat template, boxes parsed
with the model family's box format and drawn in red onto copies of the images (PNG) in --out, default
<run>/predictions-images/, with predict.jsonl next to them. The default prompt is the user text of the first
training sample of the run's data (the command says so). RUN is a run directory or a variant name in runs_dir.

    vlmtune predict runs/v2 photos/a.jpg photos/b.jpg
    vlmtune predict v2 shelf.png --prompt "Detect the nutrition table." --out /tmp/pred --json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vlmtune_cli.commands._options import JsonOpt
from vlmtune_cli.config.settings import load_settings
from vlmtune_cli.console import console, err_console


def predict(
    run: Annotated[
        Path, typer.Argument(metavar="RUN", show_default=False, help="Run directory, or a variant name in runs_dir.")
    ],
    images: Annotated[
        list[Path],
        typer.Argument(metavar="IMAGE...", show_default=False, help="Image files to ask about, one answer each."),
    ],
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt",
            metavar="TEXT",
            show_default=False,
            help="The question (default: the user text of the run's first training sample).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="DIR",
            show_default=False,
            help="Where the images with boxes go (default: <run>/predictions-images).",
        ),
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            metavar="NAME",
            show_default=False,
            help="Use checkpoints/NAME (checkpoint-N or N) instead of final/.",
        ),
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-new-tokens",
            min=1,
            show_default=False,
            help="Longest answer, in tokens (default: the recipe's benchmark.max_new_tokens).",
        ),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Answer a few images with a trained run; boxes parsed and drawn onto copies of the images."""
    from vlmtune_cli.eval import predict
    from vlmtune_cli.models import export

    settings = load_settings()
    shown = "".join(f" {image}" for image in images)
    target = export.run_weights(export.find_run(run, settings.runs_dir), checkpoint, "predict", shown)
    result = predict.predict(target, settings.cache_dir, images, prompt=prompt, out=out, max_new_tokens=max_new_tokens)
    if result.prompt_source != "--prompt":
        err_console.print(
            f"prompt {result.prompt!r} (from the {result.prompt_source}; --prompt to change it)",
            highlight=False,
            markup=False,
        )
    if json_output:
        typer.echo(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
        return
    from rich.markup import escape
    from rich.table import Table

    view = Table(title=f"{target.run_dir} · {target.checkpoint} · boxes as {result.box_format}", title_justify="left")
    view.add_column("image", overflow="fold")
    view.add_column("answer", overflow="fold")
    view.add_column("boxes (x1, y1, x2, y2 in pixels)", overflow="fold")
    for p in result.predictions:
        boxes = escape(
            "\n".join(
                f"{label + ' ' if label else ''}{tuple(box)}"
                for box, label in zip(p.boxes, p.labels or [""] * len(p.boxes), strict=False)
            )
            or "–"
        )
        if not p.ok:
            boxes += f"\n[yellow]({escape(str(p.reason))})[/]"
        view.add_row(escape(str(p.image)), escape(p.output), boxes)
    console.print(view)
    console.print(f"images with boxes: {result.out}", highlight=False, markup=False)
