"""The core of `vlmtune benchmark`: what to evaluate, batched generation, parsing, scoring, result files.

`benchmark` reads top to bottom: the run's saved recipe → its processor and weights → the split, regenerated
with the same data settings → prompts without the answer → greedy generation in left-padded batches → boxes
parsed per family (or answers compared as text) → metrics → predictions file, then metrics file.

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
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vlmtune_cli import __version__
from vlmtune_cli.config.recipe import load_recipe
from vlmtune_cli.config.schema import Recipe
from vlmtune_cli.errors import UsageError, VlmtuneError
from vlmtune_cli.runs import COMPLETE_MARKER, RunDir, is_complete, write_atomic

EXAMPLES_KEPT = 4
_CHECKPOINT_NAME = re.compile(r"^(?:checkpoint-)?(\d+)$")


@dataclass(frozen=True)
class Target:
    """One thing to benchmark: a run's final weights, one of its checkpoints, or a recipe's base model."""

    name: str
    """How tables and the report name it."""
    run_dir: Path
    """Where the result files go."""
    recipe: Recipe
    checkpoint: str
    """`final`, `checkpoint-N` or `base`."""
    weights: Path | None
    """The directory holding the weights and processor; None for the base model."""
    limit: int | None = None
    """`--limit N` of the command line: the results go to their own files (`-limit-N`)."""

    def _file(self, stem: str, suffix: str) -> Path:
        tag = "" if self.checkpoint == "final" else f"-{self.checkpoint}"
        if self.limit is not None:
            tag += f"-limit-{self.limit}"
        return self.run_dir / f"{stem}{tag}{suffix}"

    @property
    def metrics_file(self) -> Path:
        return self._file("metrics", ".json")

    @property
    def predictions_file(self) -> Path:
        return self._file("predictions", ".jsonl")


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


# --- what to benchmark (no torch needed) -------------------------------------------------------------


def checkpoint_name(value: str | None) -> str:
    """`final`, or `checkpoint-N` from `N` / `checkpoint-N`. Raises UsageError for anything else."""
    if value is None or value == "final":
        return "final"
    match = _CHECKPOINT_NAME.match(value)
    if match is None:
        raise UsageError(f"--checkpoint {value!r}: expected final, checkpoint-N or N (e.g. checkpoint-600)")
    return f"checkpoint-{match.group(1)}"


def run_target(path: Path, checkpoint: str | None = None, command: str = "benchmark", args: str = "") -> Target:
    """The run in `path`, at its final weights or a named complete checkpoint (N or checkpoint-N).

    Raises UsageError for a directory that is not a run, a run that did not finish (listing its checkpoints and
    suggesting `vlmtune {command} {path}{args} --checkpoint ...`), or a checkpoint that is missing or incomplete.
    """
    run = RunDir(Path(path))
    if not run.path.is_dir():
        raise UsageError(f"{path}: no such run directory")
    if not run.recipe_file.is_file():
        raise UsageError(
            f"{path} is not a run directory (no recipe.toml in it)",
            hint="a run directory is <runs_dir>/<variant>/, as `vlmtune train` writes it",
        )
    recipe = load_recipe(run.recipe_file, environ={}, quiet=True)
    name = checkpoint_name(checkpoint)
    complete = [p.name for p in run.complete_checkpoints()]
    hint = (
        f"use a checkpoint: vlmtune {command} {path}{args} --checkpoint {complete[-1]}"
        if complete
        else f"train it first: vlmtune train {run.recipe_file}"
    )
    if name == "final":
        if not run.is_finished():
            raise UsageError(f"{path} has no finished final/ (training did not finish){_listing(run)}", hint=hint)
        return Target(_display(run.path), run.path, recipe, name, run.final)
    weights = run.checkpoints / name
    if not is_complete(weights):
        state = "is incomplete (cut short while saving)" if weights.is_dir() else "does not exist"
        raise UsageError(f"{path}: checkpoint {name} {state}{_listing(run)}", hint=hint)
    return Target(f"{_display(run.path)}@{name}", run.path, recipe, name, weights)


def _display(path: Path) -> str:
    """A path as tables show it: relative to the current directory when it lies below it."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _listing(run: RunDir) -> str:
    complete = [p.name for p in run.complete_checkpoints()]
    incomplete = [p.name for p in run.incomplete_checkpoints()]
    text = f"; complete checkpoints: {', '.join(complete)}" if complete else "; it has no complete checkpoint"
    return text + (f"; incomplete: {', '.join(incomplete)}" if incomplete else "")


