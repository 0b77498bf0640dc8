"""The bulkhead between Stripe and the ledger: threads of their own for calls that wait on Stripe.

A call to Stripe can hold its thread for the SDK's timeout, once per resend. On the event
loop's shared default executor, a slow Stripe and a few clients asking for billing pages would
take every thread that `Authenticate` and `RecordUsage` need, and every tenant would be refused.
A `StripePool` runs such calls on `threads` threads of its own and lets at most `queue` more
wait for one; a call past that is refused at once with `StripeBusy` (gRPC UNAVAILABLE, reason
``STRIPE_BUSY``), so waiting work stays bounded however long Stripe hangs.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from metering.errors import StripeBusy

ResultT = TypeVar("ResultT")


class StripePool:
    """Runs blocking calls on `threads` threads with at most `queue` more waiting.

    A place is held from admission until the call ends in its thread (not until its caller
    stops waiting): a call keeps its thread after its client gave up, and that thread is not
    free for another. A waiting call whose caller is cancelled never starts and frees its place.
    """

    def __init__(self, threads: int, queue: int, *, name: str = "stripe") -> None:
        if threads < 1 or queue < 0:
            raise ValueError(f"a pool needs at least one thread and no negative queue: {name}")
        self.name = name
        self.capacity = threads + queue
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._lock = threading.Lock()  # `_admitted` drops in worker threads
        self._admitted = 0

    @property
    def admitted(self) -> int:
        """Calls running or waiting now."""
        with self._lock:
            return self._admitted

    async def run(self, call: Callable[[], ResultT]) -> ResultT:
        """`call()`'s result, computed on one of the pool's threads; StripeBusy without a place."""
        with self._lock:
            if self._admitted >= self.capacity:
                raise StripeBusy(
                    f"{self._admitted} billing calls are already waiting on Stripe; retry shortly"
                )
            self._admitted += 1
        try:
            # The caller's context (its trace, say) goes along, as with asyncio.to_thread.
            future = self._executor.submit(contextvars.copy_context().run, call)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        """Drops the waiting calls; running ones end in their threads on their own."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _release(self, _future: object = None) -> None:
        with self._lock:
            self._admitted -= 1
