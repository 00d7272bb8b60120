"""`VlmtuneTrainer`: TRL's SFTTrainer with the few behaviours vlmtune needs, defined once, statically.

Imports TRL at module level: import this module only where a trainer is built (`trainer.build_trainer`).

What it changes, each for a reason:
- Every optimizer step checks, before the update, that no micro-batch's loss on any rank was NaN or infinite and
  that the gradient norm is finite (`NonFiniteStep`), so neither the weights nor any checkpoint hold NaN; a logged
  loss would show it only `logging_steps` later, after a checkpoint may have saved poisoned weights. A finite loss
  can still give an infinite gradient (an overflow in the backward pass), which clipping turns into NaN weights.
  The ranks agree on it (one tiny all-gather per step, `_stop_if_not_finite`), so all of them stop at the same step
  with the same message: a rank stopping alone would leave the others waiting in the next all-reduce for ever.
  With fp16's loss scaler a non-finite gradient is expected now and then (the scaler skips that step and lowers
  its scale), so there only the loss is checked.
- The samplers read `training.group_by_length`'s lengths from the cache's stored column, and shuffle packed rows
  (`training.packing`) by (seed, epoch) alone (see sampling.py).
- `compute_loss` counts a packed batch's real tokens for TRL's `num_tokens` log (see encode/packing.py).
- `per_step_walks=False` (the default) takes the module walks Trainer makes at every step once (step_overhead.py);
  the results are the same bit for bit, the step is faster. `True` keeps Trainer's own per-step walks (the
  benchmark and a test compare both). Under FSDP the walks stay: `fully_shard` replaces every parameter with a
  sharded one when the model is prepared, after this trainer is built, so a list taken now would clear stale
  gradients while the real ones accumulated.
- FSDP (`training.strategy = "fsdp"`) runs without CUDA too, and reduces gradients in float32 (sharding.py).
"""

from __future__ import annotations

import math
from typing import Any

from transformers import Trainer
from trl import SFTTrainer

from vlmtune_cli.encode.packing import REAL_TOKENS, ROW_COLUMN
from vlmtune_cli.train.sampling import epoch_seeded_length_sampler, epoch_seeded_shuffle, stored_lengths
from vlmtune_cli.train.step_overhead import without_per_step_module_walks


class NonFiniteStep(Exception):
    """A loss (on rank `rank`) or the gradient norm of optimizer step `step` was NaN or infinite.

    Raised on every rank, before that step's optimizer update. `quantity` is "loss" or "gradient norm"; `rank` is
    None in a single process and for the gradient norm (after DDP's all-reduce every rank has the same one).
    """

    def __init__(self, step: int, quantity: str, value: float, rank: int | None = None):
        super().__init__(step, quantity, value, rank)
        self.step, self.quantity, self.value, self.rank = step, quantity, value, rank


