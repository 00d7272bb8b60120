"""Detection and short-answer metrics for generated text, the field's standard definitions.

Detection (boxes `(x1, y1, x2, y2)` in original-image pixels, as boxes.py returns them). Matching is
class-agnostic: generated labels are free text and the `plain` format has none, and the prompt names what to
find. Every box is matched at most once (one-to-one), greedily by IoU: all (prediction, truth) pairs above the
threshold, highest IoU first, ties in output order. Greedy is what COCO's own evaluation does and, unlike a
Hungarian assignment, never trades one good match for two mediocre ones.

- `mean_iou`: mean IoU of the matched pairs, matching every pair that overlaps at all (IoU > 0). Boxes left
  unmatched are not in this mean: recall and precision count them.
- `precision`, `recall`, `f1`: micro-averaged over all boxes of the split, a match being IoU >= 0.5. Zero when
  the denominator is zero (no prediction at all gives precision 0, as scikit-learn's `zero_division=0`).
- `accuracy_50`: for single-box tasks (every sample has exactly one true box), the share of samples whose
  FIRST predicted box has IoU >= 0.5 with it (RefCOCO's accuracy@0.5). None for other tasks.
- `map_50`, `map_50_95`: COCO mAP at IoU 0.5 and averaged over 0.5:0.05:0.95, by pycocotools itself (class-
  agnostic: one category). Generated text has no confidences, so a box's score is its rank in the answer:
  1 / (1 + position), i.e. 1.0 for the first box, 0.5 for the second, ... The model's first box is its most
  confident one. Equal scores across samples are ordered by sample order (pycocotools sorts stably), so the
  figure compares runs on the same split; it is not a leaderboard number for models that emit confidences.
  (torchmetrics' MeanAveragePrecision wraps the same pycocotools code but insists on torchvision, which CPU
  machines here cannot install.)
- `parse_failure_rate`: share of samples whose output did not parse cleanly. Such a sample keeps the boxes
  that did parse (the complete boxes of a truncated list); one with none has no predicted box.

VQA: `exact_match` after normalisation (lower case, punctuation and the articles a/an/the removed, whitespace
collapsed; a decimal point between digits and thousands separators are kept as numbers), and
`relaxed_match`, ChartQA's relaxed accuracy: when the answer is a number and the prediction holds exactly one
number, they match if within 5% of the answer (exactly, for an answer of 0); otherwise exact match. A target
may list several acceptable answers; any one counts.

Imports nothing heavy at module level; `detection_metrics` loads pycocotools (and numpy) when called.
"""

from __future__ import annotations

import contextlib
import io
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field

from vlmtune_cli.models.boxes import Box

MATCH_IOU = 0.5
RELAXED_TOLERANCE = 0.05

DETECTION_METRICS = (
    "mean_iou",
    "precision",
    "recall",
    "f1",
    "accuracy_50",
    "map_50",
    "map_50_95",
    "parse_failure_rate",
)
VQA_METRICS = ("exact_match", "relaxed_match")
LOWER_IS_BETTER = frozenset({"parse_failure_rate"})


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two `(x1, y1, x2, y2)` boxes; 0.0 when they do not overlap."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(
    preds: Sequence[Box],
    truths: Sequence[Box],
    threshold: float = MATCH_IOU,
) -> list[tuple[int, int, float]]:
    """One-to-one greedy matching: `(pred index, truth index, iou)` for pairs with IoU >= threshold, best first.

    `threshold = 0` matches only overlapping pairs (IoU > 0).
    """
    pairs = [
        (value, p, t)
        for p, pred in enumerate(preds)
        for t, truth in enumerate(truths)
        if (value := iou(pred, truth)) > 0 and value >= threshold
    ]
    pairs.sort(key=lambda pair: (-pair[0], pair[1], pair[2]))
    used_p: set[int] = set()
    used_t: set[int] = set()
    matches = []
    for value, p, t in pairs:
        if p not in used_p and t not in used_t:
            used_p.add(p)
            used_t.add(t)
            matches.append((p, t, value))
    return matches


@dataclass
class DetectionScore:
    """What one sample contributes to the detection metrics (also written per sample to predictions.jsonl)."""

    tp: int
    fp: int
    fn: int
    matched_ious: list[float] = field(default_factory=list)
    first_iou: float | None = None  # IoU of the first predicted box with the truth (single-box samples)
    parsed_ok: bool = True

    def as_dict(self) -> dict:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "matched_ious": [round(v, 4) for v in self.matched_ious],
            "first_iou": None if self.first_iou is None else round(self.first_iou, 4),
            "parsed_ok": self.parsed_ok,
        }


def score_detection(preds: Sequence[Box], truths: Sequence[Box], parsed_ok: bool = True) -> DetectionScore:
    """Score one sample's predicted boxes against its true boxes."""
    tp = len(match_boxes(preds, truths, MATCH_IOU))
    overlapping = match_boxes(preds, truths, threshold=0.0)
    first = None
    if len(truths) == 1:
        first = iou(preds[0], truths[0]) if preds else 0.0
    return DetectionScore(
        tp=tp,
        fp=len(preds) - tp,
        fn=len(truths) - tp,
        matched_ious=[value for _, _, value in overlapping],
        first_iou=first,
        parsed_ok=parsed_ok,
    )


def detection_metrics(
    preds: Sequence[Sequence[Box]], truths: Sequence[Sequence[Box]], parsed_ok: Sequence[bool] | None = None
) -> dict[str, float | None]:
    """The detection metrics of a split (see the module docstring). One entry per sample in each sequence."""
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} predictions for {len(truths)} samples")
    parsed_ok = list(parsed_ok) if parsed_ok is not None else [True] * len(preds)
    scores = [score_detection(p, t, ok) for p, t, ok in zip(preds, truths, parsed_ok, strict=True)]
    return summarize_detection(scores, preds, truths)


