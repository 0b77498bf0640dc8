"""Per-org rate limits: requests and tokens per window (a minute by default), as OpenAI's API
has them, enforced with the `limits` library's sliding-window counter.

Counters live in Redis when `GATEWAY_RATE_LIMIT_REDIS_URL` is set, so every gateway replica
holds an org to one shared budget; otherwise in this process (one replica, `make run`). The
sliding-window counter keeps two integers per org and limit whatever the cost of a hit, so a
million tokens a minute is as cheap to count as one request (a moving window would keep one
entry per token).

Contract of one request: it is admitted while the org has tokens left in the window and a
request to spare; the request is counted when admitted, its tokens (the embed service's count,
what usage bills) once the answer is back. A window never counts past its limit, so the last
request admitted may overshoot the token budget by at most its own size.

When the store cannot answer within `GATEWAY_RATE_LIMIT_TIMEOUT_S` the gateway fails open:
it serves the request unlimited, logs, counts `gateway_ratelimit_unavailable_total`, and
stops asking the store for `_PAUSE_AFTER_ERROR_S` so an outage costs no latency. Refusing
every tenant because a cache is down would turn a Redis outage into a full outage; the
window is a minute, so the overrun is bounded by the outage's length.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar, cast

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, SlidingWindowCounterSupport, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from gateway.errors import ApiError

log = logging.getLogger(__name__)

T = TypeVar("T")

# (previous count, previous window's seconds to live, current count, current's seconds to
# live): the library's view of one sliding window.
_RawWindow = tuple[int, float, int, float]

# After the store failed, requests are served unlimited this long without asking it again.
_PAUSE_AFTER_ERROR_S = 2.0
REQUESTS = "requests"
TOKENS = "tokens"


@dataclass(frozen=True, slots=True)
class Budget:
    """One limit as a client sees it after this request: OpenAI's x-ratelimit-* values."""

    limit: int
    remaining: int
    reset_s: float  # until the whole limit is available again


