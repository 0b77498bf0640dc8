"""The forward pass through ONNX Runtime, for BERT encoders on a CPU.

At construction the float32 model (adapter already merged) is exported to ONNX with eager
attention, so ONNX Runtime's transformer optimizer can fuse each block's attention, bias + GELU
and residual + LayerNorm into single kernels; pooling is part of the graph. What it saves over
the PyTorch forward is per-operator overhead and memory traffic, which is most of a short
query's cost on a CPU. Batches are padded to their longest input. Float32 throughout, so vectors
equal the PyTorch forward's to rounding (cosine >= 0.99999).

It needs the optional packages `onnxruntime` and `onnx` (the `embed-cpu` extra); whether a
service uses it is decided at load (`embed_service.backends`).
"""

from __future__ import annotations

import importlib.util
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoder.layout import Framing, padded
from encoder.pooling import finish, pool_padded

log = logging.getLogger(__name__)

_OPSET = 17
_INPUTS = ("input_ids", "attention_mask")


def onnxruntime_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


class _Pooled(torch.nn.Module):
    """The encoder plus pooling, as one graph: (input_ids, attention_mask) -> pooled vectors."""

    def __init__(self, model: torch.nn.Module, pooling: str) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state
        return pool_padded(hidden, attention_mask, self.pooling)


def export(model: Any, pooling: str) -> bytes:
    """The optimized ONNX graph of `model` (a float32 BertModel) with `pooling`, serialized."""
    import onnx
    from onnxruntime.transformers import optimizer

    _quiet_optimizer_logs()
    config = model.config
    previous = config._attn_implementation
    model.set_attn_implementation("eager")  # the pattern the optimizer fuses into Attention
    try:
        example = torch.ones((1, 4), dtype=torch.int64)
        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Pooled(model, pooling).eval(),
                (example, example),
                buffer,  # type: ignore[arg-type]  # a file object works, as the docs say
                input_names=list(_INPUTS),
                output_names=["pooled"],
                dynamic_axes={name: {0: "batch", 1: "tokens"} for name in _INPUTS},
                opset_version=_OPSET,
                dynamo=False,
            )
    finally:
        model.set_attn_implementation(previous)
    optimized = optimizer.optimize_model(
        onnx.load_from_string(buffer.getvalue()),
        model_type="bert",
        num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
    )
    log.info("onnx_export fused=%s", _fused(optimized.get_fused_operator_statistics()))
    return optimized.model.SerializeToString()  # type: ignore[no-any-return]


def _quiet_optimizer_logs() -> None:
    """The optimizer's modules log every fusion at INFO under their bare module names."""
    import onnxruntime.transformers

    for path in Path(onnxruntime.transformers.__file__).parent.glob("*.py"):
        logging.getLogger(path.stem).setLevel(logging.WARNING)


def _fused(stats: dict[str, int]) -> str:
    return ",".join(f"{name}:{count}" for name, count in sorted(stats.items()) if count)


class OnnxRuntime:
    """The `Forward` of an ONNX Runtime session over the exported graph."""

    name = "onnxruntime"
    dtype = "float32"

    def __init__(self, graph: bytes, framing: Framing, normalize: bool, num_threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.framing = framing
        self.normalize = normalize

    @classmethod
    def of(
        cls, model: Any, framing: Framing, pooling: str, normalize: bool, num_threads: int
    ) -> OnnxRuntime:
        """Exports `model` (a float32 BertModel; `encoder.unpadded.is_plain_bert`) and opens a
        session on `num_threads` threads."""
        return cls(export(model, pooling), framing, normalize, num_threads)

    def __call__(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        input_ids, attention_mask = padded(batch, self.framing)
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        pooled = self.session.run(None, feeds)[0]
        return finish(torch.from_numpy(pooled), self.normalize)
