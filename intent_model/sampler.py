"""Training batches over several labelled sources: each batch is P intents x K utterances drawn
from one source only, so every in-batch negative is a real negative (two sources' label sets
are not aligned: CLINC150's `book_flight` and a pretraining corpus's "book flight" would
otherwise push apart two names for one intent).

A source is chosen per batch with probability `share`; within it, intents are drawn without
replacement with weight count ** `intent_power` (0 uniform, 1 by size), and each intent hands
out its utterances from a reshuffled queue, so every utterance is used before any repeats.

Hard negatives: given each intent's neighbours (the intents the base model confuses it with,
nearest first), a share of every batch is filled with small neighbourhoods (an intent drawn as
above plus its nearest intents not yet in the batch), so the batch must tell apart intents that
are close, as users' own intents within one domain are; the rest is drawn as above.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Batch:
    source: str
    rows: list[int]  # indices into the source's examples, K per intent, grouped by intent
    intents: list[str]  # the P intents, in the order their rows appear


class _Queue:
    """An intent's example indices, reshuffled each time they run out."""

    def __init__(self, indices: list[int], rng: random.Random) -> None:
        self._indices = indices
        self._rng = rng
        self._pending: list[int] = []

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        # An intent with fewer than k examples gives each once.
        while len(out) < min(k, len(self._indices)):
            if not self._pending:
                self._pending = self._indices[:]
                self._rng.shuffle(self._pending)
            candidate = self._pending.pop()
            if candidate in out:  # taken from the end of the last round: keep it for later
                self._pending.insert(0, candidate)
                continue
            out.append(candidate)
        return out


class SourceSampler:
    """P x K batches from one source's labels."""

    def __init__(
        self,
        labels: list[str],
        per_intent: int,
        intent_power: float,
        rng: random.Random,
        neighbours: dict[str, list[str]] | None = None,
        hard_share: float = 0.0,
        neighbourhood: int = 4,
    ) -> None:
        by_intent: dict[str, list[int]] = {}
        for i, label in enumerate(labels):
            by_intent.setdefault(label, []).append(i)
        # An intent with one example has no positive for it: it never anchors a batch.
        self.intents = sorted(k for k, v in by_intent.items() if len(v) >= 2)
        self._weights = [len(by_intent[k]) ** intent_power for k in self.intents]
        self._queues = {k: _Queue(by_intent[k], rng) for k in self.intents}
        self._per_intent = per_intent
        self._rng = rng
        known = set(self.intents)
        self._neighbours = {
            k: [n for n in v if n in known and n != k] for k, v in (neighbours or {}).items()
        }
        self._hard_share = hard_share if neighbours else 0.0
        self._neighbourhood = neighbourhood

    def batch(self, source: str, batch_intents: int) -> Batch:
        order = _weighted_sample(self.intents, self._weights, len(self.intents), self._rng)
        size = min(batch_intents, len(self.intents))
        hard = round(self._hard_share * size)
        chosen: list[str] = []
        taken: set[str] = set()
        for seed in order:
            if len(chosen) >= hard:
                break
            if seed in taken:
                continue
            close = [n for n in self._neighbours.get(seed, []) if n not in taken]
            for intent in [seed, *close][: min(self._neighbourhood, size - len(chosen))]:
                chosen.append(intent)
                taken.add(intent)
        chosen += [i for i in order if i not in taken][: size - len(chosen)]
        rows: list[int] = []
        for intent in chosen:
            rows += self._queues[intent].take(self._per_intent)
        return Batch(source, rows, chosen)


def _weighted_sample(
    items: list[str], weights: list[float], k: int, rng: random.Random
) -> list[str]:
    """k distinct items, each drawn with probability proportional to its weight among those
    left (Efraimidis-Spirakis keys)."""
    keyed = sorted(
        ((rng.random() ** (1.0 / w), item) for item, w in zip(items, weights, strict=True)),
        reverse=True,
    )
    return [item for _, item in keyed[: min(k, len(items))]]


def mixed_batches(
    sources: dict[str, SourceSampler],
    shares: dict[str, float],
    batch_intents: int,
    steps: int,
    rng: random.Random,
) -> Iterator[Batch]:
    """`steps` batches, each from one source picked with probability `shares[source]`."""
    names = sorted(sources)
    weights = [shares[name] for name in names]
    for _ in range(steps):
        name = rng.choices(names, weights)[0]
        yield sources[name].batch(name, batch_intents)
