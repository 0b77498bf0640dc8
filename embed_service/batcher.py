"""Dynamic batching: merges the inputs of concurrent requests into forward passes.

Requests put their tokenized inputs in one queue; a dedicated forward thread takes a batch as
soon as it is free (no waiting window, so a lone request is not delayed), bounded by a padded
token budget (rows x longest row) and a row cap. The oldest waiting input is always in the next
batch (no starvation); the rest of the batch is filled with the queued inputs closest to it in
length, which keeps padding low. Results go back to the event loop while the thread already
runs the next batch, so scattering answers and serialising responses overlap the model. A
request larger than one batch is split and reassembled in order.

One bounded exception to "start at once": after a batch that finished requests, the thread
expects their callers back (a caller waits for its answer before it sends the next request).
It waits until the queue holds what was queued when that batch ended plus the inputs of the
requests it finished, but never longer than half that batch's forward time (capped at
`_MAX_REFILL_WAIT_S`), and it stops as soon as no input arrived for `_ARRIVAL_GAP_S` since the
batch ended or since the last arrival, whichever is later (the callers are not coming). Reason:
without the wait, closed-loop callers split into alternating half batches, and one full batch
runs faster than two halves. A lone caller never waits: it finished one request, expects one
input, and that is the one that arrives. Measurements: docs/performance.md.

A cancelled request (client gone, deadline passed) has its queued inputs removed; a batch
already running for it finishes and its rows are dropped. The queue is capped: a request that
would overflow it is refused.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from embed_service.errors import Overloaded, Unavailable
from embed_service.metrics import EmbedMetrics
from embed_service.model import EmbeddingModel

log = logging.getLogger(__name__)

_MAX_REFILL_WAIT_S = 0.050
# The refill wait ends early when no input arrived for this long: the callers are not coming.
_ARRIVAL_GAP_S = 0.002


@dataclass(eq=False)
class _Job:
    """The inputs of one request and where their vectors go."""

    ids: Sequence[Sequence[int]]
    out: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued_at: float
    remaining: int
    cancelled: bool = False
    queued: int = 0  # inputs of this job still in the queue
    times: JobTimes = field(default_factory=lambda: JobTimes(time.time_ns()))


@dataclass
class JobTimes:
    """When one request's inputs waited and ran (wall clock, ns; for its trace's spans)."""

    enqueued_ns: int
    first_forward_ns: int = 0
    last_forward_end_ns: int = 0
    batches: int = 0  # forward passes its inputs rode
    largest_batch: int = 0  # rows of the largest of them
    error: BaseException | None = field(default=None)


# One queued input: (job, row index in the job, token count without special tokens).
_Item = tuple[_Job, int, int]


class Batcher:
    def __init__(
        self,
        model: EmbeddingModel,
        max_batch_tokens: int,
        max_batch_size: int,
        max_queue_inputs: int,
        metrics: EmbedMetrics | None = None,
    ) -> None:
        self.model = model
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_queue_inputs = max_queue_inputs
        self.metrics = metrics or EmbedMetrics()
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # How far past the oldest input the batch builder looks for inputs of similar length.
        self._window = max(4 * max_batch_size, 64)
        self._last_forward_s = 0.0
        # Inputs the next batch may count on: queued when the last forward ended + those whose
        # requests it finished (their callers are expected back).
        self._expected = 0
        self._last_arrival = 0.0
        self._last_forward_end = 0.0

    def start(self) -> None:
        """Starts the forward thread; call from the event loop that will await `embed`."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="embed-forward", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Finishes what is queued, then stops the forward thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    @property
    def queued_inputs(self) -> int:
        return len(self._queue)

    async def embed(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Vectors [n, dim] float32 of inputs given as token ids (no special tokens)."""
        vectors, _ = await self.embed_timed(ids)
        return vectors

    async def embed_timed(self, ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, JobTimes]:
        """`embed`, and when the inputs waited and ran."""
        assert self._loop is not None, "Batcher.start() was not called"
        n = len(ids)
        job = _Job(
            ids=ids,
            out=np.empty((n, self.model.dimensions), dtype=np.float32),
            future=self._loop.create_future(),
            enqueued_at=time.monotonic(),
            remaining=n,
            queued=n,
        )
        with self._cond:
            if self._closed:
                raise Unavailable("the service is shutting down; retry on another replica")
            if self._queue and len(self._queue) + n > self.max_queue_inputs:
                raise Overloaded(
                    f"the service is overloaded ({len(self._queue)} inputs queued); "
                    "retry with backoff"
                )
            self._queue.extend((job, i, len(row)) for i, row in enumerate(ids))
            self.metrics.queue_depth.set(len(self._queue))
            self._last_arrival = time.monotonic()
            self._cond.notify()
        try:
            return await job.future, job.times
        except BaseException:
            # Cancelled, deadline passed, or a failed batch: the rest of its inputs is dropped.
            self._cancel(job)
            raise

    def _cancel(self, job: _Job) -> None:
        with self._cond:
            job.cancelled = True
            if job.queued:
                kept = [item for item in self._queue if item[0] is not job]
                self._queue.clear()
                self._queue.extend(kept)
                job.queued = 0
                self.metrics.queue_depth.set(len(self._queue))

    def _take_batch(self) -> list[_Item]:
        """Removes and returns the next batch; caller holds the lock, queue is not empty."""
        queue = self._queue
        extra = self.model.num_special_tokens
        head_len = queue[0][2]
        window = list(itertools.islice(queue, self._window))
        if len(window) > 1:
            # Stable sort: among equally close inputs the older goes first; the head stays first.
            order = sorted(range(len(window)), key=lambda k: abs(window[k][2] - head_len))
        else:
            order = [0]
        chosen: list[int] = []
        width = 0
        for k in order:
            new_width = max(width, window[k][2] + extra)
            if chosen and new_width * (len(chosen) + 1) > self.max_batch_tokens:
                continue
            chosen.append(k)
            width = new_width
            if len(chosen) >= self.max_batch_size:
                break
        if sorted(chosen) == list(range(len(chosen))):
            batch = [queue.popleft() for _ in chosen]
        else:
            picked = set(chosen)
            batch = [window[k] for k in chosen]
            rest = [item for k, item in enumerate(window) if k not in picked]
            for _ in window:
                queue.popleft()
            queue.extendleft(reversed(rest))
        for job, _, _ in batch:
            job.queued -= 1
        self.metrics.queue_depth.set(len(queue))
        return batch

    def _wait_for_refill(self) -> None:
        """Caller holds the lock. See the module docstring: bounded, only after a big batch."""
        expected = min(self._expected, self.max_batch_size)
        if expected < 2 or len(self._queue) >= expected:
            return
        deadline = time.monotonic() + min(_MAX_REFILL_WAIT_S, self._last_forward_s / 2)
        while len(self._queue) < expected and not self._closed:
            now = time.monotonic()
            # Callers cannot be back before the last batch ended: the gap counts from then.
            since = max(self._last_arrival, self._last_forward_end)
            until = min(deadline, since + _ARRIVAL_GAP_S)
            if now >= until:
                return
            self._cond.wait(until - now)

    def _run(self) -> None:
        assert self._loop is not None
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return  # closed and drained
                self._wait_for_refill()
                batch = self._take_batch()
            live = [item for item in batch if not item[0].cancelled]
            if not live:
                continue
            now = time.monotonic()
            for job, _, _ in live:
                self.metrics.queue_seconds.observe(now - job.enqueued_at)
            rows = [job.ids[i] for job, i, _ in live]
            started_ns = time.time_ns()
            try:
                vectors = self.model.embed_ids(rows)
                error: BaseException | None = None
            except Exception as exc:  # a failed batch fails its requests, not the service
                log.exception("forward_failed rows=%d", len(rows))
                vectors, error = None, exc
            elapsed = time.monotonic() - now
            _note_forward(live, started_ns, time.time_ns())
            self._last_forward_s = elapsed
            with self._cond:
                self._last_forward_end = now + elapsed
                finished = {id(job): len(job.ids) for job, _, _ in live if job.queued == 0}
                self._expected = len(self._queue) + sum(finished.values())
            self.metrics.forward_seconds.observe(elapsed)
            self.metrics.batch_size.observe(len(rows))
            width = max(len(r) for r in rows) + self.model.num_special_tokens
            self.metrics.batch_padded_tokens.observe(width * len(rows))
            try:
                self._loop.call_soon_threadsafe(self._deliver, live, vectors, error)
            except RuntimeError:
                return  # the event loop is gone: nobody waits for results any more

    def _deliver(
        self, batch: list[_Item], vectors: np.ndarray | None, error: BaseException | None
    ) -> None:
        """Runs on the event loop: puts each row in its request, completes finished requests."""
        for row, (job, index, _) in enumerate(batch):
            if job.future.done():
                continue
            if error is not None or vectors is None:
                job.future.set_exception(RuntimeError(f"the forward pass failed: {error}"))
                continue
            job.out[index] = vectors[row]
            job.remaining -= 1
            if job.remaining == 0:
                job.future.set_result(job.out)


def _note_forward(batch: list[_Item], started_ns: int, ended_ns: int) -> None:
    """Each request of a forward pass notes it in its times (the forward thread writes them
    before the loop delivers the request's result)."""
    for job in {id(job): job for job, _, _ in batch}.values():
        times = job.times
        if times.batches == 0:
            times.first_forward_ns = started_ns
        times.last_forward_end_ns = ended_ns
        times.batches += 1
        times.largest_batch = max(times.largest_batch, len(batch))
