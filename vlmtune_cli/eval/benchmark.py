"""The core of `vlmtune benchmark`: what to evaluate, batched generation, parsing, scoring, result files.

What to evaluate (a run, a checkpoint, a base model) is resolved in runs.py, its weights loaded by
models/weights.py. `benchmark` reads top to bottom: the run's saved recipe → its processor and weights → the
split, regenerated with the same data settings → prompts without the answer → greedy generation in left-padded
batches → boxes parsed per family (or answers compared as text) → metrics → predictions file, then metrics file.

Where results go (`Target.metrics_file`):
  a run's final/            <run>/predictions.jsonl and <run>/metrics.json
  --checkpoint checkpoint-N <run>/predictions-checkpoint-N.jsonl and <run>/metrics-checkpoint-N.json
  --base (a recipe's base)  <runs_dir>/<variant>/predictions-base.jsonl and metrics-base.json
  --limit N                 `-limit-N` added to either name (metrics-limit-2.json, metrics-base-limit-2.json):
                            a quick look at a few samples never replaces the full results. A `benchmark.limit`
                            set in the recipe is part of the benchmark's definition and writes the plain names.
Both files are written atomically, predictions first: an interrupted benchmark leaves the previous pair (or
none), never a metrics.json for results that were not all written. metrics.json records the sha256 of the
predictions it summarises.

Detection scoring uses the sample's first image: boxes are in its original pixels. Importing this module is
cheap (torch and transformers load inside the functions), so bad input fails fast.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmtune_cli import __version__
from vlmtune_cli.config.schema import Recipe
from vlmtune_cli.errors import UsageError, VlmtuneError
from vlmtune_cli.models.weights import check_family, load_model, load_processor_and_family  # noqa: F401
from vlmtune_cli.runs import Target, base_target, checkpoint_name, latest_run, run_target, write_atomic  # noqa: F401

if TYPE_CHECKING:
    from vlmtune_cli.models.families import Family

EXAMPLES_KEPT = 4


@dataclass
class BenchmarkOptions:
    """What the command line overrides of the recipe's `[benchmark]` table (None: the recipe's value)."""

    split: str | None = None
    limit: int | None = None
    batch_size: int | None = None
    max_new_tokens: int | None = None


@dataclass
class BenchmarkResult:
    target: Target
    record: dict[str, Any]
    """The content of metrics.json."""
    examples: list[dict[str, Any]] = field(default_factory=list)
    """The first few samples: image, predicted and true boxes (detection) or output and answer (VQA)."""

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record["metrics"]


def check_split(recipe: Recipe, split: str) -> None:
    """Raises UsageError unless `split` is one of the recipe's two splits."""
    data = recipe.data
    if split not in (data.train_split, data.test_split):
        raise UsageError(
            f"split {split!r} is not one of this recipe's splits ({data.train_split!r}, {data.test_split!r})",
            hint=f"--split {data.test_split}, or set benchmark.split in the recipe",
        )


def load_samples(recipe: Recipe, split: str, family: Family, processor: Any, limit: int | None) -> list[dict]:
    """The split as training saw it (same data settings and box format), cut to `limit`. Raises UsageError."""
    from vlmtune_cli.data.sources import load_splits

    data = recipe.data
    check_split(recipe, split)
    samples = load_splits(data, box_format=family.box_format, processor=processor)[split]
    if not samples:
        raise UsageError(
            f"split {split!r} of {data.source} is empty",
            hint=f"data.split_ratio = 1.0 leaves no test samples; lower it, or use --split {data.train_split}",
        )
    return samples[:limit] if limit else samples


# --- generation ----------------------------------------------------------------------------------------


