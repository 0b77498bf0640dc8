"""The router: each batch runs on the forward chosen for its size, under the name logs,
metrics and `Info.backend` report."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest

from encoder.router import Router


class Named:
    """A forward that answers with its own mark, so a test sees which one ran."""

    def __init__(self, name: str, dtype: str, mark: float) -> None:
        self.name, self.dtype, self.mark = name, dtype, mark

    def __call__(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        return np.full((len(batch), 2), self.mark, dtype=np.float32)


ONNX = Named("onnxruntime", "float32", 1.0)
TORCH = Named("torch-unpadded", "bfloat16", 2.0)


def test_batches_up_to_the_limit_run_on_the_small_forward_and_larger_ones_on_the_large() -> None:
    router = Router(large=TORCH, small=ONNX, small_max_rows=4)
    assert router.name == "onnxruntime<=4+torch-unpadded"
    assert router.dtype == "bfloat16"  # the forward of the large batches
    assert (router([[1]] * 4) == 1.0).all() and (router([[1]] * 5) == 2.0).all()


def test_one_forward_runs_every_batch_under_its_own_name() -> None:
    for forward in (ONNX, TORCH):
        router = Router(large=forward)
        assert (router.name, router.dtype) == (forward.name, forward.dtype)
        assert (router([[1]] * 100) == forward.mark).all()


def test_a_router_is_fixed_once_built() -> None:
    router = Router(large=TORCH, small=ONNX, small_max_rows=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        router.small_max_rows = 64  # type: ignore[misc]
    with pytest.raises(ValueError, match="small_max_rows"):
        Router(large=TORCH, small=ONNX)
    with pytest.raises(ValueError, match="small_max_rows"):
        Router(large=TORCH, small_max_rows=4)
