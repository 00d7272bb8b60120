"""Token statistics of a tokenised dataset, and how `vlmtune tokenize` shows them and shows samples.

`SplitReport` accumulates while samples are encoded (one per shard, merged in order); `summary` turns it into the
plain dict stored in `stats.json`, and the renderers below work from that dict only, so a cache hit prints exactly
what the build printed. Lengths and visual tokens describe every sample the source gave (dropped ones included,
so the tail past `max_length` shows); trained-token fractions describe the samples kept.

Imports nothing heavy (rich; `tokenizers` to decode samples for `--show`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from vlmtune_cli.encode.labels import IGNORE_INDEX

LOSS_MODES = ("assistant", "all")
TRAINED_STYLE = "bold green"
MASKED_STYLE = "dim"
IMAGE_STYLE = "dim cyan"
# Without colours (a pipe, a log file), trained tokens are bracketed instead.
TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"


@dataclass
class SplitReport:
    """What encoding one split (or one shard of it) gave: counts, drops, and the raw material of the statistics."""

    split: str
    kept: int = 0
    overlength: list[str] = field(default_factory=list)
    untrained: list[str] = field(default_factory=list)
    bad_boxes_dropped: list[str] = field(default_factory=list)
    """Samples left out for a bad target box (`data.bad_boxes = "drop"`)."""
    bad_boxes_clipped: list[str] = field(default_factory=list)
    """Samples whose target boxes were clipped or removed (`data.bad_boxes = "clip"`)."""
    unparsed_answers: list[str] = field(default_factory=list)
    """Samples whose own answer the family's box parser cannot read (`data.answer_check`)."""
    unparsed_reason: str | None = None
    """Where and why the first of them failed."""
    trained_tokens: int = 0
    total_tokens: int = 0
    trained_by_mode: dict[str, int] = field(default_factory=dict)
    """Trained tokens of the kept samples under each `loss_on` (the recipe's and the other one)."""
    lengths: list[int] = field(default_factory=list)
    """Length of every sample seen, dropped ones included."""
    visual_tokens: list[int] = field(default_factory=list)
    """Visual tokens of every image seen."""

    def describe_drops(self) -> str | None:
        parts = []
        if self.overlength:
            parts.append(f"{len(self.overlength)} longer than max_length ({_ids(self.overlength)})")
        if self.untrained:
            parts.append(f"{len(self.untrained)} with no trained token ({_ids(self.untrained)})")
        if self.bad_boxes_dropped:
            parts.append(f"{len(self.bad_boxes_dropped)} with a bad box ({_ids(self.bad_boxes_dropped)})")
        return f"{self.split}: dropped " + "; ".join(parts) if parts else None

    def describe_fixes(self) -> list[str]:
        """Lines about clipped boxes and answers that do not parse (the samples were kept)."""
        lines = []
        if self.bad_boxes_clipped:
            n = len(self.bad_boxes_clipped)
            lines.append(f"{self.split}: clipped the boxes of {n} sample(s) ({_ids(self.bad_boxes_clipped)})")
        if self.unparsed_answers:
            n = len(self.unparsed_answers)
            lines.append(
                f"{self.split}: {n} answer(s) do not parse as boxes ({_ids(self.unparsed_answers)}); "
                f"the first: {self.unparsed_reason}"
            )
        return lines

    def merge(self, other: SplitReport) -> None:
        """Append a later shard's report to this one."""
        self.kept += other.kept
        self.overlength += other.overlength
        self.untrained += other.untrained
        self.bad_boxes_dropped += other.bad_boxes_dropped
        self.bad_boxes_clipped += other.bad_boxes_clipped
        self.unparsed_answers += other.unparsed_answers
        self.unparsed_reason = self.unparsed_reason or other.unparsed_reason
        self.trained_tokens += other.trained_tokens
        self.total_tokens += other.total_tokens
        for mode, n in other.trained_by_mode.items():
            self.trained_by_mode[mode] = self.trained_by_mode.get(mode, 0) + n
        self.lengths += other.lengths
        self.visual_tokens += other.visual_tokens

    def summary(self, max_length: int) -> dict[str, Any]:
        """The split's entry in stats.json."""
        return {
            "samples": self.kept,
            "seen": len(self.lengths),
            "tokens": self.total_tokens,
            "length": _distribution(self.lengths),
            "over_max_length": len(self.overlength),
            "dropped_overlength": list(self.overlength),
            "dropped_untrained": list(self.untrained),
            "dropped_bad_boxes": list(self.bad_boxes_dropped),
            "clipped_boxes": list(self.bad_boxes_clipped),
            "unparsed_answers": list(self.unparsed_answers),
            "unparsed_reason": self.unparsed_reason,
            "images": len(self.visual_tokens),
            "visual_tokens_per_image": _distribution(self.visual_tokens),
            "trained_fraction": {
                mode: round(self.trained_by_mode.get(mode, 0) / self.total_tokens, 4) if self.total_tokens else 0.0
                for mode in LOSS_MODES
            },
            "histogram": histogram(self.lengths),
        }

    @classmethod
    def from_summary(cls, split: str, summary: dict[str, Any]) -> SplitReport:
        """Enough of a report to print the drop message again on a cache hit."""
        return cls(
            split,
            kept=summary["samples"],
            overlength=summary["dropped_overlength"],
            untrained=summary["dropped_untrained"],
            bad_boxes_dropped=summary.get("dropped_bad_boxes", []),
            bad_boxes_clipped=summary.get("clipped_boxes", []),
            unparsed_answers=summary.get("unparsed_answers", []),
            unparsed_reason=summary.get("unparsed_reason"),
        )


