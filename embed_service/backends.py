"""Which forward pass a loaded model runs on this machine.

Candidates: PyTorch (the unpadded path for BERT encoders, transformers' padded forward for
anything else, in the dtype `embed_service.precision` chose) and, on a CPU for BERT encoders
when `onnxruntime` is installed, ONNX Runtime in float32 (`embed_service.onnx_forward`).
`auto` times both on the same fixed inputs at load (single queries, and batches of 16 and 64
rows; a second or two) and keeps the faster per batch size: ONNX Runtime for batches up to the
largest size where it won (half-way, geometrically, to the first size where it lost), PyTorch
above. ONNX Runtime is kept only when its vectors agree with PyTorch's at cosine >= 0.9999 on
those inputs. The measured times go to the log. Which CPU wins, and at which batch size,
differs: the choice is measured, never inferred from the CPU's name (docs/performance.md).
"""

from __future__ import annotations

import logging
import math
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


def _probe_batches(model: EmbeddingModel) -> dict[int, list[list[list[int]]]]:
    """Per batch size, the batches timed: the single queries, then 16 and 64 rows of them."""
    ids = model.tokenize(list(_PROBE_TEXTS))
    return {1: [[row] for row in ids], 16: [ids * 4], 64: [ids * 16]}


def _seconds(model: EmbeddingModel, batches: list[list[list[int]]]) -> float:
    started = time.perf_counter()
    for batch in batches:
        model.embed_ids(batch)
    return time.perf_counter() - started


def onnx_max_rows(torch_s: dict[int, float], onnx_s: dict[int, float]) -> int | None:
    """The largest batch ONNX Runtime should run from the best times per probed size: None
    where it won at every size, 0 where it lost at batch 1; else half-way (geometric) from the
    last size it won at to the first it lost at."""
    sizes = sorted(torch_s)
    won = 0
    for size in sizes:
        if onnx_s[size] >= torch_s[size]:
            return 0 if won == 0 else int(math.sqrt(won * size))
        won = size
    return None


def _measure(model: EmbeddingModel, candidate: OnnxForward) -> str:
    """Times PyTorch and ONNX Runtime in alternating rounds (best round of each counts, per
    batch size) and keeps ONNX Runtime for the batch sizes where it is faster, if it agrees
    with PyTorch."""
    probes = _probe_batches(model)
    torch_name = model.backend
    reference = model.embed_ids(probes[64][0])
    model.onnx = candidate
    agreement = _min_cosine(reference, model.embed_ids(probes[64][0]))
    best = {name: dict.fromkeys(probes, float("inf")) for name in ("torch", "onnxruntime")}
    for _ in range(_ROUNDS):
        for name, runner in (("torch", None), ("onnxruntime", candidate)):
            model.onnx = runner
            model.embed_ids(probes[1][0])  # warm
            for size, batches in probes.items():
                best[name][size] = min(best[name][size], _seconds(model, batches))
    limit = onnx_max_rows(best["torch"], best["onnxruntime"]) if agreement >= MIN_COSINE else 0
    model.onnx = None if limit == 0 else candidate
    model.onnx_max_rows = limit or None
    log.info(
        "backend_probe torch=%s torch_ms=%s onnxruntime_ms=%s min_cosine=%.6f chosen=%s",
        torch_name,
        _per_size_ms(best["torch"]),
        _per_size_ms(best["onnxruntime"]),
        agreement,
        model.backend,
    )
    return model.backend


def _per_size_ms(seconds: dict[int, float]) -> str:
    return ",".join(f"b{size}:{1000 * s:.1f}" for size, s in seconds.items())
