"""Intent-quality metrics over embeddings: nearest-centroid and 1-nearest-neighbour accuracy,
out-of-scope detection from the highest centroid similarity (AUROC and out-of-scope recall at
the threshold that keeps 95% of in-scope queries), and V-measure of k-means clustering. Pure
numpy/scikit-learn on already-computed vectors, so they can be checked against hand sums."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import v_measure_score

# Similarity matrices are built in row blocks so 4.5k x 15k float32 never needs to exist whole.
_BLOCK_ROWS = 1024


def normalize(x: np.ndarray) -> np.ndarray:
    """Unit-length rows (cosine similarity becomes a dot product); zero rows stay zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def centroids(train: np.ndarray, labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """One normalised mean vector per label, labels sorted so the result is deterministic."""
    names = sorted(set(labels))
    index = {name: i for i, name in enumerate(names)}
    label_ids = np.array([index[label] for label in labels])
    unit = normalize(train)
    sums = np.zeros((len(names), train.shape[1]), dtype=np.float64)
    np.add.at(sums, label_ids, unit)
    return normalize(sums), names


def _argmax_and_max(queries: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    best = np.empty(len(queries), dtype=np.int64)
    best_sim = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), _BLOCK_ROWS):
        sims = queries[start : start + _BLOCK_ROWS] @ keys.T
        best[start : start + len(sims)] = sims.argmax(axis=1)
        best_sim[start : start + len(sims)] = sims.max(axis=1)
    return best, best_sim


def nearest_centroid_accuracy(
    train: np.ndarray, train_labels: list[str], test: np.ndarray, test_labels: list[str]
) -> float:
    cents, names = centroids(train, train_labels)
    best, _ = _argmax_and_max(normalize(test), cents)
    return float(np.mean([names[b] == label for b, label in zip(best, test_labels, strict=True)]))


def one_nn_accuracy(
    train: np.ndarray, train_labels: list[str], test: np.ndarray, test_labels: list[str]
) -> float:
    best, _ = _argmax_and_max(normalize(test), normalize(train))
    return float(
        np.mean([train_labels[b] == label for b, label in zip(best, test_labels, strict=True)])
    )


def max_centroid_similarity(
    train: np.ndarray, train_labels: list[str], queries: np.ndarray
) -> np.ndarray:
    """The in-scope confidence of each query: cosine similarity to its closest intent centroid."""
    cents, _ = centroids(train, train_labels)
    _, best_sim = _argmax_and_max(normalize(queries), cents)
    return best_sim


def oos_auroc(in_scope_scores: np.ndarray, oos_scores: np.ndarray) -> float:
    """Probability that an out-of-scope query has a lower in-scope score than an in-scope one
    (ties count one half): the Mann-Whitney form of the ROC area, exact, no interpolation."""
    ins = np.sort(np.asarray(in_scope_scores, dtype=np.float64))
    wins = 0.0
    for score in np.asarray(oos_scores, dtype=np.float64):
        below = np.searchsorted(ins, score, side="left")
        equal = np.searchsorted(ins, score, side="right") - below
        wins += (len(ins) - below - equal) + 0.5 * equal
    return float(wins / (len(ins) * len(oos_scores)))


def oos_recall_at(
    in_scope_scores: np.ndarray, oos_scores: np.ndarray, keep: float = 0.95
) -> tuple[float, float]:
    """(threshold, recall): the highest threshold t such that at least `keep` of in-scope
    queries score >= t (so they are kept), and the share of out-of-scope queries scoring < t
    (so they are rejected)."""
    ins = np.sort(np.asarray(in_scope_scores, dtype=np.float64))
    # Keeping ceil(keep * n) queries means the threshold is the score of the one at this index.
    n_keep = int(np.ceil(keep * len(ins) - 1e-9))
    threshold = float(ins[len(ins) - n_keep])
    recall = float(np.mean(np.asarray(oos_scores, dtype=np.float64) < threshold))
    return threshold, recall


def kmeans_v_measure(vectors: np.ndarray, labels: list[str], seed: int = 0) -> float:
    """V-measure of k-means (k = number of distinct labels) on the normalised vectors."""
    k = len(set(labels))
    clusters = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(normalize(vectors))
    return float(v_measure_score(labels, clusters))


@dataclass(frozen=True)
class IntentScores:
    """Everything one evaluation reports; field names are the JSON keys."""

    nearest_centroid_accuracy: float
    one_nn_accuracy: float
    oos_auroc: float | None
    oos_recall_at_95: float | None
    oos_threshold_at_95: float | None
    v_measure: float | None
    n_train: int
    n_test: int
    n_oos: int
    n_intents: int

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def score_all(
    train: np.ndarray,
    train_labels: list[str],
    test: np.ndarray,
    test_labels: list[str],
    oos: np.ndarray | None,
    seed: int = 0,
    cluster: bool = True,
) -> IntentScores:
    """Every metric of `test` (and `oos`) against `train`; `cluster=False` skips k-means,
    whose V-measure depends on the queries only (callers that vary `train` compute it once)."""
    auroc = recall = threshold = None
    if oos is not None and len(oos):
        in_scores = max_centroid_similarity(train, train_labels, test)
        oos_scores = max_centroid_similarity(train, train_labels, oos)
        auroc = oos_auroc(in_scores, oos_scores)
        threshold, recall = oos_recall_at(in_scores, oos_scores, 0.95)
    return IntentScores(
        nearest_centroid_accuracy=nearest_centroid_accuracy(train, train_labels, test, test_labels),
        one_nn_accuracy=one_nn_accuracy(train, train_labels, test, test_labels),
        oos_auroc=auroc,
        oos_recall_at_95=recall,
        oos_threshold_at_95=threshold,
        v_measure=kmeans_v_measure(test, test_labels, seed) if cluster else None,
        n_train=len(train),
        n_test=len(test),
        n_oos=0 if oos is None else len(oos),
        n_intents=len(set(train_labels)),
    )
