"""The evaluation protocols, each a named benchmark that turns an encoder into metric values.

- `Centroids`: a labelled support set (a train split) gives each intent's centroid; queries
  (a test split) and out-of-scope queries are scored against it (`metrics.score_all`).
- `FewShot`: the same with only k support utterances per intent, drawn by seed, averaged over
  seeds: how a user with a handful of examples per intent starts.
- `SelfSplit`: one labelled set without a train split (the pretraining set's val, or the
  intents a leave-out run never saw): per seed, a share of the intents is set aside as
  out-of-scope, the rest of the utterances are halved per intent into support and queries;
  averaged over seeds.

Every benchmark asks its encoder through one `CachedEncoder`, so a text shared by several
benchmarks (CLINC150 train serves the full and the few-shot runs) is embedded once; a view of it
at a width (`CachedEncoder.at`) measures the vectors the API's `dimensions` returns.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from intent_model.data import Split
from intent_model.encoders import Encoder
from intent_model.metrics import kmeans_v_measure, normalize, score_all

Scores = dict[str, float | None]
METRICS = (
    "nearest_centroid_accuracy",
    "one_nn_accuracy",
    "oos_auroc",
    "oos_recall_at_95",
    "v_measure",
)


class CachedEncoder:
    """Embeds each distinct text once across every call; with `dims`, answers the first `dims`
    values of each vector, re-normalised, as the API's `dimensions` does."""

    def __init__(self, encoder: Encoder, dims: int | None = None,
                 cache: dict[str, np.ndarray] | None = None) -> None:  # fmt: skip
        self._encoder = encoder
        self._dims = dims
        self._cache: dict[str, np.ndarray] = {} if cache is None else cache

    def at(self, dims: int) -> CachedEncoder:
        """The same vectors cut to `dims` values, sharing this cache."""
        return CachedEncoder(self._encoder, dims, self._cache)

    def prefetch(self, texts: Iterable[str]) -> None:
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            self._cache.update(zip(missing, self._encoder.encode(missing), strict=True))

    def encode(self, texts: list[str]) -> np.ndarray:
        self.prefetch(texts)
        if not texts:
            return np.zeros((0, 0), np.float32)
        vectors = np.stack([self._cache[t] for t in texts])
        return vectors if self._dims is None else normalize(vectors[:, : self._dims])

    def describe(self) -> str:
        return self._encoder.describe()

    def width(self) -> int:
        """Values per vector of the model (0 before anything was embedded)."""
        return len(next(iter(self._cache.values()))) if self._cache else 0


class Benchmark(Protocol):
    @property
    def name(self) -> str: ...

    def texts(self) -> list[str]: ...

    def run(self, encoder: CachedEncoder) -> Scores: ...


def _scores(support: Split, queries: Split, oos: Split | None, enc: CachedEncoder,
            seed: int, cluster: bool) -> Scores:  # fmt: skip
    result = score_all(
        enc.encode(support.texts),
        support.labels,
        enc.encode(queries.texts),
        queries.labels,
        enc.encode(oos.texts) if oos is not None and len(oos) else None,
        seed,
        cluster,
    )
    return {m: getattr(result, m) for m in METRICS}


def _mean(runs: list[Scores], v_measure: float | None) -> Scores:
    out: Scores = {}
    for metric in METRICS:
        values = [r[metric] for r in runs if r[metric] is not None]
        out[metric] = float(np.mean(values)) if values else None  # type: ignore[arg-type]
    out["v_measure"] = v_measure
    return out


@dataclass(frozen=True)
class Centroids:
    name: str
    support: Split
    queries: Split
    oos: Split | None

    def texts(self) -> list[str]:
        return self.support.texts + self.queries.texts + (self.oos.texts if self.oos else [])

    def run(self, encoder: CachedEncoder) -> Scores:
        return _scores(self.support, self.queries, self.oos, encoder, 0, cluster=True)


