"""The unpadded BERT encoder: matrix work only on real tokens, written once for serving and
training.

The tokens of a batch are laid end to end in one [tokens, hidden] matrix (`UnpaddedBatch`);
embeddings, every Linear layer, GELU, residual adds and LayerNorm run on that matrix, and only
attention scatters its queries, keys and values into the padded [batch, heads, width, head_dim]
layout (with a key mask) and gathers the result back. A batch of short queries padded to its
longest member is about half padding, so this halves the work of everything but attention.

`encode` is that sequence of operations; what a block computes around attention comes from a
`Layer`. Two layers exist: `LiveLayer` calls a BertLayer's own modules, so gradients reach its
parameters (and adapter layers wrapped around them) and dropout applies where the modules train
(`live_forward`, for training); serving's `encoder.torch_unpadded.PreparedLayer` runs weights
copied and cast once. Both go through the same embeddings, masking, scatter, gather and
pooling, so training and serving cannot drift apart there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from encoder.layout import UnpaddedBatch
from encoder.pooling import pool_unpadded


class Layer(Protocol):
    """One encoder block, as `encode` drives it."""

    heads: int
    head_dim: int

    @property
    def attention_dropout(self) -> float:
        """Dropout on the attention probabilities (0 outside training)."""
        ...

    def projections(self, hidden: torch.Tensor) -> Iterable[torch.Tensor]:
        """Rows [tokens, k * hidden] that hold the queries, keys and values, in that order."""
        ...

    def after_attention(self, context: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The block's output rows from attention's `context` rows and its input `hidden`."""
        ...


def encode(embeddings: Any, layers: Sequence[Layer], batch: UnpaddedBatch) -> torch.Tensor:
    """Last hidden states [tokens, hidden] of a BERT encoder whose embedding module is
    `embeddings` (a BertEmbeddings) and whose blocks are `layers`."""
    hidden = embeddings.word_embeddings(batch.ids) + embeddings.position_embeddings(batch.positions)
    # Inputs are single sequences: every token has token type 0.
    hidden = hidden + embeddings.token_type_embeddings.weight[0]
    hidden = embeddings.dropout(embeddings.LayerNorm(hidden))
    inputs = batch.inputs
    present = torch.zeros(inputs * batch.width, dtype=torch.bool, device=hidden.device)
    key_mask = present.index_fill_(0, batch.slots, True).view(inputs, 1, 1, batch.width)
    for layer in layers:
        hidden = layer.after_attention(attention(layer, hidden, batch, key_mask), hidden)
    return hidden


def attention(
    layer: Layer, hidden: torch.Tensor, batch: UnpaddedBatch, key_mask: torch.Tensor
) -> torch.Tensor:
    """Self-attention of one block on unpadded rows; returns unpadded context rows."""
    size, inputs = hidden.shape[1], batch.inputs
    q, k, v = (
        heads
        for rows in layer.projections(hidden)
        for heads in _padded_heads(rows, batch, layer.heads, layer.head_dim)
    )
    context = F.scaled_dot_product_attention(
        q, k, v, attn_mask=key_mask, dropout_p=layer.attention_dropout
    )
    context = context.transpose(1, 2).reshape(inputs * batch.width, size)
    return context.index_select(0, batch.slots)


def _padded_heads(
    rows: torch.Tensor, batch: UnpaddedBatch, heads: int, head_dim: int
) -> tuple[torch.Tensor, ...]:
    """Rows [tokens, k * heads * head_dim] as k tensors [inputs, heads, width, head_dim], zero
    where an input has no token."""
    inputs, width = batch.inputs, batch.width
    padded = rows.new_zeros((inputs * width, rows.shape[1])).index_copy_(0, batch.slots, rows)
    return padded.view(inputs, width, -1, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)


class LiveLayer:
    """A BertLayer through its own modules: gradients reach them, dropout follows their mode."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.self_attention = layer.attention.self
        self.heads = int(self.self_attention.num_attention_heads)
        self.head_dim = int(self.self_attention.attention_head_size)

    @property
    def attention_dropout(self) -> float:
        attn = self.self_attention
        return float(attn.dropout.p) if attn.training else 0.0

    def projections(self, hidden: torch.Tensor) -> Iterable[torch.Tensor]:
        attn = self.self_attention
        return (linear(hidden) for linear in (attn.query, attn.key, attn.value))

    def after_attention(self, context: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        attended = self.layer.attention.output(context, hidden)
        return self.layer.output(self.layer.intermediate(attended), attended)  # type: ignore[no-any-return]


def live_forward(model: Any, batch: UnpaddedBatch, pooling: str) -> torch.Tensor:
    """Pooled (not normalised) vectors [inputs, hidden] of a BertModel on `batch`, through its
    own modules (training: the adapters' gradients flow through this)."""
    layers = [LiveLayer(layer) for layer in model.encoder.layer]
    return pool_unpadded(encode(model.embeddings, layers, batch), batch, pooling)


def is_plain_bert(model: torch.nn.Module) -> bool:
    """A float32 BERT encoder with absolute positions and no decoder parts: the architecture the
    unpadded path (and the ONNX Runtime export) covers."""
    from transformers import BertModel

    config: Any = model.config
    return (
        type(model) is BertModel
        and getattr(config, "position_embedding_type", "absolute") in (None, "absolute")
        and not config.is_decoder
        and not getattr(config, "add_cross_attention", False)
        and all(p.dtype == torch.float32 for p in model.parameters())
    )
