"""Less Trainer overhead per step: the module walks transformers' Trainer makes at every step, made once.

Trainer calls `model.train()`, `model.zero_grad()`, `model.parameters()` (to clip gradients) and
`model.num_parameters()` (to count FLOPs) at every optimiser step. Each walks every submodule, hundreds on a VLM:
together ~10 ms a step on the tiny model, most of the Trainer's overhead over a plain PyTorch loop (issue 6,
benchmarks/run.py measurement 3). What they find does not change once training starts, so it is taken once.
The results are the same, bit for bit (tests/test_train.py trains with and without).

Imports nothing heavy at module level.
"""

from __future__ import annotations

from typing import Any

# Off: the Trainer makes its walks at every step (the benchmark and a test compare both).
SKIP_MODULE_WALKS = True


class FewerModuleWalks:
    """A mixin before transformers' Trainer (or a subclass) in the bases."""

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        # Trainer's formula (6 × tokens × non-embedding parameters), with the parameters counted once.
        model = self.model  # type: ignore[attr-defined]
        name = getattr(model, "main_input_name", "input_ids")
        if name not in inputs or not hasattr(model, "num_parameters"):
            return 0
        if getattr(self, "_flop_parameters", None) is None:
            self._flop_parameters = model.num_parameters(exclude_embeddings=True)
        return 6 * inputs[name].numel() * self._flop_parameters

    def _clip_grad_norm(self, model: Any) -> Any:
        # The same norm over the same parameters in the same order: clip_grad_norm_ skips those without a gradient,
        # and only the ones that train have one. Sharded set-ups keep Trainer's own path.
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or self._has_mixed_mesh_grads(model):  # type: ignore[attr-defined]
            return super()._clip_grad_norm(model)  # type: ignore[misc]
        if getattr(self, "_trainable", None) is None:
            self._trainable = [p for p in model.parameters() if p.requires_grad]
        return self.accelerator.clip_grad_norm_(self._trainable, self.args.max_grad_norm)  # type: ignore[attr-defined]


def without_per_step_module_walks(model: Any) -> None:
    """Give this model instance a `train()` and `zero_grad()` that do not walk every module when nothing changes.

    `train()` still switches every module when the mode changes (after an evaluation); `zero_grad()` clears the
    gradients of the parameters that train, the only ones that have any. On this instance only: a DDP wrapper
    around it calls the originals.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    walk_train, walk_zero_grad = model.train, model.zero_grad

    def train(mode: bool = True) -> Any:
        return model if model.training == mode else walk_train(mode)

    def zero_grad(set_to_none: bool = True) -> None:
        if not set_to_none:
            walk_zero_grad(set_to_none)
            return
        for parameter in trainable:
            parameter.grad = None

    model.train, model.zero_grad = train, zero_grad
