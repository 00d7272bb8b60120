"""Packing (`training.packing`): several cached samples in one row of at most `packing_length` tokens, no padding.

Rows: first-fit decreasing over windows of the sample order shuffled by the seed. The rows are made once per run
and depend on (seed, lengths, packing_length) only; the trainer shuffles their order per epoch (sampling.py), so
the number of rows, and with it every epoch's length in steps, is the same each epoch and a resumed or chained run
sees the same rows. (Packing again each epoch would change the row count, which Trainer's step arithmetic on
resume assumes fixed.) A sample is never split: a row holds whole samples.

The batch (`PackedCollator`): the samples of a row are concatenated; `labels` are the samples' own, with the first
label of each sample set to IGNORE_INDEX, the label that unpacked never trains either (the causal shift makes the
token before it predict it; that token is the previous sample's last); `pixel_values` and `image_grid_thw` follow
the samples in order; `position_ids` is [4, B, L]: a text row 0..n-1 per sample in front of the three mRoPE rows
of the model's own `get_rope_index`, given as a function (`rope_index`) so this wing never imports the model's.
No `attention_mask`: transformers then reads the sample boundaries from the text row and builds a block-diagonal
mask (sdpa: a dense masked matrix; flash-attention: varlen). The model must run with `use_cache=False` (VlmtuneTrainer's
compute_loss sets it for packed batches); with a cache, transformers skips the boundaries silently.

Imports numpy and torch inside functions only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vlmtune_cli.console import err_console
from vlmtune_cli.encode.labels import IGNORE_INDEX, VisionCollator, _tensor
from vlmtune_cli.errors import UsageError

if TYPE_CHECKING:
    import datasets
    import torch

    from vlmtune_cli.config.schema import Recipe
    from vlmtune_cli.encode.build import TokenizeResult

WINDOW = 1000
"""Samples per first-fit-decreasing window: large enough for a fill rate near 1, small enough that a window's rows
hold samples from all over the data (FFD puts the longest samples in the first rows of a window)."""
ROW_COLUMN = "packed_samples"
"""The column of a packed training set: the cache indices of each row's samples."""
REAL_TOKENS = "packed_real_tokens"
"""Batch key with the number of non-padding tokens, for TRL's `num_tokens` log; the trainer pops it before the
forward (TRL counts `position_ids.size(1)`, which for [4, B, L] is B)."""

RopeIndex = Callable[..., tuple["torch.Tensor", "torch.Tensor"]]
"""The model's `get_rope_index(input_ids, mm_token_type_ids=, image_grid_thw=)` → (positions [3, 1, n], deltas)."""


def default_packing_length(lengths: Sequence[int], max_length: int) -> int:
    """The longest sample (at most `max_length`): the shortest row every sample fits in.

    Why not longer: on sdpa attention runs over whole rows, so its cost per token grows with the row length (the
    tiny model trained 1.66-1.83× the padded tokens per CPU second at the longest sample, 1.38-1.45× at twice the p95
    length, 0.98-1.03× at four times); with flash-attention's varlen kernel longer rows only fill a little better
    (FLOP count: 1.60× → 1.67× of padded for Qwen2-VL-2B, benchmarks/RESULTS.md). And a row then never needs more
    memory than the longest sample alone, so a `batch_size` that fits unpacked fits packed.
    """
    return min(max_length, max(lengths))


def plan_rows(lengths: Sequence[int], packing_length: int, seed: int, window: int = WINDOW) -> list[list[int]]:
    """Rows of sample indices, each summing to at most `packing_length` tokens; a function of its arguments only.

    Raises ValueError if a sample is longer than `packing_length` (the caller names the key to change).
    """
    import numpy as np

    sizes = np.asarray(lengths, dtype=np.int64)
    if len(sizes) and int(sizes.max()) > packing_length:
        raise ValueError(f"a sample of {int(sizes.max())} tokens does not fit in a row of {packing_length}")
    order = np.random.default_rng(seed).permutation(len(sizes))
    rows: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        # Decreasing length; ties keep the shuffled order (a stable sort), so the plan is deterministic.
        chunk = chunk[np.argsort(-sizes[chunk], kind="stable")]
        room = np.empty(len(chunk), dtype=np.int64)
        members: list[list[int]] = []
        for index in chunk.tolist():
            fits = np.flatnonzero(room[: len(members)] >= sizes[index])
            if len(fits):
                row = int(fits[0])  # first fit: the earliest row with room
            else:
                row = len(members)
                members.append([])
                room[row] = packing_length
            members[row].append(index)
            room[row] -= sizes[index]
        rows += members
    return rows


