"""The one place that builds TRL's SFTConfig and SFTTrainer and runs them. Reads top to bottom:
run directory → processor and data → model and tuning → trainer → train (resuming if it can) → save.

Heavy imports live inside functions; importing this module is cheap, calling `train` is not.
"""

from __future__ import annotations

import errno
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from vlmtune_cli.config.schema import Recipe
from vlmtune_cli.config.settings import Settings
from vlmtune_cli.console import err_console
from vlmtune_cli.errors import UsageError, VlmtuneError
from vlmtune_cli.fsutil import is_rank_zero, replace_dir
from vlmtune_cli.models.families import check_packing
from vlmtune_cli.models.placement import (
    describe_precision,
    training_load_dtype,
)
from vlmtune_cli.runs import RunDir, mark_complete, prepare_run_dir, run_dir_for, write_atomic, write_env
from vlmtune_cli.train.ranks import from_rank_zero, init_from_env, world_size
from vlmtune_cli.train.run_lock import run_dir_lock
from vlmtune_cli.train.sft_config import build_sft_config, precision_for
from vlmtune_cli.train.sharding import check_sharding, shards

if TYPE_CHECKING:
    from vlmtune_cli.models.families import Family
    from vlmtune_cli.models.tuning import TrainableRow
    from vlmtune_cli.train.sft_trainer import VlmtuneTrainer


@dataclass
class TrainResult:
    run_dir: Path
    final_dir: Path | None
    global_step: int
    epoch: float
    final_loss: float | None
    resumed_from: Path | None
    seconds: float
    finished: bool = True


def train(
    recipe: Recipe,
    settings: Settings,
    *,
    overwrite: bool = False,
    require_resume: bool = False,
    stop_at_epoch: int | None = None,
    argv: list[str] | None = None,
    per_step_walks: bool = False,
) -> TrainResult:
    """Train `recipe` into `<runs_dir>/<variant>/`, resuming from its newest complete checkpoint.

    `stop_at_epoch` ends the run early at that epoch boundary with a checkpoint (one link of a chain) while
    keeping the learning-rate schedule planned for all of `training.epochs`. `per_step_walks`: see `VlmtuneTrainer`.
    Raises UsageError for a recipe that cannot run (bad data, nothing to train), VlmtuneError when training fails,
    UsageError when another process is training in the same run directory (see run_lock.py).
    Under torch.distributed, rank 0 alone prepares the run directory and chooses the checkpoint (ranks.py).
    """
    check_sharding(recipe)  # before the process group: a refusal must not wait for the other ranks
    init_from_env()
    run = run_dir_for(recipe, settings.runs_dir)
    with run_dir_lock(run):
        return _train_locked(recipe, settings, run, overwrite, require_resume, stop_at_epoch, argv, per_step_walks)


