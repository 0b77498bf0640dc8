"""Unpadded forward pass for BERT encoders: matrix work only on real tokens.

The tokens of a batch are laid end to end in one [tokens, hidden] matrix (`UnpaddedBatch`);
embeddings, every Linear layer, GELU, residual adds and LayerNorm run on that matrix, and only
attention scatters its queries, keys and values into the padded [batch, heads, width, head_dim]
layout (with a key mask) and gathers the result back. Mean pooling sums each input's rows. A
batch of short queries padded to its longest member is about half padding, so this halves the
work of everything but attention.

Reduced precision (bfloat16 / float16), where chosen: the matrix products and attention of each
block run in it, with Q, K and V fused into one weight cast once at load; the residual stream,
LayerNorm and pooling stay float32, and the last block runs wholly in float32 because its
rounding reaches the pooled vector undamped. Invariant: every vector stays at cosine >= 0.9999
of the float32 model's (tests/embed_service/test_model.py checks it on CLINC150).

`unpadded_encoder(model, dtype)` returns an UnpaddedBert for a plain BERT encoder (absolute
positions, no decoder parts) and None for anything else, which then runs through transformers'
padded forward. Measurements and what was tried: docs/performance.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class UnpaddedBatch:
    """The tokens of a batch laid end to end, with where each sits in the padded layout."""

    ids: torch.Tensor  # [tokens] int64: special tokens included
    positions: torch.Tensor  # [tokens] position of each token inside its input
    rows: torch.Tensor  # [tokens] which input each token belongs to
    slots: torch.Tensor  # [tokens] row * width + position: its place in the padded layout
    lengths: torch.Tensor  # [inputs] tokens of each input, special tokens included
    width: int  # the longest input's tokens

    @property
    def inputs(self) -> int:
        return int(self.lengths.shape[0])

    @classmethod
    def of(
        cls,
        batch: Sequence[Sequence[int]],
        prefix: Sequence[int],
        suffix: Sequence[int],
        device: torch.device,
    ) -> UnpaddedBatch:
        lengths = np.fromiter((len(ids) for ids in batch), np.int64, len(batch))
        lengths += len(prefix) + len(suffix)
        total = int(lengths.sum())
        ids = np.fromiter(
            chain.from_iterable(chain(prefix, ids, suffix) for ids in batch), np.int64, total
        )
        starts = np.cumsum(lengths) - lengths
        rows = np.repeat(np.arange(len(batch), dtype=np.int64), lengths)
        positions = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
        width = int(lengths.max())
        tensors = [torch.from_numpy(a).to(device) for a in (ids, positions, rows)]
        return cls(
            ids=tensors[0],
            positions=tensors[1],
            rows=tensors[2],
            slots=tensors[2] * width + tensors[1],
            lengths=torch.from_numpy(lengths).to(device),
            width=width,
        )


class UnpaddedBlock(torch.nn.Module):
    """One BERT layer over the batch's real tokens; matrix products and attention in `dtype`."""

    def __init__(self, layer: Any, dtype: torch.dtype) -> None:
        super().__init__()
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

    def forward(
        self, hidden: torch.Tensor, batch: UnpaddedBatch, key_mask: torch.Tensor
    ) -> torch.Tensor:
        size, inputs = hidden.shape[1], batch.inputs
        qkv = F.linear(hidden.to(self.dtype), self.w_qkv, self.b_qkv)
        padded = qkv.new_zeros((inputs * batch.width, 3 * size)).index_copy_(0, batch.slots, qkv)
        q, k, v = padded.view(inputs, batch.width, 3, self.heads, self.head_dim).permute(
            2, 0, 3, 1, 4
        )
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        context = context.transpose(1, 2).reshape(inputs * batch.width, size)
        context = context.index_select(0, batch.slots)
        attended = F.linear(context, self.w_attn_out).float() + self.b_attn_out + hidden
        attended = self.norm_attn(attended)
        up = self.activation(F.linear(attended.to(self.dtype), self.w_up, self.b_up))
        down = F.linear(up, self.w_down).float() + self.b_down + attended
        return self.norm_out(down)  # type: ignore[no-any-return]


class UnpaddedBert(torch.nn.Module):
    """A BertModel's encoder over the batch's real tokens; returns float32 pooled vectors."""

    def __init__(self, model: Any, dtype: torch.dtype) -> None:
        super().__init__()
        embeddings = model.embeddings
        self.word = embeddings.word_embeddings
        self.position = embeddings.position_embeddings
        # Inputs are single sequences: every token has token type 0.
        self.token_type = embeddings.token_type_embeddings.weight.detach()[0].float()
        self.norm = embeddings.LayerNorm
        layers = list(model.encoder.layer)
        dtypes = [dtype] * (len(layers) - 1) + [torch.float32]
        self.blocks = torch.nn.ModuleList(
            UnpaddedBlock(layer, d) for layer, d in zip(layers, dtypes, strict=True)
        )

    def forward(self, batch: UnpaddedBatch, pooling: str) -> torch.Tensor:
        hidden = self.word(batch.ids) + self.position(batch.positions) + self.token_type
        hidden = self.norm(hidden)
        inputs = batch.inputs
        present = torch.zeros(inputs * batch.width, dtype=torch.bool, device=hidden.device)
        key_mask = present.index_fill_(0, batch.slots, True).view(inputs, 1, 1, batch.width)
        for block in self.blocks:
            hidden = block(hidden, batch, key_mask)
        if pooling == "cls":
            starts = torch.cumsum(batch.lengths, 0) - batch.lengths
            return hidden.index_select(0, starts)
        sums = hidden.new_zeros((inputs, hidden.shape[1])).index_add_(0, batch.rows, hidden)
        return sums / batch.lengths.unsqueeze(1).to(sums.dtype)


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


def unpadded_encoder(model: torch.nn.Module, dtype: torch.dtype) -> UnpaddedBert | None:
    """An UnpaddedBert for a plain BERT encoder, None where this path does not apply."""
    return UnpaddedBert(model, dtype) if is_plain_bert(model) else None