@dataclass(frozen=True)
class PackingReport:
    """What packing a split gives: rows, fill rate (real tokens / rows × packing_length), tokens per row."""

    packing_length: int
    derived: bool
    samples: int
    rows: int
    tokens: int
    tokens_per_row: dict[str, int]

    @property
    def fill_rate(self) -> float:
        return self.tokens / (self.rows * self.packing_length) if self.rows else 0.0

    @classmethod
    def of(cls, lengths: Sequence[int], rows: list[list[int]], packing_length: int, *, derived: bool) -> PackingReport:
        per_row = sorted(sum(lengths[i] for i in row) for row in rows)
        return cls(
            packing_length,
            derived,
            len(lengths),
            len(rows),
            sum(per_row),
            {"min": per_row[0], "p50": per_row[len(per_row) // 2], "max": per_row[-1]} if per_row else {},
        )

    def describe(self) -> str:
        how = " (derived: the longest sample)" if self.derived else ""
        spread = self.tokens_per_row
        return (
            f"packing at {self.packing_length:,} tokens per row{how}: {self.samples:,} samples → {self.rows:,} rows, "
            f"fill rate {self.fill_rate:.3f}, tokens per row min {spread.get('min', 0):,} / median "
            f"{spread.get('p50', 0):,} / max {spread.get('max', 0):,}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "packing_length": self.packing_length,
            "derived": self.derived,
            "samples": self.samples,
            "rows": self.rows,
            "tokens": self.tokens,
            "fill_rate": round(self.fill_rate, 4),
            "tokens_per_row": self.tokens_per_row,
        }


def resolve_packing_length(recipe: Recipe, lengths: Sequence[int], split: str = "train") -> int:
    """`training.packing_length`, or the default derived from `lengths`.

    Raises UsageError when a sample is longer than it (a sample is never split).
    """
    length = recipe.training.packing_length or default_packing_length(lengths, recipe.data.max_length)
    if lengths and max(lengths) > length:
        too_long = sum(1 for n in lengths if n > length)
        raise UsageError(
            f"training.packing_length = {length} is shorter than {too_long} {split} sample(s) (the longest has "
            f"{max(lengths)} tokens), and a sample is never split across rows",
            hint=f"raise training.packing_length (at most data.max_length = {recipe.data.max_length}) or unset it",
        )
    return length


def packing_seed(recipe: Recipe) -> int:
    """The seed of the row plan: the trainer's data seed (`training.extra.data_seed`), else `training.seed`."""
    return int(recipe.training.extra.get("data_seed", recipe.training.seed))


def cached_lengths(result: TokenizeResult, split: str) -> list[int]:
    """Token counts of a cached split, in the order the trainer reads it (needs pyarrow only, loads no sample)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths: list[int] = []
    for shard in result.manifest["splits"][split]["shards"]:
        with pa.memory_map(str(result.path / shard["file"])) as source:
            for batch in pa.ipc.open_stream(source):
                # (pyarrow.compute generates its functions at import, so pyright cannot see list_value_length.)
                lengths += pc.list_value_length(batch.column("input_ids")).to_pylist()  # pyright: ignore[reportAttributeAccessIssue]
    return lengths


def tokenize_report(recipe: Recipe, result: TokenizeResult) -> PackingReport | str:
    """What `training.packing` would give on the cached training split, or why it cannot pack it."""
    lengths = cached_lengths(result, result.stats["train_split"])
    if not lengths:
        return "packing: the training split is empty"
    try:
        length = resolve_packing_length(recipe, lengths)
    except UsageError as exc:
        return f"packing: {exc}"
    rows = plan_rows(lengths, length, packing_seed(recipe))
    return PackingReport.of(lengths, rows, length, derived=recipe.training.packing_length is None)


def packed_train_set(recipe: Recipe, train_set: datasets.Dataset) -> datasets.Dataset:
    """The training set as packed rows, planned from the cache's stored lengths; prints what packing gives.

    Raises UsageError when a sample is longer than `training.packing_length`.
    """
    lengths = list(train_set.with_format(None)["length"])
    length = resolve_packing_length(recipe, lengths)
    rows = plan_rows(lengths, length, packing_seed(recipe))
    report = PackingReport.of(lengths, rows, length, derived=recipe.training.packing_length is None)
    err_console.print(report.describe(), highlight=False)
    return packed_dataset(train_set, rows)


def packed_dataset(samples: datasets.Dataset, rows: list[list[int]]) -> datasets.Dataset:
    """A `datasets.Dataset` (TRL insists on one) whose item r is `{ROW_COLUMN: [the samples of row r]}`, each
    sample served by `samples`' own transform (pixel values computed in the loader, as without packing)."""
    import datasets

    return datasets.Dataset.from_dict({ROW_COLUMN: rows}).with_transform(_RowLoader(samples))


class _RowLoader:
    """The transform of a packed dataset: row indices → the rows' samples (one read of the cache per batch)."""

    def __init__(self, samples: datasets.Dataset):
        self.samples = samples

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        flat = [i for row in batch[ROW_COLUMN] for i in row]
        columns = self.samples[flat]
        items = [{key: columns[key][k] for key in columns} for k in range(len(flat))]
        out, start = [], 0
        for row in batch[ROW_COLUMN]:
            out.append(items[start : start + len(row)])
            start += len(row)
        return {ROW_COLUMN: out}


class PackedCollator:
    """Packed rows → one batch for a Qwen-VL model (see the module docstring); an unpacked sample (the evaluation
    set is never packed) goes to `VisionCollator` unchanged."""

    def __init__(self, pad_id: int, rope_index: RopeIndex):
        self.pad_id = pad_id
        self.rope_index = rope_index
        self.unpacked = VisionCollator(pad_id=pad_id)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        if not items or ROW_COLUMN not in items[0]:
            return self.unpacked(items)
        return self.pack([item[ROW_COLUMN] for item in items])

    def pack(self, rows: list[list[dict[str, Any]]]) -> dict[str, Any]:
        """Rows of encoded samples (as the cache's loader serves them) → input_ids, labels, position_ids, vision."""
        import torch

        flat = [sample for row in rows for sample in row]
        per_token = {
            key
            for s in flat
            for key, value in s.items()
            if key not in ("input_ids", "labels") and value is not None and not hasattr(value, "write")
            if _tensor(value).dim() == 1
        }
        # Vision inputs concatenated over all samples in order, exactly as the unpacked collator does.
        vision = self.unpacked([{k: v for k, v in s.items() if k not in per_token} for s in flat])
        for key in ("input_ids", "attention_mask", "labels"):
            vision.pop(key)
        grids = vision.get("image_grid_thw")
        longest = max(sum(len(s["input_ids"]) for s in row) for row in rows)
        batch: dict[str, Any] = {
            "input_ids": torch.full((len(rows), longest), self.pad_id, dtype=torch.long),
            "labels": torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long),
            # Padding at a row's end is one more segment of its own (positions from 0): no sample attends to it.
            "position_ids": torch.arange(longest).expand(4, len(rows), longest).clone(),
        }
        for key in sorted(per_token):
            dtype = next(_tensor(s[key]).dtype for s in flat if s.get(key) is not None)
            batch[key] = torch.zeros((len(rows), longest), dtype=dtype)
        image = 0
        for r, row in enumerate(rows):
            start = 0
            for sample in row:
                ids = _tensor(sample["input_ids"]).long()
                n, end = len(ids), start + len(ids)
                batch["input_ids"][r, start:end] = ids
                labels = _tensor(sample["labels"]).long().clone()
                labels[0] = IGNORE_INDEX
                batch["labels"][r, start:end] = labels
                for key in per_token:
                    if sample.get(key) is not None:
                        batch[key][r, start:end] = _tensor(sample[key])
                n_images = len(sample["image_grid_thw"]) if sample.get("image_grid_thw") is not None else 0
                own = grids[image : image + n_images] if n_images and grids is not None else None
                image += n_images
                token_types = (
                    batch["mm_token_type_ids"][r : r + 1, start:end]
                    if "mm_token_type_ids" in batch
                    else torch.zeros((1, n), dtype=torch.int32)
                )
                mrope, _ = self.rope_index(ids[None], mm_token_type_ids=token_types, image_grid_thw=own)
                batch["position_ids"][0, r, start:end] = torch.arange(n)
                batch["position_ids"][1:, r, start:end] = mrope[:, 0]
                start = end
        batch.update(vision)
        batch[REAL_TOKENS] = torch.tensor(sum(len(s["input_ids"]) for s in flat))
        return batch