def _train_locked(
    recipe: Recipe,
    settings: Settings,
    run: RunDir,
    overwrite: bool,
    require_resume: bool,
    stop_at_epoch: int | None,
    argv: list[str] | None,
    per_step_walks: bool,
) -> TrainResult:
    started = time.monotonic()
    from vlmtune_cli.models import loading
    from vlmtune_cli.models.tuning import apply_tuning, trainable_table

    # Rank 0 builds a built-in model into the cache while the others wait: with the process group up,
    # transformers' save_pretrained writes nothing on ranks > 0, so a build there would come out empty.
    from_rank_zero(lambda: loading.resolve_model_path(recipe.model.name, settings.cache_dir))
    family = loading.load_family(recipe.model, settings.cache_dir)  # the config alone
    check_packing(family, recipe.training.packing)  # before the run directory, the data or the weights
    # Rank 0 alone deletes (--overwrite), writes and reads the run directory; the others wait for its answer.
    checkpoint = from_rank_zero(lambda: _prepare(run, recipe, overwrite, require_resume, argv))

    if recipe.model.trust_remote_code:
        err_console.print(
            f"[yellow]model.trust_remote_code = true: running code shipped with {escape(recipe.model.name)}[/]"
        )
    processor = loading.load_processor(recipe.model, recipe.data, settings.cache_dir)
    train_set, eval_set = _encoded_splits(recipe, processor, family, settings.cache_dir)

    precision, note = precision_for(recipe)
    err_console.print(describe_precision(precision, note), highlight=False)
    dtype = training_load_dtype(recipe.model.dtype, precision)
    model = loading.load_model(recipe.model, settings.cache_dir, dtype=dtype, on_gpu=True)
    model = apply_tuning(model, recipe.tuning, recipe.lora, seed=recipe.training.seed)
    _print_trainable(trainable_table(model, family))
    # A full fine-tune's weights are restored here (restore.py says why); a sharded checkpoint (FSDP) holds no
    # safetensors: Trainer loads it, each rank its own shard, once the model is sharded.
    restore_here = checkpoint is not None and not recipe.uses_lora and not shards(recipe)
    if checkpoint is not None and restore_here:
        from vlmtune_cli.models.restore import restore_full_weights

        restore_full_weights(model, checkpoint)

    from vlmtune_cli.train.sft_trainer import NonFiniteStep  # TRL is imported by now: build_trainer needs it

    trainer = build_trainer(
        recipe, run, model, processor, train_set, eval_set, stop_at_epoch=stop_at_epoch, per_step_walks=per_step_walks
    )
    if restore_here:
        # The weights are restored already; the trainer's own attempt would only log every key as missing.
        trainer._load_from_checkpoint = lambda *args, **kwargs: None
    if checkpoint is not None and is_rank_zero():
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        err_console.print(
            f"resuming from {checkpoint} (step {state['global_step']}, epoch {state['epoch']:g})", markup=False
        )
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except NonFiniteStep as exc:
        # Every rank raises at the same step (the ranks agreed), so one more collective here is safe.
        kept = from_rank_zero(run.latest_checkpoint)
        where = f" on rank {exc.rank}" if exc.rank is not None else ""
        finite = " while the loss was finite" if exc.quantity == "gradient norm" else ""
        raise VlmtuneError(
            f"the {exc.quantity} became {exc.value} at step {exc.step}{where}{finite}; "
            "training stopped before that step's update",
            hint=(f"the last good checkpoint is {kept}" if kept else "no checkpoint was saved before it")
            + '; lower training.lr, check the data, or use precision = "fp32"',
        ) from None
    except (OSError, RuntimeError) as exc:
        # torch.save reports a full disk as a RuntimeError ("file write failed"), so ask the file system.
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or _disk_is_full(run):
            kept = run.latest_checkpoint()
            raise VlmtuneError(
                f"the disk is full while training into {run.path} ({type(exc).__name__}: {str(exc)[:200]})",
                hint=(
                    f"free space or lower training.save_total_limit, then run the same command: it resumes from {kept}"
                    if kept
                    else "free space; no complete checkpoint was written yet"
                ),
            ) from None
        if isinstance(exc, OSError):
            raise VlmtuneError(f"writing the run in {run.path} failed: {exc}") from exc
        raise VlmtuneError(f"training failed: {exc}", hint="set VLMTUNE_DEBUG=1 for the traceback") from exc
    except ValueError as exc:
        raise VlmtuneError(f"training failed: {exc}", hint="set VLMTUNE_DEBUG=1 for the traceback") from exc

    state = trainer.state
    from vlmtune_cli.train.callbacks import stop_requested

    # A chain link (stop_at_epoch) or a run stopped by a signal (stop_requested) is finished only at max_steps.
    finished = (stop_at_epoch is None and not stop_requested()) or state.global_step >= state.max_steps
    final_dir = _save_final(trainer, processor, run, recipe) if finished else None
    result = TrainResult(
        run.path,
        final_dir,
        state.global_step,
        state.epoch or 0.0,
        _last_loss(state.log_history),
        checkpoint,
        time.monotonic() - started,
        finished,
    )
    if not is_rank_zero():
        return result
    write_atomic(
        run.summary_file,
        json.dumps(
            {
                "global_step": result.global_step,
                "epoch": result.epoch,
                "final_loss": result.final_loss,
                "finished": finished,
                "resumed_from": str(checkpoint) if checkpoint else None,
                "seconds": round(result.seconds, 2),
                "log_history": state.log_history,
            },
            indent=2,
        )
        + "\n",
    )
    return result


