"""The README.md model card written next to trained weights: what data the model saw, the
recipe and seed that reproduce it, and base-versus-trained evaluation numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_METRICS = (
    ("nearest_centroid_accuracy", "nearest-centroid acc"),
    ("one_nn_accuracy", "1-NN acc"),
    ("oos_auroc", "OOS AUROC"),
    ("oos_recall_at_95", "OOS recall@95"),
    ("v_measure", "k-means V"),
)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def results_table(evals: dict[str, dict[str, Any]]) -> str:
    """Markdown table, one row per `mix=a/scope/split` key (mix=0 is the base model)."""
    head = "| model (mix) | scope | split | " + " | ".join(label for _, label in _METRICS) + " |"
    rule = "|" + "---|" * (3 + len(_METRICS))
    rows = [head, rule]
    for key in sorted(evals, key=lambda k: (k.split("/")[1], k.split("/")[2], k)):
        mix, scope, split = key.split("/")
        alpha = float(mix.removeprefix("mix="))
        name = "base" if alpha == 0 else f"trained ({alpha:g})"
        cells = [_fmt(evals[key].get(m)) for m, _ in _METRICS]
        rows.append(f"| {name} | {scope} | {split} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_model_card(path: Path, report: dict[str, Any]) -> None:
    cfg = report["config"]
    held_out = cfg.get("exclude_domains") or []
    lines = [
        "# intent-minilm: an intent-specialised sentence embedding model",
        "",
        f"Fine-tuned from `{Path(cfg['base']).name}` (all-MiniLM-L6-v2 by default) for intent",
        "classification, intent similarity, out-of-scope detection and intent clustering.",
        "Same layout, tokenizer, mean pooling, normalisation and 384 dimensions as the base,",
        "so the embed service loads it unchanged through `EMBED_MODEL_PATH`.",
        "",
        "## Data",
        "",
        f"CLINC150 `train` split only: {report['examples']} utterances of {report['intents']}"
        " intents. `val` was used to choose the recipe; `test` is reported, never tuned on.",
        "The out-of-scope utterances (`oos_*`) are not used in training.",
    ]
    if held_out:
        lines += [
            "",
            f"Leave-domains-out run: the domains {', '.join(held_out)} were removed from",
            "training entirely; rows with scope `held_out` measure only their intents.",
        ]
    lines += [
        "",
        "## Recipe",
        "",
        "Supervised contrastive loss (in-batch negatives): each batch holds "
        f"{cfg['batch_intents']} intents x {cfg['per_intent']} utterances; for every utterance the",
        "other utterances of its intent are positives and all others negatives, temperature "
        f"{cfg['temperature']}. AdamW, peak learning rate {cfg['lr']}, {cfg['warmup']:.0%} linear",
        f"warm-up then linear decay, weight decay {cfg['weight_decay']}, {cfg['epochs']} epoch(s)"
        f" ({report['steps']} steps), max {cfg['max_length']} tokens, seed {cfg['seed']}.",
        *_preserve_lines(cfg, report),
        *_mix_lines(cfg["mix"]),
        "",
        f"Device `{report['device']}`, torch {report['torch']}, training {report['train_seconds']}"
        f" s, whole run {report.get('total_seconds', 'n/a')} s; loss {report['first_loss']}"
        f" -> {report['last_loss']}.",
        "",
        "## Evaluation (`python -m intent_model.eval`)",
        "",
        "Nearest-centroid and 1-NN accuracy over train-split embeddings; out-of-scope detection",
        "from the highest centroid similarity (AUROC; out-of-scope recall at the threshold",
        "keeping 95% of in-scope queries); V-measure of k-means with k = number of intents.",
        "`mix` 0 is the base model.",
        "",
        results_table(report["eval"]) if report["eval"] else "(evaluation skipped)",
        "",
        "## Reproduce",
        "",
        "```",
        "python -m intent_model.train " + _cli(cfg),
        "```",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def _mix_lines(mix: float) -> list[str]:
    if mix == 1.0:
        return ["The saved weights are the fine-tuned ones (`--mix 1`, no weight-space mix)."]
    return [
        f"The saved weights are {mix:g} x fine-tuned + {1 - mix:g} x base",
        "(weight-space mixing, WiSE-FT), which keeps most of the in-domain gain while staying",
        "closer to the base model's geometry on intents the model never saw.",
    ]


def _preserve_lines(cfg: dict[str, Any], report: dict[str, Any]) -> list[str]:
    weight = cfg.get("preserve", 0.0)
    if not weight:
        return ["No geometry-preserving term (`--preserve 0`)."]
    return [
        f"Plus a geometry-preserving term (weight {weight:g}): the mean squared difference",
        "between the in-batch cosine similarities of different-intent pairs under the model in",
        "training and under the frozen base model, so the layout of intents relative to each",
        "other stays near the base's while same-intent utterances are pulled together (term "
        f"{report.get('preserve_first')} -> {report.get('preserve_last')}).",
    ]


def _cli(cfg: dict[str, Any]) -> str:
    parts = [
        f"--epochs {cfg['epochs']:g}",
        f"--lr {cfg['lr']:g}",
        f"--batch-intents {cfg['batch_intents']}",
        f"--per-intent {cfg['per_intent']}",
        f"--temperature {cfg['temperature']:g}",
        f"--mix {cfg['mix']:g}",
        f"--preserve {cfg.get('preserve', 0.0):g}",
        f"--seed {cfg['seed']}",
    ]
    if cfg.get("exclude_domains"):
        parts.append("--exclude-domains " + ",".join(cfg["exclude_domains"]))
    return " ".join(parts)
