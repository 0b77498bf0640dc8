"""The ONNX Runtime forward pass: its vectors are PyTorch's, it is kept only where it is measured
faster and agrees, and the service says which forward pass it runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import embed_service.backends as backends
from embed_service.model import EmbeddingModel
from encoder.forward import Forward
from encoder.onnx_runtime import OnnxRuntime
from tests.support.clinc150 import CLINC150, clinc_test_texts

TEXTS = ["ok", "set an alarm for seven tomorrow morning", "what is my balance", "a " * 60]


@pytest.fixture(scope="module")
def onnx_minilm(minilm_dir: Path) -> EmbeddingModel:
    model = EmbeddingModel.from_directory(minilm_dir, device="cpu", backend="onnxruntime")
    assert model.backend == "onnxruntime" and model.dtype_name == "float32"
    return model


def _centroid_decisions(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return np.argmax(vectors @ centroids.T, axis=1)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_onnx_vectors_keep_every_clinc150_test_vector_and_intent_decision(
    onnx_minilm: EmbeddingModel, minilm_fp32: EmbeddingModel
) -> None:
    texts = clinc_test_texts(every=3)  # 1,500 of them; docs/performance.md has all 4,500
    reference, got = minilm_fp32.encode(texts), onnx_minilm.encode(texts)
    cosines = (reference * got).sum(axis=1)
    worst = int(cosines.argmin())
    assert cosines[worst] >= 0.999, f"input {worst} ({texts[worst]!r}): cosine {cosines[worst]}"
    if not CLINC150.exists():
        return
    train = json.loads(CLINC150.read_text())["train"][::10]  # 10 utterances per intent
    labels = sorted({label for _, label in train})
    vectors = minilm_fp32.encode([text for text, _ in train])
    sums = np.zeros((len(labels), vectors.shape[1]))
    np.add.at(sums, [labels.index(label) for _, label in train], vectors)
    centroids = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    changed = np.mean(
        _centroid_decisions(reference, centroids) != _centroid_decisions(got, centroids)
    )
    assert changed <= 0.001, f"{changed:.2%} of nearest-centroid decisions changed"


def test_onnx_and_torch_agree_on_mixed_lengths_and_cls_pooling(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    for mode in ("mean", "cls"):
        target = tmp_path / mode
        shutil.copytree(tiny_model_dir, target)
        pooling = {"word_embedding_dimension": 32, f"pooling_mode_{mode}_token" if mode == "cls"
                   else "pooling_mode_mean_tokens": True}  # fmt: skip
        (target / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
        torch_model = EmbeddingModel.from_directory(target, device="cpu", backend="torch")
        onnx_model = EmbeddingModel.from_directory(target, device="cpu", backend="onnxruntime")
        assert onnx_model.pooling.mode == mode
        # Two float32 runtimes sum in different orders (by CPU: up to 2.2e-5 seen on an AVX512
        # EPYC); a real difference of the graphs shows up at 1e-2 and above.
        np.testing.assert_allclose(onnx_model.encode(TEXTS), torch_model.encode(TEXTS), atol=1e-4)


@pytest.mark.parametrize(
    ("torch_s", "onnx_s", "agree", "chosen"),
    [
        (0.2, 0.1, True, "onnxruntime"),  # faster and equal: kept
        (0.1, 0.2, True, "torch-unpadded"),  # slower: PyTorch stays
        (0.2, 0.1, False, "torch-unpadded"),  # faster but its vectors differ: PyTorch stays
    ],
)
def test_auto_keeps_onnx_only_where_measured_faster_and_equal(
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    torch_s: float,
    onnx_s: float,
    agree: bool,
    chosen: str,
) -> None:
    def seconds(forward: Forward, batches: list[list[list[int]]]) -> float:
        return onnx_s if forward.name == "onnxruntime" else torch_s

    monkeypatch.setattr(backends, "_seconds", seconds)
    if not agree:
        monkeypatch.setattr(backends, "_min_cosine", lambda a, b: 0.98)
    model = EmbeddingModel.from_directory(tiny_model_dir, device="cpu", backend="auto")
    assert model.backend == chosen
    assert model.encode(["hello there"]).shape == (1, 32)


@pytest.mark.parametrize(
    ("torch_ms", "onnx_ms", "expected"),
    [
        ({1: 9, 16: 30, 64: 100}, {1: 3, 16: 20, 64: 80}, None),  # faster everywhere
        ({1: 9, 16: 30, 64: 100}, {1: 3, 16: 20, 64: 120}, 32),  # lost at 64: up to 32
        ({1: 9, 16: 30, 64: 100}, {1: 3, 16: 40, 64: 120}, 4),  # lost at 16: up to 4
        ({1: 9, 16: 30, 64: 100}, {1: 9, 16: 20, 64: 90}, 0),  # a tie at batch 1: PyTorch
        # Faster at 64 rows, but by less than the margin: noise could flip it, PyTorch keeps it.
        ({1: 9, 16: 30, 64: 100}, {1: 3, 16: 20, 64: 90}, 32),
        ({1: 9, 16: 30, 64: 100}, {1: 8, 16: 20, 64: 80}, 0),
    ],
)
def test_onnx_runs_batches_up_to_the_size_where_it_stops_winning(
    torch_ms: dict[int, float], onnx_ms: dict[int, float], expected: int | None
) -> None:
    speedup = {size: torch_ms[size] / onnx_ms[size] for size in torch_ms}
    assert backends.onnx_max_rows(speedup) == expected


def test_auto_splits_batches_by_size_where_each_forward_wins(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def seconds(forward: Forward, batches: list[list[list[int]]]) -> float:
        rows = len(batches[0])  # ONNX Runtime wins on small batches, PyTorch on 64 rows
        return rows * (1.0 if forward.name != "onnxruntime" else (0.5 if rows < 64 else 2.0))

    monkeypatch.setattr(backends, "_seconds", seconds)
    model = EmbeddingModel.from_directory(tiny_model_dir, device="cpu", backend="auto")
    assert model.backend == "onnxruntime<=32+torch-unpadded"
    onnx = model.router.small
    assert isinstance(onnx, OnnxRuntime) and model.router.small_max_rows == 32
    calls: list[int] = []
    session = onnx.session

    class Counting:
        def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
            calls.append(len(feeds["input_ids"]))
            return session.run(names, feeds)

    monkeypatch.setattr(onnx, "session", Counting())
    small, large = model.tokenize(TEXTS[:2]) * 16, model.tokenize(TEXTS[:2]) * 17
    np.testing.assert_allclose(model.embed_ids(large)[:32], model.embed_ids(small), atol=1e-4)
    assert calls == [32]  # 34 rows ran on PyTorch, 32 on ONNX Runtime


def test_explicit_choices_are_kept_or_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import RobertaConfig, RobertaModel

    bf16 = EmbeddingModel.from_directory(tiny_model_dir, device="cpu", dtype="bfloat16")
    assert bf16.backend == "torch-unpadded"  # an explicit bf16 request is the PyTorch path
    with pytest.raises(ValueError, match="backend must be one of"):
        EmbeddingModel.from_directory(tiny_model_dir, device="cpu", backend="tensorrt")
    target = tmp_path / "roberta"
    shutil.copytree(tiny_model_dir, target)
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=140, pad_token_id=0,
    )  # fmt: skip
    RobertaModel(config).eval().save_pretrained(target)
    assert EmbeddingModel.from_directory(target, device="cpu").backend == "torch-padded"
    with pytest.raises(ValueError, match="needs a CPU, a BERT encoder"):
        EmbeddingModel.from_directory(target, device="cpu", backend="onnxruntime")


@pytest.mark.slow
def test_auto_makes_the_same_choice_at_every_start_on_this_machine(minilm_dir: Path) -> None:
    """Three starts, three probes of the real model: one answer (which one is this CPU's)."""
    chosen = {
        model.backend
        for model in (
            EmbeddingModel.from_directory(minilm_dir, device="cpu", backend="auto")
            for _ in range(3)
        )
    }
    assert len(chosen) == 1, chosen
