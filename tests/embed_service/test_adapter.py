"""Adapter directories: merged exactly into their base at load, refused on any other base, and
named by a revision that follows their content."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from embed_service.adapter import (
    ADAPTER_CONFIG,
    AdapterConfig,
    ModelSource,
    file_sha256,
    merge_adapter,
    weight_file,
    write_adapter,
)
from embed_service.model import EmbeddingModel

QUERY = "encoder.layer.0.attention.self.query.weight"
NORM = "encoder.layer.1.output.LayerNorm.bias"


def _adapter(base: Path, target: Path, scale: float = 0.01) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    tensors = {
        f"{QUERY}.lora_A": torch.randn(4, 32, generator=gen),
        f"{QUERY}.lora_B": scale * torch.randn(32, 4, generator=gen),
        NORM: torch.full((32,), 0.5),
    }
    config = AdapterConfig(None, str(base), file_sha256(weight_file(base)), rank=4)
    write_adapter(target, config, tensors)
    return tensors


def test_merge_adds_low_rank_deltas_and_replaces_other_parameters(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    tensors = _adapter(tiny_model_dir, tmp_path / "adapter")
    base = EmbeddingModel.from_directory(tiny_model_dir, device="cpu", dtype="float32")
    merged = EmbeddingModel.from_directory(tmp_path / "adapter", device="cpu", dtype="float32")
    before, after = dict(base.model.named_parameters()), dict(merged.model.named_parameters())
    expected = before[QUERY] + tensors[f"{QUERY}.lora_B"] @ tensors[f"{QUERY}.lora_A"]
    torch.testing.assert_close(after[QUERY], expected)
    torch.testing.assert_close(after[NORM], torch.full((32,), 0.5))
    untouched = [n for n in before if n not in (QUERY, NORM)]
    assert all(torch.equal(before[n], after[n]) for n in untouched)
    assert merged.encode(["hello"]).shape == (1, 32)


def test_unknown_or_misshapen_parameters_are_refused(tiny_model_dir: Path) -> None:
    model = EmbeddingModel.from_directory(tiny_model_dir, device="cpu", dtype="float32").model
    with pytest.raises(ValueError, match="does not have"):
        merge_adapter(model, {"encoder.layer.9.output.LayerNorm.bias": torch.zeros(32)})
    with pytest.raises(ValueError, match="shape"):
        merge_adapter(model, {NORM: torch.zeros(16)})


def test_an_adapter_is_refused_on_a_base_with_other_weights(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    other_base = tmp_path / "other-base"
    shutil.copytree(tiny_model_dir, other_base)
    _adapter(other_base, tmp_path / "adapter")
    with (other_base / "model.safetensors").open("ab") as f:
        f.write(b" ")  # same architecture, other bytes: another model
    with pytest.raises(ValueError, match="SHA-256"):
        ModelSource.of(tmp_path / "adapter")


def test_revision_follows_the_content_of_base_and_adapter(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    _adapter(tiny_model_dir, tmp_path / "a")
    _adapter(tiny_model_dir, tmp_path / "same")
    _adapter(tiny_model_dir, tmp_path / "other", scale=0.02)
    revisions = {name: ModelSource.of(tmp_path / name).revision for name in ("a", "same", "other")}
    assert revisions["a"] == revisions["same"] != revisions["other"]
    assert ModelSource.of(tiny_model_dir).revision not in revisions.values()
    config = json.loads((tmp_path / "a" / ADAPTER_CONFIG).read_text())
    (tmp_path / "a" / ADAPTER_CONFIG).write_text(json.dumps({**config, "format": "peft"}))
    with pytest.raises(ValueError, match="format"):
        ModelSource.of(tmp_path / "a")
