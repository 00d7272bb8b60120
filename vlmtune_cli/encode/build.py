"""Tokenising a recipe's dataset into the cache (see cache.py for the layout), and serving it to the trainer.

Each sample is encoded once: chat template, processor, labels for `loss_on`. Stored per sample: its id, token ids
and labels (int32), the processor's small outputs (`image_grid_thw`, `mm_token_type_ids`, Mllama's aspect-ratio
inputs and `cross_attention_mask`) and each image resized to the model's resolution (Qwen-VL; Mllama's as they came)
as raw RGB. `pixel_values` are not stored: the data loader recomputes them, bit-identical,
with the model's image processor (inputs.py says how, benchmarks/README.md why). The entry's files: entry.py.

A sample is dropped, never silently mangled, when it is longer than `data.max_length` (and the recipe says
`overlength = "drop"`) or when it has no trained token under `loss_on` (an all-masked sample would add nothing
but noise to the loss normalisation), or when a target box is bad under `data.bad_boxes = "drop"`
(data/answers.py). The report says how many and which, and which answers do not parse (answer_check.py).

Samples are read lazily and written in shards of at most SHARD_ROWS samples (record batches of BATCH_ROWS), so
memory stays flat as the dataset grows; large datasets are split over worker processes.

Heavy libraries are imported inside functions; a cache hit imports neither torch nor transformers.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmtune_cli import __version__
from vlmtune_cli.config.schema import DataSection, Recipe
from vlmtune_cli.encode import cache
from vlmtune_cli.encode.answer_check import check_answer, refuse_unparsed
from vlmtune_cli.encode.entry import BATCH_ROWS, ShardWriter, TokenizeResult, open_splits, read_rows
from vlmtune_cli.encode.inputs import probe_layout, processor_outputs
from vlmtune_cli.encode.labels import LabelSpec, answer_tokens, build_labels, count_trained
from vlmtune_cli.encode.stats import LOSS_MODES, SplitReport
from vlmtune_cli.errors import UsageError, VlmtuneError

if TYPE_CHECKING:
    from collections.abc import Callable

    from vlmtune_cli.models.families import Family

SHARD_ROWS = 1024
SAMPLES_PER_WORKER = 400  # below this a worker process costs more than it saves (benchmarks/README.md)

__all__ = ["SplitReport", "TokenizeResult", "open_splits", "read_rows", "tokenize_recipe"]


def tokenize_recipe(
    recipe: Recipe,
    cache_dir: Path,
    *,
    force: bool = False,
    workers: int = 0,
    processor: Any = None,
    family: Family | None = None,
    progress: bool = True,
    ids_without_pixels: bool = True,
) -> TokenizeResult:
    """Tokenise the recipe's dataset into the cache, or find it there.

    `workers` = 0 picks a number from the dataset size and the cores; 1 encodes in this process. `processor`
    and `family` may be passed when the caller has them loaded already. `ids_without_pixels=False` sends every
    sample through the full processor call instead of the checked shortcut (inputs.py; the benchmark compares).
    Raises UsageError for bad data (a missing or corrupt image, a sample over max_length under
    `overlength = "error"`, no trainable sample) and
    VlmtuneError when the work fails otherwise (hub unreachable, a processor whose outputs cannot be cached).
    """
    started = time.monotonic()
    fp = cache.fingerprint(recipe, cache_dir)
    if not force and (hit := _hit(fp, cache_dir, started)) is not None:
        return hit
    reason = None if force else cache.explain_miss(cache_dir, fp.inputs)
    from vlmtune_cli.models import loading

    if processor is None:
        processor = loading.load_processor(recipe.model, recipe.data, cache_dir)
    if family is None:
        family = loading.load_family(recipe.model, cache_dir)
    if not fp.model_resolved:  # loading just fetched it into the hub cache: now its files can be hashed
        fp = cache.fingerprint(recipe, cache_dir)
    final = cache.entry_path(cache_dir, fp.key)
    with cache.locked(cache_dir, fp.key):
        if not force and (hit := _hit(fp, cache_dir, started)) is not None:
            return hit  # a concurrent run built it while we waited
        staging = cache.staging_dir(cache_dir, fp.key)
        try:
            manifest, stats = _build(recipe, fp, processor, family, staging, workers, progress, ids_without_pixels)
            cache.commit(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return TokenizeResult(final, fp.key, False, time.monotonic() - started, manifest, stats, fp.model_path, reason)


def _hit(fp: cache.Fingerprint, cache_dir: Path, started: float) -> TokenizeResult | None:
    path = cache.entry_path(cache_dir, fp.key)
    manifest = cache.read_entry(path)
    if manifest is None:
        return None
    stats = json.loads((path / cache.STATS).read_text())
    return TokenizeResult(path, fp.key, True, time.monotonic() - started, manifest, stats, fp.model_path)


# --- building ------------------------------------------------------------------------------------------


@dataclass
class _Job:
    """Everything a worker needs, set before the worker processes fork (so nothing is pickled)."""

    processor: Any
    spec: LabelSpec
    data: DataSection
    loss_on: str
    layout: dict[str, Any]
    splits: dict[str, Any]
    staging: Path
    box_format: str = "plain"
    answer_check: str = "off"
    counter: Any = None
    on_sample: Callable[[], None] | None = None


_JOB: _Job | None = None


def _build(
    recipe: Recipe,
    fp: cache.Fingerprint,
    processor: Any,
    family: Family,
    staging: Path,
    workers: int,
    progress: bool,
    ids_without_pixels: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    global _JOB
    from vlmtune_cli.data.sources import lazy_splits

    started = time.monotonic()
    data = recipe.data
    spec = LabelSpec.for_family(processor.tokenizer, family)
    layout = probe_layout(processor, ids_without_pixels=ids_without_pixels)
    splits = lazy_splits(data, box_format=family.box_format, processor=processor)
    names = [data.train_split, data.test_split]
    total = sum(len(splits[n]) for n in names)
    workers = workers or _auto_workers(total)
    per_shard = max(BATCH_ROWS, min(SHARD_ROWS, math.ceil(total / (workers * 4))))
    tasks = [
        (name, i // per_shard, i, min(i + per_shard, len(splits[name])))
        for name in names
        for i in range(0, len(splits[name]), per_shard)
    ]
    workers = max(1, min(workers, len(tasks)))
    _JOB = _Job(
        processor,
        spec,
        data,
        recipe.tuning.loss_on,
        layout,
        splits,
        staging,
        family.box_format,
        cache.answer_check(recipe),
    )
    try:
        results = _run(tasks, total, workers, progress)
    finally:
        _JOB = None

    reports = {name: SplitReport(name) for name in names}
    shards: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for name, file, rows, report in sorted(results, key=lambda r: (names.index(r[0]), r[1])):
        reports[name].merge(report)
        if rows:
            shards[name].append({"file": file, "rows": rows})
    if cache.answer_check(recipe) == "error":
        refuse_unparsed(data.source, family, [reports[name] for name in names])
    train = reports[data.train_split]
    if not train.kept:
        drops = f" ({train.describe_drops()})" if train.describe_drops() else ""
        raise UsageError(
            f"split {data.train_split!r} of {data.source} has no trainable sample{drops}",
            hint="check data.source, data.max_samples, data.max_length and tuning.loss_on",
        )
    stats = {
        "fingerprint": fp.key,
        "source": data.source,
        "loss_on": recipe.tuning.loss_on,
        "max_length": data.max_length,
        "train_split": data.train_split,
        "test_split": data.test_split,
        "splits": {name: reports[name].summary(data.max_length) for name in names},
        "build_seconds": round(time.monotonic() - started, 2),
        "workers": workers,
    }
    manifest = {
        "code_version": cache.CODE_VERSION,
        "fingerprint": fp.key,
        "vlmtune": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "inputs": fp.inputs,
        "model_path": fp.model_path,
        "images": layout["images"],
        "ids_without_pixels": layout["expand"],
        "extras": layout["extras"],
        "nested_images": layout["nested"],
        "image_token_id": layout["image_token_id"],
        "label_spec": {
            "image_ids": sorted(spec.image_ids),
            "header_ids": list(spec.header_ids),
            "end_id": spec.end_id,
            "pad_id": spec.pad_id,
        },
        "splits": {name: {"rows": reports[name].kept, "shards": shards[name]} for name in names},
    }
    cache.write_json(staging / cache.STATS, stats)
    cache.write_json(staging / cache.MANIFEST, manifest)  # last: its presence is what "complete" means
    return manifest, stats


def _auto_workers(total: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 8, total // SAMPLES_PER_WORKER))


def _run(tasks: list[tuple], total: int, workers: int, progress: bool) -> list[tuple]:
    assert _JOB is not None, "_build sets the job before it runs shards"
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    from vlmtune_cli.console import err_console

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not progress or not err_console.is_terminal,
    )
    with bar:
        task = bar.add_task(f"tokenizing ({workers} worker{'s' * (workers > 1)})", total=total)
        if workers == 1:
            _JOB.on_sample = lambda: bar.advance(task)
            return [_run_shard(t) for t in tasks]
        import multiprocessing

        # fork: the workers inherit the loaded processor and the sources (plugin modules, open datasets).
        context = multiprocessing.get_context("fork")
        _JOB.counter = context.Value("q", 0)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no warning about a fork after tokenising
        pool = context.Pool(workers, initializer=_worker_signals)
        try:
            pending = pool.map_async(_run_shard, tasks, chunksize=1)
            while not pending.ready():
                pending.wait(0.2)
                bar.update(task, completed=_JOB.counter.value)
            results = pending.get()
            pool.close()  # the workers exit on their own once the queue is drained
            return results
        finally:
            pool.terminate()
            pool.join()


def _worker_signals() -> None:
    """A forked worker must die on the SIGTERM `Pool.terminate` sends: it inherits the parent's Python handlers, and
    `vlmtune train`'s SIGTERM handler (checkpoint, then stop) only sets a flag, which left the pool waiting for
    ever. Ctrl-C is the parent's to handle."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_shard(task: tuple) -> tuple[str, str, int, SplitReport]:
    """Encode samples [start, end) of a split into one shard file; returns (split, file, rows, report)."""
    name, number, start, end = task
    job = _JOB
    assert job is not None, "_build sets the job before it runs shards"
    # Shards sit under the split's role, not its name: a split name need not be a valid directory name.
    file = f"{'train' if name == job.data.train_split else 'test'}/{number:05d}.arrow"
    (job.staging / file).parent.mkdir(parents=True, exist_ok=True)
    report = SplitReport(name)
    with ShardWriter(job.staging / file, job.layout) as writer:
        for k in range(start, end):
            row = _encode(job, job.splits[name][k], name, report)
            if row is not None:
                writer.add(row)
            if job.counter is not None:
                with job.counter.get_lock():
                    job.counter.value += 1
            elif job.on_sample is not None:
                job.on_sample()
    return name, file, writer.rows, report


