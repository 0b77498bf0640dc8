"""The model wrapper: the vectors users get equal the reference implementation's, the automatic
dtype keeps them, and the directory's sentence-transformers files decide pooling and limits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from embed_service.model import EmbeddingModel
from embed_service.precision import cpu_has_native_bf16, resolve_dtype
from encoder.layout import padded
from tests.support.clinc150 import clinc_test_texts


def test_encode_equals_sentence_transformers(minilm_fp32: EmbeddingModel, minilm_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    texts = [*clinc_test_texts(every=150), "a " * 400, "ok"]
    reference = SentenceTransformer(str(minilm_dir), device="cpu").encode(texts, batch_size=8)
    got = minilm_fp32.encode(texts, batch_size=16)
    assert got.dtype == np.float32 and got.shape == (len(texts), 384)
    assert ((got * reference).sum(axis=1)).min() >= 0.9999


def test_bf16_vectors_stay_within_cosine_0_9999_of_fp32(
    minilm_fp32: EmbeddingModel, minilm_dir: Path
) -> None:
    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (torch's oneDNN says so): auto stays float32")
    bf16 = EmbeddingModel.from_directory(minilm_dir, device="cpu", dtype="bfloat16")
    assert bf16.dtype_name == "bfloat16"
    texts = clinc_test_texts()  # all 4,500: the worst of them is at 0.99990
    cosines = (bf16.encode(texts) * minilm_fp32.encode(texts)).sum(axis=1)
    worst = int(cosines.argmin())
    assert cosines[worst] >= 0.9999, f"input {worst} ({texts[worst]!r}): cosine {cosines[worst]}"


@pytest.mark.parametrize(("native", "pays", "expected"), [
    (True, True, torch.bfloat16),
    (True, False, torch.float32),
    (False, True, torch.float32),
])
def test_auto_dtype_on_cpu_is_bf16_only_where_native_and_faster(
    monkeypatch: pytest.MonkeyPatch, native: bool, pays: bool, expected: torch.dtype
) -> None:
    import embed_service.precision as precision_module

    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(precision_module, "cpu_bf16_pays", lambda: pays)
    assert resolve_dtype("auto", torch.device("cpu")) == expected
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float32", torch.device("cuda")) == torch.float32


def test_bf16_probe_answers_on_this_cpu() -> None:
    from embed_service.precision import cpu_bf16_pays

    assert isinstance(cpu_bf16_pays(), bool)
    assert cpu_bf16_pays(min_speedup=1e6) is False  # no CPU runs bf16 a million times faster


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="dtype must be"):
        resolve_dtype("int4", torch.device("cpu"))


def test_cls_pooling_without_normalize_is_read_from_the_directory(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "cls-model"
    shutil.copytree(tiny_model_dir, target)
    modules = json.loads((target / "modules.json").read_text())[:2]  # drop Normalize
    (target / "modules.json").write_text(json.dumps(modules))
    (target / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    (target / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 20}))
    model = EmbeddingModel.from_directory(target, device="cpu", dtype="float32", backend="torch")
    assert (model.pooling.mode, model.pooling.normalize) == ("cls", False)
    assert model.backend == "torch-unpadded"  # the unpadded path pools the first token too
    assert model.max_input_tokens == 18
    texts = ["hello world", "another one"]
    ids, mask = (torch.from_numpy(a) for a in padded(model.tokenize(texts), model.framing))
    with torch.inference_mode():
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    np.testing.assert_allclose(model.encode(texts), hidden[:, 0].numpy(), atol=1e-5)
    assert not np.allclose(np.linalg.norm(model.encode(texts), axis=1), 1.0)
