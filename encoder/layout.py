"""A batch of token ids in the two layouts the forwards take: padded rows, or every input's
tokens laid end to end (`UnpaddedBatch`), each input framed by the tokenizer's special tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch


@dataclass(frozen=True)
class Framing:
    """What the tokenizer puts around a single sequence ([CLS] ... [SEP] for BERT), and the id
    that pads."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    pad_id: int

    @property
    def extra(self) -> int:
        """Special tokens added to each input."""
        return len(self.prefix) + len(self.suffix)


def padded(batch: Sequence[Sequence[int]], framing: Framing) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int64 [inputs, width]: each input framed, right-padded to
    the longest."""
    width = max(len(ids) for ids in batch) + framing.extra
    input_ids = np.full((len(batch), width), framing.pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, ids in enumerate(batch):
        full = [*framing.prefix, *ids, *framing.suffix]
        input_ids[row, : len(full)] = full
        attention_mask[row, : len(full)] = 1
    return input_ids, attention_mask


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
        cls, batch: Sequence[Sequence[int]], framing: Framing, device: torch.device
    ) -> UnpaddedBatch:
        prefix, suffix = framing.prefix, framing.suffix
        lengths = np.fromiter((len(ids) for ids in batch), np.int64, len(batch))
        lengths += framing.extra
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
