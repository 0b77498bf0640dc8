"""Pooling, once per layout, and the normalisation every forward ends with.

Mean pooling averages an input's tokens, special tokens included (what sentence-transformers'
Pooling does with the attention mask); `cls` takes its first token.
"""

from __future__ import annotations

import numpy as np
import torch

from encoder.layout import UnpaddedBatch

MODES = ("mean", "cls")


def pool_unpadded(hidden: torch.Tensor, batch: UnpaddedBatch, mode: str) -> torch.Tensor:
    """[inputs, hidden] vectors of the rows [tokens, hidden] of an `UnpaddedBatch`."""
    if mode == "cls":
        starts = torch.cumsum(batch.lengths, 0) - batch.lengths
        return hidden.index_select(0, starts)
    sums = hidden.new_zeros((batch.inputs, hidden.shape[1])).index_add_(0, batch.rows, hidden)
    return sums / batch.lengths.unsqueeze(1).to(sums.dtype)


def pool_padded(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """[inputs, hidden] vectors of padded states [inputs, width, hidden]; padding left out."""
    if mode == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def finish(pooled: torch.Tensor, normalize: bool) -> np.ndarray:
    """float32 numpy vectors of pooled float32 vectors, unit length if `normalize`."""
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
    return pooled.cpu().numpy()