def _ids(ids: list[str], most: int = 5) -> str:
    return ", ".join(ids[:most]) + (f", ... {len(ids) - most} more" if len(ids) > most else "")


def _distribution(values: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)

    def rank(q: float) -> int:  # nearest-rank percentile: always a value that occurs
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return {
        "min": ordered[0],
        "mean": round(sum(ordered) / len(ordered), 1),
        "p50": rank(0.5),
        "p95": rank(0.95),
        "max": ordered[-1],
    }


def histogram(lengths: list[int], bins: int = 10) -> dict[str, list[int]]:
    """Counts of lengths in up to `bins` equal-width bins spanning the shortest to the longest sample."""
    if not lengths:
        return {"edges": [], "counts": []}
    low, high = min(lengths), max(lengths)
    width = max(1, math.ceil((high - low + 1) / bins))
    n_bins = math.ceil((high - low + 1) / width)
    counts = [0] * n_bins
    for n in lengths:
        counts[(n - low) // width] += 1
    return {"edges": [low + i * width for i in range(n_bins + 1)], "counts": counts}


# --- rendering -----------------------------------------------------------------------------------------

_QUANTILES = ("min", "mean", "p50", "p95", "max")


def stats_table(stats: dict[str, Any]) -> Table:
    """Per split: samples, drops, sequence lengths, visual tokens per image, trained-token fractions."""
    splits = stats["splits"]
    loss_on, max_length = stats["loss_on"], stats["max_length"]
    table = Table(title="token statistics", title_justify="left")
    table.add_column("")
    for name in splits:
        table.add_column(name, justify="right")

    def row(label: str, value, end_section: bool = False) -> None:
        table.add_row(label, *[value(s) for s in splits.values()], end_section=end_section)

    def quantile(key: str, q: str) -> Any:
        return lambda s: "-" if s[key] is None else f"{s[key][q]:,g}"

    row("samples kept", lambda s: f"{s['samples']:,}")
    row(f"over max_length ({max_length:,})", lambda s: f"{s['over_max_length']:,}")
    row("no trained token (dropped)", lambda s: f"{len(s['dropped_untrained']):,}")
    row("bad box (dropped)", lambda s: f"{len(s.get('dropped_bad_boxes', [])):,}")
    row("bad box (clipped)", lambda s: f"{len(s.get('clipped_boxes', [])):,}")
    row("answers that do not parse", lambda s: f"{len(s.get('unparsed_answers', [])):,}", end_section=True)
    for q in _QUANTILES:
        row(f"sequence length {q}", quantile("length", q), end_section=q == "max")
    for q in _QUANTILES:
        row(f"visual tokens per image {q}", quantile("visual_tokens_per_image", q), end_section=q == "max")
    for mode in (loss_on, *[m for m in LOSS_MODES if m != loss_on]):
        label = f"trained tokens, loss_on={mode}" + (" (recipe)" if mode == loss_on else "")
        row(label, lambda s, mode=mode: f"{100 * s['trained_fraction'][mode]:.1f}%")
    return table


def length_histogram(split: str, summary: dict[str, Any], max_length: int, width: int = 40) -> Text:
    """A small terminal histogram of sequence lengths; bins past max_length are drawn in red."""
    counts, edges = summary["histogram"]["counts"], summary["histogram"]["edges"]
    peak = max(counts, default=0) or 1
    text = Text(f"sequence lengths, {split} ({summary['seen']:,} samples; red: over max_length {max_length:,})\n")
    for i, n in enumerate(counts):
        bar = "█" * math.ceil(width * n / peak) if n else ""
        text.append(f"{edges[i]:>7,}–{edges[i + 1] - 1:<7,}", style="dim")
        text.append(f"{bar:<{width}}", style="red" if edges[i + 1] - 1 > max_length else "green")
        text.append(f" {n:,}\n")
    return text


@dataclass(frozen=True)
class Segment:
    text: str
    kind: str
    """"trained", "masked" or "image" (a run of image tokens collapsed into one marker)."""


def segments(ids: list[int], labels: list[int], image_id: int | None, decode) -> list[Segment]:
    """A sample as runs of trained, masked and image tokens; `decode(list_of_ids) -> str` renders each run."""
    out: list[Segment] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i < len(ids) and _kind(ids[i], labels[i], image_id) == _kind(ids[start], labels[start], image_id):
            continue
        kind = _kind(ids[start], labels[start], image_id)
        text = f"‹image ×{i - start}›" if kind == "image" else decode(ids[start:i])
        out.append(Segment(text, kind))
        start = i
    return out


def _kind(token: int, label: int, image_id: int | None) -> str:
    if token == image_id:
        return "image"
    return "masked" if label == IGNORE_INDEX else "trained"


def sample_segments(rows: list[dict[str, Any]], model_path: str, image_id: int | None) -> list[dict[str, Any]]:
    """Cached rows (id, split, input_ids, labels) as runs of trained, masked and image tokens, for `--show`."""
    if not rows:
        return []
    decode = _decoder(model_path)
    return [
        {
            "id": row["id"],
            "split": row["split"],
            "length": len(row["input_ids"]),
            "segments": segments(row["input_ids"], row["labels"], image_id, decode),
        }
        for row in rows
    ]


def _decoder(model_path: str) -> Any:
    """ids → text with the model's tokenizer; the `tokenizers` library alone when the model has tokenizer.json."""
    from pathlib import Path

    file = Path(model_path) / "tokenizer.json"
    if file.is_file():
        from tokenizers import Tokenizer

        fast = Tokenizer.from_file(str(file))
        return lambda ids: fast.decode(ids, skip_special_tokens=False)
    from transformers import AutoTokenizer

    slow = AutoTokenizer.from_pretrained(model_path)
    return lambda ids: slow.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def render_sample(title: str, parts: list[Segment], colour: bool) -> Text:
    """One sample: trained runs highlighted (or bracketed without colour), masked ones dimmed."""
    text = Text()
    text.append(f"── {title} ──\n", style="bold")
    for part in parts:
        if part.kind == "trained":
            text.append(part.text if colour else f"{TRAINED_OPEN}{part.text}{TRAINED_CLOSE}", style=TRAINED_STYLE)
        else:
            text.append(part.text, style=IMAGE_STYLE if part.kind == "image" else MASKED_STYLE)
    if not text.plain.endswith("\n"):
        text.append("\n")
    return text


def legend(colour: bool) -> Text:
    text = Text("legend: ")
    text.append("trained" if colour else f"{TRAINED_OPEN}trained{TRAINED_CLOSE}", style=TRAINED_STYLE)
    text.append("  ")
    text.append("masked", style=MASKED_STYLE)
    text.append("  ")
    text.append("‹image ×N›", style=IMAGE_STYLE)
    return text


def print_stats(console: Console, stats: dict[str, Any]) -> None:
    console.print(stats_table(stats))
    train = stats["train_split"]
    if train in stats["splits"] and stats["splits"][train]["seen"]:
        console.print(length_histogram(train, stats["splits"][train], stats["max_length"]), end="")
