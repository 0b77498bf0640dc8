"""`python -m intent_model.interpolate`: an adapter's change to the base, scaled.

A trained adapter moves the base weights by a delta (the low-rank products and the changed
biases and LayerNorms). Serving base + s x delta (0 < s < 1) keeps part of what training gained
on its own data and more of the base's layout of intents it never saw (WiSE-FT, Wortsman et
al., 2022). Given several runs (seeds of one recipe, say), it averages their deltas first. The
same function scales the adapter `intent_model.train` writes (`--delta-scale`) and an adapter
directory here, so both give the same bytes from the same unscaled tensors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from embed_service.adapter import ADAPTER_WEIGHTS, FACTOR_A, FACTOR_B, read_config, write_adapter
from intent_embed.logs import configure_logging
from intent_model.config import complete_record

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


def soup_tensors(
    adapters: list[dict[str, torch.Tensor]], base: dict[str, torch.Tensor], scale: float
) -> dict[str, torch.Tensor]:
    """One adapter whose merged model is base + `scale` x the mean of the adapters' deltas (a
    model soup, Wortsman et al., 2022): the low-rank factors side by side (rank the sum of
    theirs; each `lora_B` weighted), each replaced parameter the base plus the mean change."""
    weight = scale / len(adapters)
    out: dict[str, torch.Tensor] = {}
    for key in adapters[0]:
        parts = [tensors[key] for tensors in adapters]
        if key.endswith(f".{FACTOR_A}"):
            out[key] = torch.cat(parts, dim=0).contiguous()
        elif key.endswith(f".{FACTOR_B}"):
            out[key] = torch.cat([p * weight for p in parts], dim=1).contiguous()
        else:
            if key not in base:
                raise ValueError(f"the adapter replaces {key!r}, which the base does not have")
            start = base[key]
            out[key] = (start + sum(weight * (p - start) for p in parts)).contiguous()
    return out


def recorded_scale(model_dir: Path) -> float:
    """The delta scale a directory's metrics.json records (1.0 when it predates the knob)."""
    path = model_dir / "metrics.json"
    if not path.is_file():
        return 1.0
    recorded = json.loads(path.read_text(encoding="utf-8"))["config"]
    return float(complete_record(recorded)["delta_scale"])


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
    parser.add_argument("source", type=Path, nargs="+",
                        help="adapter directory (unscaled training run); several: their deltas "
                        "are averaged (a soup) before the scale")  # fmt: skip
    parser.add_argument("--scale", type=float, action="append", required=True,
                        help="scale of the delta, 0 < SCALE <= 1 (repeatable)")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True,
                        help="parent directory; each scale goes to OUT/NAME-sSCALE")  # fmt: skip
    args = parser.parse_args(argv)
    bad = [s for s in args.scale if not 0.0 < s <= 1.0]
    if bad:
        parser.error(f"--scale must be in (0, 1], not {bad}")
    first = args.source[0]
    base = base_parameters(read_config(first).base_dir())
    for scale in args.scale:
        if len(args.source) == 1:
            target = args.out / f"{first.name}-s{scale:g}"
            scale_adapter_dir(first, target, scale, base)
        else:
            target = args.out / f"soup-{'-'.join(s.name for s in args.source)}-s{scale:g}"
            soup_adapter_dir(args.source, target, scale, base)
        print(target)
    return 0


def soup_adapter_dir(
    sources: list[Path], out: Path, scale: float, base: dict[str, torch.Tensor]
) -> None:
    """Writes the soup of `sources` (adapters of one base, unscaled) scaled by `scale` to `out`;
    its metrics.json is the first source's with the scale and the soup's members."""
    configs = [read_config(source) for source in sources]
    if len({c.base_sha256 for c in configs}) != 1:
        raise ValueError("a soup needs adapters of one base")
    tensors = [load_file(source / ADAPTER_WEIGHTS) for source in sources]
    out.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(configs[0], rank=sum(c.rank for c in configs))
    write_adapter(out, config, soup_tensors(tensors, base, scale))
    metrics = sources[0] / "metrics.json"
    if metrics.is_file():
        report: dict[str, Any] = json.loads(metrics.read_text(encoding="utf-8"))
        report["config"]["delta_scale"] = scale
        report["config"]["out"] = str(out)
        report["soup"] = [str(source) for source in sources]
        (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
