"""PyTorch's forward for any encoder: transformers' own forward over the batch padded to its
longest input. Where reduced precision was chosen, the caller lowered the model's Linear layers
(`embed_service.precision`) before handing it over."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from encoder.layout import Framing, padded
from encoder.pooling import finish, pool_padded


class TorchPadded:
    """The `Forward` of a transformers encoder run padded."""

    name = "torch-padded"

    def __init__(
        self,
        model: Any,
        framing: Framing,
        pooling: str,
        normalize: bool,
        dtype: torch.dtype,
        device: torch.device,
        token_types: bool,
    ) -> None:
        """`token_types`: the model takes token_type_ids (all zero for a single sequence)."""
        self.model = model
        self.framing = framing
        self.pooling = pooling
        self.normalize = normalize
        self.device = device
        self.dtype = str(dtype).removeprefix("torch.")
        self.token_types = token_types

    def __call__(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        input_ids, attention_mask = (torch.from_numpy(a) for a in padded(batch, self.framing))
        with torch.inference_mode():
            input_ids = input_ids.to(self.device, non_blocking=True)
            attention_mask = attention_mask.to(self.device, non_blocking=True)
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if self.token_types:
                kwargs["token_type_ids"] = torch.zeros_like(input_ids)
            hidden = self.model(**kwargs).last_hidden_state.float()
            return finish(pool_padded(hidden, attention_mask, self.pooling), self.normalize)
