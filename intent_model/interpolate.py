"""`python -m intent_model.interpolate`: an adapter's change to the base, scaled.

A trained adapter moves the base weights by a delta (the low-rank products and the changed
biases and LayerNorms). Serving base + s x delta (0 < s < 1) keeps part of what training gained
on its own data and more of the base's layout of intents it never saw (WiSE-FT, Wortsman et
al., 2022). The same function scales the adapter `intent_model.train` writes (`--delta-scale`)
and an adapter directory here, so both give the same bytes from the same unscaled tensors.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from embed_service.adapter import ADAPTER_WEIGHTS, FACTOR_A, FACTOR_B, read_config, write_adapter
from intent_embed.logs import configure_logging

# What a scaled directory keeps of its source: the recipe and training numbers; eval.json, the
# leave-out results and the card describe the source's weights, so they are measured anew.
_KEPT = ("metrics.json",)


def base_parameters(base_dir: Path) -> dict[str, torch.Tensor]:
    """The base model's parameters in float32 under the names adapters use."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(base_dir))
    return {name: p.detach().float() for name, p in model.named_parameters()}


def scale_tensors(
    tensors: dict[str, torch.Tensor], base: dict[str, torch.Tensor], scale: float
) -> dict[str, torch.Tensor]:
    """Adapter tensors whose merged model is base + `scale` x (merged - base): each `lora_B`
    (which carries the adapter's scale) times `scale`, each replaced parameter moved from the
    base value by `scale` of its change. `lora_A` stays, so the product scales once."""
    if scale == 1.0:
        return dict(tensors)
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key.endswith(f".{FACTOR_B}"):
            out[key] = (value * scale).contiguous()
        elif key.endswith(f".{FACTOR_A}"):
            out[key] = value
        else:
            if key not in base:
                raise ValueError(f"the adapter replaces {key!r}, which the base does not have")
            start = base[key]
            out[key] = (start + scale * (value - start)).contiguous()
    return out


def recorded_scale(model_dir: Path) -> float:
    """The delta scale a directory's metrics.json records (1.0 when it predates the knob)."""
    path = model_dir / "metrics.json"
    if not path.is_file():
        return 1.0
    return float(json.loads(path.read_text(encoding="utf-8"))["config"].get("delta_scale", 1.0))


def scale_adapter_dir(source: Path, out: Path, scale: float,
                      base: dict[str, torch.Tensor] | None = None) -> None:  # fmt: skip
    """Writes `source`'s adapter with its delta scaled by `scale` to `out`; `out`'s
    metrics.json records the overall scale from the base (source's times `scale`)."""
    config = read_config(source)
    params = base if base is not None else base_parameters(config.base_dir())
    tensors = load_file(source / ADAPTER_WEIGHTS)
    out.mkdir(parents=True, exist_ok=True)
    write_adapter(out, config, scale_tensors(tensors, params, scale))
    for name in _KEPT:
        if (source / name).is_file() and source.resolve() != out.resolve():
            shutil.copyfile(source / name, out / name)
    metrics = out / "metrics.json"
    if metrics.is_file():
        report: dict[str, Any] = json.loads(metrics.read_text(encoding="utf-8"))
        report["config"]["delta_scale"] = round(recorded_scale(source) * scale, 6)
        report["config"]["out"] = str(out)
        metrics.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(
        prog="python -m intent_model.interpolate",
        description="Write an adapter whose change to the base is SCALE times SOURCE's (one "
        "directory per scale), to be measured with python -m intent_model.eval.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("source", type=Path, help="adapter directory (unscaled training run)")
    parser.add_argument("--scale", type=float, action="append", required=True,
                        help="scale of the delta, 0 < SCALE <= 1 (repeatable)")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True,
                        help="parent directory; each scale goes to OUT/NAME-sSCALE")  # fmt: skip
    args = parser.parse_args(argv)
    bad = [s for s in args.scale if not 0.0 < s <= 1.0]
    if bad:
        parser.error(f"--scale must be in (0, 1], not {bad}")
    base = base_parameters(read_config(args.source).base_dir())
    for scale in args.scale:
        target = args.out / f"{args.source.name}-s{scale:g}"
        scale_adapter_dir(args.source, target, scale, base)
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
