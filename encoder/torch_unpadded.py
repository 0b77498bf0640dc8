"""Serving's PyTorch forward for BERT encoders: the unpadded core (`encoder.unpadded`) over
weights prepared once.

Reduced precision (bfloat16 / float16), where chosen: the matrix products and attention of each
block run in it, with Q, K and V fused into one weight cast once at load; the residual stream,
LayerNorm and pooling stay float32, and the last block runs wholly in float32 because its
rounding reaches the pooled vector undamped. Invariant: every vector stays at cosine >= 0.9999
of the float32 model's (tests/embed_service/test_model.py checks it on CLINC150).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from encoder.layout import Framing, UnpaddedBatch
from encoder.pooling import finish, pool_unpadded
from encoder.unpadded import encode, is_plain_bert


class PreparedLayer:
    """A BertLayer's weights copied once, Q, K and V fused; matrix products and attention in
    `dtype`, the residual stream and LayerNorm in float32."""

    attention_dropout = 0.0

    def __init__(self, layer: Any, dtype: torch.dtype) -> None:
        attention = layer.attention.self
        self.heads = int(attention.num_attention_heads)
        self.head_dim = int(attention.attention_head_size)
        self.dtype = dtype

        def weight(linear: torch.nn.Linear) -> torch.Tensor:
            return linear.weight.detach().to(dtype)

        qkv = (attention.query, attention.key, attention.value)
        self.w_qkv = torch.cat([weight(lin) for lin in qkv])
        self.b_qkv = torch.cat([lin.bias.detach() for lin in qkv]).to(dtype)
        out = layer.attention.output
        self.w_attn_out = weight(out.dense)
        self.b_attn_out = out.dense.bias.detach().float()
        self.norm_attn = out.LayerNorm
        self.w_up = weight(layer.intermediate.dense)
        self.b_up = layer.intermediate.dense.bias.detach().to(dtype)
        self.activation = layer.intermediate.intermediate_act_fn
        self.w_down = weight(layer.output.dense)
        self.b_down = layer.output.dense.bias.detach().float()
        self.norm_out = layer.output.LayerNorm

    def projections(self, hidden: torch.Tensor) -> Iterable[torch.Tensor]:
        return (F.linear(hidden.to(self.dtype), self.w_qkv, self.b_qkv),)

    def after_attention(self, context: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        attended = F.linear(context, self.w_attn_out).float() + self.b_attn_out + hidden
        attended = self.norm_attn(attended)
        up = self.activation(F.linear(attended.to(self.dtype), self.w_up, self.b_up))
        down = F.linear(up, self.w_down).float() + self.b_down + attended
        return self.norm_out(down)  # type: ignore[no-any-return]


class TorchUnpadded:
    """The `Forward` of a plain BERT encoder (`is_plain_bert`) on the unpadded path."""

    name = "torch-unpadded"

    def __init__(
        self,
        model: Any,
        framing: Framing,
        pooling: str,
        normalize: bool,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        if not is_plain_bert(model):
            raise ValueError("the unpadded forward covers plain float32 BERT encoders only")
        self.embeddings = model.embeddings
        blocks = list(model.encoder.layer)
        dtypes = [dtype] * (len(blocks) - 1) + [torch.float32]
        self.layers = tuple(PreparedLayer(b, d) for b, d in zip(blocks, dtypes, strict=True))
        self.framing = framing
        self.pooling = pooling
        self.normalize = normalize
        self.device = device
        self.dtype = str(dtype).removeprefix("torch.")

    def __call__(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        with torch.inference_mode():
            rows = UnpaddedBatch.of(batch, self.framing, self.device)
            hidden = encode(self.embeddings, self.layers, rows)
            return finish(pool_unpadded(hidden, rows, self.pooling), self.normalize)
