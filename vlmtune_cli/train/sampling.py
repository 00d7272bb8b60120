"""Batch orders that survive a resume: length-grouped batches (`training.group_by_length`) and packed rows
(`training.packing`), each a function of (seed, epoch) alone.

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


def epoch_seeded_shuffle(n: int, seed: int) -> Any:
    """A random permutation of range(n) drawn from (seed, epoch) alone, for packed rows.

    The trainer calls `set_epoch` before each epoch; a resumed run skips the batches the interrupted one trained on
    and sees the same ones after them, whatever the global RNG did meanwhile.
    """
    import torch

    class EpochSeededShuffle(torch.utils.data.Sampler[int]):
        epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __len__(self) -> int:
            return n

        def __iter__(self) -> Any:
            generator = torch.Generator().manual_seed(seed + self.epoch)
            return iter(torch.randperm(n, generator=generator).tolist())

    return EpochSeededShuffle()
