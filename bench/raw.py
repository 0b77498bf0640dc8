"""The raw model in this process, no server: batch-1 latency and throughput at its best batch,
for every forward pass this machine can run (`embed_service.backends`), each also as a fraction
of the machine's limit (`bench.limits`). Forwards run on a worker thread, as in the service."""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bench.limits import Limit

SECONDS = float(os.environ.get("BENCH_RAW_SECONDS", "1.5"))
BATCHES = (8, 16, 32, 64, 128)


@dataclass(frozen=True)
class Variant:
    name: str
    backend: str  # embed_service.backends name given to from_directory
    dtype: str
    unpadded: bool = True


@dataclass
class Raw:
    variant: Variant
    backend: str  # what the loaded model reports running
    batch1_ms: float  # median
    batch1_min_ms: float  # the fastest call: close to uncontended on a shared CPU
    per_batch: dict[int, float]

    @property
    def best_batch(self) -> int:
        return max(self.per_batch, key=lambda b: self.per_batch[b])

    @property
    def best_per_s(self) -> float:
        return self.per_batch[self.best_batch]

    def line(self, limit: Limit) -> str:
        rates = ", ".join(f"b{b} {v:.0f}/s" for b, v in self.per_batch.items())
        return (
            f"raw {self.variant.name}: batch 1 p50 {self.batch1_ms:.2f} ms "
            f"(min {self.batch1_min_ms:.2f}); {rates}; best b{self.best_batch} "
            f"{self.best_per_s:.0f}/s = {limit.fraction(self.best_per_s):.2f} of the "
            f"{limit.dtype} limit"
        )


def variants(native_bf16: bool, onnx: bool) -> list[Variant]:
    out = [
        Variant("torch float32 padded", "torch", "float32", unpadded=False),
        Variant("torch float32 unpadded", "torch", "float32"),
    ]
    if native_bf16:
        out.append(Variant("torch bfloat16 unpadded", "torch", "bfloat16"))
    if onnx:
        out.append(Variant("onnxruntime float32", "onnxruntime", "float32"))
    return out


def _measure(model_dir: str, variant: Variant, queries: list[str]) -> Raw:
    from embed_service.model import EmbeddingModel

    model = EmbeddingModel.from_directory(
        model_dir, device="auto", dtype=variant.dtype, num_threads=os.cpu_count() or 1,
        unpadded=variant.unpadded, backend=variant.backend,
    )  # fmt: skip
    ids = [t[: model.max_input_tokens] for t in model.tokenize(queries)]
    for start in range(0, 128, 32):
        model.embed_ids([ids[(start + k) % len(ids)] for k in range(32)])  # warm-up
    latencies: list[float] = []
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline or len(latencies) < 20:
        row = ids[len(latencies) % len(ids)]
        started = time.perf_counter()
        model.embed_ids([row])
        latencies.append(time.perf_counter() - started)
    per_batch: dict[int, float] = {}
    for batch in BATCHES:
        done, started = 0, time.monotonic()
        while time.monotonic() - started < SECONDS or done == 0:
            # Arrival order, sorted within the batch as the service's batcher groups lengths.
            chunk = sorted((ids[(done + k) % len(ids)] for k in range(batch)), key=len)
            model.embed_ids(chunk)
            done += batch
        per_batch[batch] = done / (time.monotonic() - started)
    return Raw(
        variant=variant,
        backend=model.backend,
        batch1_ms=1000 * statistics.median(latencies),
        batch1_min_ms=1000 * min(latencies),
        per_batch=per_batch,
    )


def measure(model_dir: str, variant: Variant, queries: list[str]) -> Raw:
    """`_measure` on a thread that ends with it (torch's OpenMP pool goes with the thread)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_measure, model_dir, variant, queries).result()
