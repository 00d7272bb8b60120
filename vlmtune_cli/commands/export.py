"""vlmtune export RUN [--merge] [--out DIR] [--checkpoint NAME] [--force] [--json]

Export a run's weights with its processor as a folder plain transformers loads, no vlmtune needed:
with --merge the LoRA adapter merged into the base model (`AutoModelForImageTextToText.from_pretrained(DIR)`),
without it the adapter alone, its adapter_config pointing at the base model (loads with peft installed).
A full fine-tune is copied as it is. RUN is a run directory or a variant name in runs_dir.

    vlmtune export runs/v2 --merge                       # → runs/v2/export/merged
    vlmtune export v2 --out /models/v2-adapter           # the adapter, base model named in adapter_config.json
    vlmtune export runs/v2 --merge --checkpoint checkpoint-600 --out /models/v2-600
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vlmtune_cli.commands._options import JsonOpt
from vlmtune_cli.config.settings import load_settings
from vlmtune_cli.console import console, err_console


def export(
    run: Annotated[
        Path, typer.Argument(metavar="RUN", show_default=False, help="Run directory, or a variant name in runs_dir.")
    ],
    merge: Annotated[bool, typer.Option("--merge", help="Merge the LoRA adapter into the base model.")] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="DIR",
            show_default=False,
            help="Folder to write (default: <run>/export/merged, .../adapter or .../full).",
        ),
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            metavar="NAME",
            show_default=False,
            help="Export checkpoints/NAME (checkpoint-N or N) instead of final/.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Export a run as a folder plain transformers loads: merged model, or adapter + base model reference."""
    from vlmtune_cli.models import export

    settings = load_settings()
    target = export.run_weights(export.find_run(run, settings.runs_dir), checkpoint, "export")
    out = out if out is not None else export.default_out(target, merge)
    export.check_out(out, force, target)  # fail before loading any weights
    err_console.print(f"exporting {target.name} ({target.checkpoint}) to {out}", highlight=False, markup=False)
    result = export.export(target, settings.cache_dir, out, merge=merge, force=force)
    if json_output:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    what = {"merged": "merged model", "adapter": "LoRA adapter", "full": "fully fine-tuned model"}[result.kind]
    console.print(
        f"exported the {what} of {target.name} ({result.checkpoint}) → {result.out}", highlight=False, markup=False
    )
    if result.kind == "full" and merge:
        console.print("(a full fine-tune has no adapter: --merge changed nothing)", highlight=False, markup=False)
    if result.kind == "adapter":
        console.print(
            f"base model: {result.base_model}; merge it with --merge for a standalone model",
            highlight=False,
            markup=False,
        )
    console.print(
        f"load it: AutoModelForImageTextToText.from_pretrained({str(result.out)!r})", highlight=False, markup=False
    )
