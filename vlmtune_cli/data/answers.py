"""Ground-truth boxes checked against their image, and assistant answers vlmtune writes from them.

A sample may carry its boxes once, in pixels of its first image as a person sees it (EXIF orientation applied):
`target.boxes` (`[[x1, y1, x2, y2], ...]`) and `target.labels`. An assistant content part `{"type": "boxes"}`
is then replaced by those boxes written in the recipe's family format (models/boxes.py: Qwen2-VL grid tokens,
Qwen2.5-VL JSON in pixels of the image as the processor resizes it, Mllama plain pixel lists), so one JSONL
trains every family. Text parts around it stay as written ("Here it is: " + boxes).

Every sample's `target.boxes` are checked against its first image before anything is written: inverted corners
(x2 < x1 or y2 < y1; often an `[x, y, w, h]` box), zero area, or any part outside the image. `data.bad_boxes`
says what happens: `"error"` (default) stops with the file, line and sample id; `"drop"` marks the sample
dropped (tokenize counts and lists it, the benchmark leaves it out); `"clip"` orders the corners, clamps them into
the image and removes boxes left without area (tokenize counts and lists the sample). A box that is not 4
numbers, or a labels list of another length, is always an error: there is nothing sensible to clip.

Marks on a prepared sample: `where` (file and line, for messages), `dropped` (why), `clipped` (boxes changed or
removed), `rendered` (True when vlmtune wrote an answer, so tokenize's answer check skips it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vlmtune_cli.errors import UsageError
from vlmtune_cli.models.box_checks import box_problem, clip_box, is_box
from vlmtune_cli.models.boxes import Size, format_boxes

BOXES_PART = "boxes"
_HINT = 'fix the box, or set data.bad_boxes = "drop" (leave the sample out) or "clip" (clamp it into the image)'


def location(sample: dict[str, Any]) -> str:
    """How messages name a sample: its file and line (and id) when known, else its id."""
    return sample.get("where") or f"sample {sample.get('id')}"


def image_size(sample: dict[str, Any]) -> Size | None:
    """(width, height) of the sample's first image (upright), or `target.image_size`, or None."""
    if sample.get("images"):
        return sample["images"][0].size
    size = (sample.get("target") or {}).get("image_size")
    return (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) and len(size) == 2 else None


def prepare(sample: dict[str, Any], box_format: str, bad_boxes: str, resized: Callable[[Size], Size]) -> dict[str, Any]:
    """Check `target.boxes` (see the module docstring) and write the `{"type": "boxes"}` answer parts.

    `resized(size)` is the processor's resized (width, height) for an image of `size`. Raises UsageError naming
    the sample for a bad box under `bad_boxes = "error"`, a malformed box, or a boxes part without target boxes.
    """
    target = sample.get("target") or {}
    where = location(sample)
    size = image_size(sample)
    boxes, labels = target.get("boxes"), target.get("labels")
    if boxes is not None:
        boxes, labels = _checked(sample, boxes, labels, size, bad_boxes, where)
        if sample.get("dropped"):
            return sample
        target["boxes"], target["labels"] = boxes, labels
    for message in sample["messages"]:
        for k, part in enumerate(message["content"]):
            if part.get("type") != BOXES_PART:
                continue
            if boxes is None:
                raise UsageError(
                    f'{where}: an assistant part {{"type": "boxes"}} but no target.boxes to write it from',
                    hint='give the sample "target": {"boxes": [[x1, y1, x2, y2]], "labels": ["..."]} in pixels',
                )
            if size is None:
                raise UsageError(f'{where}: a {{"type": "boxes"}} answer needs an image to measure the boxes in')
            corners = [(b[0], b[1], b[2], b[3]) for b in boxes]
            text = format_boxes(box_format, corners, labels or [], size, resized(size))
            message["content"][k] = {"type": "text", "text": text}
            sample["rendered"] = True
    return sample


def _checked(
    sample: dict[str, Any], boxes: Any, labels: Any, size: Size | None, policy: str, where: str
) -> tuple[list[list[float]], list[str]]:
    if not isinstance(boxes, list):
        raise UsageError(f"{where}: target.boxes must be a list of [x1, y1, x2, y2] lists, got {boxes!r}"[:300])
    labels = [""] * len(boxes) if labels is None else labels
    if not isinstance(labels, list) or len(labels) != len(boxes):
        raise UsageError(f"{where}: target.labels must be a list of {len(boxes)} strings, one per box")
    for i, box in enumerate(boxes):
        if not is_box(box):  # nothing to clip, nothing to trust, whatever bad_boxes says
            raise UsageError(
                f"{where}: target box #{i} {box_problem(box, size or (0, 0))}",
                hint="write each box as [x1, y1, x2, y2] in pixels of the upright image",
            )
    if size is None:
        return boxes, [str(label) for label in labels]
    kept, kept_labels, changed = [], [], 0
    for i, (box, label) in enumerate(zip(boxes, labels, strict=True)):
        problem = box_problem(box, size)
        if problem is None:
            kept.append(list(box))
            kept_labels.append(str(label))
            continue
        if policy == "error":
            raise UsageError(f"{where}: target box #{i} {problem}", hint=_HINT)
        if policy == "drop":
            sample["dropped"] = f"box #{i} {problem}"
            return boxes, labels
        changed += 1
        clipped = clip_box(box, size)
        if clipped is not None:
            kept.append(list(clipped))
            kept_labels.append(str(label))
    if changed:
        sample["clipped"] = changed
    return kept, kept_labels
