"""Scaling an adapter's delta: the merged model moves from the base by exactly that share, a run
trained with `--delta-scale` writes what scaling its unscaled run writes, and the leave-out
checks of such a recipe scale their unscaled runs instead of training again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from embed_service.adapter import ADAPTER_WEIGHTS, ModelSource, merge_adapter
from intent_model.interpolate import base_parameters, scale_tensors, soup_tensors
from intent_model.interpolate import main as interpolate_main
from intent_model.train import TrainConfig, train


def _config(tiny_model_dir: Path, tiny_clinc: Path, tiny_pretrain: Path, out: Path,
            **kw: object) -> TrainConfig:  # fmt: skip
    settings: dict[str, object] = dict(
        out=out, base=tiny_model_dir, clinc=tiny_clinc, pretrain=tiny_pretrain, steps=2,
        lr=5e-2, batch_intents=2, per_intent=2, dims=[32], device="cpu", evaluate=False,
        cache=None, clinc_share=0.5, delta_scale=1.0,
    )  # fmt: skip
    settings.update(kw)
    return TrainConfig(**settings)  # type: ignore[arg-type]


def _merged(tiny_model_dir: Path, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(tiny_model_dir))
    merge_adapter(model, tensors)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_the_merged_model_moves_from_the_base_by_the_scale(
    tiny_model_dir: Path, tiny_clinc: Path, tiny_pretrain: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    train(_config(tiny_model_dir, tiny_clinc, tiny_pretrain, out))
    tensors = ModelSource.of(out).adapter
    assert tensors is not None
    base = base_parameters(tiny_model_dir)
    full = _merged(tiny_model_dir, tensors)
    half = _merged(tiny_model_dir, scale_tensors(tensors, base, 0.5))
    moved = 0
    for name, start in base.items():
        expected = start + 0.5 * (full[name] - start)
        torch.testing.assert_close(half[name], expected, rtol=0, atol=1e-6)
        moved += int(not torch.equal(full[name], start))
    assert moved > 10  # training changed weights, biases and LayerNorms
    assert scale_tensors(tensors, base, 1.0) == tensors

    # A soup of two runs moves the base by the mean of their deltas, times the scale.
    other = tmp_path / "seed1"
    train(_config(tiny_model_dir, tiny_clinc, tiny_pretrain, other, seed=1))
    second = ModelSource.of(other).adapter
    assert second is not None
    apart = _merged(tiny_model_dir, second)
    souped = _merged(tiny_model_dir, soup_tensors([tensors, second], base, 0.5))
    for name, start in base.items():
        expected = start + 0.5 * ((full[name] - start) + (apart[name] - start)) / 2
        torch.testing.assert_close(souped[name], expected, rtol=0, atol=1e-5)


def test_training_with_a_delta_scale_writes_the_scaled_unscaled_run(
    tiny_model_dir: Path, tiny_clinc: Path, tiny_pretrain: Path, tmp_path: Path
) -> None:
    train(_config(tiny_model_dir, tiny_clinc, tiny_pretrain, tmp_path / "full"))
    report = train(_config(tiny_model_dir, tiny_clinc, tiny_pretrain, tmp_path / "direct",
                           delta_scale=0.4))  # fmt: skip
    assert report["served_min_cosine"] >= 0.9999  # the card's model is the one served
    assert interpolate_main([str(tmp_path / "full"), "--scale", "0.4", "--out",
                             str(tmp_path / "scaled")]) == 0  # fmt: skip
    scaled = tmp_path / "scaled" / "full-s0.4"
    direct_bytes = (tmp_path / "direct" / ADAPTER_WEIGHTS).read_bytes()
    assert (scaled / ADAPTER_WEIGHTS).read_bytes() == direct_bytes
    recorded = json.loads((scaled / "metrics.json").read_text())["config"]
    assert recorded["delta_scale"] == 0.4
    with pytest.raises(SystemExit):
        interpolate_main([str(tmp_path / "full"), "--scale", "1.5", "--out", str(tmp_path)])


def test_leaveout_of_a_scaled_recipe_scales_its_unscaled_run(
    tiny_model_dir: Path, tiny_clinc: Path, tiny_pretrain: Path, tmp_path: Path
) -> None:
    from intent_model.leaveout import main as leaveout_main

    model = tmp_path / "model"
    train(_config(tiny_model_dir, tiny_clinc, tiny_pretrain, model, delta_scale=0.5))
    work = tmp_path / "work"
    assert leaveout_main([str(model), "--checks", "clinc150", "--work", str(work)]) == 0
    unscaled = json.loads((work / "clinc150" / "metrics.json").read_text())["config"]
    assert unscaled["delta_scale"] == 1.0 and unscaled["holdout"] == "clinc150"
    scaled = work / "clinc150-s0.5"
    assert json.loads((scaled / "metrics.json").read_text())["config"]["delta_scale"] == 0.5
    assert (scaled / "eval.json").is_file()
    # The same recipe at another scale reuses the unscaled run.
    body = json.loads((model / "metrics.json").read_text())
    body["config"]["delta_scale"] = 0.25
    (model / "metrics.json").write_text(json.dumps(body))
    trained_at = (work / "clinc150" / ADAPTER_WEIGHTS).stat().st_mtime_ns
    assert leaveout_main([str(model), "--checks", "clinc150", "--work", str(work)]) == 0
    assert (work / "clinc150" / ADAPTER_WEIGHTS).stat().st_mtime_ns == trained_at
    assert (work / "clinc150-s0.25" / "eval.json").is_file()
