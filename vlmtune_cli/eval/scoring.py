"""Scoring generated answers: boxes parsed per family against the truth, or short answers against the answer.

Ground truth for detection is `target["boxes"]` (original pixels) when the sample carries them. jsonl and plugin
data often carry only the answer (`target == {"answer": ...}`): its boxes are then parsed with the same box
format as the model's output. An answer without a single digit ("There is no table.") stands for "nothing to
find" (zero true boxes); any other answer that does not parse cleanly is a mistake in the data and stops the
benchmark with the sample's id.

Boxes refer to a sample's first image, in its original pixels; Qwen2.5-VL's JSON boxes are mapped back from
the processor's resized image with the recipe's pixel bounds, as training wrote them. Metric definitions are
in metrics.py.
"""

from __future__ import annotations

from typing import Any, cast

from vlmtune_cli.config.schema import DataSection
from vlmtune_cli.errors import UsageError
from vlmtune_cli.eval.metrics import exact_match, relaxed_match, score_detection, summarize_detection, vqa_metrics
from vlmtune_cli.models.boxes import Box, parse_boxes, processor_resized_size


def score(
    task: str,
    box_format: str,
    processor: Any,
    data: DataSection,
    samples: list[dict[str, Any]],
    prompts: list[str],
    outputs: list[str],
    keep: int = 4,
) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """(one predictions.jsonl row per sample, the split's metrics, the first `keep` samples for the report).

    Raises UsageError for a sample without ground truth for `task` (or with malformed truth boxes).
    """
    if task == "vqa":
        return _score_vqa(samples, prompts, outputs, keep)
    return _score_detection(box_format, processor, data, samples, prompts, outputs, keep)


def _score_detection(
    box_format: str,
    processor: Any,
    data: DataSection,
    samples: list[dict[str, Any]],
    prompts: list[str],
    outputs: list[str],
    keep: int,
):
    rows, scores, preds, truths, examples = [], [], [], [], []
    for sample, prompt, output in zip(samples, prompts, outputs, strict=True):
        size = _image_size(sample)
        resized = processor_resized_size(processor, size, data.min_pixels, data.max_pixels)
        parsed = parse_boxes(box_format, output, size, resized)
        truth, truth_labels = _truth_boxes(sample, box_format, size, resized)
        result = score_detection(parsed.boxes, truth, parsed.ok)
        rows.append(
            {
                "id": sample["id"],
                "prompt": prompt,
                "output": output,
                "parsed": {
                    "boxes": [_rounded(b) for b in parsed.boxes],
                    "labels": parsed.labels,
                    "ok": parsed.ok,
                    "reason": parsed.reason,
                },
                "target": {"boxes": [_rounded(b) for b in truth], "labels": truth_labels},
                "image_size": list(size),
                "scores": result.as_dict(),
            }
        )
        scores.append(result)
        preds.append(parsed.boxes)
        truths.append(truth)
        if len(examples) < keep and sample["images"]:
            examples.append(
                {
                    "id": sample["id"],
                    "image": sample["images"][0],
                    "pred": parsed.boxes,
                    "truth": truth,
                    "output": output,
                }
            )
    return rows, summarize_detection(scores, preds, truths), examples


def _image_size(sample: dict[str, Any]) -> tuple[int, int]:
    if sample["images"]:
        return sample["images"][0].size
    size = sample.get("target", {}).get("image_size")
    if size is None:
        raise UsageError(
            f"sample {sample['id']} has no image, so its boxes mean nothing",
            hint='detection needs an image per sample; for text answers set benchmark.task = "vqa"',
        )
    return int(size[0]), int(size[1])


def _truth_boxes(
    sample: dict[str, Any], box_format: str, size: tuple[int, int], resized: tuple[int, int]
) -> tuple[list[Box], list[str]]:
    target = sample.get("target") or {}
    if target.get("boxes") is not None:
        boxes = [tuple(float(v) for v in box) for box in target["boxes"]]
        labels = target.get("labels") or [""] * len(boxes)
        if any(len(box) != 4 for box in boxes):
            raise UsageError(f"sample {sample['id']}: target boxes must be lists of 4 numbers: x1, y1, x2, y2")
        return cast("list[Box]", boxes), list(labels)  # four numbers each, checked just above
    answer = target.get("answer")
    if not isinstance(answer, str):
        raise UsageError(
            f"sample {sample['id']} has no ground truth: its target has neither 'boxes' nor an 'answer' text",
            hint='give each sample a target {"boxes": ...} (x1, y1, x2, y2 lists in '
            "pixels), or an assistant answer with boxes",
        )
    parsed = parse_boxes(box_format, answer, size, resized)
    if not parsed.ok and any(c.isdigit() for c in answer):  # no number at all: "There is no table."
        raise UsageError(
            f"sample {sample['id']}: the boxes of its answer cannot be read as {box_format} "
            f"({parsed.reason}): {answer[:200]!r}",
            hint='fix the sample, or give it an explicit target {"boxes": ...} (x1, y1, x2, y2 lists in pixels)',
        )
    return list(parsed.boxes), list(parsed.labels)


def _rounded(box: Box) -> list[float]:
    return [round(float(v), 2) for v in box]


def _score_vqa(samples: list[dict[str, Any]], prompts: list[str], outputs: list[str], keep: int):
    rows, answers, examples = [], [], []
    for sample, prompt, output in zip(samples, prompts, outputs, strict=True):
        target = sample.get("target") or {}
        answer = target.get("answers", target.get("answer"))
        if not isinstance(answer, (str, list)) or not answer:
            raise UsageError(
                f"sample {sample['id']} has no answer to compare with",
                hint='VQA samples need a target {"answer": "..."} or an assistant turn; is '
                'benchmark.task = "vqa" right for this data?',
            )
        answers.append(answer)
        rows.append(
            {
                "id": sample["id"],
                "prompt": prompt,
                "output": output,
                "target": {"answer": answer},
                "scores": {"exact_match": exact_match(output, answer), "relaxed_match": relaxed_match(output, answer)},
            }
        )
        if len(examples) < keep:
            examples.append({"id": sample["id"], "question": _question(sample), "output": output, "answer": answer})
    return rows, vqa_metrics(outputs, answers), examples


def _question(sample: dict[str, Any]) -> str:
    users = [m for m in sample["messages"] if m["role"] == "user"]
    return "".join(p.get("text") or "" for p in users[-1]["content"] if p["type"] == "text") if users else ""
