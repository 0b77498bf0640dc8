"""`python -m intent_model.train`: contrastive fine-tuning of a sentence-embedding model for
intent on the CLINC150 train split, writing a model directory the embed service loads unchanged
(EMBED_MODEL_PATH) with a model card. The recipe: supervised contrastive loss over batches of
P intents x K utterances (every other utterance of the same intent is a positive, every
utterance of another intent an in-batch negative), a geometry-preserving term that holds the
in-batch similarities between different intents near the frozen base model's (so training can
run harder for the trained domains without drifting on domains it never saw), then a
weight-space mix with the base model (WiSE-FT)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from intent_model.data import DOMAINS, Split, default_data_path, intents_of, load_clinc
from intent_model.encoders import LocalEncoder
from intent_model.eval import default_model_dir, evaluate_many
from intent_model.model_card import write_model_card

log = logging.getLogger(__name__)

# Files of a sentence-transformers directory that training leaves as they are: the tokenizer
# and the pooling/normalisation/length config the embed service reads.
_COPIED_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "merges.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)


@dataclass
class TrainConfig:
    """Every knob of a run; recorded verbatim in the model card and metrics.json."""

    base: Path
    out: Path
    data: Path
    epochs: float = 3.0
    lr: float = 1e-4
    batch_intents: int = 32
    per_intent: int = 4
    temperature: float = 0.05
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 48
    mix: float = 1.0
    preserve: float = 100.0
    mix_sweep: list[float] = field(default_factory=list)
    exclude_domains: list[str] = field(default_factory=list)
    seed: int = 0
    device: str = "auto"
    max_steps: int = 0
    eval_splits: list[str] = field(default_factory=lambda: ["val", "test"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def intent_batches(
    labels: list[str], batch_intents: int, per_intent: int, rng: random.Random
) -> list[list[int]]:
    """One epoch of P x K batches: every utterance once, each batch P distinct intents with K
    utterances each (so every anchor has K-1 positives and the rest are negatives)."""
    by_intent: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_intent.setdefault(label, []).append(i)
    # Each intent's utterances shuffled and cut into groups of K; round r takes the r-th group
    # of every intent that has one, so groups in one round come from distinct intents.
    groups: dict[str, list[list[int]]] = {}
    for label, idx in sorted(by_intent.items()):
        rng.shuffle(idx)
        groups[label] = [
            idx[s : s + per_intent] for s in range(0, len(idx) - per_intent + 1, per_intent)
        ]
    batches: list[list[int]] = []
    rounds = max((len(g) for g in groups.values()), default=0)
    for r in range(rounds):
        row = [g[r] for g in groups.values() if r < len(g)]
        rng.shuffle(row)
        chunks = [row[s : s + batch_intents] for s in range(0, len(row), batch_intents)]
        if len(chunks) > 1 and len(chunks[-1]) < 2:
            # A batch of one intent has no negatives: its group joins the previous batch.
            last = chunks.pop()
            chunks[-1] = chunks[-1] + last
        for chunk in chunks:
            if len(chunk) >= 2:
                batches.append([i for group in chunk for i in group])
    rng.shuffle(batches)
    return batches


def supervised_contrastive_loss(
    z: torch.Tensor, label_ids: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over anchors of -mean log p(positive | anchor), softmax over all other in-batch
    utterances; z must be L2-normalised."""
    sims = (z @ z.T) / temperature
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sims = sims.masked_fill(self_mask, float("-inf"))
    log_prob = sims - torch.logsumexp(sims, dim=1, keepdim=True)
    positives = (label_ids[:, None] == label_ids[None, :]) & ~self_mask
    pos_count = positives.sum(dim=1)
    has_pos = pos_count > 0
    pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1)
    return -(pos_log_prob[has_pos] / pos_count[has_pos]).mean()


def relational_preserve_loss(
    z: torch.Tensor, z_base: torch.Tensor, label_ids: torch.Tensor
) -> torch.Tensor:
    """Mean squared difference between the student's and the frozen base model's in-batch
    cosine similarities, over pairs of utterances of different intents only: same-intent pairs
    are the contrastive loss's to tighten, while the layout of intents relative to each other,
    which is what carries over to intents never trained on, is held near the base model's.
    Zero when the student embeds the batch exactly as the base does; rows must be L2-normalised.
    """
    cross = label_ids[:, None] != label_ids[None, :]
    if not bool(cross.any()):
        return z.new_zeros(())
    diff = (z @ z.T) - (z_base @ z_base.T)
    return diff.pow(2)[cross].mean()