def _encode(job: _Job, sample: dict[str, Any], split: str, report: SplitReport) -> dict[str, Any] | None:
    """One conversation → a cache row (None when dropped), with the same ids and labels as `encode_sample`."""
    import numpy as np

    sample_id = str(sample.get("id", f"{split}-{len(report.lengths)}"))
    layout, processor = job.layout, job.processor
    if sample.get("dropped"):  # data.bad_boxes = "drop" (data/answers.py)
        report.bad_boxes_dropped.append(sample_id)
        return None
    if sample.get("clipped"):
        report.bad_boxes_clipped.append(sample_id)
    if job.answer_check != "off" and not sample.get("rendered"):  # answer_check.py
        check_answer(sample, sample_id, job.box_format, job.processor, job.data, report)
    try:
        text = processor.apply_chat_template(sample["messages"], tokenize=False, add_generation_prompt=False)
        encoded, images = processor_outputs(processor, text, sample.get("images") or [], layout)
    except Exception as exc:
        raise UsageError(
            f"sample {sample_id} of split {split!r}: the processor failed: {type(exc).__name__}: {exc}"
        ) from exc
    ids = encoded["input_ids"][0].tolist()
    report.lengths.append(len(ids))
    report.visual_tokens += _visual_tokens(encoded, ids, len(images), layout)
    if len(ids) > job.data.max_length:
        if job.data.overlength == "error":
            raise UsageError(
                f"sample {sample_id} of split {split!r} has {len(ids)} tokens, over data.max_length "
                f"({job.data.max_length}); it cannot be cut without cutting into its image tokens",
                hint='raise data.max_length, lower data.max_pixels, or set data.overlength = "drop"',
            )
        report.overlength.append(sample_id)
        return None
    try:
        in_answer = answer_tokens(text, ids, processor.tokenizer, job.spec)
    except VlmtuneError:
        if job.loss_on == "assistant":
            raise
        in_answer = None  # only the statistics' "trained under loss_on=assistant" share is lost
    labels = build_labels(ids, job.loss_on, job.spec, in_answer)  # type: ignore[arg-type]
    trained = count_trained(labels)
    if trained == 0:
        report.untrained.append(sample_id)
        return None
    report.kept += 1
    report.total_tokens += len(ids)
    report.trained_tokens += trained
    for mode in LOSS_MODES:
        if mode != job.loss_on and mode == "assistant" and in_answer is None:
            continue
        n = trained if mode == job.loss_on else count_trained(build_labels(ids, mode, job.spec, in_answer))  # type: ignore
        report.trained_by_mode[mode] = report.trained_by_mode.get(mode, 0) + n
    row: dict[str, Any] = {
        "id": sample_id,
        "input_ids": ids,
        "labels": labels,
        "images": [image.tobytes() for image in images],
        "image_sizes": [list(image.size) for image in images],
    }
    for key, (per_token, ndim, _) in layout["extras"].items():
        value = encoded.get(key)
        if value is not None:
            value = np.asarray(value)[0] if per_token else np.asarray(value)
            if value.ndim != ndim:
                raise VlmtuneError(
                    f"sample {sample_id}: the processor's {key!r} has {value.ndim} dimensions "
                    f"here but {ndim} in the probe"
                )
            value = value.tolist()
        row[key] = value
    return row


def _visual_tokens(encoded: dict[str, Any], ids: list[int], n_images: int, layout: dict[str, Any]) -> list[int]:
    if not n_images:
        return []
    grid = encoded.get("image_grid_thw")
    if grid is not None and len(grid) == n_images:
        return [int(t * h * w) // layout["merge"] ** 2 for t, h, w in grid.tolist()]
    visual = set(layout["visual_token_ids"])
    pads = sum(1 for t in ids if t in visual)
    return [pads // n_images] * n_images
