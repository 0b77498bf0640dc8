"""Wiring of the embedding service: the EmbedService servicer and the server around it, on the
shared scaffold (:mod:`intent_embed.grpc_server`: health, reflection, graceful stop).

`EmbedServer(model, usage_sink, settings)` takes its dependencies as arguments so tests run it
in-process on 127.0.0.1:0 with a tiny model and a fake metering. Health stays NOT_SERVING
until `start()` has run a warm-up batch through the batcher; `stop()` drains.
"""

from __future__ import annotations

import logging
import time
import uuid

import grpc
import numpy as np

from embed_service.batcher import Batcher, JobTimes
from embed_service.errors import EmbedError, InvalidInput, Unavailable
from embed_service.metrics import EmbedMetrics
from embed_service.model import EmbeddingModel
from embed_service.settings import Settings
from embed_service.usage import UsageRecord, UsageSink, now_utc
from embed_service.validation import token_ids
from intent_embed import tracing
from intent_embed.grpc_server import QUIET_S, GrpcServer, abort
from intent_embed.v1 import embed_pb2, embed_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = embed_pb2.DESCRIPTOR.services_by_name["EmbedService"].full_name
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class EmbedServicer(embed_pb2_grpc.EmbedServiceServicer):
    def __init__(
        self,
        model: EmbeddingModel,
        batcher: Batcher,
        usage_sink: UsageSink,
        settings: Settings,
        metrics: EmbedMetrics,
    ) -> None:
        self.model = model
        self.batcher = batcher
        self.usage_sink = usage_sink
        self.settings = settings
        self.metrics = metrics
        self.accepting = False

    async def Embed(
        self, request: embed_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embed_pb2.EmbedResponse:
        # Answers by code and their latency: GrpcServer's CallMetrics, as for every service.
        self.metrics.inflight.inc()
        try:
            return await self._embed(request)
        except EmbedError as err:
            await abort(context, err.code, err.message, field=err.field, reason=err.reason)
        except Exception:
            log.exception("embed_failed request_id=%s", request.request_id)
            await abort(context, grpc.StatusCode.INTERNAL, "internal error; retry later")
        finally:
            self.metrics.inflight.dec()

    async def Info(
        self, request: embed_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> embed_pb2.InfoResponse:
        return embed_pb2.InfoResponse(
            model=self.settings.model_name,
            dimensions=self.model.dimensions,
            max_input_tokens=self.model.max_input_tokens,
            max_batch_tokens=self.settings.max_batch_tokens,
            max_inputs=self.settings.max_inputs,
            device=self.model.device.type,
            dtype=self.model.dtype_name,
            pooling=self.model.pooling.mode,
            normalize=self.model.pooling.normalize,
            max_request_tokens=self.settings.max_request_tokens,
            revision=self.model.revision,
            backend=self.model.backend,
        )

    async def _embed(self, request: embed_pb2.EmbedRequest) -> embed_pb2.EmbedResponse:
        if not self.accepting:
            raise Unavailable("the service is not ready or is shutting down; retry shortly")
        ids = await token_ids(request, self.model, self.settings)
        if self.usage_sink.requires_org and not request.org_id:
            raise InvalidInput(
                "org_id is required: set it to the org the usage is billed to", field="org_id"
            )
        request_id = request.request_id or str(uuid.uuid4())
        vectors, times = await self.batcher.embed_timed(ids)
        if request.HasField("dimensions") and request.dimensions < vectors.shape[1]:
            vectors = vectors[:, : request.dimensions]
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        tokens = [len(row) for row in ids]
        total = sum(tokens)
        if tracing.enabled():
            self._trace_batch(times, len(ids), total)
        # No answer without a durable usage record: record first, answer after.
        with tracing.span("usage.record", **{"usage.tokens": total}):
            await self.usage_sink.record(
                UsageRecord(
                    request_id=request_id,
                    org_id=request.org_id,
                    project_id=request.project_id,
                    model=self.settings.model_name,
                    tokens=total,
                    inputs=len(ids),
                    at=now_utc(),
                )
            )
        self.metrics.inputs.inc(len(ids))
        self.metrics.tokens.inc(total)
        return _response(vectors, tokens, total, self.settings.model_name, request.packed)


    def _trace_batch(self, times: JobTimes, inputs: int, tokens: int) -> None:
        """The request's wait and forward passes, as spans under its call's span."""
        batch = tracing.past_span(
            "embed.batch", times.enqueued_ns, times.last_forward_end_ns,
            **{"embed.inputs": inputs, "embed.tokens": tokens, "embed.backend": self.model.backend,
               "embed.forward_passes": times.batches, "embed.batch_size": times.largest_batch},
        )  # fmt: skip
        tracing.past_span("embed.queue_wait", times.enqueued_ns, times.first_forward_ns, batch)
        tracing.past_span(
            "embed.forward", times.first_forward_ns, times.last_forward_end_ns, batch
        )


def _response(
    vectors: np.ndarray, tokens: list[int], total: int, model: str, packed: bool
) -> embed_pb2.EmbedResponse:
    response = embed_pb2.EmbedResponse(
        usage=embed_pb2.Usage(prompt_tokens=total, total_tokens=total), model=model
    )
    # Appending in place costs less than building each Embedding and copying the list in
    # (docs/performance.md).
    add = response.embeddings.add
    if packed:
        for row, n in zip(np.ascontiguousarray(vectors, dtype="<f4"), tokens, strict=True):
            add(packed=row.tobytes(), tokens=n)
    else:
        for values, n in zip(vectors.tolist(), tokens, strict=True):
            add(values=values, tokens=n)
    return response


class EmbedServer:
    """The grpc.aio server with its servicer, batcher and health; start, warm up, stop."""

    def __init__(
        self,
        model: EmbeddingModel,
        usage_sink: UsageSink,
        settings: Settings,
        metrics: EmbedMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or EmbedMetrics()
        self.usage_sink = usage_sink
        self.batcher = Batcher(
            model,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_size=settings.max_batch_size,
            max_queue_inputs=settings.max_queue_inputs,
            metrics=self.metrics,
        )
        self.servicer = EmbedServicer(model, self.batcher, usage_sink, settings, self.metrics)
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
        ]
        if settings.max_connection_age_ms > 0:
            options += [
                ("grpc.max_connection_age_ms", settings.max_connection_age_ms),
                ("grpc.max_connection_age_grace_ms", int(settings.shutdown_grace_s * 1000)),
            ]
        self.grpc_server = GrpcServer(
            SERVICE_NAME,
            lambda server: embed_pb2_grpc.add_EmbedServiceServicer_to_server(self.servicer, server),
            f"{settings.host}:{settings.port}",
            options,
            registry=self.metrics.registry,
        )
        self.port = self.grpc_server.port

    async def start(self) -> None:
        """Listens at once (NOT_SERVING), warms the model up, then turns SERVING."""
        await self.grpc_server.start(serving=False)
        self.batcher.start()
        started = time.monotonic()
        await self.batcher.embed(self.servicer.model.tokenize(["warm up the model"]) * 2)
        self.servicer.accepting = True
        await self.grpc_server.set_serving()
        log.info("serving port=%d warmup_s=%.2f", self.port, time.monotonic() - started)

    async def stop(self, grace: float | None = None, *, quiet_s: float = QUIET_S) -> None:
        """Health NOT_SERVING, refuse new calls, let in-flight ones finish within `grace`.

        The port stays open until the in-flight calls are done: a call that reaches a draining
        pod is answered UNAVAILABLE by the shared drain, which the gateway's retry policy sends
        on."""
        grace = self.settings.shutdown_grace_s if grace is None else grace
        started = time.monotonic()
        self.servicer.accepting = False
        await self.grpc_server.stop(grace, quiet_s=quiet_s)
        await self.batcher.close()
        await self.usage_sink.close()
        log.info("stopped seconds=%.2f", time.monotonic() - started)
