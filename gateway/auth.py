"""API-key authentication through metering `Authenticate`, with a short-lived cache.

A key's answer is reused for `auth_cache_s` (so a revoked key stops working within that
time) and a rejected key stays rejected for `auth_negative_cache_s` (so a client retrying a
bad key in a loop does not load metering). An org refused for billing is asked about again
after `auth_negative_cache_s` too, so a user who just added a payment method is let in soon;
`forget_org` drops an org's answers at once (a Stripe webhook changed its standing).
Concurrent first requests with the same key share one Authenticate call. Keys are held only as
SHA-256 digests. The 402 a refused org gets is built by `payment_required`, which the app
passes in (it names the routes where billing is fixed).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from gateway.errors import ApiError, from_upstream
from intent_embed.v1 import metering_pb2, metering_pb2_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, as metering says."""

    org_id: str
    key_id: str
    project_ids: frozenset[str]
    billing_ok: bool
    billing_state: str
    billing_message: str
    requests_per_minute: int = 0  # the org's own rate limits; 0: the gateway's default
    tokens_per_minute: int = 0


_Entry = tuple[float, "Caller | ApiError"]


class Authenticator:
    """Resolves bearer keys to callers, caching answers; one per app."""

    def __init__(
        self,
        stub: metering_pb2_grpc.MeteringServiceStub,
        ttl_s: float,
        negative_ttl_s: float,
        timeout_s: float,
        max_keys: int,
        retry_after_s: int,
        on_upstream_error: Callable[[str], None] = lambda code: None,
        clock: Callable[[], float] = time.monotonic,
        *,
        payment_required: Callable[[Caller], ApiError],
    ) -> None:
        self._stub = stub
        self._ttl_s = ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._timeout_s = timeout_s
        self._max_keys = max_keys
        self._retry_after_s = retry_after_s
        self._on_upstream_error = on_upstream_error
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._pending: dict[bytes, asyncio.Future[Caller | ApiError]] = {}
        self._clock = clock  # seconds, monotonic: when cached answers expire
        self._payment_required = payment_required

    async def caller(self, authorization: str | None, *, require_billing: bool = True) -> Caller:
        """The caller for an `Authorization` header value, or raise 401/402/503 (402 only when
        `require_billing`: the routes where a user fixes billing let refused orgs in)."""
        key = _bearer_key(authorization)
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        now = self._clock()
        entry = self._cache.get(digest)
        if entry is not None and entry[0] > now:
            result = entry[1]
        else:
            result = await self._lookup_shared(digest, key)
        if isinstance(result, ApiError):
            raise result
        if require_billing and not result.billing_ok:
            raise self._payment_required(result)
        return result

    def forget_org(self, org_id: str) -> int:
        """Drops the cached answers of `org_id`'s keys; how many there were."""
        stale = [
            digest
            for digest, (_, result) in self._cache.items()
            if isinstance(result, Caller) and result.org_id == org_id
        ]
        for digest in stale:
            del self._cache[digest]
        return len(stale)

    async def _lookup_shared(self, digest: bytes, key: str) -> Caller | ApiError:
        pending = self._pending.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Caller | ApiError] = asyncio.get_running_loop().create_future()
        self._pending[digest] = future
        try:
            result = await self._lookup(key)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            # Nobody may be waiting; retrieving the exception keeps asyncio from logging it.
            future.exception()
            raise
        finally:
            del self._pending[digest]
        future.set_result(result)
        paying = isinstance(result, Caller) and result.billing_ok
        ttl = self._ttl_s if paying else self._negative_ttl_s
        if ttl > 0:
            self._cache[digest] = (self._clock() + ttl, result)
            self._cache.move_to_end(digest)
            while len(self._cache) > self._max_keys:
                self._cache.popitem(last=False)
        return result

    async def _lookup(self, key: str) -> Caller | ApiError:
        """Ask metering. Returns a cacheable 401 as a value; raises what must not be cached."""
        try:
            reply = await self._stub.Authenticate(
                metering_pb2.AuthenticateRequest(api_key=key), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
                return _invalid_key()
            self._on_upstream_error(err.code().name)
            log.warning("auth_upstream_error code=%s", err.code().name)
            raise from_upstream(err, "metering", self._retry_after_s) from None
        return Caller(
            org_id=reply.org_id,
            key_id=reply.key_id,
            project_ids=frozenset(reply.project_ids),
            billing_ok=reply.billing_ok,
            billing_state=reply.billing_state,
            billing_message=reply.billing_message,
            requests_per_minute=reply.requests_per_minute,
            tokens_per_minute=reply.tokens_per_minute,
        )


def _invalid_key() -> ApiError:
    return ApiError(
        401,
        "Incorrect API key provided. Check the key, or create one with "
        "`python -m metering admin` and send it as `Authorization: Bearer <key>`.",
        code="invalid_api_key",
    )


def _bearer_key(authorization: str | None) -> str:
    if not authorization:
        raise ApiError(
            401,
            "You didn't provide an API key. Send it in the Authorization header as "
            "`Authorization: Bearer <key>`.",
            code="missing_api_key",
        )
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise ApiError(
            401,
            "The Authorization header must be `Bearer <key>`.",
            code="invalid_api_key",
        )
    return key
