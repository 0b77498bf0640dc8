"""Results side by side: the table `python -m intent_model.eval` prints, and the evaluation of a
training run (its adapter against the base, on the suite its holdout calls for) that lands in
the run's `eval.json` and model card."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from intent_model.benchmarks import METRICS, Benchmark, Scores, run_all
from intent_model.data import (
    HINT3_SETS,
    base_model_dir,
    default_data_path,
    default_hint3_path,
    default_pretrain_path,
)
from intent_model.encoders import LocalEncoder
from intent_model.holdout import Holdout
from intent_model.suites import holdout_suite

log = logging.getLogger(__name__)

Results = dict[str, dict[str, Scores]]  # model -> benchmark -> metric -> value

LABELS = {
    "nearest_centroid_accuracy": "centroid",
    "one_nn_accuracy": "1-NN",
    "oos_auroc": "OOS AUROC",
    "oos_recall_at_95": "OOS recall@95",
    "v_measure": "V-measure",
}


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def results_table(results: Results) -> str:
    """Markdown: one row per benchmark and metric, one column per model, and the difference
    of the last model from the first when there are two or more."""
    models = list(results)
    benches = list(next(iter(results.values())))
    head = ["benchmark", "metric", *models] + (["diff"] if len(models) > 1 else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for bench in benches:
        for metric in METRICS:
            values = [results[m][bench].get(metric) for m in models]
            if all(v is None for v in values):
                continue
            row = [bench, LABELS[metric], *(_cell(v) for v in values)]
            if len(models) > 1:
                first, last = values[0], values[-1]
                row.append("n/a" if first is None or last is None else f"{last - first:+.4f}")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# Widths the API's `dimensions` is measured at, and the benchmarks measured there.
DIMS = (256, 128, 64)


def at_dims(benchmarks: list[Benchmark]) -> tuple[str, ...]:
    """The full-support and 5-shot runs of CLINC150 test and of HINT3."""
    full = {"clinc150/test", *(f"hint3/{s}" for s in HINT3_SETS)}
    wanted = full | {f"{name}/5-shot" for name in full}
    return tuple(b.name for b in benchmarks if b.name in wanted)


def evaluate_models(models: dict[str, Any], benchmarks: list[Benchmark], dims: tuple[int, ...] = (),
                    at: tuple[str, ...] = ()) -> Results:  # fmt: skip
    """`models` maps a column name to an Encoder; benchmarks named in `at` are also measured
    at each width of `dims`."""
    out: Results = {}
    for name, encoder in models.items():
        started = time.monotonic()
        out[name] = run_all(benchmarks, encoder, dims, at)
        log.info("evaluated model=%s seconds=%.1f", name, time.monotonic() - started)
    return out


def _suite_key(revision: str, benchmarks: list[Benchmark], dims: tuple[int, ...],
               at: tuple[str, ...]) -> str:  # fmt: skip
    digest = hashlib.sha256(revision.encode())
    digest.update(repr((dims, at)).encode())
    for bench in benchmarks:
        digest.update(bench.name.encode() + b"\0" + "\0".join(bench.texts()).encode() + b"\1")
    return digest.hexdigest()[:16]


def base_results(base: LocalEncoder, benchmarks: list[Benchmark], cache: Path | None,
                 dims: tuple[int, ...] = (), at: tuple[str, ...] = ()) -> Results:  # fmt: skip
    """The base model's results, kept in `cache` keyed by its revision and the suite's texts:
    every run of one suite measures the same base, which costs minutes on a CPU."""
    key = _suite_key(base.revision, benchmarks, dims, at)
    path = cache / f"eval-{key}.json" if cache else None
    if path is not None and path.is_file():
        return {"base": json.loads(path.read_text(encoding="utf-8"))}
    results = evaluate_models({"base": base}, benchmarks, dims, at)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results["base"]), encoding="utf-8")
    return results


def evaluate_training_run(out_dir: Path) -> Results:
    """The base and the adapter in `out_dir` on the suite of the run's holdout; writes
    `eval.json` beside the adapter and returns the results."""
    report = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
    cfg = report["config"]
    holdout = Holdout(cfg["holdout"], tuple(cfg["holdout_domains"]), cfg["holdout_share"],
                      cfg["seed"])  # fmt: skip
    clinc = Path(cfg["clinc"]) if cfg.get("clinc") not in (None, "None") else default_data_path()
    pretrain = (
        Path(cfg["pretrain"])
        if cfg.get("pretrain") not in (None, "None")
        else default_pretrain_path()
    )
    hint3 = Path(cfg["hint3"]) if cfg.get("hint3") not in (None, "None") else default_hint3_path()
    base = Path(cfg["base"]) if cfg.get("base") not in (None, "None") else base_model_dir()
    benchmarks = holdout_suite(holdout, clinc, pretrain, hint3)
    # The widths of the API's `dimensions`, where the run trained them.
    dims = tuple(d for d in DIMS if d in cfg["dims"]) if holdout.kind == "none" else ()
    at = at_dims(benchmarks)
    cache = Path(cfg["cache"]) if cfg.get("cache") not in (None, "None") else None
    results = base_results(LocalEncoder.from_directory(base), benchmarks, cache, dims, at)
    trained = LocalEncoder.from_directory(out_dir)
    results |= evaluate_models({"trained": trained}, benchmarks, dims, at)
    body = {"holdout": cfg["holdout"], "results": results}
    (out_dir / "eval.json").write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    print(results_table(results))
    return results
