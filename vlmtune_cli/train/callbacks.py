"""Trainer callbacks: checkpoint completeness markers, stopping a chain link at its epoch boundary, log lines."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from vlmtune_cli.fsutil import respect_umask
from vlmtune_cli.runs import RunDir, mark_complete


class MarkCheckpointComplete(TrainerCallback):
    """Marks a checkpoint complete once the trainer has written all of it (model, optimizer, RNG, state), then
    deletes all but the newest `keep` complete checkpoints (None: keeps all).

    `on_save` runs after the whole checkpoint is on disk, so a kill before it leaves an unmarked directory
    that resuming skips. Old checkpoints go only after the new one is marked (Trainer's own rotation runs before
    `on_save` and is turned off, see `build_trainer`), so a complete checkpoint exists at every moment. Older
    unmarked ones (cut short by a kill) go too: nothing can resume from them. The best checkpoint
    (`load_best_model_at_end`) is kept, as Trainer keeps it.
    """

    def __init__(self, run: RunDir, keep: int | None) -> None:
        self.run, self.keep = run, keep

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Every rank writes part of a checkpoint (its RNG state; under FSDP its weight and optimizer shards), and
        # Trainer does not wait for the others after writing its own: marked complete only once all have.
        _wait_for_every_rank()
        if not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not checkpoint.is_dir():
            return
        # PEFT's boilerplate card ("[More Information Needed]"): no card beats a card that says nothing.
        (checkpoint / "README.md").unlink(missing_ok=True)
        respect_umask(checkpoint)
        mark_complete(checkpoint, {"global_step": state.global_step, "epoch": state.epoch})
        if self.keep is None:
            return
        complete = self.run.complete_checkpoints()
        kept = set(complete[-self.keep :]) | {checkpoint}
        newest = max(int(p.name.split("-")[1]) for p in kept)
        best = Path(state.best_model_checkpoint).resolve() if state.best_model_checkpoint else None
        for old in complete + self.run.incomplete_checkpoints():
            if old in kept or old.resolve() == best or int(old.name.split("-")[1]) > newest:
                continue
            shutil.rmtree(old, ignore_errors=True)


def _wait_for_every_rank() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class StopAtEpoch(TrainerCallback):
    """Ends training with a checkpoint at the end of epoch `epoch`, leaving the LR schedule as planned."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.epoch is not None and round(state.epoch, 6) >= self.epoch:
            control.should_save = True
            control.should_training_stop = True
        return control


class QuietLogLines(ProgressCallback):
    """The trainer's progress bar, with its log lines compact and on stderr (stdout carries results only)."""

    _SHOWN = ("loss", "eval_loss", "learning_rate", "grad_norm")

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs or self.training_bar is None:
            return
        parts = [f"{key} {logs[key]:.4g}" for key in self._SHOWN if isinstance(logs.get(key), float | int)]
        if parts:
            self.training_bar.write(f"step {state.global_step} · " + " · ".join(parts), file=sys.stderr)


# --- stopping with a checkpoint on request (SLURM's time-limit / preemption signal) ----------------

_stop = {"requested": False}


def request_stop() -> None:
    """Ask the running trainer to save a checkpoint and stop at the end of the current step.

    Safe to call from a signal handler: it only sets a flag, which `StopOnRequest` reads between steps.
    """
    _stop["requested"] = True


def stop_requested() -> bool:
    return _stop["requested"]


def clear_stop_request() -> None:
    _stop["requested"] = False


class StopOnRequest(TrainerCallback):
    """After a `request_stop()`, saves a checkpoint at the end of the current optimiser step and stops.

    Under torch.distributed the ranks agree first (a MAX all-reduce of the flag each step), so every rank stops
    at the same step even when the signal reached them at different moments.
    """

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        requested = stop_requested()
        if args.world_size > 1:
            import torch
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                flag = torch.tensor([1.0 if requested else 0.0], device=args.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                requested = bool(flag.item())
        if requested:
            _stop["requested"] = True
            control.should_save = True
            control.should_training_stop = True
        return control
