"""What every forward pass is: the `Forward` protocol."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Forward(Protocol):
    """Token ids of each input, without special tokens, to vectors [inputs, dim] float32 in
    input order: unit length where the model's pooling config normalises. Each input must fit
    the model's length limit; attention works on the batch padded to its longest input, so
    callers group inputs of similar length."""

    @property
    def name(self) -> str:
        """Which forward this is, as logs, metrics and `Info.backend` name it."""
        ...

    @property
    def dtype(self) -> str:
        """The precision of its matrix products: float32, bfloat16 or float16."""
        ...

    def __call__(self, batch: Sequence[Sequence[int]]) -> np.ndarray: ...
