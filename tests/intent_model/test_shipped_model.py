"""The intent model in the repository is what its card says: the revision the service reports,
CLINC150 test numbers that reproduce, a size the repository can carry, and a recipe that
`make train-intent` runs as recorded."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from embed_service.adapter import ModelSource
from embed_service.model import EmbeddingModel
from embed_service.settings import default_model_path
from intent_model.benchmarks import METRICS, run_all
from intent_model.data import default_data_path, default_pretrain_path
from intent_model.encoders import LocalEncoder
from intent_model.suites import standard_suite
from intent_model.train import TrainConfig, config_record
from tests.support.clinc150 import clinc_test_texts

SHIPPED = Path(default_model_path())
MAX_BYTES = 10 * 1024 * 1024


def test_the_service_serves_the_shipped_adapter_by_default() -> None:
    assert (SHIPPED / "adapter_config.json").is_file()
    assert SHIPPED.name == "intent-embed"


def test_the_card_names_the_revision_the_service_loads() -> None:
    card = (SHIPPED / "README.md").read_text(encoding="utf-8")
    named = re.search(r"Revision `([0-9a-f]{12})`", card)
    assert named is not None
    assert named.group(1) == ModelSource.of(SHIPPED).revision


def test_the_shipped_files_fit_the_repository_budget() -> None:
    total = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert total <= MAX_BYTES, f"{total} bytes"


def test_the_recorded_recipe_is_the_default_one() -> None:
    recorded = json.loads((SHIPPED / "metrics.json").read_text(encoding="utf-8"))["config"]
    defaults = config_record(TrainConfig())
    differing = {
        k: (recorded[k], defaults[k])
        for k in defaults
        if k not in ("out", "threads", "cache") and recorded.get(k) != defaults[k]
    }
    assert not differing, "make train-intent would not rebuild the shipped adapter"


@pytest.mark.slow
def test_clinc150_test_numbers_of_the_card_reproduce() -> None:
    card = json.loads((SHIPPED / "eval.json").read_text(encoding="utf-8"))["results"]["trained"]
    bench = [b for b in standard_suite(default_data_path(), default_pretrain_path())
             if b.name == "clinc150/test"]  # fmt: skip
    got = run_all(bench, LocalEncoder.from_directory(SHIPPED))["clinc150/test"]
    for metric in METRICS:
        assert got[metric] == pytest.approx(card["clinc150/test"][metric], abs=0.002), metric


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "backend"), [("bfloat16", "torch"), ("float32", "onnxruntime")])
def test_the_served_forwards_keep_the_shipped_model_at_float32_quality(
    dtype: str, backend: str
) -> None:
    """The reduced-precision and ONNX Runtime forwards the service may choose keep the shipped
    model's vectors where the base's are kept (every third CLINC150 test text)."""
    from embed_service.onnx_forward import onnxruntime_available
    from embed_service.precision import cpu_has_native_bf16

    if dtype == "bfloat16" and not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16: the service stays float32")
    if backend == "onnxruntime" and not onnxruntime_available():
        pytest.skip("onnxruntime is not installed")
    texts = clinc_test_texts(every=3)
    reference = EmbeddingModel.from_directory(SHIPPED, device="cpu", dtype="float32",
                                              backend="torch").encode(texts)  # fmt: skip
    served = EmbeddingModel.from_directory(SHIPPED, device="cpu", dtype=dtype, backend=backend)
    cosines = (served.encode(texts) * reference).sum(axis=1)
    worst = int(cosines.argmin())
    assert cosines[worst] >= 0.999, f"input {worst} ({texts[worst]!r}): cosine {cosines[worst]}"
