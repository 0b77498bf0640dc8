"""What is served by default passes the unseen-domain gate, and the intent adapter in the
repository is what its card says: the revision the service reports when asked to load it, HINT3
and CLINC150 numbers that reproduce, the gate's verdict on them, a size the repository can
carry, and a recipe that `make train-intent` runs as recorded."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from embed_service.adapter import ModelSource
from embed_service.model import EmbeddingModel
from embed_service.settings import INTENT_ADAPTER_DIR, default_model_path
from intent_model.benchmarks import METRICS, run_all
from intent_model.config import complete_record
from intent_model.data import (
    base_model_dir,
    default_data_path,
    default_hint3_path,
    default_pretrain_path,
)
from intent_model.encoders import LocalEncoder
from intent_model.gate import judge
from intent_model.report import DIMS, at_dims
from intent_model.suites import standard_suite
from intent_model.train import TrainConfig, config_record
from tests.support.clinc150 import clinc_test_texts

SHIPPED = INTENT_ADAPTER_DIR
MAX_BYTES = 10 * 1024 * 1024


def _passes_the_gate(model_dir: Path) -> bool:
    results = json.loads((model_dir / "eval.json").read_text(encoding="utf-8"))["results"]
    leaveout = json.loads((model_dir / "leaveout.json").read_text(encoding="utf-8"))
    return judge(results["base"], results["trained"], leaveout).passed


def test_what_the_service_serves_by_default_passes_the_gate() -> None:
    """The base passes by definition; an adapter is served by default only with a pass."""
    served = Path(default_model_path())
    if (served / "adapter_config.json").is_file():
        assert _passes_the_gate(served)
    else:
        assert ModelSource.of(served).revision == ModelSource.of(base_model_dir()).revision
    assert (served == SHIPPED) == _passes_the_gate(SHIPPED)


def test_the_card_names_the_revision_the_service_loads() -> None:
    card = (SHIPPED / "README.md").read_text(encoding="utf-8")
    named = re.search(r"Revision `([0-9a-f]{12})`", card)
    assert named is not None
    assert named.group(1) == ModelSource.of(SHIPPED).revision


def test_the_shipped_files_fit_the_repository_budget() -> None:
    total = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert total <= MAX_BYTES, f"{total} bytes"


def test_the_recorded_recipe_is_the_default_one() -> None:
    # Knobs added after the run record what it did through `complete_record`.
    recorded = complete_record(
        json.loads((SHIPPED / "metrics.json").read_text(encoding="utf-8"))["config"]
    )
    defaults = config_record(TrainConfig())
    differing = {
        k: (recorded[k], defaults[k])
        for k in defaults
        if k not in ("out", "threads", "cache") and recorded.get(k) != defaults[k]
    }
    assert not differing, "make train-intent would not rebuild the shipped adapter"


def _card_results() -> dict[str, Any]:
    return json.loads((SHIPPED / "eval.json").read_text(encoding="utf-8"))["results"]  # type: ignore[no-any-return]


def test_the_card_shows_the_gates_verdict_on_its_own_numbers() -> None:
    """From the card's own numbers: HINT3 against the base, and the cross-source run."""
    results = _card_results()
    leaveout = json.loads((SHIPPED / "leaveout.json").read_text(encoding="utf-8"))
    verdict = judge(results["base"], results["trained"], leaveout)
    assert not verdict.missing, verdict.summary()
    card = (SHIPPED / "README.md").read_text(encoding="utf-8")
    assert f"Verdict: {verdict.summary()}" in card


@pytest.mark.slow
def test_hint3_and_clinc150_numbers_of_the_card_reproduce() -> None:
    """The shipped artifact measured afresh gives the card's numbers on HINT3 (full support and
    k-shot, full width and the API's widths) and CLINC150 test (full support and 5-shot; the
    other CLINC150 rows cost minutes more and share the same vectors)."""
    card = _card_results()["trained"]
    suite = standard_suite(default_data_path(), default_pretrain_path(), default_hint3_path())
    clinc = ("clinc150/test", "clinc150/test/5-shot")
    bench = [b for b in suite if b.name.startswith("hint3/") or b.name in clinc]
    hint3 = tuple(n for n in at_dims(bench) if n.startswith("hint3/"))
    got = run_all(bench, LocalEncoder.from_directory(SHIPPED), DIMS, hint3)
    assert set(got) == {b.name for b in bench} | {f"{n}@{d}" for n in hint3 for d in DIMS}
    for name, scores in got.items():
        for metric in METRICS:
            if card[name][metric] is None:
                continue
            assert scores[metric] == pytest.approx(card[name][metric], abs=0.002), (name, metric)


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "backend"), [("bfloat16", "torch"), ("float32", "onnxruntime")])
def test_the_served_forwards_keep_the_shipped_model_at_float32_quality(
    dtype: str, backend: str
) -> None:
    """The reduced-precision and ONNX Runtime forwards the service may choose keep the shipped
    model's vectors where the base's are kept (every third CLINC150 test text)."""
    from embed_service.precision import cpu_has_native_bf16
    from encoder.onnx_runtime import onnxruntime_available

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