@dataclass(frozen=True, slots=True)
class Admission:
    """What `admit` decided for one request; None budgets: that limit is off or unknown."""

    org_id: str
    requests: Budget | None
    tokens: Budget | None
    tokens_item: RateLimitItem | None
    tokens_window: _RawWindow | None

    def headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers, for every answer to an admitted request."""
        return _headers(self.requests, self.tokens)


def open_storage(redis_url: str, key_prefix: str, timeout_s: float) -> Storage:
    """Redis at `redis_url` (redis:// or rediss://), or this process's memory when empty."""
    if not redis_url:
        return MemoryStorage()
    uri = redis_url if redis_url.startswith("async+") else "async+" + redis_url
    return RedisStorage(
        uri,
        wrap_exceptions=True,
        key_prefix=key_prefix,
        connect_timeout=timeout_s,
        stream_timeout=timeout_s,
    )


class RateLimiter:
    """Admits or refuses one org's requests and charges their tokens; one per app."""

    def __init__(
        self,
        storage: Storage,
        default_rpm: int,
        default_tpm: int,
        window_s: int,
        timeout_s: float,
        on_unavailable: Callable[[], None] = lambda: None,
        on_limited: Callable[[str], None] = lambda limit: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.storage = storage
        self._windows = cast(SlidingWindowCounterSupport, storage)
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self._default_rpm = default_rpm
        self._default_tpm = default_tpm
        self._window_s = window_s
        self._timeout_s = timeout_s
        self._on_unavailable = on_unavailable
        self._on_limited = on_limited
        self._clock = clock
        self._paused_until = -math.inf

    async def warm_up(self, timeout_s: float = 5.0) -> bool:
        """Opens the store's connection and loads its scripts, so the first requests do not pay
        for it within their short deadline; False (logged) when the store is unreachable."""
        item = RateLimitItemPerSecond(1, self._window_s, namespace="warm-up")
        try:
            async with asyncio.timeout(timeout_s):
                await self._windows.get_sliding_window(item.key_for("-"), item.get_expiry())
                await self._limiter.hit(item, "-")
        except Exception as exc:
            log.warning("ratelimit_warm_up_failed error=%s", type(exc).__name__)
            return False
        return True

    async def admit(self, org_id: str, rpm: int = 0, tpm: int = 0) -> Admission:
        """Counts one request of `org_id` or raises the 429 for the limit it is over. `rpm` and
        `tpm` are the org's own limits (0: this gateway's defaults; a default of 0: no limit)."""
        requests = self._item(rpm or self._default_rpm, REQUESTS)
        tokens = self._item(tpm or self._default_tpm, TOKENS)
        windows = await self._store(lambda: self._read(org_id, requests, tokens))
        if windows is None:
            return Admission(org_id, None, None, None, None)
        request_window, token_window = windows
        if tokens is not None and token_window is not None:
            if _remaining(tokens, token_window) <= 0:
                raise self._limited(TOKENS, tokens, token_window, requests, request_window)
        request_budget = None
        if requests is not None and request_window is not None:
            admitted = await self._store(lambda: self._limiter.hit(requests, org_id))
            if admitted is None:
                return Admission(org_id, None, None, None, None)
            if not admitted:
                raise self._limited(REQUESTS, requests, request_window, tokens, token_window)
            request_window = _after_hit(request_window, 1, self._window_s)
            request_budget = _budget(requests, request_window, self._window_s)
        token_budget = (
            _budget(tokens, token_window, self._window_s)
            if tokens is not None and token_window is not None
            else None
        )
        return Admission(org_id, request_budget, token_budget, tokens, token_window)

    async def charge(self, admission: Admission, tokens: int) -> Admission:
        """Counts the answered request's `tokens`; the admission with the budget left after.
        Past the limit the window is filled, not overfilled: the overshoot is forgiven."""
        item, window = admission.tokens_item, admission.tokens_window
        if item is None or window is None or tokens <= 0:
            return admission
        org_id = admission.org_id
        charged = min(tokens, _remaining(item, window))

        async def hit() -> bool:
            if await self._limiter.hit(item, org_id, cost=tokens):
                return True
            # Over the limit (or raced past it): count what is left, so the window is full.
            window_now = await self._windows.get_sliding_window(
                item.key_for(org_id), item.get_expiry()
            )
            left = _remaining(item, window_now)
            if left > 0:
                await self._limiter.hit(item, org_id, cost=left)
            return False

        if await self._store(hit) is None:
            return admission
        after = _after_hit(window, charged, self._window_s)
        budget = Budget(
            item.amount, max(0, _remaining(item, window) - tokens),
            _seconds_until(after, self._window_s, 0),
        )  # fmt: skip
        return Admission(org_id, admission.requests, budget, item, after)

    def _item(self, amount: int, namespace: str) -> RateLimitItem | None:
        if amount <= 0:
            return None
        return RateLimitItemPerSecond(amount, self._window_s, namespace=namespace)

    async def _read(
        self, org_id: str, requests: RateLimitItem | None, tokens: RateLimitItem | None
    ) -> tuple[_RawWindow | None, _RawWindow | None]:
        async def window(item: RateLimitItem | None) -> _RawWindow | None:
            if item is None:
                return None
            return await self._windows.get_sliding_window(item.key_for(org_id), item.get_expiry())

        request_window, token_window = await asyncio.gather(window(requests), window(tokens))
        return request_window, token_window

    async def _store(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """`call`'s result, or None when the store failed or is paused after a failure."""
        if self._clock() < self._paused_until:
            self._on_unavailable()
            return None
        try:
            async with asyncio.timeout(self._timeout_s):
                return await call()
        except Exception as exc:
            self._paused_until = self._clock() + _PAUSE_AFTER_ERROR_S
            self._on_unavailable()
            log.warning(
                "ratelimit_unavailable error=%s serving_unlimited_for_s=%.1f",
                type(exc).__name__, _PAUSE_AFTER_ERROR_S,
            )  # fmt: skip
            return None

    def _limited(
        self,
        which: str,
        item: RateLimitItem,
        window: _RawWindow,
        other: RateLimitItem | None,
        other_window: _RawWindow | None,
    ) -> ApiError:
        self._on_limited(which)
        retry_s = max(1, math.ceil(_seconds_until(window, self._window_s, item.amount - 1)))
        over = _budget(item, window, self._window_s)
        other_budget = (
            _budget(other, other_window, self._window_s)
            if other is not None and other_window is not None
            else None
        )
        budgets = (over, other_budget) if which == REQUESTS else (other_budget, over)
        per = "minute" if self._window_s == 60 else f"{self._window_s} s"
        unit = "requests" if which == REQUESTS else "tokens"
        return ApiError(
            429,
            f"Rate limit reached for your organization: {item.amount} {unit} per {per}, "
            f"{over.remaining} left. Retry after {retry_s} s, or ask for a higher limit.",
            type_=which,
            code="rate_limit_exceeded",
            headers={"Retry-After": str(retry_s), **_headers(*budgets)},
        )


def _remaining(item: RateLimitItem, window: _RawWindow) -> int:
    return max(0, item.amount - math.floor(_weighted(window, item.get_expiry())))


def _weighted(window: _RawWindow, expiry: float) -> float:
    previous, previous_ttl, current, _ = window
    return previous * previous_ttl / expiry + current


def _budget(item: RateLimitItem, window: _RawWindow, window_s: int) -> Budget:
    return Budget(item.amount, _remaining(item, window), _seconds_until(window, window_s, 0))


def _after_hit(window: _RawWindow, cost: int, expiry: float) -> _RawWindow:
    """The window once `cost` more is counted: a store without a live current window (Redis
    after a quiet spell) starts one that lives two windows, as the library's script does."""
    previous, previous_ttl, current, current_ttl = window
    if current_ttl <= expiry:
        return (0, 0.0, cost, 2 * expiry)
    return (previous, previous_ttl, current + cost, current_ttl)


def _seconds_until(window: _RawWindow, expiry: float, room: int) -> float:
    """Seconds until the library lets the window hold `room` more than now counted, i.e. until
    floor(weighted count) <= room: the previous window's count weighs by the share of it still
    inside the sliding window; the current window becomes the previous one after
    `current_ttl - expiry` seconds."""
    previous, previous_ttl, current, current_ttl = window
    below = room + 1
    if _weighted(window, expiry) < below:
        return 0.0
    boundary = max(0.0, current_ttl - expiry)
    if current < below:  # the previous window's weight alone is too much: wait for it to fade
        return max(0.0, min(previous_ttl - (below - current) * expiry / previous, boundary))
    return boundary + expiry - below * expiry / current


def duration(seconds: float) -> str:
    """OpenAI's (Go's) way of writing a duration: "20ms", "1.5s", "6m0s", "1h0m0s"."""
    ms = math.ceil(seconds * 1000)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


def _headers(requests: Budget | None, tokens: Budget | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, budget in ((REQUESTS, requests), (TOKENS, tokens)):
        if budget is not None:
            headers[f"x-ratelimit-limit-{name}"] = str(budget.limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(budget.remaining)
            headers[f"x-ratelimit-reset-{name}"] = duration(budget.reset_s)
    return headers