class VlmtuneTrainer(SFTTrainer):
    def __init__(self, *args: Any, per_step_walks: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.per_step_walks = per_step_walks
        self._flop_parameters: int | None = None
        self._trainable: list[Any] | None = None
        self._window_losses: list[Any] = []  # this rank's micro-batch losses since the last optimizer step
        if not per_step_walks and not self.is_fsdp_enabled:
            without_per_step_module_walks(self.model)

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        from vlmtune_cli.train.sharding import configure_fsdp

        configure_fsdp(self)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """TRL's card in checkpoints/ says "a fine-tuned version of [None]": final/ gets a true one instead."""

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        loss = super().training_step(*args, **kwargs)
        # Kept as a tensor: checked once per optimizer step (`_stop_if_not_finite`), not synchronised here.
        self._window_losses.append(loss.detach().float().mean())
        return loss

    def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        real = inputs.pop(REAL_TOKENS, None)
        if real is not None:
            # use_cache=False is what makes transformers read the sample boundaries from position_ids (with a cache
            # it silently skips them and samples attend to each other); TRL sets it too, this does not rely on it.
            inputs["use_cache"] = False
        if self.is_fsdp_enabled:
            # Written against TRL 1.16: its SFTTrainer.compute_loss projects through a "fused LM head" that reads
            # `lm_head.weight` as a sharded DTensor and gathers it with `full_tensor()`, whose backward keeps each
            # rank's own head gradient instead of averaging it over the ranks: the head then trains on one rank's
            # batch (a 19% relative gradient error on the tiny Qwen2-VL). The model's own loss (Trainer's, the same
            # token-summed cross-entropy over `num_items_in_batch`) keeps the head inside FSDP's reduction.
            result = Trainer.compute_loss(self, model, inputs, *args, **kwargs)
        else:
            result = super().compute_loss(model, inputs, *args, **kwargs)
        if real is not None and model.training:
            # Written against TRL 1.16's SFTTrainer.compute_loss: without an attention mask it counts
            # `position_ids.size(1)` tokens, which for packed [4, B, L] positions is B; count the real ones instead.
            import torch

            rows = torch.tensor(inputs["position_ids"].size(1), device=real.device)
            gathered = self.accelerator.gather_for_metrics(real - rows)
            assert isinstance(gathered, torch.Tensor)  # a tensor in, a tensor out
            self._total_train_tokens += int(gathered.sum()) // (self._tp_size or 1)
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return result

    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
        # Written against transformers 5.24's private Trainer._get_grad_norm: `_run_epoch` calls it at every optimizer
        # step after clipping and before `optimizer.step()` (also when max_grad_norm = 0), with the pre-clip norm.
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._stop_if_not_finite(grad_norm)
        return grad_norm

    def _stop_if_not_finite(self, grad_norm: Any) -> None:
        """Raise NonFiniteStep on every rank when any rank's loss or the gradient norm of this step is not finite."""
        import torch

        losses = torch.stack(self._window_losses) if self._window_losses else torch.zeros(1)
        self._window_losses = []
        bad = ~losses.isfinite()
        first_bad = losses[bad.float().argmax()]  # the first non-finite loss (any finite one when none is)
        if grad_norm is None or self.accelerator.scaler is not None:  # fp16: the scaler skips inf/NaN steps
            norm = torch.zeros((), device=losses.device)
        else:
            norm = torch.as_tensor(grad_norm, dtype=torch.float32, device=losses.device).reshape(())
        row = torch.stack([bad.any().float(), first_bad, norm.to(losses.device)]).to(self.args.device)
        gathered = self.accelerator.gather(row) if self.args.world_size > 1 else row
        assert isinstance(gathered, torch.Tensor)  # a tensor in, a tensor out
        rows = gathered.reshape(-1, 3).tolist()
        step = self.state.global_step + 1
        for rank, (loss_bad, value, _) in enumerate(rows):
            if loss_bad:
                raise NonFiniteStep(step, "loss", value, rank if len(rows) > 1 else None)
        for _, _, norm_value in rows:  # the same on every rank under DDP/FSDP; any one suffices
            if not math.isfinite(norm_value):
                raise NonFiniteStep(step, "gradient norm", norm_value)

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        # Written against transformers 5.24's Trainer.floating_point_ops: the same formula (6 × tokens ×
        # non-embedding parameters), with the parameters counted once instead of by a module walk at every step.
        if self.per_step_walks:
            return super().floating_point_ops(inputs)
        model = self.model
        name = getattr(model, "main_input_name", "input_ids")
        if name not in inputs or not hasattr(model, "num_parameters"):
            return 0
        if self._flop_parameters is None:
            # hasattr above rules out None; nn.Module's __getattr__ makes pyright see a Tensor here.
            self._flop_parameters = model.num_parameters(exclude_embeddings=True)  # pyright: ignore[reportCallIssue, reportOptionalMemberAccess]
        return 6 * inputs[name].numel() * self._flop_parameters

    def _clip_grad_norm(self, model: Any) -> Any:
        # Written against transformers 5.24's private Trainer._clip_grad_norm, which walks model.parameters() at
        # every step: the same norm over the same parameters in the same order (clip_grad_norm_ skips those without
        # a gradient, and only the ones that train have one). Sharded set-ups keep Trainer's own path.
        if self.per_step_walks or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._clip_grad_norm(model)
        if self._has_mixed_mesh_grads(model):
            return super()._clip_grad_norm(model)
        if self._trainable is None:
            self._trainable = [p for p in model.parameters() if p.requires_grad]
        return self.accelerator.clip_grad_norm_(self._trainable, self.args.max_grad_norm)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        # Written against transformers 5.24's private Trainer._get_train_sampler: for `training.group_by_length`
        # Trainer reads `dataset["length"]`, which on the cache's datasets runs the loader's transform (pixel work)
        # for every sample, many times; the stored column is read instead, and the order is a function of
        # (seed, epoch) so a resumed run sees the batches of the uninterrupted one.
        dataset = self.train_dataset if train_dataset is None else train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        if ROW_COLUMN in (getattr(dataset, "column_names", None) or ()):
            assert dataset is not None  # it has columns
            return epoch_seeded_shuffle(len(dataset), seed)  # pyright: ignore[reportArgumentType] a datasets.Dataset
        if (lengths := stored_lengths(self.args, dataset)) is None:
            return super()._get_train_sampler(train_dataset)
        return epoch_seeded_length_sampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths, seed
        )

    def _get_eval_sampler(self, eval_dataset: Any) -> Any:
        # Written against transformers 5.24's private Trainer._get_eval_sampler; replaces its length lookup as above.
        if (lengths := stored_lengths(self.args, eval_dataset)) is None:
            return super()._get_eval_sampler(eval_dataset)
        import torch
        from transformers.trainer_pt_utils import LengthGroupedSampler

        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return LengthGroupedSampler(
            self.args.eval_batch_size, lengths=lengths, generator=torch.Generator().manual_seed(seed)
        )