# --- steps of `train` ----------------------------------------------------------------------------


def _prepare(run: RunDir, recipe: Recipe, overwrite: bool, require_resume: bool, argv: list[str] | None) -> Path | None:
    """Rank 0's part: the run directory made ready for `recipe`, `env.json` written; the checkpoint to resume."""
    prepare_run_dir(run, recipe, overwrite=overwrite)
    write_env(run, argv)
    checkpoint = _checkpoint_to_resume(run, require_resume)
    if checkpoint is not None:
        _check_checkpoint_layout(checkpoint, sharding=shards(recipe))
    return checkpoint


def _checkpoint_to_resume(run: RunDir, require_resume: bool) -> Path | None:
    for broken in run.incomplete_checkpoints():
        err_console.print(f"[yellow]skipping incomplete checkpoint {escape(str(broken))} (cut short while saving)[/]")
    checkpoint = run.latest_checkpoint()
    if require_resume and checkpoint is None:
        raise UsageError(f"--resume: {run.path} has no complete checkpoint to resume from")
    return checkpoint


def _check_checkpoint_layout(checkpoint: Path, *, sharding: bool) -> None:
    """Raises UsageError when `checkpoint` was written sharded (FSDP over several ranks) and this run is not, or the
    other way round: neither can read the other's weights and optimizer state."""
    sharded = (checkpoint / "pytorch_model_fsdp_0").is_dir()
    if sharded == sharding:
        return
    if sharded:
        raise UsageError(
            f'{checkpoint} is sharded (written under training.strategy = "fsdp" by several ranks), '
            "and this run is a single process",
            hint="resume it with several ranks (torchrun --nproc_per_node N, or vlmtune submit with one task per GPU)",
        )
    raise UsageError(
        f"{checkpoint} was written by a single process, and this run shards it over {world_size()} ranks (FSDP)",
        hint="resume it in a single process, or pass --overwrite to start the run over sharded",
    )


def _encoded_splits(recipe: Recipe, processor: Any, family: Family, cache_dir: Path) -> tuple[Any, Any]:
    """(train, test or None) as datasets for TRL, read from the tokenised-data cache; built first on a miss.

    Raises UsageError when no training sample survives (see tokenized.py).
    """
    from rich.markup import escape

    from vlmtune_cli.encode.build import open_splits, tokenize_recipe

    result = tokenize_recipe(recipe, cache_dir, processor=processor, family=family)
    err_console.print(f"tokenized data: {result.describe()}", highlight=False, markup=False)
    for report in result.reports():
        for line in [d for d in (report.describe_drops(),) if d] + report.describe_fixes():
            err_console.print(f"[yellow]{escape(line)}[/]", highlight=False)
    return open_splits(result, processor)


def _print_trainable(table: list[TrainableRow]) -> None:
    from rich.table import Table

    view = Table(title="trainable parameters", title_justify="left")
    for column in ("component", "trainable", "total", "%", "trains in", "frozen in"):
        view.add_column(column, justify="right" if column in ("trainable", "total", "%") else "left")
    for row in table:
        share = 100.0 * row.trainable / row.total if row.total else 0.0
        view.add_row(
            row.component, f"{row.trainable:,}", f"{row.total:,}", f"{share:.1f}", row.trains_in, row.frozen_in
        )
    err_console.print(view)


