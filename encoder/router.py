"""Which forward runs a batch: the `Router`, built once at load."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from encoder.forward import Forward


@dataclass(frozen=True)
class Router:
    """A `Forward` that sends batches of up to `small_max_rows` inputs to `small` and every
    other batch to `large`; with no `small`, `large` runs every batch. Frozen: what was chosen
    at load is what serves, and a probe times forwards, never a router."""

    large: Forward
    small: Forward | None = None
    small_max_rows: int = 0

    def __post_init__(self) -> None:
        if (self.small is None) != (self.small_max_rows == 0) or self.small_max_rows < 0:
            raise ValueError("a small forward needs small_max_rows >= 1, and only it")

    @property
    def name(self) -> str:
        """`large`'s name, or `small<=N+large` (onnxruntime<=32+torch-unpadded, say)."""
        if self.small is None:
            return self.large.name
        return f"{self.small.name}<={self.small_max_rows}+{self.large.name}"

    @property
    def dtype(self) -> str:
        """The precision of the forward that runs the large batches."""
        return self.large.dtype

    def pick(self, rows: int) -> Forward:
        if self.small is not None and rows <= self.small_max_rows:
            return self.small
        return self.large

    def __call__(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        return self.pick(len(batch))(batch)
