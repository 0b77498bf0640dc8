"""What the routes of a user's own account (usage, billing setup, Stripe's webhook) share: the
running app's metering stub and authenticator, and a metering call whose failures become the
HTTP answers of :func:`gateway.errors.from_upstream`.

These routes are not the embeddings hot path: they go through FastAPI's routing and may use
pydantic models, and they never require the org's billing to be in good standing (a user with
a 402 must still see its usage and fix its payment method).
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from fastapi import Request

from gateway.auth import Authenticator, Caller
from gateway.errors import ApiError, from_upstream
from gateway.settings import Settings
from intent_embed.v1 import metering_pb2_grpc

log = logging.getLogger(__name__)


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def authenticator(request: Request) -> Authenticator:
    auth: Authenticator | None = getattr(request.app.state, "auth", None)
    if auth is None:
        raise ApiError(503, "The gateway is starting.", type_="service_unavailable")
    return auth


async def account_caller(request: Request) -> Caller:
    """The caller of an account route (401 for a bad key, never 402)."""
    auth = authenticator(request)
    return await auth.caller(request.headers.get("authorization"), require_billing=False)


async def call_metering(request: Request, method: str, message: Any, timeout_s: float) -> Any:
    """`MeteringService.<method>(message)`; an upstream failure raises its HTTP answer."""
    upstreams = getattr(request.app.state, "upstreams", None)
    if upstreams is None:
        raise ApiError(503, "The gateway is starting.", type_="service_unavailable")
    stub: metering_pb2_grpc.MeteringServiceStub = upstreams.metering
    try:
        return await getattr(stub, method)(message, timeout=timeout_s)
    except grpc.aio.AioRpcError as err:
        code = err.code()
        if code not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
            request.app.state.metrics.upstream_errors.labels("metering", code.name).inc()
        log.info("metering_call_failed method=%s code=%s", method, code.name)
        settings = settings_of(request)
        raise from_upstream(err, "metering", settings.retry_after_s) from None
