"""The gateway's wiring: the FastAPI app, its routes, error handlers and lifespan.

`create_app(settings, clients)` builds an app whose lifespan opens one gRPC channel per
upstream (through `clients`) and closes them on shutdown. The embeddings routes themselves are
`gateway.embeddings`, a user's own account routes `gateway.usage`, `gateway.billing` and
`gateway.dashboard`; here are the models, health and readiness routes and the handlers that
give every error OpenAI's body. Prometheus' /metrics is not a route of this app: it is served
on its own port (`gateway.metrics.serve_metrics`), out of the public API's reach.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway import dashboard
from gateway.api_docs import add_security_scheme, embedding_request_doc
from gateway.auth import Authenticator
from gateway.billing import add_billing_routes, payment_required
from gateway.clients import (
    EMBED_SERVICE,
    METERING_SERVICE,
    Upstreams,
    check_serving,
    open_upstreams,
)
from gateway.embeddings import (
    EMBEDDING_ROUTES,
    PREDICT_ROUTE,
    EmbeddingsHandler,
    HotPathMiddleware,
    error_response,
    json_response,
)
from gateway.errors import ApiError, error_body
from gateway.metrics import GatewayMetrics, MetricsMiddleware, serve_metrics
from gateway.model_info import ModelInfo
from gateway.openai_schema import (
    EmbeddingResponseSchema,
    ErrorSchema,
    PredictResponseSchema,
)
from gateway.ratelimit import RateLimiter, open_storage
from gateway.settings import Settings
from gateway.usage import add_usage_route
from intent_embed import tracing
from intent_embed.tracing import configure_tracing

log = logging.getLogger(__name__)

MODELS_ROUTES = ("/v2/models", "/v1/models")

_ERROR_DOCS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorSchema, "description": what}
    for status, what in (
        (400, "invalid request"),
        (401, "missing or bad API key"),
        (402, "billing not active"),
        (404, "unknown model"),
        (413, "body too large"),
        (429, "over the org's rate limit, or the service at capacity (see Retry-After)"),
        (503, "an upstream is unavailable"),
    )
}


def _lifespan(
    settings: Settings,
    clients: Callable[[Settings], Upstreams],
    handler: EmbeddingsHandler,
    metrics: GatewayMetrics,
    clock: Callable[[], float],
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
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
            payment_required=payment_required(settings.billing_page_url),
        )
        handler.limiter = RateLimiter(
            open_storage(
                settings.rate_limit_redis_url,
                settings.rate_limit_key_prefix,
                settings.rate_limit_timeout_s,
            ),
            default_rpm=settings.rate_limit_rpm,
            default_tpm=settings.rate_limit_tpm,
            window_s=settings.rate_limit_window_s,
            timeout_s=settings.rate_limit_timeout_s,
            on_unavailable=metrics.rate_limit_unavailable.inc,
            on_limited=lambda limit: metrics.rate_limited.labels(limit).inc(),
        )
        app.state.upstreams = upstreams
        app.state.auth = handler.auth
        app.state.limiter = handler.limiter
        await handler.limiter.warm_up()
        log.info("gateway_started model=%s", settings.model_name)
        try:
            yield
        finally:
            handler.upstreams = None
            handler.auth = None
            handler.limiter = None
            await upstreams.close()
            log.info("gateway_stopped")

    return lifespan


def _add_embedding_routes(app: FastAPI, handler: EmbeddingsHandler) -> None:
    request_doc = embedding_request_doc([handler.settings.model_name], handler.settings.max_inputs)

    async def embeddings(request: Request) -> Response:
        return await handler(request, with_embeddings_field=False)

    async def predict(request: Request) -> Response:
        return await handler(request, with_embeddings_field=True)

    for path in EMBEDDING_ROUTES:
        app.add_api_route(
            path,
            embeddings,
            methods=["POST"],
            openapi_extra=request_doc,
            responses={200: {"model": EmbeddingResponseSchema}, **_ERROR_DOCS},
            summary="Create embeddings",
            operation_id=f"embeddings_{path.split('/')[1]}",
        )
    app.add_api_route(
        PREDICT_ROUTE,
        predict,
        methods=["POST"],
        openapi_extra=request_doc,
        responses={200: {"model": PredictResponseSchema}, **_ERROR_DOCS},
        summary="Create embeddings, also as a plain `embeddings` list of vectors",
    )


def _add_model_routes(app: FastAPI, settings: Settings, handler: EmbeddingsHandler) -> None:
    model_info = ModelInfo(settings.model_name, settings.auth_cache_s, settings.ready_timeout_s)

    def embed_stub() -> Any:
        return handler.upstreams.embed if handler.upstreams is not None else None

    async def list_models() -> Response:
        card = await model_info.card(embed_stub())
        return json_response(orjson.dumps({"object": "list", "data": [card]}))

    # The served name as an enum: clients and fuzzers learn which model exists.
    served = Path(json_schema_extra={"enum": [settings.model_name]})

    async def get_model(model: str = served) -> Response:
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
        app.add_api_route(
            path + "/{model}",
            get_model,
            methods=["GET"],
            summary="Get a model",
            responses={404: _ERROR_DOCS[404]},
        )


def _add_operator_routes(app: FastAPI, settings: Settings, handler: EmbeddingsHandler) -> None:
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


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        # Raised by the routes outside the hot path (usage, billing): the same OpenAI body.
        return error_response(exc)

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


def create_app(
    settings: Settings,
    clients: Callable[[Settings], Upstreams] = open_upstreams,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The gateway app; `clients` opens the upstream channels when the app starts, `clock`
    (monotonic seconds) times the auth cache."""
    metrics = GatewayMetrics()
    handler = EmbeddingsHandler(settings, metrics)
    app = FastAPI(
        title="intent-embed",
        version="1.0",
        description="OpenAI-compatible intent embeddings.",
        lifespan=_lifespan(settings, clients, handler, metrics, clock),
    )
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.embeddings = handler
    _add_embedding_routes(app, handler)
    _add_model_routes(app, settings, handler)
    add_usage_route(app)
    add_billing_routes(app)
    dashboard.add_dashboard_routes(app)
    _add_operator_routes(app, settings, handler)
    _add_error_handlers(app)
    add_security_scheme(app)
    tracing.instrument_app(app)
    # add_middleware puts each new one outermost: metrics must see the hot path's answers too.
    app.add_middleware(HotPathMiddleware, handler=handler)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=app.router.routes)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn worker processes, which read their settings from the environment;
    each serves its own metrics on the shared metrics port."""
    settings = Settings()
    configure_tracing("gateway")
    app = create_app(settings)
    if settings.metrics_port:
        serve_metrics(app.state.metrics.registry, settings.host, settings.metrics_port,
                      shared=True)  # fmt: skip
    return app
