"""The training forward pass: a BERT encoder over unpadded tokens, through the model's own
modules.

Serving's `embed_service.unpadded.UnpaddedBert` copies and casts weights once for inference;
training needs gradients to reach the live parameters (and the adapter layers wrapped around
them), so this pass calls the modules themselves and keeps dropout where the model has it. Only
attention sees the padded [batch, heads, width, head_dim] layout; every other layer works on
real tokens, which on short utterances is about half the padded work.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from embed_service.unpadded import UnpaddedBatch


def attention(
    layer: Any, hidden: torch.Tensor, tokens: UnpaddedBatch, key_mask: torch.Tensor
) -> torch.Tensor:
    """Self-attention of one BERT layer on unpadded rows; returns unpadded rows."""
    self_attn = layer.attention.self
    heads, head_dim = int(self_attn.num_attention_heads), int(self_attn.attention_head_size)
    size, inputs = hidden.shape[1], tokens.inputs

    def padded(x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros((inputs * tokens.width, size)).index_copy(0, tokens.slots, x)
        return out.view(inputs, tokens.width, heads, head_dim).transpose(1, 2)

    q, k, v = (padded(lin(hidden)) for lin in (self_attn.query, self_attn.key, self_attn.value))
    dropout = self_attn.dropout.p if self_attn.training else 0.0
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout)
    context = context.transpose(1, 2).reshape(inputs * tokens.width, size)
    return context.index_select(0, tokens.slots)


def unpadded_forward(model: Any, tokens: UnpaddedBatch, pooling: str) -> torch.Tensor:
    """Pooled (not normalised) vectors [inputs, hidden] of a BertModel on `tokens`."""
    emb = model.embeddings
    hidden = emb.word_embeddings(tokens.ids) + emb.position_embeddings(tokens.positions)
    hidden = hidden + emb.token_type_embeddings.weight[0]
    hidden = emb.dropout(emb.LayerNorm(hidden))
    inputs = tokens.inputs
    present = torch.zeros(inputs * tokens.width, dtype=torch.bool, device=hidden.device)
    key_mask = present.index_fill_(0, tokens.slots, True).view(inputs, 1, 1, tokens.width)
    for layer in model.encoder.layer:
        attended = layer.attention.output(attention(layer, hidden, tokens, key_mask), hidden)
        hidden = layer.output(layer.intermediate(attended), attended)
    if pooling == "cls":
        starts = torch.cumsum(tokens.lengths, 0) - tokens.lengths
        return hidden.index_select(0, starts)
    sums = hidden.new_zeros((inputs, hidden.shape[1])).index_add(0, tokens.rows, hidden)
    return sums / tokens.lengths.unsqueeze(1).to(sums.dtype)
