"""`python -m intent_model.eval`: how well models represent intent, side by side.

Each model (a directory the embed service loads, or a running service) is measured on CLINC150
(`train` centroids against `test` or `val` queries, and 1-, 5- and 10-shot centroids averaged
over five seeds), on the intent pretraining set's `val` (its own support/query split, with a
fifth of its intents as out-of-scope) and on HINT3's three unseen-domain sets, at full width and
at the widths of `--dims`; the base model is measured beside it unless `--no-base`, and each
other model goes through the unseen-domain gate against it. Any file in CLINC150's format
(`train`, `test`, optional `val` and `oos_*` lists of [text, label]) can stand in for CLINC150
with `--data`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from intent_embed.logs import configure_logging
from intent_model.data import (
    base_model_dir,
    default_data_path,
    default_hint3_path,
    default_pretrain_path,
)
from intent_model.encoders import Encoder, LocalEncoder, ServiceEncoder
from intent_model.gate import judge, leaveout_of, verdict_table
from intent_model.report import DIMS, at_dims, evaluate_models, results_table
from intent_model.suites import hint3_suite, labelled_suite, pretrain_val


def intent_adapter_dir() -> Path:
    """The intent adapter the repository keeps (`make train-intent` rebuilds it)."""
    from embed_service.settings import INTENT_ADAPTER_DIR

    return INTENT_ADAPTER_DIR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m intent_model.eval",
        description=__doc__.split("\n\n")[1].replace("\n", " ") if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "models",
        nargs="*",
        type=Path,
        help="model or adapter directories (default: the intent adapter in the repository)",
    )
    parser.add_argument(
        "--embed-addr",
        action="append",
        default=[],
        help="HOST:PORT of a running embed service to evaluate (repeatable); start it with "
        'EMBED_METERING_ADDR="" or pass --org-id of a real org',
    )
    parser.add_argument("--org-id", default="eval", help="org_id sent with --embed-addr")
    parser.add_argument(
        "--base",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the base model (all-MiniLM-L6-v2), as the first column",
    )
    parser.add_argument("--data", type=Path, default=None, help="CLINC150-format JSON file "
                        "(default: ../shared/data/clinc150/data_full.json)")  # fmt: skip
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="query split (choose recipes on val)")  # fmt: skip
    parser.add_argument("--domains", default="", help="CLINC150 domains to restrict intents to")
    parser.add_argument(
        "--pretrain",
        type=Path,
        default=None,
        help="intent pretraining directory whose val is measured (default: ../shared/data/"
        "intent_pretrain; with --data other than CLINC150: not measured unless given)",
    )
    parser.add_argument(
        "--hint3",
        type=Path,
        default=None,
        help="HINT3 directory (default: ../shared/data/hint3; with --data other than CLINC150: "
        "not measured unless given)",
    )
    parser.add_argument(
        "--dims",
        default=",".join(map(str, DIMS)),
        help="widths (the API's dimensions) also measured; empty: none",
    )
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--device", default="cpu", help="torch device for local models")
    parser.add_argument("--dtype", default="float32", help="dtype for local models")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per forward pass")
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    encoders: dict[str, Encoder] = {}
    dirs: dict[str, Path] = {}

    def local(path: Path) -> Encoder:
        return LocalEncoder.from_directory(path, args.device, args.dtype, args.batch_size)

    if args.base:
        encoders["base"] = local(base_model_dir())
    for path in args.models or ([] if args.embed_addr else [intent_adapter_dir()]):
        encoders[path.name] = local(path)
        dirs[path.name] = path
    for addr in args.embed_addr:
        encoders[f"service {addr}"] = ServiceEncoder(addr, org_id=args.org_id)
    domains = [d for d in args.domains.split(",") if d]
    benchmarks = labelled_suite(args.data or default_data_path(), args.split, domains or None)
    if args.pretrain or args.data is None:
        benchmarks.append(pretrain_val(args.pretrain or default_pretrain_path()))
    if args.hint3 or args.data is None:
        benchmarks += hint3_suite(args.hint3 or default_hint3_path())
    dims = tuple(int(d) for d in args.dims.split(",") if d.strip())
    results = evaluate_models(encoders, benchmarks, dims, at_dims(benchmarks))
    for name, encoder in encoders.items():
        print(f"{name}: {encoder.describe()}")
    print(results_table(results))
    if "base" in results and args.data is None:
        for name in [n for n in results if n != "base"]:
            print(f"\nUnseen-domain gate, {name} against base:\n")
            print(verdict_table(judge(results["base"], results[name], leaveout_of(dirs.get(name)))))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        body = {"models": {n: e.describe() for n, e in encoders.items()}, "results": results}
        args.json.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