def prompt_messages(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation up to the answer the model must produce (the last assistant turn is left out)."""
    messages = sample["messages"]
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages:
        raise UsageError(f"sample {sample.get('id')} has nothing before its answer to prompt with")
    return messages


def generate(
    model: Any,
    processor: Any,
    samples: list[dict[str, Any]],
    *,
    batch_size: int,
    max_new_tokens: int,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[str], list[str]]:
    """Greedy answers to every sample, `batch_size` at a time: (prompts, outputs), in sample order.

    Left padding, so every prompt's last token sits at the end of its row and generated tokens follow it.
    Similar-sized samples share a batch (less padding). Outputs keep special tokens such as `<|box_start|>`
    (the box syntax of some families) and end before the first end-of-turn or padding token.
    """
    import torch
    from transformers import GenerationConfig

    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    prompts = [
        processor.apply_chat_template(prompt_messages(s), tokenize=False, add_generation_prompt=True) for s in samples
    ]
    stop = _stop_ids(model, tokenizer)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=sorted(stop),
        pad_token_id=_pad_id(tokenizer, stop),
    )
    device = next(model.parameters()).device
    order = sorted(
        range(len(samples)), key=lambda i: (sum(im.width * im.height for im in samples[i]["images"]), len(prompts[i]))
    )
    outputs = [""] * len(samples)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        # One list of images per sample: Qwen flattens it, Mllama needs it nested to batch.
        images = [samples[i]["images"] for i in rows]
        # add_special_tokens=False: the chat template wrote the BOS; a Llama tokenizer would add a second one.
        inputs = processor(
            text=[prompts[i] for i in rows],
            images=images if any(images) else None,
            padding=True,
            return_tensors="pt",
            add_special_tokens=False,
        ).to(device)
        with torch.inference_mode():
            generated = model.generate(**inputs, generation_config=config)
        for i, tokens in zip(rows, generated[:, inputs["input_ids"].shape[1] :].tolist(), strict=True):
            end = next((k for k, token in enumerate(tokens) if token in stop), len(tokens))
            outputs[i] = tokenizer.decode(tokens[:end], skip_special_tokens=False)
        if on_batch is not None:
            on_batch(len(rows))
    return prompts, outputs


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    ids |= {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
    return ids


def _pad_id(tokenizer: Any, stop: set[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop)


# --- the whole benchmark of one target -----------------------------------------------------------------


def benchmark(
    target: Target,
    cache_dir: Path,
    options: BenchmarkOptions | None = None,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> BenchmarkResult:
    """Generate, score and write the result files of one target (see the module docstring).

    `on_start(n)` is called with the number of samples before generation; `on_batch(k)` after each batch.
    Raises UsageError for bad input (split, data, weights of another family), VlmtuneError for failures.
    """
    from vlmtune_cli.eval.scoring import score

    overrides = options or BenchmarkOptions()
    if overrides.limit is not None:
        target = dataclasses.replace(target, limit=overrides.limit)
    recipe = target.recipe
    section = recipe.benchmark
    split = overrides.split or section.split
    limit = overrides.limit or section.limit
    batch_size = overrides.batch_size or section.batch_size
    max_new_tokens = overrides.max_new_tokens or section.max_new_tokens

    check_split(recipe, split)
    # Cheap steps first: bad data or a wrong family fails before the weights load.
    processor, family = load_processor_and_family(target, cache_dir)
    samples = load_samples(recipe, split, family, processor, limit)
    model = load_model(target, cache_dir)
    if on_start is not None:
        on_start(len(samples))
    started = time.monotonic()
    try:
        prompts, outputs = generate(
            model, processor, samples, batch_size=batch_size, max_new_tokens=max_new_tokens, on_batch=on_batch
        )
    except (RuntimeError, ValueError) as exc:
        raise VlmtuneError(
            f"generation failed for {target.name}: {exc}", hint="set VLMTUNE_DEBUG=1 for the traceback"
        ) from exc
    seconds = time.monotonic() - started
    rows, metrics, examples = score(
        section.task, family.box_format, processor, recipe.data, samples, prompts, outputs, keep=EXAMPLES_KEPT
    )

    predictions = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    record = {
        "name": target.name,
        "run": str(target.run_dir),
        "checkpoint": target.checkpoint,
        "weights": str(target.weights) if target.weights else None,
        "model": recipe.model.name,
        "family": family.name,
        "box_format": family.box_format,
        "task": section.task,
        "split": split,
        "samples": len(samples),
        "limit": limit,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "metrics": metrics,
        "generation_seconds": round(seconds, 3),
        "samples_per_second": round(len(samples) / seconds, 3) if seconds > 0 else None,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "vlmtune_version": __version__,
        "predictions": target.predictions_file.name,
        "predictions_sha256": hashlib.sha256(predictions.encode("utf-8")).hexdigest(),
    }
    write_atomic(target.predictions_file, predictions)
    write_atomic(target.metrics_file, json.dumps(record, indent=2) + "\n")
    return BenchmarkResult(target, record, examples)
