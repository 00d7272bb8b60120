"""Encoding whole splits: conversations → model inputs with labels, with a record of what was dropped.

A sample is dropped, never silently mangled, when it is longer than `data.max_length` (and the recipe says
`overlength = "drop"`) or when it has no trained token under `loss_on` (an all-masked sample would add nothing
but noise to the loss normalisation). The report says how many and which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmtune_cli.errors import UsageError
from vlmtune_cli.labels import LabelSpec, Overlength, count_trained, encode_sample
from vlmtune_cli.schema import DataSection


@dataclass
class SplitReport:
    split: str
    kept: int = 0
    overlength: list[str] = field(default_factory=list)
    untrained: list[str] = field(default_factory=list)
    trained_tokens: int = 0
    total_tokens: int = 0

    def describe_drops(self) -> str | None:
        parts = []
        if self.overlength:
            parts.append(f"{len(self.overlength)} longer than max_length ({_ids(self.overlength)})")
        if self.untrained:
            parts.append(f"{len(self.untrained)} with no trained token ({_ids(self.untrained)})")
        return f"{self.split}: dropped " + "; ".join(parts) if parts else None


def encode_split(samples: list[dict[str, Any]], split: str, processor: Any, spec: LabelSpec, data: DataSection,
                 loss_on: str) -> tuple[list[dict[str, Any]], SplitReport]:
    """Encode every sample of a split. Raises UsageError for an overlength sample under `overlength = "error"`."""
    report = SplitReport(split)
    encoded = []
    for sample in samples:
        sample_id = str(sample.get("id", len(encoded)))
        try:
            item = encode_sample(processor, spec, sample, loss_on, data.max_length)
        except Overlength as exc:
            if data.overlength == "error":
                raise UsageError(
                    f"sample {sample_id} of split {split!r} has {exc.length} tokens, over data.max_length "
                    f"({data.max_length}); it cannot be cut without cutting into its image tokens",
                    hint="raise data.max_length, lower data.max_pixels, or set data.overlength = \"drop\"",
                ) from None
            report.overlength.append(sample_id)
            continue
        trained = count_trained(item["labels"])
        if trained == 0:
            report.untrained.append(sample_id)
            continue
        report.kept += 1
        report.trained_tokens += trained
        report.total_tokens += len(item["labels"])
        encoded.append(item)
    return encoded, report


def _ids(ids: list[str], most: int = 5) -> str:
    return ", ".join(ids[:most]) + (f", ... {len(ids) - most} more" if len(ids) > most else "")


def to_dataset(encoded: list[dict[str, Any]]) -> Any:
    """Encoded samples as a `datasets.Dataset` (what TRL's trainer takes), served as numpy arrays."""
    import datasets
    import numpy as np

    rows = [{key: np.asarray(value) for key, value in item.items()} for item in encoded]
    return datasets.Dataset.from_list(rows).with_format("numpy")
