"""The machine's own limit for this model: how many queries per second its matrix-multiply rate
allows, measured in every bench run so throughputs can be read as a fraction of it.

- The rate: the model's Linear shapes (fused QKV, attention output, FFN up, FFN down) timed at
  the row count of a typical batch, in float32 and, where the CPU or GPU has it natively,
  bfloat16; the rate for the model is its FLOPs over the summed time of one pass of each shape.
- The work: FLOPs of one query from the model's config and the real token counts of the
  queries (Linear layers per token, plus attention's two n x n products per layer).
- The limit: rate / FLOPs per query. A forward pass also does LayerNorm, GELU, attention's
  softmax and the unpadded scatter, so no implementation reaches 1.0; the fraction says how
  much of the machine a path leaves unused.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Rows of one timed product: about 64 short queries of 12 tokens, the served batch under load.
ROWS = 768
_SECONDS_PER_SHAPE = 0.3


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int

    @classmethod
    def of(cls, config: Any) -> ModelShape:
        return cls(
            int(config.hidden_size), int(config.intermediate_size), int(config.num_hidden_layers)
        )

    def linears(self) -> list[tuple[int, int]]:
        """(in, out) of each Linear of one block."""
        h, i = self.hidden, self.intermediate
        return [(h, 3 * h), (h, h), (h, i), (i, h)]

    def flops_per_query(self, tokens: int) -> float:
        """Multiply-adds x 2 of one input of `tokens` tokens (special tokens included)."""
        linear = sum(2 * k * n for k, n in self.linears()) * tokens
        attention = 4 * tokens * tokens * self.hidden
        return float(self.layers * (linear + attention))


def matmul_rate(shape: ModelShape, dtype: str, device: str = "cpu", rows: int = ROWS) -> float:
    """GFLOP/s of one pass over the block's Linear shapes at `rows` rows, in `dtype`."""
    import torch
    import torch.nn.functional as F

    dt = getattr(torch, dtype)
    total_flops, total_time = 0.0, 0.0
    for k, n in shape.linears():
        x = torch.randn(rows, k, device=device).to(dt)
        w = torch.randn(n, k, device=device).to(dt)
        with torch.inference_mode():
            for _ in range(3):  # kernel selection and caches
                F.linear(x, w)
            calls, started = 0, time.perf_counter()
            while time.perf_counter() - started < _SECONDS_PER_SHAPE or calls < 5:
                F.linear(x, w)
                calls += 1
            if device != "cpu":
                torch.cuda.synchronize()
            elapsed = (time.perf_counter() - started) / calls
        total_flops += 2.0 * rows * k * n
        total_time += elapsed
    return total_flops / total_time / 1e9


@dataclass(frozen=True)
class Limit:
    dtype: str
    gflops: float  # model-weighted matrix-multiply rate
    flops_per_query: float
    mean_tokens: float

    @property
    def queries_per_s(self) -> float:
        return self.gflops * 1e9 / self.flops_per_query

    def fraction(self, per_s: float) -> float:
        return per_s / self.queries_per_s

    def describe(self) -> str:
        return (
            f"{self.dtype}: matmul {self.gflops:.0f} GFLOP/s at the model's shapes x {ROWS} rows; "
            f"{self.flops_per_query / 1e9:.3f} GFLOP per query ({self.mean_tokens:.1f} tokens "
            f"with special tokens) -> limit {self.queries_per_s:.0f} queries/s"
        )


def machine_limits(model_dir: str, queries: list[str], dtypes: list[str]) -> dict[str, Limit]:
    """The limit in each of `dtypes` for the model in `model_dir` on `queries`."""
    from transformers import AutoConfig, AutoTokenizer

    from embed_service.adapter import ModelSource

    weights = ModelSource.of(Path(model_dir)).weights_dir  # an adapter's base holds the config
    config = AutoConfig.from_pretrained(weights, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(weights, local_files_only=True)
    counts = [len(ids) for ids in tokenizer(queries, add_special_tokens=True)["input_ids"]]
    shape = ModelShape.of(config)
    flops = sum(shape.flops_per_query(n) for n in counts) / len(counts)
    mean_tokens = sum(counts) / len(counts)
    return {dtype: Limit(dtype, matmul_rate(shape, dtype), flops, mean_tokens) for dtype in dtypes}


def _fixed_work() -> None:
    """Part of a gateway call's worth of Python (about 0.2 ms on a 2-core EPYC): a dict to JSON."""
    json.dumps({str(i): i for i in range(1000)})


def wakeup_cost(idle_s: float = 0.003, repeats: int = 200) -> tuple[float, float]:
    """Median CPU µs of the same piece of Python work run back to back, and run right after
    `idle_s` asleep. One call at a time wakes every process on its path from idle (gateway,
    the embed service's event loop, its forward thread); on a VM whose idle CPU loses its caches
    and clock, each then runs its part slower than the back-to-back loops that time the raw
    forward. The ratio says how much of the one-connection latency that is."""
    medians = []
    for sleep in (0.0, idle_s):
        times = []
        for _ in range(repeats):
            if sleep:
                time.sleep(sleep)
            started = time.thread_time_ns()
            _fixed_work()
            times.append(time.thread_time_ns() - started)
        medians.append(sorted(times)[repeats // 2] / 1000)
    return medians[0], medians[1]
