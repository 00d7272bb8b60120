"""`vlmtune` with a fault injected on one rank, for the multi-rank tests (test_ranks.py). Test code only.

Run as a script in place of `python -m vlmtune_cli`, one process per rank:
    VLMTUNE_TEST_FAULT=loss:1:2 python tests/train/inject_faults.py train RECIPE ...

`VLMTUNE_TEST_FAULT=KIND:RANK:STEP` makes optimizer step STEP (1-based) on rank RANK go wrong:
  loss   the micro-batch's loss is infinite (what an overflow in the forward pass gives)
  grad   the loss is untouched and finite, its gradient infinite (an overflow in the backward pass)
  kill   SIGKILL at the end of the checkpoint save of step STEP: after the trainer wrote every file, before
         the checkpoint is marked complete (the moment Trainer's own rotation used to delete the older ones)
"""

from __future__ import annotations

import os
import signal
from typing import Any

import torch

from vlmtune_cli.train import callbacks, sft_trainer

KIND, RANK, STEP = os.environ["VLMTUNE_TEST_FAULT"].split(":")
THIS_RANK = int(os.environ.get("RANK", "0"))


class _InfiniteGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, value: torch.Tensor) -> torch.Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("inf")


_compute_loss = sft_trainer.VlmtuneTrainer.compute_loss


def compute_loss(self: Any, *args: Any, **kwargs: Any) -> Any:
    result = _compute_loss(self, *args, **kwargs)
    if THIS_RANK != int(RANK) or self.state.global_step + 1 != int(STEP) or KIND not in ("loss", "grad"):
        return result
    loss, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, None)
    loss = loss * float("inf") if KIND == "loss" else _InfiniteGradient.apply(loss)
    return (loss, *rest) if rest is not None else loss


sft_trainer.VlmtuneTrainer.compute_loss = compute_loss

_on_save = callbacks.MarkCheckpointComplete.on_save


def on_save(self: Any, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
    if KIND == "kill" and THIS_RANK == int(RANK) and state.global_step == int(STEP):
        os.kill(os.getpid(), signal.SIGKILL)
    _on_save(self, args, state, control, **kwargs)


callbacks.MarkCheckpointComplete.on_save = on_save

if __name__ == "__main__":
    from vlmtune_cli.cli import main

    main()
