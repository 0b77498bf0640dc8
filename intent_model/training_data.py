"""The training data as the loop consumes it: each source's utterances and intent names as
token ids, the frozen base model's vectors of both (computed once, cached on disk), each
intent's nearest intents for hard negatives, and the samplers that draw batches from them."""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoder.layout import UnpaddedBatch
from encoder.unpadded import live_forward
from intent_model.config import TrainConfig
from intent_model.data import (
    default_data_path,
    default_pretrain_path,
    intent_name,
    load_clinc,
    load_pretrain,
)
from intent_model.sampler import SourceSampler


@dataclass
class Source:
    """One source's training utterances as token ids, their labels and the intents' names."""

    ids: list[list[int]]
    labels: list[str]
    name_ids: dict[str, list[int]]
    base: torch.Tensor | None = None  # the frozen base's pooled vectors of `ids`
    base_names: dict[str, torch.Tensor] = field(default_factory=dict)

    def batch_inputs(
        self, rows: list[int], intents: list[str], names: bool
    ) -> tuple[list[list[int]], list[int], torch.Tensor | None]:
        """(token ids, label index into `intents`, base vectors or None) of one batch; with
        `names`, each intent's name follows the utterances as one more row of that intent."""
        ids = [self.ids[r] for r in rows]
        labels = [intents.index(self.labels[r]) for r in rows]
        base = [self.base[rows]] if self.base is not None else []
        if names:
            ids += [self.name_ids[intent] for intent in intents]
            labels += list(range(len(intents)))
            if base:
                base.append(torch.stack([self.base_names[i] for i in intents]))
        return ids, labels, torch.cat(base) if base else None


@torch.no_grad()
def pooled(model: Any, embedder: Any, ids: list[list[int]], batch: int = 256) -> torch.Tensor:
    """Pooled (unnormalised) vectors of `ids` with dropout off, in input order."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.empty(len(ids), model.config.hidden_size)
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        tokens = UnpaddedBatch.of([ids[i] for i in chunk], embedder.framing, embedder.device)
        out[chunk] = live_forward(model, tokens, embedder.pooling.mode).float().cpu()
    model.train(was_training)
    return out


def _base_vectors(
    model: Any, embedder: Any, ids: list[list[int]], cache: Path | None
) -> torch.Tensor:
    """`pooled` of the untouched base, kept in `cache` keyed by the base revision and the exact
    token ids, so runs on the same data skip the pass (3 minutes on 2 CPU cores)."""
    if cache is None:
        return pooled(model, embedder, ids)
    digest = hashlib.sha256(embedder.revision.encode())
    for row in ids:
        digest.update(np.asarray(row, dtype=np.int32).tobytes() + b"|")
    path = cache / f"base-vectors-{digest.hexdigest()[:16]}.pt"
    if path.is_file():
        return torch.load(path)  # type: ignore[no-any-return]
    vectors = pooled(model, embedder, ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed: runs started together may compute the same file at once.
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        torch.save(vectors, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)  # left only when the save failed
    return vectors


def source_shares(cfg: TrainConfig) -> dict[str, float]:
    """Each source's share of the batches (`clinc_share`, the rest the pretraining set)."""
    return {"clinc150": cfg.clinc_share, "pretrain": 1.0 - cfg.clinc_share}


def load_sources(cfg: TrainConfig, embedder: Any) -> tuple[dict[str, Source], Source]:
    """The sources the run's holdout leaves and its shares draw from (a source with share 0 is
    not loaded, so the run is the one that held it out), tokenized and cut to
    `cfg.max_length`; with the preserving term on, the base model's vectors of every utterance
    and name. Second, the utterances the views term draws from (`_view_pool`)."""
    clinc = load_clinc(cfg.clinc or default_data_path())["train"]
    pretrain = load_pretrain(cfg.pretrain or default_pretrain_path())["train"]
    limit = min(cfg.max_length, embedder.max_seq_length) - embedder.num_special_tokens
    shares = source_shares(cfg)
    splits = cfg.holdout_spec().training_data(clinc, pretrain)
    out = {}
    for name, split in splits.items():
        if shares[name] <= 0.0:
            continue
        labels = sorted(set(split.labels))
        name_ids = embedder.tokenize([intent_name(label) for label in labels])
        src = Source(
            ids=[t[:limit] for t in embedder.tokenize(split.texts)],
            labels=split.labels,
            name_ids={label: t[:limit] for label, t in zip(labels, name_ids, strict=True)},
        )
        if cfg.preserve > 0:
            names = list(src.name_ids)
            everything = src.ids + [src.name_ids[n] for n in names]
            vectors = _base_vectors(embedder.model, embedder, everything, cfg.cache)
            src.base = vectors[: len(src.ids)]
            src.base_names = dict(zip(names, vectors[len(src.ids) :], strict=True))
        out[name] = src
    return out, _view_pool(cfg, embedder, out, splits.get("clinc150"), limit)


def _view_pool(
    cfg: TrainConfig, embedder: Any, sources: dict[str, Source], clinc: Any, limit: int
) -> Source:
    """The utterances the views term draws from (their labels unused): the pretraining set's,
    and with `cfg.view_text` "all" then CLINC150's training utterances that the holdout leaves
    (`clinc`, None when it leaves none), with the base's vectors when a term over the views'
    utterances needs them. A loaded CLINC150 source lends its tokens and base vectors."""
    pretrain = sources["pretrain"]
    if cfg.view_text != "all" or clinc is None:
        return pretrain
    loaded = sources.get("clinc150")
    if loaded is not None:
        ids, base = loaded.ids, loaded.base
    else:
        ids = [t[:limit] for t in embedder.tokenize(clinc.texts)]
        held = cfg.views_held() and pretrain.base is not None
        base = _base_vectors(embedder.model, embedder, ids, cfg.cache) if held else None
    both = None
    if cfg.views_held() and pretrain.base is not None and base is not None:
        both = torch.cat([pretrain.base, base])
    return Source(ids=pretrain.ids + ids, labels=[], name_ids={}, base=both)


def neighbours(src: Source) -> dict[str, list[str]]:
    """Each intent's other intents, nearest first by the cosine of the base model's intent
    centroids: the intents the untrained model confuses it with. Needs the base vectors."""
    if src.base is None:
        raise ValueError("hard negatives need the base vectors (--preserve > 0)")
    names = sorted(set(src.labels))
    index = {name: i for i, name in enumerate(names)}
    rows = torch.tensor([index[label] for label in src.labels])
    sums = torch.zeros(len(names), src.base.shape[1]).index_add_(
        0, rows, torch.nn.functional.normalize(src.base, dim=1)
    )
    centroids = torch.nn.functional.normalize(sums, dim=1)
    order = torch.argsort(centroids @ centroids.T, dim=1, descending=True)
    return {name: [names[j] for j in order[i].tolist() if j != i] for i, name in enumerate(names)}


def samplers(
    cfg: TrainConfig, sources: dict[str, Source], rng: random.Random
) -> dict[str, SourceSampler]:
    return {
        name: SourceSampler(
            src.labels,
            cfg.per_intent,
            cfg.intent_power,
            rng,
            neighbours=neighbours(src) if cfg.hard_share > 0 else None,
            hard_share=cfg.hard_share,
            neighbourhood=cfg.neighbourhood,
        )
        for name, src in sources.items()
    }