@torch.no_grad()
def base_embeddings(
    model: torch.nn.Module,
    embedder: Any,
    ids: list[list[int]],
    device: torch.device,
    batch_size: int = 256,
) -> torch.Tensor:
    """The base model's vectors of every training utterance (same truncation and pooling as
    training), computed once before the first step; dropout is off as in serving."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.empty(0)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        input_ids, attention_mask = embedder.pad([ids[i] for i in chunk])
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        hidden = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state
        z = pool(hidden, attention_mask, embedder.pooling.mode).cpu()
        if out.numel() == 0:
            out = torch.empty(len(ids), z.shape[1])
        out[chunk] = z
    model.train(was_training)
    return out


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """The embed service's pooling (mean over real tokens or [CLS]), then L2 normalisation."""
    hidden = hidden.float()
    if mode == "cls":
        pooled = hidden[:, 0]
    else:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def mix_weights(
    base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """alpha * tuned + (1 - alpha) * base, parameter by parameter (integer buffers from tuned)."""
    out = {}
    for name, value in tuned.items():
        if value.is_floating_point():
            out[name] = alpha * value + (1.0 - alpha) * base[name].to(value.dtype)
        else:
            out[name] = value
    return out


def save_model_dir(model: torch.nn.Module, base_dir: Path, out: Path) -> None:
    """Weights as safetensors plus the base directory's tokenizer and sentence-transformers
    files, so the embed service loads `out` exactly as it loads the base."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)  # type: ignore[operator]
    for name in _COPIED_FILES:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out / name)
    modules_file = base_dir / "modules.json"
    if modules_file.is_file():
        for module in json.loads(modules_file.read_text()):
            sub = module.get("path", "")
            if sub and (base_dir / sub).is_dir():
                shutil.copytree(base_dir / sub, out / sub, dirs_exist_ok=True)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Runs the recipe, writes `cfg.out`, returns what the model card reports."""
    from embed_service.model import EmbeddingModel  # serving code: same tokenizer and pooling

    started = time.monotonic()
    seed_everything(cfg.seed)
    embedder = EmbeddingModel.from_directory(
        cfg.base, device=cfg.device, dtype="float32", packed=False  # trained in place
    )
    device, model = embedder.device, embedder.model
    splits = load_clinc(cfg.data)
    held_out = intents_of(cfg.exclude_domains) if cfg.exclude_domains else set()
    data: Split = splits["train"].without(held_out)  # never val or test
    names = sorted(set(data.labels))
    label_ids = torch.tensor([names.index(label) for label in data.labels])
    max_tokens = min(cfg.max_length, embedder.max_seq_length) - embedder.num_special_tokens
    ids = [t[:max_tokens] for t in embedder.tokenize(data.texts)]

    rng = random.Random(cfg.seed)
    epoch_batches = len(intent_batches(data.labels, cfg.batch_intents, cfg.per_intent, rng))
    total_steps = max(1, math.ceil(cfg.epochs * epoch_batches))
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    warmup_steps = int(cfg.warmup * total_steps)
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_factor(step: int) -> float:
        # Linear warm-up, then linear decay to zero at the last step.
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    # Frozen base vectors for the geometry-preserving term; one pass over train before step 0.
    z_base_all = base_embeddings(model, embedder, ids, device) if cfg.preserve > 0 else None
    use_bf16 = device.type == "cuda"
    log.info(
        "train_start examples=%d intents=%d held_out_domains=%s steps=%d device=%s bf16=%s",
        len(data),
        len(names),
        ",".join(cfg.exclude_domains) or "none",
        total_steps,
        device,
        use_bf16,
    )
    model.train()
    losses: list[float] = []
    preserve_losses: list[float] = []
    step = 0
    bar = tqdm(total=total_steps, desc="train", unit="step")
    while step < total_steps:
        for batch in intent_batches(data.labels, cfg.batch_intents, cfg.per_intent, rng):
            if step >= total_steps:
                break
            input_ids, attention_mask = embedder.pad([ids[i] for i in batch])
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                hidden = model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    token_type_ids=torch.zeros_like(input_ids),
                ).last_hidden_state
            z = pool(hidden, attention_mask, embedder.pooling.mode)
            batch_labels = label_ids[batch].to(device)
            loss = supervised_contrastive_loss(z, batch_labels, cfg.temperature)
            if z_base_all is not None:
                kept = relational_preserve_loss(z, z_base_all[batch].to(device), batch_labels)
                preserve_losses.append(float(kept.item()))
                loss = loss + cfg.preserve * kept
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.item()))
            step += 1
            bar.update(1)
            postfix = {"loss": f"{np.mean(losses[-20:]):.3f}"}
            if preserve_losses:
                postfix["preserve"] = f"{np.mean(preserve_losses[-20:]):.4f}"
            bar.set_postfix(postfix)
    bar.close()
    model.eval()
    train_seconds = time.monotonic() - started
    tuned_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # Save before the (slow, optional) evaluation so a run stopped there still leaves a model.
    model.load_state_dict(mix_weights(base_state, tuned_state, cfg.mix))
    save_model_dir(model, cfg.base, cfg.out)

    report: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "trained_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "steps": total_steps,
        "examples": len(data),
        "intents": len(names),
        "first_loss": round(float(np.mean(losses[:20])), 4),
        "last_loss": round(float(np.mean(losses[-20:])), 4),
        "train_seconds": round(train_seconds, 1),
        "preserve_first": (
            round(float(np.mean(preserve_losses[:20])), 5) if preserve_losses else None
        ),
        "preserve_last": (
            round(float(np.mean(preserve_losses[-20:])), 5) if preserve_losses else None
        ),
        "torch": torch.__version__,
        "eval": {},
    }
    (cfg.out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_model_card(cfg.out / "README.md", report)
    if cfg.eval_splits:
        # Held-out-domain runs are judged on the intents they never saw; full runs on all.
        scope: dict[str, list[str] | None] = (
            {"held_out": cfg.exclude_domains} if cfg.exclude_domains else {"all": None}
        )
        if cfg.exclude_domains:
            seen = [d for d in DOMAINS if d not in cfg.exclude_domains]
            scope["seen"] = seen
        encoder = LocalEncoder(embedder, "in-training")  # the loaded model, not a re-read
        for alpha in sorted({0.0, cfg.mix, *cfg.mix_sweep}):
            model.load_state_dict(mix_weights(base_state, tuned_state, alpha))
            for scope_name, domains in scope.items():
                scores = evaluate_many(encoder, splits, cfg.eval_splits, domains, cfg.seed)
                for split, s in scores.items():
                    key = f"mix={alpha:g}/{scope_name}/{split}"
                    report["eval"][key] = s.as_dict()
                    log.info(
                        "eval %s centroid=%.4f 1nn=%.4f auroc=%.4f v=%.4f",
                        key,
                        s.nearest_centroid_accuracy,
                        s.one_nn_accuracy,
                        s.oos_auroc or float("nan"),
                        s.v_measure,
                    )
    report["total_seconds"] = round(time.monotonic() - started, 1)
    (cfg.out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_model_card(cfg.out / "README.md", report)
    log.info("train_done out=%s seconds=%.1f", cfg.out, report["total_seconds"])
    return report


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig(base=Path(), out=Path(), data=Path())
    p = argparse.ArgumentParser(
        prog="python -m intent_model.train",
        description="Contrastive fine-tuning for intent on CLINC150 train (never val or test).",
    )
    p.add_argument(
        "--base",
        type=Path,
        default=None,
        help="model directory to start from (default: packaged all-MiniLM-L6-v2)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("models/intent-minilm"),
        help="output model directory (default models/intent-minilm, git-ignored)",
    )
    p.add_argument("--data", type=Path, default=None, help="CLINC150 data_full.json")
    p.add_argument(
        "--epochs", type=float, default=d.epochs, help="passes over train (default %(default)s)"
    )
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: off)")
    p.add_argument(
        "--lr", type=float, default=d.lr, help="peak AdamW learning rate (default %(default)s)"
    )
    p.add_argument(
        "--batch-intents", type=int, default=d.batch_intents, help="distinct intents per batch (P)"
    )
    p.add_argument(
        "--per-intent", type=int, default=d.per_intent, help="utterances per intent in a batch (K)"
    )
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--warmup", type=float, default=d.warmup, help="share of steps warming up")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument(
        "--max-length",
        type=int,
        default=d.max_length,
        help="tokens per utterance in training (CLINC150 utterances are short)",
    )
    p.add_argument(
        "--mix",
        type=float,
        default=d.mix,
        help="weight of the fine-tuned model in the saved weights; the rest is base "
        "(default %(default)s: no mix)",
    )
    p.add_argument(
        "--preserve",
        type=float,
        default=d.preserve,
        help="weight of the geometry-preserving term: mean squared difference between the "
        "in-batch cosine similarities of different-intent pairs under the trained and the "
        "frozen base model (default %(default)s; 0: off)",
    )
    p.add_argument(
        "--mix-sweep", default="", help="extra comma-separated mix values to evaluate (not saved)"
    )
    p.add_argument(
        "--exclude-domains",
        default="",
        help="comma-separated CLINC150 domains left out of training entirely "
        "(leave-domains-out experiment); evaluation then reports them apart",
    )
    p.add_argument(
        "--eval-splits",
        default="val,test",
        help="splits to evaluate base and trained on for the model card ('' = none)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto (cuda when present), cpu, cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        base=args.base or default_model_dir(),
        out=args.out,
        data=args.data or default_data_path(),
        epochs=args.epochs,
        lr=args.lr,
        batch_intents=args.batch_intents,
        per_intent=args.per_intent,
        temperature=args.temperature,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        max_length=args.max_length,
        mix=args.mix,
        preserve=args.preserve,
        mix_sweep=_floats(args.mix_sweep),
        exclude_domains=[x for x in args.exclude_domains.split(",") if x],
        seed=args.seed,
        device=args.device,
        max_steps=args.max_steps,
        eval_splits=[x for x in args.eval_splits.split(",") if x],
    )
    if cfg.exclude_domains:
        intents_of(cfg.exclude_domains)  # fail before training on a misspelt domain
    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
