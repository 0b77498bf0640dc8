"""`python -m intent_model.leaveout`: the leave-out checks of a trained model's recipe.

For each check (`intent_model.holdout`), trains the recipe recorded in MODEL/metrics.json again
without that group of intents, measures the run and the base on the group, and writes every
result to MODEL/leaveout.json and MODEL's model card. Each run takes as long as training the
model did. A recipe that keeps a share of its delta (`delta_scale`) is trained unscaled, kept,
and scaled beside it, so checks of other scales of the same recipe reuse the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from intent_embed.logs import configure_logging
from intent_model.config import TrainConfig, complete_record, same_recipe
from intent_model.holdout import HOLDOUTS
from intent_model.interpolate import recorded_scale, scale_adapter_dir
from intent_model.model_card import write_model_card
from intent_model.report import evaluate_training_run
from intent_model.train import train

log = logging.getLogger(__name__)

CHECKS = tuple(h for h in HOLDOUTS if h != "none")


def recipe_of(model_dir: Path) -> dict[str, Any]:
    """The TrainConfig fields a model was trained with, from its metrics.json."""
    cfg = complete_record(
        json.loads((model_dir / "metrics.json").read_text(encoding="utf-8"))["config"]
    )
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    out: dict[str, Any] = {}
    for name, value in cfg.items():
        if name not in fields or name in ("out", "holdout", "evaluate"):
            continue
        if value in (None, "None"):
            out[name] = None
        elif name in ("base", "clinc", "pretrain", "hint3", "cache"):
            out[name] = Path(value)
        else:
            out[name] = value
    return out


def run_check(model_dir: Path, check: str, work: Path) -> dict[str, Any]:
    """Trains the check unscaled into `work/check` (unless it already holds a run of exactly
    this recipe, as when an experiment of the recipe was run with the same holdout), scales it
    to the recipe's `delta_scale` into `work/check-sSCALE` when that is not 1, and evaluates
    what the recipe ships (unless that directory's own evaluation is there, written after its
    adapter)."""
    recipe = recipe_of(model_dir)
    scale = float(recipe.pop("delta_scale", 1.0))
    cfg = TrainConfig(out=work / check, holdout=check, evaluate=True, delta_scale=1.0, **recipe)
    if _trained_with(cfg):
        log.info("leaveout_reuse check=%s out=%s", check, cfg.out)
    else:
        train(cfg)
    measured = cfg.out
    if scale != 1.0:
        measured = work / f"{check}-s{scale:g}"
        if not _scaled_from(measured, cfg.out, scale):
            scale_adapter_dir(cfg.out, measured, scale)
    evaluation = measured / "eval.json"
    if evaluation.is_file() and (
        evaluation.stat().st_mtime >= (measured / "adapter.safetensors").stat().st_mtime
    ):
        results: dict[str, Any] = json.loads(evaluation.read_text(encoding="utf-8"))["results"]
        return results
    return evaluate_training_run(measured)


def _scaled_from(scaled: Path, source: Path, scale: float) -> bool:
    """True when `scaled` holds `source`'s adapter at `scale`, written after it."""
    adapter = scaled / "adapter.safetensors"
    return (
        adapter.is_file()
        and recorded_scale(scaled) == round(scale, 6)
        and adapter.stat().st_mtime >= (source / "adapter.safetensors").stat().st_mtime
    )


def _trained_with(cfg: TrainConfig) -> bool:
    """True when `cfg.out` holds a finished run whose recipe is `cfg`'s (where it was written,
    whether and on what it was evaluated, threads and the cache location aside)."""
    metrics = cfg.out / "metrics.json"
    if not metrics.is_file() or not (cfg.out / "adapter.safetensors").is_file():
        return False
    recorded = json.loads(metrics.read_text(encoding="utf-8"))["config"]
    return same_recipe(recorded, cfg)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(
        prog="python -m intent_model.leaveout",
        description=(__doc__ or "").split("\n\n")[1].replace("\n", " "),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", type=Path, help="trained adapter directory (its metrics.json)")
    parser.add_argument("--checks", default=",".join(CHECKS), help="which checks to run")
    parser.add_argument("--work", type=Path, default=Path("models/leaveout"),
                        help="where the leave-out runs are written")  # fmt: skip
    args = parser.parse_args(argv)
    checks = [c for c in args.checks.split(",") if c]
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        parser.error(f"unknown checks {unknown}; known: {', '.join(CHECKS)}")
    path = args.model / "leaveout.json"
    done = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    for check in checks:
        done[check] = run_check(args.model, check, args.work)
        path.write_text(json.dumps(done, indent=2) + "\n", encoding="utf-8")
        write_model_card(args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
