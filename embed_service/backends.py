"""Which forward pass a loaded model runs on this machine.

Candidates: PyTorch (the unpadded path for BERT encoders, transformers' padded forward for
anything else, in the dtype `embed_service.precision` chose) and, on a CPU for BERT encoders
when `onnxruntime` is installed, ONNX Runtime in float32 (`embed_service.onnx_forward`).
`auto` times both on the same fixed inputs at load (single queries and one batch of 32, about
a second) and keeps the faster; ONNX Runtime is kept only when its vectors agree with PyTorch's
at cosine >= 0.9999 on those inputs. The measured times go to the log. Which CPU wins differs:
the choice is measured, never inferred from the CPU's name (docs/performance.md).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from embed_service.onnx_forward import OnnxForward, onnxruntime_available

if TYPE_CHECKING:
    from embed_service.model import EmbeddingModel

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime")
MIN_COSINE = 0.9999
_PROBE_TEXTS = (
    "what is my account balance",
    "set an alarm for seven tomorrow morning",
    "how do i get to the airport from here",
    "play some jazz in the kitchen",
)
_ROUNDS = 3


def choose(model: EmbeddingModel, requested: str, dtype_requested: str = "auto") -> str:
    """Sets `model.onnx` as `requested` (auto: by measurement) and returns the backend name.

    An explicit reduced dtype (`dtype_requested` bfloat16 or float16) is a request for the
    PyTorch path in that dtype: `auto` then measures nothing.
    """
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {requested!r}")
    if requested == "torch" or (requested == "auto" and dtype_requested in ("bfloat16", "float16")):
        return model.backend
    eligible = model.device.type == "cpu" and model.unpadded_eligible and onnxruntime_available()
    if not eligible:
        if requested == "onnxruntime":
            raise ValueError(
                "backend onnxruntime needs a CPU, a BERT encoder and the onnxruntime and onnx "
                "packages (pip install '.[embed-cpu]')"
            )
        return model.backend
    candidate = OnnxForward.of(model.model, model.pooling.mode, model.num_threads)
    if requested == "onnxruntime":
        model.onnx = candidate
        return model.backend
    return _measure(model, candidate)


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float(np.min(np.sum(a * b, axis=1)))


def _probe_batches(model: EmbeddingModel) -> list[list[list[int]]]:
    ids = model.tokenize(list(_PROBE_TEXTS))
    return [[row] for row in ids] + [ids * 8]


def _seconds(model: EmbeddingModel, batches: list[list[list[int]]]) -> float:
    started = time.perf_counter()
    for batch in batches:
        model.embed_ids(batch)
    return time.perf_counter() - started


def _measure(model: EmbeddingModel, candidate: OnnxForward) -> str:
    """Times PyTorch and ONNX Runtime in alternating rounds (best round of each counts) and
    keeps ONNX Runtime when it is faster and agrees with PyTorch."""
    batches = _probe_batches(model)
    torch_name = model.backend
    reference = model.embed_ids(batches[-1])
    model.onnx = candidate
    agreement = _min_cosine(reference, model.embed_ids(batches[-1]))
    best = {"torch": float("inf"), "onnxruntime": float("inf")}
    for _ in range(_ROUNDS):
        for name, runner in (("torch", None), ("onnxruntime", candidate)):
            model.onnx = runner
            model.embed_ids(batches[0])  # warm
            best[name] = min(best[name], _seconds(model, batches))
    keep = best["onnxruntime"] < best["torch"] and agreement >= MIN_COSINE
    model.onnx = candidate if keep else None
    log.info(
        "backend_probe torch=%s torch_ms=%.1f onnxruntime_ms=%.1f min_cosine=%.6f chosen=%s",
        torch_name,
        1000 * best["torch"],
        1000 * best["onnxruntime"],
        agreement,
        model.backend,
    )
    return model.backend
