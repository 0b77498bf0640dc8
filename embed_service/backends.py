"""Which forward pass a loaded model runs on this machine: the `Router` built from a start-up
measurement.

Candidates: PyTorch (`encoder.torch_unpadded` for BERT encoders, `encoder.torch_padded` for
anything else, in the dtype `embed_service.precision` chose) and, on a CPU for BERT encoders
when `onnxruntime` is installed, ONNX Runtime in float32 (`encoder.onnx_runtime`). `auto` times
both on the same fixed inputs of mixed lengths at load (single queries, and batches of 16 and 64
rows; seven rounds, each side timed right after the other, a few seconds) and keeps the faster
per batch size, by the median ratio of those pairs: ONNX Runtime for batches up to the largest
size where it won (half-way, geometrically, to the first size where it lost), PyTorch above.
ONNX Runtime wins a size only when it is faster by `MARGIN` (15%): where the two are close,
noise would otherwise decide, and the same machine would serve at another speed after each
restart; PyTorch, the default, keeps a near tie. ONNX Runtime is kept only when its vectors
agree with PyTorch's at cosine >= 0.9999 on those inputs. The measured times, the margin and the
choice go to the log. Which CPU wins, and at which batch size, differs: the choice is measured,
never inferred from the CPU's name (docs/performance.md).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from encoder.forward import Forward
from encoder.onnx_runtime import onnxruntime_available
from encoder.router import Router
from encoder.unpadded import is_plain_bert

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime")
MIN_COSINE = 0.9999
# Lengths as real queries come: a few words to a couple of sentences (5 to 40 tokens).
_PROBE_TEXTS = (
    "what is my account balance",
    "set an alarm for seven tomorrow morning",
    "hi",
    "play some jazz in the kitchen",
    "i ordered a mattress three weeks ago and it still has not arrived, can you tell me where "
    "it is and when it will be delivered to my address",
    "how do i get to the airport from here",
    "cancel my subscription",
    "my card was charged twice for the same order yesterday, please refund the second charge",
)
_ROUNDS = 7
# How much faster ONNX Runtime must measure to win a batch size (hysteresis against noise).
MARGIN = 1.15

Tokenize = Callable[[Sequence[str]], list[list[int]]]


def onnx_runs_here(model: torch.nn.Module, device: torch.device) -> bool:
    """ONNX Runtime can run `model` here: a CPU, a plain BERT encoder, the packages installed."""
    return device.type == "cpu" and is_plain_bert(model) and onnxruntime_available()


def choose(
    pytorch: Forward,
    onnx: Callable[[], Forward] | None,
    tokenize: Tokenize,
    requested: str,
    dtype_requested: str = "auto",
) -> Router:
    """The router that serves, as `requested` (auto: by measurement).

    `onnx` builds the ONNX Runtime forward; None where it cannot run (`onnx_runs_here`).
    `tokenize` gives the probe's texts as token ids. An explicit reduced dtype (`dtype_requested`
    bfloat16 or float16) is a request for the PyTorch path in that dtype: `auto` then measures
    nothing.
    """
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {requested!r}")
    if requested == "torch" or (requested == "auto" and dtype_requested in ("bfloat16", "float16")):
        return Router(large=pytorch)
    if onnx is None:
        if requested == "onnxruntime":
            raise ValueError(
                "backend onnxruntime needs a CPU, a BERT encoder and the onnxruntime and onnx "
                "packages (pip install '.[embed-cpu]')"
            )
        return Router(large=pytorch)
    candidate = onnx()
    if requested == "onnxruntime":
        return Router(large=candidate)
    return _measure(pytorch, candidate, _probe_batches(tokenize))


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float(np.min(np.sum(a * b, axis=1)))


def _probe_batches(tokenize: Tokenize) -> dict[int, list[list[list[int]]]]:
    """Per batch size, the batches timed: the single queries, then 16 and 64 rows of them."""
    ids = tokenize(list(_PROBE_TEXTS))
    return {1: [[row] for row in ids], 16: [(ids * 16)[:16]], 64: [(ids * 64)[:64]]}


def _seconds(forward: Forward, batches: list[list[list[int]]]) -> float:
    started = time.perf_counter()
    for batch in batches:
        forward(batch)
    return time.perf_counter() - started


def onnx_max_rows(speedup: dict[int, float], margin: float = MARGIN) -> int | None:
    """The largest batch ONNX Runtime should run, from its speed-up over PyTorch per probed
    size (PyTorch's time over its own): None where it won at every size, 0 where it lost at
    batch 1; else half-way (geometric) from the last size it won at to the first it lost at.
    It wins a size only with a speed-up above `margin`."""
    won = 0
    for size in sorted(speedup):
        if speedup[size] <= margin:
            return 0 if won == 0 else int(math.sqrt(won * size))
        won = size
    return None


def _measure(
    pytorch: Forward, candidate: Forward, probes: dict[int, list[list[list[int]]]]
) -> Router:
    """Times PyTorch and ONNX Runtime on the same batches back to back, round after round, and
    keeps ONNX Runtime for the batch sizes where its median speed-up passes the margin, if it
    agrees with PyTorch. Pairs, not each side's best: whatever else the machine does at that
    moment slows both sides of a pair alike, so their ratio holds still where times do not."""
    agreement = _min_cosine(pytorch(probes[64][0]), candidate(probes[64][0]))
    times: dict[str, dict[int, list[float]]] = {
        name: {size: [] for size in probes} for name in ("torch", "onnxruntime")
    }
    for _ in range(_ROUNDS):
        for size, batches in probes.items():
            for name, forward in (("torch", pytorch), ("onnxruntime", candidate)):
                forward(probes[1][0])  # the other side's threads stop spinning first
                times[name][size].append(_seconds(forward, batches))
    speedup = {
        size: statistics.median(
            t / o for t, o in zip(times["torch"][size], times["onnxruntime"][size], strict=True)
        )
        for size in probes
    }
    limit = onnx_max_rows(speedup) if agreement >= MIN_COSINE else 0
    if limit == 0:
        router = Router(large=pytorch)
    elif limit is None:
        router = Router(large=candidate)
    else:
        router = Router(large=pytorch, small=candidate, small_max_rows=limit)
    log.info(
        "backend_probe torch=%s torch_ms=%s onnxruntime_ms=%s onnxruntime_speedup=%s "
        "rounds=%d margin=%.2f min_cosine=%.6f chosen=%s",
        pytorch.name,
        _per_size_ms(times["torch"]),
        _per_size_ms(times["onnxruntime"]),
        ",".join(f"b{size}:{x:.2f}" for size, x in speedup.items()),
        _ROUNDS,
        MARGIN,
        agreement,
        router.name,
    )
    return router


def _per_size_ms(seconds: dict[int, list[float]]) -> str:
    """Median milliseconds per probed size."""
    return ",".join(f"b{size}:{1000 * statistics.median(s):.1f}" for size, s in seconds.items())
