"""Less Trainer overhead per step: the module walks transformers' Trainer makes at every step, made once.

Trainer calls `model.train()`, `model.zero_grad()`, `model.parameters()` (to clip gradients) and
`model.num_parameters()` (to count FLOPs) at every optimiser step. Each walks every submodule, hundreds on a VLM:
together ~10 ms a step on the tiny model, most of the Trainer's overhead over a plain PyTorch loop (issue 6,
benchmarks/training.py, measurement 3). What they find does not change once training starts, so it is taken once.
The results are the same, bit for bit (tests/train/test_train.py trains with and without). The FLOP count and the
gradient clipping are taken once in `VlmtuneTrainer` (sft_trainer.py); `train()`/`zero_grad()` here.

Imports nothing heavy at module level.
"""

from __future__ import annotations

from typing import Any


def without_per_step_module_walks(model: Any) -> None:
    """Give this model instance a `train()` and `zero_grad()` that do not walk every module when nothing changes.

    `train()` walks every module on its first call and whenever the mode changes (after an evaluation);
    `zero_grad()` clears the gradients of the parameters that train, the only ones that have any. On this instance
    only: a DDP wrapper around it calls the originals.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    walk_train, walk_zero_grad = model.train, model.zero_grad

    # The mode our last walk set, not `model.training`: under PEFT the wrapper reports training while the base
    # model it wraps was loaded in eval mode, so the first call must walk whatever the top says.
    walked: list[bool | None] = [None]

    def train(mode: bool = True) -> Any:
        if walked[0] == mode:
            return model
        walked[0] = mode
        return walk_train(mode)

    def zero_grad(set_to_none: bool = True) -> None:
        if not set_to_none:
            walk_zero_grad(set_to_none)
            return
        for parameter in trainable:
            parameter.grad = None

    model.train, model.zero_grad = train, zero_grad
