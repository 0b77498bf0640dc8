"""The batcher on its own, with a recording stand-in model: inputs of similar length share a
batch within the padded-token budget, the oldest input is never passed over, and each request
gets its own rows back in order; callers that come straight back are waited for, briefly."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

import embed_service.batcher as batcher_module
from embed_service.batcher import Batcher
from tests.support.waiting import eventually


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


class TimedModel:
    """Takes `forward_s` per batch and records each batch's size and start time."""

    dimensions = 2
    num_special_tokens = 2

    def __init__(self, forward_s: float) -> None:
        self.forward_s = forward_s
        self.batches: list[tuple[int, float]] = []

    def embed_ids(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        self.batches.append((len(rows), time.monotonic()))
        time.sleep(self.forward_s)
        return np.array([[r[0], len(r)] for r in rows], dtype=np.float32)


async def test_closed_loop_callers_are_waited_for_and_share_one_batch() -> None:
    # Two callers that send their next request (4 inputs) as soon as they have their answer.
    # B arrives while A's first batch runs, so A's and B's requests start out in turns; a
    # batcher that only waits for as many inputs as its last batch had keeps them in turns
    # (two half batches for ever). Expecting A back as well merges them.
    model = TimedModel(forward_s=0.02)
    batcher = Batcher(model, max_batch_tokens=4096, max_batch_size=64, max_queue_inputs=100)  # type: ignore[arg-type]
    batcher.start()

    async def caller(first: int) -> None:
        rows = [[first + k, 1] for k in range(4)]
        for _ in range(8):
            out = await batcher.embed(rows)
            assert out[:, 0].tolist() == [float(first + k) for k in range(4)]

    try:
        a = asyncio.ensure_future(caller(0))
        await eventually(lambda: bool(model.batches))
        await asyncio.gather(a, caller(100))
    finally:
        await batcher.close()
    sizes = [size for size, _ in model.batches]
    assert sum(sizes) == 64
    # A alone, then A and B together, then B's last request alone: [4] + [8] * 7 + [4]. On a
    # loaded machine A's answer can take longer to come back than the arrival gap the refill
    # wait allows, so B's first request may run alone too ([4, 4] + [8] * 7); callers kept in
    # turns would give sixteen batches of 4.
    assert sizes[0] == 4, sizes
    assert sizes.count(8) >= 6 and len(sizes) <= 10, sizes


async def test_a_lone_caller_never_waits_and_absent_callers_are_not_waited_for_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Judged against the longest wait the batcher could make (`cap`: half a forward pass, at
    # most _MAX_REFILL_WAIT_S), both made long here so a busy machine's scheduling delays of a
    # few milliseconds cannot decide the outcome.
    monkeypatch.setattr(batcher_module, "_MAX_REFILL_WAIT_S", 0.25)
    model = TimedModel(forward_s=0.5)
    cap = min(0.25, model.forward_s / 2)
    batcher = Batcher(model, max_batch_tokens=4096, max_batch_size=64, max_queue_inputs=100)  # type: ignore[arg-type]
    batcher.start()
    try:
        await asyncio.gather(*(batcher.embed([[i]]) for i in range(8)))
        # Eight requests finished; only one caller comes back. The batcher expects eight, but
        # stops waiting once nothing arrived for a moment (not the whole cap).
        sent = time.monotonic()
        await batcher.embed([[1]])
        started = model.batches[-1][1] - sent
        # One caller at a time: its previous batch finished one request, so no wait at all.
        gaps = []
        for _ in range(5):
            sent = time.monotonic()
            await batcher.embed([[2]])
            gaps.append(model.batches[-1][1] - sent)
    finally:
        await batcher.close()
    assert started < cap / 2, (started, cap)
    assert max(gaps) < cap / 10, (gaps, cap)