def build_trainer(
    recipe: Recipe,
    run: RunDir,
    model: Any,
    processor: Any,
    train_set: Any,
    eval_set: Any,
    *,
    stop_at_epoch: int | None = None,
    per_step_walks: bool = False,
) -> VlmtuneTrainer:
    """vlmtune's trainer (`VlmtuneTrainer`) for an already tuned `model`, writing into `run`."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback
    from transformers.trainer_callback import ProgressCallback

    from vlmtune_cli.encode.labels import VisionCollator
    from vlmtune_cli.models.loading import family_of
    from vlmtune_cli.train.callbacks import MarkCheckpointComplete, QuietLogLines, StopAtEpoch, StopOnRequest
    from vlmtune_cli.train.sft_trainer import VlmtuneTrainer

    args = build_sft_config(recipe, run, has_eval=eval_set is not None, family=family_of(model))
    # Trainer deletes old checkpoints (save_total_limit) inside its save, before `on_save` marks the new one
    # complete: a kill in between, with save_total_limit = 1, would leave no complete checkpoint at all. So Trainer
    # keeps them all and MarkCheckpointComplete rotates right after marking.
    keep, args.save_total_limit = args.save_total_limit, None
    collator: Any = VisionCollator.for_family(processor.tokenizer, family_of(model))
    if recipe.training.packing:
        from vlmtune_cli.encode.packing import PackedCollator, packed_train_set
        from vlmtune_cli.models.loading import rope_index

        train_set = packed_train_set(recipe, train_set)
        collator = PackedCollator(collator.pad_id, rope_index(model))
    callbacks: list[Any] = [MarkCheckpointComplete(run, keep), StopOnRequest()]
    if "tensorboard" in recipe.training.report_to and is_rank_zero():  # one event file, not one per rank
        callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run.logs))))
    if stop_at_epoch is not None:
        callbacks.append(StopAtEpoch(stop_at_epoch))
    trainer = VlmtuneTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=processor,
        data_collator=collator,
        callbacks=callbacks,
        per_step_walks=per_step_walks,
    )
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietLogLines())
    return trainer


def _disk_is_full(run: RunDir) -> bool:
    """Less room left where the run lives than one more checkpoint needs (or under 1 MiB)."""
    try:
        free = shutil.disk_usage(run.path).free
    except OSError:
        return False
    newest = run.latest_checkpoint()
    needed = sum(f.stat().st_size for f in newest.rglob("*") if f.is_file()) if newest else 0
    return free < max(needed, 1 << 20)


def _save_final(trainer: VlmtuneTrainer, processor: Any, run: RunDir, recipe: Recipe) -> Path | None:
    """Save the adapter (or model), processor and model card; a kill mid-save leaves no `final/` that looks complete.

    Called on every rank: under FSDP all of them gather the weights; rank 0 alone writes (None on the others).
    """
    from vlmtune_cli.train.model_card import model_card
    from vlmtune_cli.train.sharding import full_state_dict

    gathered = full_state_dict(trainer)
    if not trainer.is_world_process_zero():
        return None
    staging = run.path / "final.partial"
    shutil.rmtree(staging, ignore_errors=True)
    # Trainer types its model as an optional nn.Module, whose __getattr__ pyright reads as a Tensor.
    trainer.model.save_pretrained(staging, state_dict=gathered)  # pyright: ignore[reportCallIssue, reportOptionalMemberAccess]
    processor.save_pretrained(staging)
    state = trainer.state
    card = model_card(recipe, global_step=state.global_step, epoch=state.epoch or 0.0, log_history=state.log_history)
    (staging / "README.md").write_text(card, encoding="utf-8")  # replaces PEFT's "[More Information Needed]"
    mark_complete(staging, {"global_step": trainer.state.global_step})
    replace_dir(staging, run.final)
    return run.final


def _last_loss(history: list[dict[str, Any]]) -> float | None:
    losses = [entry["loss"] for entry in history if "loss" in entry and math.isfinite(entry["loss"])]
    return losses[-1] if losses else None
