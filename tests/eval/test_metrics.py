"""Detection and VQA metrics against hand-made cases whose answers are known."""

from __future__ import annotations

import pytest

from vlmtune_cli.eval.metrics import (
    coco_map,
    detection_metrics,
    exact_match,
    iou,
    match_boxes,
    normalize_answer,
    relaxed_match,
    score_detection,
    vqa_metrics,
)

A = (0.0, 0.0, 10.0, 10.0)
FAR = (50.0, 50.0, 60.0, 60.0)


def test_iou_of_known_pairs() -> None:
    assert iou(A, A) == 1.0
    assert iou(A, FAR) == 0.0
    assert iou(A, (10, 0, 20, 10)) == 0.0  # touching edges share no area
    assert iou(A, (0, 0, 10, 5)) == pytest.approx(0.5)
    assert iou(A, (5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_matching_is_one_to_one_and_takes_the_best_pair_first() -> None:
    truths = [A, (0, 0, 10, 6)]
    preds = [(0, 0, 10, 6), (0, 0, 10, 9)]
    # Greedy by IoU: pred 0 matches truth 1 exactly (1.0); pred 1 then gets truth 0 (0.9).
    assert match_boxes(preds, truths) == [(0, 1, 1.0), (1, 0, pytest.approx(0.9))]
    # Two predictions of one box: only one matches.
    assert len(match_boxes([A, A], [A])) == 1
    # Threshold 0 matches any overlap, never disjoint boxes.
    assert match_boxes([(0, 0, 10, 2), FAR], [A], threshold=0.0) == [(0, 0, pytest.approx(0.2))]


def test_perfect_prediction_scores_one_everywhere() -> None:
    metrics = detection_metrics([[A], [FAR, A]], [[A], [A, FAR]])
    for key in ("mean_iou", "precision", "recall", "f1", "map_50", "map_50_95"):
        assert metrics[key] == pytest.approx(1.0), key
    assert metrics["accuracy_50"] is None  # the second sample has two boxes: not a single-box task
    assert metrics["parse_failure_rate"] == 0.0
    assert (metrics["samples"], metrics["predicted_boxes"], metrics["true_boxes"]) == (2, 3, 3)


def test_no_overlap_scores_zero() -> None:
    metrics = detection_metrics([[FAR]], [[A]])
    assert metrics["mean_iou"] == 0.0  # nothing overlaps, so nothing is matched
    assert (metrics["precision"], metrics["recall"], metrics["f1"], metrics["accuracy_50"]) == (0, 0, 0, 0)
    assert metrics["map_50"] == 0.0 and metrics["map_50_95"] == 0.0


def test_partial_overlap_counts_at_iou_half_and_not_below() -> None:
    half = detection_metrics([[(0, 0, 10, 5)]], [[A]])
    assert half["recall"] == 1.0 and half["accuracy_50"] == 1.0 and half["mean_iou"] == pytest.approx(0.5)
    below = detection_metrics([[(0, 0, 10, 4)]], [[A]])
    assert below["recall"] == 0.0 and below["accuracy_50"] == 0.0
    assert below["mean_iou"] == pytest.approx(0.4), "mean IoU covers every overlapping match"


def test_map_50_95_counts_the_thresholds_a_box_passes() -> None:
    # IoU 0.76 passes the thresholds 0.50, 0.55, ..., 0.75 (6 of 10), fails 0.80-0.95.
    map_50, map_50_95 = coco_map([[(0, 0, 100, 76)]], [[(0, 0, 100, 100)]])
    assert map_50 == pytest.approx(1.0)
    assert map_50_95 == pytest.approx(0.6)


def test_duplicates_are_false_positives() -> None:
    metrics = detection_metrics([[A, A]], [[A]])
    assert (metrics["precision"], metrics["recall"]) == (0.5, 1.0)
    assert metrics["f1"] == pytest.approx(2 / 3)
    # The first box (score 1.0) is right, so the duplicate (score 0.5) comes after full recall: AP stays 1.
    assert metrics["map_50"] == pytest.approx(1.0)


def test_scores_follow_the_order_of_the_answer() -> None:
    right_first = coco_map([[A, FAR]], [[A]])
    wrong_first = coco_map([[FAR, A]], [[A]])
    assert right_first[0] == pytest.approx(1.0)
    assert wrong_first[0] == pytest.approx(0.5)  # full recall reached at precision 1/2
    # accuracy@0.5 reads the first box only; one-to-one recall finds the right box anyway.
    metrics = detection_metrics([[FAR, A]], [[A]])
    assert metrics["accuracy_50"] == 0.0 and metrics["recall"] == 1.0


def test_missed_boxes_lower_recall() -> None:
    metrics = detection_metrics([[A]], [[A, FAR]])
    assert (metrics["precision"], metrics["recall"]) == (1.0, 0.5)
    assert metrics["f1"] == pytest.approx(2 / 3)
    # COCO interpolates over 101 recall points; precision is 1 up to recall 0.5 (51 points), 0 beyond.
    assert metrics["map_50"] == pytest.approx(51 / 101)


def test_parse_failures_are_counted_and_keep_what_parsed() -> None:
    metrics = detection_metrics([[A], []], [[A], [A]], parsed_ok=[True, False])
    assert metrics["parse_failure_rate"] == 0.5
    assert metrics["accuracy_50"] == 0.5 and metrics["recall"] == 0.5 and metrics["precision"] == 1.0
    salvaged = score_detection([A], [A], parsed_ok=False)  # e.g. the complete box of a truncated answer
    assert salvaged.tp == 1 and not salvaged.parsed_ok


def test_no_prediction_and_no_truth_edge_cases() -> None:
    nothing = detection_metrics([[]], [[A]])
    assert (nothing["precision"], nothing["recall"], nothing["f1"], nothing["map_50"]) == (0, 0, 0, 0)
    no_truth = detection_metrics([[A]], [[]])
    assert no_truth["map_50"] is None and no_truth["map_50_95"] is None  # COCO: undefined without truth
    assert no_truth["precision"] == 0.0
    assert detection_metrics([], [])["samples"] == 0
    with pytest.raises(ValueError):
        detection_metrics([[A]], [])


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("The Red square.", "red square"),
        ("  an   Apple!! ", "apple"),
        ("3.5 kg", "3.5 kg"),
        ("1,000", "1000"),
        ("-3", "-3"),
        ("well-known", "well known"),
    ],
)
def test_normalisation(text: str, normalised: str) -> None:
    assert normalize_answer(text) == normalised


def test_exact_and_relaxed_match() -> None:
    assert exact_match("Red.", "red") and exact_match("the red", "Red")
    assert not exact_match("dark red", "red")
    assert exact_match("blue", ["red", "Blue"]), "any acceptable answer counts"
    assert relaxed_match("124", "120") and relaxed_match("126", "120")  # within 5%
    assert not relaxed_match("127", "120")
    assert relaxed_match("120 kcal", "120"), "a prediction with exactly one number is read as that number"
    assert not relaxed_match("4 or 5", "4")
    assert relaxed_match("0", "0") and not relaxed_match("0.01", "0")
    assert relaxed_match("Red", "red") and not relaxed_match("3", "red")
    assert not exact_match("124", "120")


def test_vqa_metrics_aggregate() -> None:
    metrics = vqa_metrics(["red", "121", "blue"], ["Red", "120", "green"])
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert metrics["relaxed_match"] == pytest.approx(2 / 3)
    assert metrics["samples"] == 3
    with pytest.raises(ValueError):
        vqa_metrics(["a"], [])
