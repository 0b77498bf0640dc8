"""Device and precision choice: which device and dtype a model runs in, whether bf16 pays on
this CPU, and reduced-precision Linear layers for the padded forward.

Invariant: reduced precision never costs more than cosine 0.9999 against float32; the last
transformer block stays float32 because its rounding reaches the pooled vector undamped.
"""

from __future__ import annotations

import functools
import logging
import time

import torch

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """True when torch's oneDNN reports native bf16 kernels on this CPU (AVX512-BF16/AMX)."""
    try:
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):
        return False


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on CUDA; on a CPU, bf16 where torch reports native bf16 kernels *and* they
    beat float32 here (`cpu_bf16_pays`); float32 elsewhere."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        if device.type == "cpu" and cpu_has_native_bf16() and cpu_bf16_pays():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, not {dtype!r}")
    return _DTYPES[dtype]


@functools.cache
def cpu_bf16_pays(min_speedup: float = 1.2) -> bool:
    """Times a MiniLM-sized Linear (256 x 384 -> 1536) in bf16 and float32 on this CPU: True when
    bf16 is at least `min_speedup` times faster. About 50 ms, once per process."""
    x32, w32 = torch.randn(256, 384), torch.randn(1536, 384)
    best: dict[torch.dtype, float] = {}
    with torch.inference_mode():
        for dt in (torch.float32, torch.bfloat16):
            x, w = x32.to(dt), w32.to(dt)
            torch.nn.functional.linear(x, w)  # first call builds oneDNN's kernel
            times = []
            for _ in range(5):
                started = time.perf_counter()
                for _ in range(4):
                    torch.nn.functional.linear(x, w)
                times.append(time.perf_counter() - started)
            best[dt] = min(times)
    speedup = best[torch.float32] / best[torch.bfloat16]
    log.info("cpu_bf16_probe speedup=%.2f needed=%.2f", speedup, min_speedup)
    return speedup >= min_speedup


class LowPrecisionLinear(torch.nn.Module):
    """A Linear whose matmul runs in a reduced dtype; takes and returns float32 activations.

    The weight is cast once here (casting per call, as autocast does without grad, would cost
    a full weight copy per forward pass); the bias is added in float32.
    """

    def __init__(self, linear: torch.nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.compute_dtype = dtype
        self.weight = torch.nn.Parameter(linear.weight.detach().to(dtype), requires_grad=False)
        bias = linear.bias.detach().float() if linear.bias is not None else None
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.linear(x.to(self.compute_dtype), self.weight).float()
        return out if self.bias is None else out + self.bias


def lower_linear_precision(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Swaps the Linear layers of all transformer blocks but the last for LowPrecisionLinear.

    The blocks are the model's longest ModuleList (`encoder.layer` for BERT); the last one stays
    float32 because its rounding reaches the pooled vector undamped. Returns layers swapped.
    """
    blocks = max(
        (m for m in model.modules() if isinstance(m, torch.nn.ModuleList)),
        key=len,
        default=torch.nn.ModuleList(),
    )
    targets = list(blocks)[:-1] if len(blocks) > 1 else [model]
    swapped = 0
    for block in targets:
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.Linear):
                    setattr(parent, name, LowPrecisionLinear(child, dtype))
                    swapped += 1
    return swapped
