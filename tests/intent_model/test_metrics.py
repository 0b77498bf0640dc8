"""The evaluation metrics on small hand-made slices equal the numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from intent_model.benchmarks import Centroids, run_all
from intent_model.data import Split
from intent_model.metrics import (
    kmeans_v_measure,
    nearest_centroid_accuracy,
    one_nn_accuracy,
    oos_auroc,
    oos_recall_at,
    score_all,
)
from intent_model.report import results_table

# Train: intent a at (1,0) and (0.8,0.6); intent b at (0,1) and (-0.6,0.8).
# Centroids: a = (0.9487, 0.3162), b = (-0.3162, 0.9487).
TRAIN = np.array([[1, 0], [0.8, 0.6], [0, 1], [-0.6, 0.8]], dtype=np.float32)
TRAIN_LABELS = ["a", "a", "b", "b"]
# q1 (0.6,0.8) a: centroid a 0.822 vs b 0.569 -> a; nearest train (0.8,0.6) 0.96 -> a.
# q2 (0.28,0.96) a: centroid a 0.569 vs b 0.822 -> b; nearest train (0,1) 0.96 -> b.
# q3 (-0.8,0.6) b: centroid b 0.822 -> b; nearest (-0.6,0.8) 0.96 -> b.
# q4 (0.8,0.6) b (mislabelled on purpose): centroid a 0.949 -> a; nearest (0.8,0.6) -> a.
TEST = np.array([[0.6, 0.8], [0.28, 0.96], [-0.8, 0.6], [0.8, 0.6]], dtype=np.float32)
TEST_LABELS = ["a", "a", "b", "b"]


def test_centroid_and_1nn_accuracy_match_hand_computation() -> None:
    assert nearest_centroid_accuracy(TRAIN, TRAIN_LABELS, TEST, TEST_LABELS) == 0.5
    assert one_nn_accuracy(TRAIN, TRAIN_LABELS, TEST, TEST_LABELS) == 0.5


def test_centroid_and_1nn_disagree_where_a_neighbour_is_closer_than_the_centroid() -> None:
    # a: (1,0),(0,1) -> centroid (0.707,0.707); b: (0.6,0.8) alone.
    train = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    query = np.array([[0.28, 0.96]], dtype=np.float32)
    # centroid a: 1.24 * 0.7071 = 0.877 < centroid b: 0.936 -> wrong;
    # neighbours: (0,1) 0.96 > (0.6,0.8) 0.936 -> right.
    assert nearest_centroid_accuracy(train, ["a", "a", "b"], query, ["a"]) == 0.0
    assert one_nn_accuracy(train, ["a", "a", "b"], query, ["a"]) == 1.0


def test_unnormalised_inputs_are_compared_by_cosine() -> None:
    scaled = TEST * np.array([[3.0], [0.5], [10.0], [2.0]], dtype=np.float32)
    assert nearest_centroid_accuracy(TRAIN * 7, TRAIN_LABELS, scaled, TEST_LABELS) == 0.5


def test_auroc_counts_ties_as_half() -> None:
    ins = np.array([0.9, 0.8, 0.7, 0.5])
    oos = np.array([0.6, 0.8, 0.3])
    # 0.6 is below 3 in-scope scores; 0.8 below 1 and tied with 1 (1.5); 0.3 below all 4.
    assert oos_auroc(ins, oos) == pytest.approx(8.5 / 12)
    assert oos_auroc(np.array([0.9]), np.array([0.1])) == 1.0
    assert oos_auroc(np.array([0.1]), np.array([0.9])) == 0.0


def test_recall_at_95_keeps_95_percent_of_in_scope() -> None:
    ins = np.arange(1, 21) / 100  # 0.01 .. 0.20: keeping 19 of 20 puts the threshold at 0.02
    oos = np.array([0.015, 0.02, 0.5])
    threshold, recall = oos_recall_at(ins, oos, 0.95)
    assert threshold == pytest.approx(0.02)
    assert recall == pytest.approx(1 / 3)  # only 0.015 falls below; 0.02 is kept
    assert np.mean(ins >= threshold) == pytest.approx(0.95)


def test_recall_at_95_with_few_in_scope_keeps_them_all() -> None:
    threshold, recall = oos_recall_at(np.array([0.9, 0.8, 0.7, 0.5]), np.array([0.6, 0.3, 0.1]))
    assert threshold == pytest.approx(0.5)  # ceil(0.95 * 4) = 4 kept
    assert recall == pytest.approx(2 / 3)


def test_v_measure_of_kmeans_matches_entropy_formula() -> None:
    # Two tight blobs; one "a" utterance sits in b's blob, so k-means (k=2) must cluster
    # {a, a} and {a, b, b, b}.
    vectors = np.array(
        [[1, 0.01], [1, -0.01], [0.01, 1], [0, 1], [-0.01, 1], [0.02, 1]], dtype=np.float32
    )
    labels = ["a", "a", "a", "b", "b", "b"]
    h_c = math.log(2)
    h_k = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    h_c_given_k = 4 / 6 * -(1 / 4 * math.log(1 / 4) + 3 / 4 * math.log(3 / 4))
    h_k_given_c = 3 / 6 * -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    homogeneity, completeness = 1 - h_c_given_k / h_c, 1 - h_k_given_c / h_k
    expected = 2 * homogeneity * completeness / (homogeneity + completeness)
    assert kmeans_v_measure(vectors, labels) == pytest.approx(expected, abs=1e-9)
    assert kmeans_v_measure(vectors[[0, 1, 3, 4]], ["a", "a", "b", "b"]) == pytest.approx(1.0)


class _TableEncoder:
    """Looks vectors up by text, standing in for a model in `evaluate`."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table
        self.calls: list[int] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return np.array([self.table[t] for t in texts], dtype=np.float32)

    def describe(self) -> str:
        return "table"


def test_centroid_benchmark_scores_test_against_train_and_oos() -> None:
    names = [f"t{i}" for i in range(4)] + [f"q{i}" for i in range(4)] + ["o0", "o1"]
    vecs = [*TRAIN.tolist(), *TEST.tolist(), [0.7071, -0.7071], [-0.7071, -0.7071]]
    bench = Centroids(
        "hand/test",
        Split(names[:4], TRAIN_LABELS),
        Split(names[4:8], TEST_LABELS),
        Split(["o0", "o1"], ["oos", "oos"]),
    )
    encoder = _TableEncoder(dict(zip(names, vecs, strict=True)))
    scores = run_all([bench], encoder)["hand/test"]
    # In-scope max centroid sims: 0.822, 0.822, 0.822, 0.949; oos: 0.447, -0.447 -> all lower.
    assert scores["nearest_centroid_accuracy"] == 0.5
    assert scores["oos_auroc"] == 1.0
    assert scores["oos_recall_at_95"] == 1.0
    direct = score_all(TRAIN, TRAIN_LABELS, TEST, TEST_LABELS, np.array(vecs[8:]))
    assert {k: getattr(direct, k) for k in scores} == scores
    assert encoder.calls == [10]  # every text embedded once, in one call
    table = results_table({"base": {"hand/test": scores}, "tuned": {"hand/test": scores}})
    assert "| hand/test | centroid | 0.5000 | 0.5000 | +0.0000 |" in table
