"""The unpadded forward path: same vectors as transformers' padded forward for any mix of
lengths in one batch (CLS pooling: test_model.py); models it does not cover run padded."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from embed_service.model import EmbeddingModel
from encoder.torch_padded import TorchPadded
from tests.support.clinc150 import clinc_test_texts


def _padded(model: EmbeddingModel, ids: list[list[int]]) -> np.ndarray:
    """transformers' padded forward of the same float32 module."""
    padded = TorchPadded(model.model, model.framing, model.pooling.mode, model.pooling.normalize,
                         torch.float32, model.device, token_types=True)  # fmt: skip
    return padded(ids)


def test_unpadded_path_equals_the_padded_forward_on_a_mixed_batch(
    minilm_fp32: EmbeddingModel,
) -> None:
    assert minilm_fp32.backend == "torch-unpadded"
    texts = ["ok", *clinc_test_texts(every=300), "a " * 400, "what is my balance"]
    ids = [t[: minilm_fp32.max_input_tokens] for t in minilm_fp32.tokenize(texts)]
    assert len({len(t) for t in ids}) > 5  # lengths from 1 to the model's limit, one batch
    got = minilm_fp32.embed_ids(ids)
    want = _padded(minilm_fp32, ids)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-6)
    # A row's vector does not depend on its neighbours (no padding leaks into it).
    np.testing.assert_allclose(minilm_fp32.embed_ids(ids[:1]), got[:1], atol=2e-6)


def test_an_architecture_the_unpadded_path_does_not_cover_runs_padded(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import RobertaConfig, RobertaModel

    target = tmp_path / "roberta"
    shutil.copytree(tiny_model_dir, target)
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=140, pad_token_id=0,
    )
    RobertaModel(config).eval().save_pretrained(target)
    for dtype in ("float32", "bfloat16"):
        model = EmbeddingModel.from_directory(target, device="cpu", dtype=dtype)
        assert model.backend == "torch-padded"
        vectors = model.encode(["hello world", "set an alarm for seven"])
        assert vectors.shape == (2, 32)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_padded_forward_can_be_chosen(tiny_model_dir: Path) -> None:
    padded = EmbeddingModel.from_directory(
        tiny_model_dir, device="cpu", unpadded=False, backend="torch"
    )
    unpadded = EmbeddingModel.from_directory(tiny_model_dir, device="cpu", backend="torch")
    assert (padded.backend, unpadded.backend) == ("torch-padded", "torch-unpadded")
    texts = ["hello world", "set an alarm for seven tomorrow morning"]
    # Different kernels, different float32 summation order (1.8e-5 seen on an AVX512 EPYC).
    np.testing.assert_allclose(padded.encode(texts), unpadded.encode(texts), atol=1e-4)
