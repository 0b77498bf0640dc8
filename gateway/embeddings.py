"""The embeddings and predict routes: read the raw body (size-limited), authenticate, hold the
org to its rate limits, validate, call `Embed` with `packed=True` and write orjson bytes; no
pydantic model sits on the response path. `HotPathMiddleware` serves these routes straight
from the ASGI scope.
"""

from __future__ import annotations

import logging
import time
import uuid

import grpc
from fastapi import Request
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth import Authenticator
from gateway.clients import Upstreams
from gateway.errors import ApiError, at_capacity, from_upstream
from gateway.metrics import GatewayMetrics
from gateway.openai_schema import EmbeddingRequest, encode_response, parse_request, vectors_matrix
from gateway.ratelimit import Admission, RateLimiter
from gateway.settings import Settings
from intent_embed.v1 import embed_pb2

log = logging.getLogger(__name__)

JSON = "application/json"
EMBEDDING_ROUTES = ("/v2/embeddings", "/v1/embeddings")
PREDICT_ROUTE = "/v2/predict"


def json_response(
    content: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(content=content, status_code=status, media_type=JSON, headers=headers)


def error_response(
    err: ApiError, request_id: str | None = None, extra_headers: dict[str, str] | None = None
) -> Response:
    headers = {**(extra_headers or {}), **err.headers}
    if request_id:
        headers["x-request-id"] = request_id
    return json_response(err.body(), err.status, headers)


class EmbeddingsHandler:
    """Answers the embeddings and predict routes for one app."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.upstreams: Upstreams | None = None
        self.auth: Authenticator | None = None
        self.limiter: RateLimiter | None = None
        self.inflight = 0

    async def read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
        except ClientDisconnect:
            raise ApiError(400, "The client closed the connection mid-body.") from None
        return b"".join(chunks)

    async def __call__(self, request: Request, with_embeddings_field: bool) -> Response:
        # Past the limit, shed load at once: a queue of waiting requests would only turn
        # into client timeouts and memory held for bodies nobody waits for any more.
        if self.inflight >= self.settings.max_inflight:
            return error_response(at_capacity("The gateway", self.settings.retry_after_s))
        self.inflight += 1
        try:
            return await self._answer(request, with_embeddings_field)
        finally:
            self.inflight -= 1

    async def _answer(self, request: Request, with_embeddings_field: bool) -> Response:
        request_id = str(uuid.uuid4())
        start = time.monotonic()
        org = "-"
        admission: Admission | None = None
        try:
            if self.upstreams is None or self.auth is None or self.limiter is None:
                raise ApiError(503, "The gateway is starting.", type_="service_unavailable")
            length = request.headers.get("content-length")
            if (
                length is not None
                and length.isdigit()
                and int(length) > self.settings.max_body_bytes
            ):
                raise _too_large(self.settings.max_body_bytes)
            caller = await self.auth.caller(request.headers.get("authorization"))
            org = caller.org_id
            # Before the body is read: a refused request costs as little as possible.
            admission = await self.limiter.admit(
                org, caller.requests_per_minute, caller.tokens_per_minute
            )
            raw = await self.read_body(request)
            req = parse_request(raw, self.settings.model_name, self.settings.max_inputs)
            if req.project_id and req.project_id not in caller.project_ids:
                raise ApiError(
                    400,
                    f"Project {req.project_id[:100]!r} is not a project of your organization.",
                    param="project_id",
                    code="project_not_found",
                )
            reply = await self.embed(req, caller.org_id, request_id)
            admission = await self.limiter.charge(admission, reply.usage.prompt_tokens)
            content = encode_response(
                vectors_matrix(reply.embeddings),
                req.encoding_format,
                self.settings.model_name,
                reply.usage.prompt_tokens,
                reply.usage.total_tokens,
                with_embeddings_field,
            )
        except ApiError as err:
            level = logging.WARNING if err.status >= 500 else logging.INFO
            log.log(
                level,
                "embed_failed request_id=%s org=%s status=%d code=%s ms=%.1f",
                request_id, org, err.status, err.code, 1000 * (time.monotonic() - start),
            )  # fmt: skip
            return error_response(err, request_id, admission.headers() if admission else None)
        self.metrics.inputs.inc(req.count)
        self.metrics.tokens.inc(reply.usage.prompt_tokens)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "embed_ok request_id=%s org=%s inputs=%d tokens=%d ms=%.1f",
                request_id, caller.org_id, req.count, reply.usage.prompt_tokens,
                1000 * (time.monotonic() - start),
            )  # fmt: skip
        return json_response(content, headers={"x-request-id": request_id, **admission.headers()})

    async def embed(
        self, req: EmbeddingRequest, org_id: str, request_id: str
    ) -> embed_pb2.EmbedResponse:
        """Call Embed; the channel's retryPolicy retries UNAVAILABLE once, same request id."""
        assert self.upstreams is not None
        message = embed_pb2.EmbedRequest(
            truncate=req.truncate,
            org_id=org_id,
            project_id=req.project_id,
            request_id=request_id,
            packed=True,
        )
        if req.texts is not None:
            message.inputs.extend(req.texts)
        else:
            message.token_inputs.extend(embed_pb2.TokenIds(ids=ids) for ids in req.token_ids or [])
        if req.dimensions is not None:
            message.dimensions = req.dimensions
        try:
            reply: embed_pb2.EmbedResponse = await self.upstreams.embed.Embed(
                message, timeout=self.settings.embed_timeout_s
            )
        except grpc.aio.AioRpcError as err:
            self.metrics.upstream_errors.labels("embed", err.code().name).inc()
            raise from_upstream(err, "embedding", self.settings.retry_after_s) from None
        return reply


class HotPathMiddleware:
    """Serves the embedding routes straight from the ASGI scope.

    The routes stay registered on the FastAPI app (for the OpenAPI schema), but requests to
    them skip routing, FastAPI's exception, body-limit and exit-stack layers and its endpoint
    runner: profiled on this 2-core machine, about a tenth of the gateway's CPU per request,
    CPU the model would otherwise use. Unexpected exceptions still reach the app's 500 handler.
    """

    def __init__(self, app: ASGIApp, handler: EmbeddingsHandler) -> None:
        self.app = app
        self.handler = handler
        self.routes = {path: False for path in EMBEDDING_ROUTES} | {PREDICT_ROUTE: True}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            with_embeddings_field = self.routes.get(scope["path"])
            if with_embeddings_field is not None:
                response = await self.handler(Request(scope, receive), with_embeddings_field)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is larger than {limit} bytes; send fewer or shorter inputs per request.",
        code="request_too_large",
    )