def summarize_detection(
    scores: Sequence[DetectionScore], preds: Sequence[Sequence[Box]], truths: Sequence[Sequence[Box]]
) -> dict[str, float | None]:
    """Aggregate per-sample scores (from `score_detection`) and compute mAP over the same boxes."""
    n = len(scores)
    tp, fp, fn = (sum(getattr(s, k) for s in scores) for k in ("tp", "fp", "fn"))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    ious = [v for s in scores for v in s.matched_ious]
    single_box = n > 0 and all(len(t) == 1 for t in truths)
    map_50, map_50_95 = coco_map(preds, truths)
    return _rounded(
        {
            "mean_iou": sum(ious) / len(ious) if ious else 0.0,
            "precision": precision,
            "recall": recall,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
            "accuracy_50": (sum(1 for s in scores if (s.first_iou or 0.0) >= MATCH_IOU) / n) if single_box else None,
            "map_50": map_50,
            "map_50_95": map_50_95,
            "parse_failure_rate": (sum(1 for s in scores if not s.parsed_ok) / n) if n else 0.0,
            "samples": n,
            "predicted_boxes": tp + fp,
            "true_boxes": tp + fn,
        }
    )


def coco_map(preds: Sequence[Sequence[Box]], truths: Sequence[Sequence[Box]]) -> tuple[float | None, float | None]:
    """COCO (mAP@0.5, mAP@[.5:.95]) by pycocotools, class-agnostic, scores by rank in the answer.

    None for both when there is no true box at all (COCO's -1: undefined).
    """
    if not any(truths):
        return None, None
    if not any(preds):
        return 0.0, 0.0
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, detections = [], [], []
    for image_id, (boxes, true_boxes) in enumerate(zip(preds, truths, strict=True), start=1):
        images.append({"id": image_id})
        for box in true_boxes:
            # Ids start at 1: pycocotools takes a matched truth id of 0 for "unmatched".
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": _xywh(box),
                    "area": _area(box),
                    "iscrowd": 0,
                }
            )
        for rank, box in enumerate(boxes):
            detections.append({"image_id": image_id, "category_id": 1, "bbox": _xywh(box), "score": 1.0 / (1 + rank)})
    # pycocotools prints progress to stdout, which carries our results: keep it quiet.
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        # The pycocotools stubs ask for a category's supercategory (COCOeval never reads it) and type loadRes's
        # argument as a file name, though it takes a list of detections as well.
        truth.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}  # pyright: ignore[reportAttributeAccessIssue]
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(detections), iouType="bbox")  # pyright: ignore[reportArgumentType]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = evaluation.stats
    return _undefined_is_none(stats[1]), _undefined_is_none(stats[0])


def _xywh(box: Box) -> list[float]:
    return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]


def _area(box: Box) -> float:
    return float((box[2] - box[0]) * (box[3] - box[1]))


def _undefined_is_none(value: float) -> float | None:
    return None if value < 0 else float(value)


# --- VQA -------------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# Punctuation, except a decimal point between two digits and the minus sign of a number.
_PUNCTUATION = re.compile(r"(?!(?<=\d)\.(?=\d))(?!(?<!\w)-(?=\d))[" + re.escape(string.punctuation) + "]")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation (numbers keep their decimal point), no articles, single spaces."""
    text = _THOUSANDS.sub("", text.lower())
    text = _PUNCTUATION.sub(" ", text)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _number(text: str) -> float | None:
    """The number a short answer states: the only number in it ('120 kcal', '4.5%'), else None."""
    found = _NUMBER.findall(_THOUSANDS.sub("", text))
    return float(found[0]) if len(found) == 1 else None


def _is_number(text: str) -> bool:
    return _NUMBER.fullmatch(_THOUSANDS.sub("", text.strip().rstrip("%").strip())) is not None


def _answers(target: str | Sequence[str]) -> list[str]:
    return [target] if isinstance(target, str) else [str(t) for t in target]


def exact_match(prediction: str, target: str | Sequence[str]) -> bool:
    """True if the normalised prediction equals a normalised acceptable answer."""
    normalised = normalize_answer(prediction)
    return any(normalised == normalize_answer(answer) for answer in _answers(target))


def relaxed_match(prediction: str, target: str | Sequence[str], tolerance: float = RELAXED_TOLERANCE) -> bool:
    """ChartQA's relaxed accuracy: numbers within `tolerance` of the answer (relative), else exact match."""
    predicted = _number(prediction)
    for answer in _answers(target):
        expected = _number(answer)
        if predicted is not None and expected is not None and _is_number(answer):
            if (expected == 0 and predicted == 0) or (
                expected != 0 and abs(predicted - expected) <= tolerance * abs(expected)
            ):
                return True
        elif exact_match(prediction, answer):
            return True
    return False


def vqa_metrics(predictions: Sequence[str], targets: Sequence[str | Sequence[str]]) -> dict[str, float | int]:
    """Exact and relaxed match rates of a split."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} samples")
    n = len(predictions)
    exact = sum(exact_match(p, t) for p, t in zip(predictions, targets, strict=True))
    relaxed = sum(relaxed_match(p, t) for p, t in zip(predictions, targets, strict=True))
    return _rounded({"exact_match": exact / n if n else 0.0, "relaxed_match": relaxed / n if n else 0.0, "samples": n})


def _rounded(values: dict) -> dict:
    """Six decimals: pycocotools' sums give 0.9999999999999999 for a perfect score."""
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()}
