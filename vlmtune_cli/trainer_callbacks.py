"""Trainer callbacks: checkpoint completeness markers, stopping a chain link at its epoch boundary, log lines."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from vlmtune_cli.runs import mark_complete


class MarkCheckpointComplete(TrainerCallback):
    """Marks a checkpoint complete once the trainer has written all of it (model, optimizer, RNG, state).

    `on_save` runs after the whole checkpoint is on disk, so a kill before it leaves an unmarked directory
    that resuming skips.
    """

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                mark_complete(checkpoint, {"global_step": state.global_step, "epoch": state.epoch})


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
