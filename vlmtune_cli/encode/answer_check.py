"""tokenize's answer check (`data.answer_check`): answers users wrote themselves, parsed as the benchmark will.

An answer written in one family's box syntax trains only that family: Qwen2-VL grid tokens on Qwen2.5-VL or
Mllama give a certain, silent 100% parse failure at benchmark time. So when the recipe benchmarks detection and
the data comes from files (built-in sets are written by vlmtune), the last assistant answer of every sample that
vlmtune did not write (`{"type": "boxes"}`, data/answers.py) is parsed with the family's parser. An answer
without a digit ("There is no table.") stands for "nothing found", as scoring reads it. Failures are collected
per split (SplitReport.unparsed_answers) and, under `answer_check = "error"`, refused once the build has seen
them all, with the count and the first ids; under `"warn"` they are reported with the statistics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vlmtune_cli.errors import UsageError

if TYPE_CHECKING:
    from vlmtune_cli.config.schema import DataSection
    from vlmtune_cli.encode.stats import SplitReport
    from vlmtune_cli.models.families import Family


def check_answer(
    sample: dict[str, Any], sample_id: str, box_format: str, processor: Any, data: DataSection, report: SplitReport
) -> None:
    """Parse the sample's last answer with the family's parser; record it in `report` when it does not parse."""
    from vlmtune_cli.data.answers import image_size, location
    from vlmtune_cli.models.boxes import parse_boxes, processor_resized_size

    answers = [m for m in sample["messages"] if m["role"] == "assistant"]
    size = image_size(sample)
    if not answers or size is None:
        return
    text = "".join(p.get("text") or "" for p in answers[-1]["content"] if p["type"] == "text")
    if not any(c.isdigit() for c in text):
        return
    resized = processor_resized_size(processor, size, data.min_pixels, data.max_pixels)
    parsed = parse_boxes(box_format, text, size, resized)
    if not parsed.ok:
        report.unparsed_answers.append(sample_id)
        if report.unparsed_reason is None:
            report.unparsed_reason = f"{location(sample)}: {parsed.reason}: {text[:120]!r}"


def refuse_unparsed(source: str, family: Family, reports: list[SplitReport]) -> None:
    """Raise UsageError with the count and first ids when any split has answers that do not parse."""
    unparsed = [sample_id for report in reports for sample_id in report.unparsed_answers]
    if not unparsed:
        return
    first = next(report for report in reports if report.unparsed_answers)
    shown = ", ".join(unparsed[:5]) + (f", ... {len(unparsed) - 5} more" if len(unparsed) > 5 else "")
    raise UsageError(
        f"{len(unparsed)} answer(s) of {source} cannot be read as {family.name} boxes "
        f"({family.box_format}): {shown}; the first: {first.unparsed_reason}",
        hint='write answers as {"type": "boxes"} with target.boxes in pixels, so vlmtune writes them for each '
        'family; or set data.answer_check = "warn" (or benchmark.task = "vqa" for text answers)',
    )