def latest_run(runs_dir: Path) -> Path:
    """The run in `runs_dir` whose final/ was completed last. Raises UsageError when there is none."""
    runs_dir = Path(runs_dir)
    dirs = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    finished = [p for p in dirs if is_complete(p / "final")]
    if finished:
        return max(finished, key=lambda p: (p / "final" / COMPLETE_MARKER).stat().st_mtime)
    unfinished = [p.name for p in dirs if (p / "recipe.toml").is_file()]
    if unfinished:
        raise UsageError(
            f"no run in {runs_dir} has finished; unfinished runs: {', '.join(unfinished)}",
            hint=f"name one with a checkpoint: vlmtune benchmark {runs_dir / unfinished[0]} --checkpoint checkpoint-N",
        )
    raise UsageError(
        f"no runs in {runs_dir} yet", hint="train one (vlmtune train recipes/smoke.toml) or name a run directory"
    )


def base_target(recipe_path: Path, runs_dir: Path) -> Target:
    """The untrained base model of a recipe, evaluated with the recipe's data; results go next to its run."""
    recipe = load_recipe(recipe_path)
    return Target(f"{recipe.variant} (base model)", Path(runs_dir) / recipe.variant, recipe, "base", None)


# --- loading -------------------------------------------------------------------------------------------


def check_family(target: Target, family: Any) -> None:
    """Refuse weights of another model family than the run's recipe names. Raises UsageError."""
    weights = target.weights
    if weights is None:
        return
    adapter = weights / "adapter_model.safetensors"
    if (weights / "adapter_config.json").is_file():
        if not adapter.is_file():
            return  # an old-style .bin adapter: PEFT's own loading reports a mismatch
        from safetensors import safe_open

        from vlmtune_cli.models.families import find_component

        with safe_open(str(adapter), framework="numpy") as handle:  # key names only; no torch needed
            foreign = [key for key in handle.keys() if find_component(family, key) is None]
        if foreign:
            raise UsageError(
                f"{target.run_dir}: recipe.toml says model.name = {target.recipe.model.name!r} ({family.name}), "
                f"but the adapter in {weights} was trained on another model family ({foreign[0]} is no "
                f"{family.name} weight)",
                hint="restore model.name in recipe.toml to the model it was trained on",
            )
        return
    config = weights / "config.json"
    if not config.is_file():
        raise UsageError(f"{weights} holds neither a PEFT adapter nor a model (no adapter_config.json, no config.json)")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type not in family.model_types:
        raise UsageError(
            f"{target.run_dir}: recipe.toml says model.name = {target.recipe.model.name!r} ({family.name}), "
            f"but {weights} holds a {model_type!r} model",
            hint="restore model.name in recipe.toml to the model it was trained on",
        )


def load_processor_and_family(target: Target, cache_dir: Path) -> tuple[Any, Any]:
    """(processor, family) of a target: the processor saved with its weights, the recipe's pixel bounds.

    Raises UsageError for weights of another family than the recipe names (see `check_family`).
    """
    from vlmtune_cli.models import loading

    recipe = target.recipe
    family = loading.load_family(recipe.model, cache_dir)
    check_family(target, family)
    return loading.load_processor(recipe.model, recipe.data, cache_dir, from_dir=target.weights), family


def load_model(target: Target, cache_dir: Path) -> Any:
    """The target's model in eval mode (adapters merged), on the GPU when there is one."""
    import torch

    from vlmtune_cli.models import loading

    recipe = target.recipe
    if target.weights is None:
        model = loading.load_model(recipe.model, cache_dir)
    else:
        model = loading.load_trained_model(recipe.model, target.weights, cache_dir)
    if torch.cuda.is_available() and recipe.model.quantization == "none":
        model = model.to("cuda")
    return model.eval()


def check_split(recipe: Recipe, split: str) -> None:
    """Raises UsageError unless `split` is one of the recipe's two splits."""
    data = recipe.data
    if split not in (data.train_split, data.test_split):
        raise UsageError(
            f"split {split!r} is not one of this recipe's splits ({data.train_split!r}, {data.test_split!r})",
            hint=f"--split {data.test_split}, or set benchmark.split in the recipe",
        )


def load_samples(recipe: Recipe, split: str, family: Any, processor: Any, limit: int | None) -> list[dict]:
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
