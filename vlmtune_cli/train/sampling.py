"""Length-grouped batches (`training.group_by_length`) whose order survives a resume.

Lengths come from the tokenised cache's stored column, so finding them loads no sample.
"""

from __future__ import annotations

from typing import Any


def epoch_seeded_length_sampler(batch_size: int, lengths: list[int], seed: int) -> Any:
    """transformers' LengthGroupedSampler with its order a function of (seed, epoch) alone.

    The stock one draws from the global RNG, so a run resumed mid-epoch would see another order than the
    uninterrupted run; the trainer calls `set_epoch` before each epoch, and skipping batches on resume then
    skips exactly those the interrupted run trained on.
    """
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochSeeded(LengthGroupedSampler):
        epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self) -> Any:
            assert self.generator is not None  # always given one below
            self.generator.manual_seed(seed + self.epoch)
            return super().__iter__()

    return EpochSeeded(batch_size, lengths=lengths, generator=torch.Generator())


def stored_lengths(args: Any, dataset: Any) -> list[int] | None:
    """The dataset's length column read without its transform, when the args group by length; else None."""
    name = args.length_column_name
    if args.train_sampling_strategy != "group_by_length" or name not in (getattr(dataset, "column_names", None) or ()):
        return None
    return list(dataset.with_format(None)[name])
