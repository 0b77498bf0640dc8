"""The batcher on its own, with a recording stand-in model: inputs of similar length share a
batch within the padded-token budget, the oldest input is never passed over, and each request
gets its own rows back in order."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np

from embed_service.batcher import Batcher

from .conftest import eventually


class RecordingModel:
    """Returns each row's first id as its vector, so answers show which input they belong to."""

    dimensions = 2
    num_special_tokens = 2

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()

    def embed_ids(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        self.batches.append([len(r) for r in rows])
        self.release.wait(timeout=30)
        return np.array([[r[0], len(r)] for r in rows], dtype=np.float32)


async def test_similar_lengths_share_batches_within_budget_and_order_is_kept() -> None:
    model = RecordingModel()
    batcher = Batcher(model, max_batch_tokens=64, max_batch_size=8, max_queue_inputs=100)  # type: ignore[arg-type]
    batcher.start()
    try:
        first = asyncio.ensure_future(batcher.embed([[7]]))
        await eventually(lambda: bool(model.batches))  # the first input is held in the model
        long_, short = [[i] * 14 for i in range(100, 104)], [[i] * 2 for i in range(200, 208)]
        # Arrival order interleaves long and short inputs; each request is one input.
        arrivals = [long_[0], short[0], long_[1], short[1], long_[2], short[2], long_[3],
                    *short[3:]]
        calls = [asyncio.ensure_future(batcher.embed([row])) for row in arrivals]
        await eventually(lambda: batcher.queued_inputs == len(arrivals))
        model.release.set()
        results = await asyncio.gather(first, *calls)
    finally:
        model.release.set()
        await batcher.close()
    # The oldest (long) input leads the next batch, which fills with the other long ones up
    # to the budget (4 rows x 16 padded tokens = 64); the short ones go together after it.
    assert model.batches == [[1], [14] * 4, [2] * 8]
    for row, result in zip([[7], *arrivals], results, strict=True):
        assert result.tolist() == [[row[0], len(row)]]


async def test_request_split_over_batches_is_reassembled_in_order() -> None:
    model = RecordingModel()
    model.release.set()
    batcher = Batcher(model, max_batch_tokens=1000, max_batch_size=3, max_queue_inputs=100)  # type: ignore[arg-type]
    batcher.start()
    try:
        rows = [[i] * (1 + i % 5) for i in range(1, 11)]
        result = await batcher.embed(rows)
    finally:
        await batcher.close()
    assert all(len(b) <= 3 for b in model.batches) and sum(map(len, model.batches)) == 10
    assert result[:, 0].tolist() == [float(i) for i in range(1, 11)]
