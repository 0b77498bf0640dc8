"""The gateway's wiring: the FastAPI app, its routes, error handlers and lifespan.

`create_app(settings, clients)` builds an app whose lifespan opens one gRPC channel per
upstream (through `clients`) and closes them on shutdown. The embeddings handler reads the
raw body (size-limited), authenticates, validates, calls `Embed` with `packed=True` and
writes orjson bytes; no pydantic model sits on the response path.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth import Authenticator
from gateway.clients import (
    EMBED_SERVICE,
    METERING_SERVICE,
    Upstreams,
    check_serving,
    open_upstreams,
)
from gateway.errors import ApiError, error_body, from_upstream
from gateway.metrics import GatewayMetrics, MetricsMiddleware
from gateway.model_info import ModelInfo
from gateway.openai_schema import (
    EmbeddingRequest,
    EmbeddingRequestSchema,
    EmbeddingResponseSchema,
    ErrorSchema,
    PredictResponseSchema,
    encode_response,
    parse_request,
    vectors_matrix,
)
from gateway.settings import Settings
from intent_embed.v1 import embed_pb2

log = logging.getLogger(__name__)

JSON = "application/json"
EMBEDDING_ROUTES = ("/v2/embeddings", "/v1/embeddings")
PREDICT_ROUTE = "/v2/predict"
MODELS_ROUTES = ("/v2/models", "/v1/models")

_REQUEST_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {JSON: {"schema": EmbeddingRequestSchema.model_json_schema()}},
    }
}
_ERROR_DOCS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorSchema, "description": what}
    for status, what in (
        (400, "invalid request"),
        (401, "missing or bad API key"),
        (402, "billing not active"),
        (404, "unknown model"),
        (413, "body too large"),
        (429, "embedding service at capacity (see Retry-After)"),
        (503, "an upstream is unavailable"),
    )
}


def json_response(
    content: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(content=content, status_code=status, media_type=JSON, headers=headers)


def error_response(err: ApiError, request_id: str | None = None) -> Response:
    headers = dict(err.headers)
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
            return error_response(_overloaded(self.settings.retry_after_s))
        self.inflight += 1
        try:
            return await self._answer(request, with_embeddings_field)
        finally:
            self.inflight -= 1

    async def _answer(self, request: Request, with_embeddings_field: bool) -> Response:
        request_id = str(uuid.uuid4())
        start = time.monotonic()
        org = "-"
        try:
            if self.upstreams is None or self.auth is None:
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
            raw = await self.read_body(request)
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ApiError(
                    400,
                    f"The body is not valid JSON ({exc.msg}); send a JSON object such as "
                    f'{{"input": "text", "model": "{self.settings.model_name}"}}.',
                    code="invalid_json",
                ) from None
            req = parse_request(body, self.settings.model_name, self.settings.max_inputs)
            if req.project_id and req.project_id not in caller.project_ids:
                raise ApiError(
                    400,
                    f"Project {req.project_id[:100]!r} is not a project of your organization.",
                    param="project_id",
                    code="project_not_found",
                )
            reply = await self.embed(req, caller.org_id, request_id)
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
            return error_response(err, request_id)
        self.metrics.inputs.inc(req.count)
        self.metrics.tokens.inc(reply.usage.prompt_tokens)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "embed_ok request_id=%s org=%s inputs=%d tokens=%d ms=%.1f",
                request_id, caller.org_id, req.count, reply.usage.prompt_tokens,
                1000 * (time.monotonic() - start),
            )  # fmt: skip
        return json_response(content, headers={"x-request-id": request_id})

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


def _overloaded(retry_after_s: int) -> ApiError:
    return ApiError(
        429,
        "The gateway is at capacity; retry after the Retry-After delay.",
        type_="rate_limit_error",
        code="server_overloaded",
        headers={"Retry-After": str(retry_after_s)},
    )


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is larger than {limit} bytes; send fewer or shorter inputs per request.",
        code="request_too_large",
    )


def create_app(
    settings: Settings,
    clients: Callable[[Settings], Upstreams] = open_upstreams,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The gateway app; `clients` opens the upstream channels when the app starts, `clock`
    (monotonic seconds) times the auth cache."""
    metrics = GatewayMetrics()
    handler = EmbeddingsHandler(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upstreams = clients(settings)
        handler.upstreams = upstreams
        handler.auth = Authenticator(
            upstreams.metering,
            ttl_s=settings.auth_cache_s,
            negative_ttl_s=settings.auth_negative_cache_s,
            timeout_s=settings.metering_timeout_s,
            max_keys=settings.auth_cache_max_keys,
            retry_after_s=settings.retry_after_s,
            on_upstream_error=lambda code: metrics.upstream_errors.labels("metering", code).inc(),
            clock=clock,
        )
        app.state.upstreams = upstreams
        app.state.auth = handler.auth
        log.info("gateway_started model=%s", settings.model_name)
        try:
            yield
        finally:
            handler.upstreams = None
            handler.auth = None
            await upstreams.close()
            log.info("gateway_stopped")

    app = FastAPI(
        title="intent-embed",
        version="1.0",
        description="OpenAI-compatible intent embeddings.",
        lifespan=lifespan,
    )
    app.state.metrics = metrics

    async def embeddings(request: Request) -> Response:
        return await handler(request, with_embeddings_field=False)

    async def predict(request: Request) -> Response:
        return await handler(request, with_embeddings_field=True)

    for path in EMBEDDING_ROUTES:
        app.add_api_route(
            path,
            embeddings,
            methods=["POST"],
            openapi_extra=_REQUEST_BODY_DOC,
            responses={200: {"model": EmbeddingResponseSchema}, **_ERROR_DOCS},
            summary="Create embeddings",
            operation_id=f"embeddings_{path.split('/')[1]}",
        )
    app.add_api_route(
        PREDICT_ROUTE,
        predict,
        methods=["POST"],
        openapi_extra=_REQUEST_BODY_DOC,
        responses={200: {"model": PredictResponseSchema}, **_ERROR_DOCS},
        summary="Create embeddings, also as a plain `embeddings` list of vectors",
    )

    model_info = ModelInfo(settings.model_name, settings.auth_cache_s, settings.ready_timeout_s)

    def embed_stub() -> Any:
        return handler.upstreams.embed if handler.upstreams is not None else None

    async def list_models() -> Response:
        card = await model_info.card(embed_stub())
        return json_response(orjson.dumps({"object": "list", "data": [card]}))

    async def get_model(model: str) -> Response:
        if model != settings.model_name:
            return error_response(
                ApiError(
                    404,
                    f"The model {model[:100]!r} does not exist; this API serves "
                    f"{settings.model_name!r}.",
                    param="model",
                    code="model_not_found",
                )
            )
        return json_response(orjson.dumps(await model_info.card(embed_stub())))

    for path in MODELS_ROUTES:
        app.add_api_route(path, list_models, methods=["GET"], summary="List models")
        app.add_api_route(path + "/{model}", get_model, methods=["GET"], summary="Get a model")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return json_response(b'{"status":"ok"}')

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        upstreams = handler.upstreams
        if upstreams is None:
            return json_response(b'{"status":"starting"}', 503)
        embed, metering = await asyncio.gather(
            check_serving(upstreams.embed_health, EMBED_SERVICE, settings.ready_timeout_s),
            check_serving(upstreams.metering_health, METERING_SERVICE, settings.ready_timeout_s),
        )
        ready = embed == "SERVING" and metering == "SERVING"
        body = {"status": "ready" if ready else "not_ready", "embed": embed, "metering": metering}
        return json_response(orjson.dumps(body), 200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {404: "unknown_url", 405: "method_not_allowed"}
        message = (
            f"Unknown request URL: {request.method} {request.url.path[:200]}."
            if exc.status_code in codes
            else str(exc.detail)
        )
        return error_response(
            ApiError(exc.status_code, message, code=codes.get(exc.status_code)).with_headers(
                exc.headers
            )
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        message = f"{'.'.join(loc) or 'request'}: {first.get('msg', 'invalid request')}"
        return error_response(ApiError(400, message, param=".".join(loc) or None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected_error path=%s", request.url.path)
        return json_response(
            error_body(
                "The server had an error processing your request.", "server_error", None, None
            ),
            500,
        )

    routes = [*EMBEDDING_ROUTES, PREDICT_ROUTE, *MODELS_ROUTES, "/healthz", "/readyz", "/metrics"]
    # add_middleware puts each new one outermost: metrics must see the hot path's answers too.
    app.add_middleware(HotPathMiddleware, handler=handler)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=routes)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn worker processes, which read their settings from the environment."""
    return create_app(Settings())