@dataclass(frozen=True)
class FewShot:
    name: str
    support: Split
    queries: Split
    oos: Split | None
    shots: int
    seeds: int = 5

    def texts(self) -> list[str]:
        return self.support.texts + self.queries.texts + (self.oos.texts if self.oos else [])

    def run(self, encoder: CachedEncoder) -> Scores:
        runs = [
            _scores(self._draw(seed), self.queries, self.oos, encoder, seed, cluster=False)
            for seed in range(self.seeds)
        ]
        # The clusters of the queries do not depend on the support set: once, as in Centroids.
        v = kmeans_v_measure(encoder.encode(self.queries.texts), self.queries.labels, 0)
        return _mean(runs, v)

    def _draw(self, seed: int) -> Split:
        rng = random.Random(seed)
        by_intent: dict[str, list[int]] = {}
        for i, label in enumerate(self.support.labels):
            by_intent.setdefault(label, []).append(i)
        keep: list[int] = []
        for label in sorted(by_intent):
            rows = by_intent[label]
            keep += rng.sample(rows, min(self.shots, len(rows)))
        keep.sort()
        return Split([self.support.texts[i] for i in keep], [self.support.labels[i] for i in keep])


@dataclass(frozen=True)
class SelfSplit:
    name: str
    data: Split
    seeds: int = 5
    oos_share: float = 0.2

    def texts(self) -> list[str]:
        return self.data.texts

    def run(self, encoder: CachedEncoder) -> Scores:
        runs = [self._run_seed(encoder, seed) for seed in range(self.seeds)]
        v = kmeans_v_measure(encoder.encode(self.data.texts), self.data.labels, 0)
        return _mean(runs, v)

    def _run_seed(self, encoder: CachedEncoder, seed: int) -> Scores:
        rng = random.Random(seed)
        by_intent: dict[str, list[int]] = {}
        for i, label in enumerate(self.data.labels):
            by_intent.setdefault(label, []).append(i)
        intents = sorted(k for k, v in by_intent.items() if len(v) >= 2)
        # At least two known intents stay, or nearest-centroid has nothing to choose between.
        n_unknown = min(max(1, round(self.oos_share * len(intents))), len(intents) - 2)
        unknown = set(rng.sample(intents, max(0, n_unknown)))
        support: list[int] = []
        queries: list[int] = []
        oos: list[int] = []
        for label in intents:
            rows = by_intent[label][:]
            rng.shuffle(rows)
            if label in unknown:
                oos += rows
            else:
                half = len(rows) // 2
                support += rows[:half]
                queries += rows[half:]

        def take(rows: list[int]) -> Split:
            return Split([self.data.texts[i] for i in rows], [self.data.labels[i] for i in rows])

        return _scores(take(support), take(queries), take(oos), encoder, seed, cluster=False)


def capped(split: Split, per_intent: int, seed: int = 0) -> Split:
    """At most `per_intent` utterances of each intent, drawn by seed, in input order."""
    rng = random.Random(seed)
    by_intent: dict[str, list[int]] = {}
    for i, label in enumerate(split.labels):
        by_intent.setdefault(label, []).append(i)
    keep = sorted(
        i for rows in by_intent.values() for i in rng.sample(rows, min(per_intent, len(rows)))
    )
    return Split([split.texts[i] for i in keep], [split.labels[i] for i in keep])


def run_all(benchmarks: list[Benchmark], encoder: Encoder, dims: tuple[int, ...] = (),
            at_dims: tuple[str, ...] = ()) -> dict[str, Scores]:  # fmt: skip
    """Every benchmark at full width, then those named in `at_dims` at each width of `dims`
    (keyed `name@width`; widths not below the model's are skipped)."""
    cached = CachedEncoder(encoder)
    cached.prefetch(t for b in benchmarks for t in b.texts())
    out = {b.name: b.run(cached) for b in benchmarks}
    full = cached.width()
    for width in [d for d in dims if d < full]:
        view = cached.at(width)
        out |= {f"{b.name}@{width}": b.run(view) for b in benchmarks if b.name in at_dims}
    return out
