"""The EmbedService over a real gRPC channel: answers, options, usage, health and batching under
load, cancellation and a full queue."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embed_service.metrics import EmbedMetrics
from embed_service.model import EmbeddingModel
from embed_service.server import SERVICE_NAME
from embed_service.usage import MeteringUsageSink
from intent_embed.rich_status import DRAINING, details_of
from intent_embed.v1 import embed_pb2
from tests.embed_service.harness import Gate, ServeFactory
from tests.support.clinc150 import clinc_test_texts
from tests.support.fake_metering import FakeMetering
from tests.support.metrics import registry_value
from tests.support.waiting import eventually, eventually_equal

TEXTS = ["how do i reset my pin", "my card was charged twice", "what is my balance"]


def _vectors(reply: embed_pb2.EmbedResponse) -> np.ndarray:
    return np.array([list(e.values) for e in reply.embeddings], dtype=np.float32)


async def test_answer_has_vectors_tokens_usage_and_model(
    serve: ServeFactory, tiny_model: EmbeddingModel
) -> None:
    async with serve(tiny_model, model_name="intent-embed") as running:
        reply = await running.stub.Embed(embed_pb2.EmbedRequest(inputs=TEXTS), timeout=10)
    expected_tokens = [len(ids) for ids in tiny_model.tokenize(TEXTS)]
    assert [e.tokens for e in reply.embeddings] == expected_tokens
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == sum(expected_tokens)
    assert reply.model == "intent-embed"
    vectors = _vectors(reply)
    np.testing.assert_allclose(vectors, tiny_model.encode(TEXTS), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


async def test_packed_dimensions_truncate_and_token_inputs(
    serve: ServeFactory, tiny_model: EmbeddingModel
) -> None:
    async with serve(tiny_model) as running:
        plain = _vectors(await running.stub.Embed(embed_pb2.EmbedRequest(inputs=TEXTS)))
        packed = await running.stub.Embed(embed_pb2.EmbedRequest(inputs=TEXTS, packed=True))
        short = await running.stub.Embed(embed_pb2.EmbedRequest(inputs=TEXTS, dimensions=8))
        ids = tiny_model.tokenize(TEXTS)
        by_ids = await running.stub.Embed(
            embed_pb2.EmbedRequest(token_inputs=[embed_pb2.TokenIds(ids=i) for i in ids])
        )
        long_text = "word " * 100
        cut = await running.stub.Embed(embed_pb2.EmbedRequest(inputs=[long_text], truncate=True))
    unpacked = np.stack([np.frombuffer(e.packed, dtype="<f4") for e in packed.embeddings])
    assert all(len(e.values) == 0 for e in packed.embeddings)
    np.testing.assert_array_equal(unpacked, plain)
    small = _vectors(short)
    assert small.shape == (3, 8)
    expected = plain[:, :8] / np.linalg.norm(plain[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(small, expected, atol=1e-6)
    np.testing.assert_allclose(_vectors(by_ids), plain, atol=1e-6)
    assert by_ids.usage.prompt_tokens == sum(len(i) for i in ids)
    assert cut.embeddings[0].tokens == tiny_model.max_input_tokens
    assert cut.usage.prompt_tokens == tiny_model.max_input_tokens


async def test_info_describes_model_and_limits(
    serve: ServeFactory, tiny_model: EmbeddingModel
) -> None:
    async with serve(tiny_model, max_inputs=100, max_batch_tokens=4096) as running:
        info = await running.stub.Info(embed_pb2.InfoRequest())
    assert (info.dimensions, info.max_input_tokens, info.max_inputs) == (32, 62, 100)
    assert (info.max_batch_tokens, info.dtype, info.pooling, info.normalize) == (
        4096,
        "float32",
        "mean",
        True,
    )
    assert info.revision == tiny_model.revision and len(info.revision) == 12
    assert info.backend == tiny_model.backend == "torch-unpadded"


async def test_large_request_split_across_batches_keeps_order(
    serve: ServeFactory, tiny_model: EmbeddingModel
) -> None:
    rng = random.Random(7)
    texts = [" ".join(["word"] * rng.randint(1, 40)) + f" {i}" for i in range(300)]
    async with serve(tiny_model, max_batch_size=16, max_batch_tokens=256) as running:
        reply = await running.stub.Embed(embed_pb2.EmbedRequest(inputs=texts), timeout=30)
        batches = registry_value(running.server.metrics.registry, "embed_batch_size_count")
        assert batches >= 300 // 16
    np.testing.assert_allclose(_vectors(reply), tiny_model.encode(texts), atol=1e-5)


async def test_health_not_serving_until_warm_up_then_serving(
    serve: ServeFactory, tiny_model: EmbeddingModel, gate: Callable[[EmbeddingModel], Gate]
) -> None:
    g = gate(tiny_model)
    async with serve(tiny_model, start=False) as running:
        starting = asyncio.create_task(running.server.start())
        await g.wait_started()  # warm-up batch is in the model now
        health = health_pb2_grpc.HealthStub(running.channel)
        for name in ("", SERVICE_NAME):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.stub.Embed(embed_pb2.EmbedRequest(inputs=["hi"]), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        g.open()
        await starting
        for name in ("", SERVICE_NAME):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_stop_keeps_listening_until_in_flight_calls_finish_and_refuses_new_ones(
    serve: ServeFactory, tiny_model: EmbeddingModel, gate: Callable[[EmbeddingModel], Gate]
) -> None:
    async with serve(tiny_model) as running:
        g = gate(tiny_model)
        in_flight = asyncio.ensure_future(
            running.stub.Embed(embed_pb2.EmbedRequest(inputs=["a"]), timeout=30)
        )
        await g.wait_started()
        stopping = asyncio.create_task(running.server.stop(grace=30))
        health = health_pb2_grpc.HealthStub(running.channel)


        async def status() -> float:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            return float(reply.status)

        await eventually_equal(status, health_pb2.HealthCheckResponse.NOT_SERVING, what="health")
        # The transport is still open: the refusal is the service's own, which clients retry.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.stub.Embed(embed_pb2.EmbedRequest(inputs=["late"]), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in (caught.value.details() or "")
        assert details_of(caught.value).reason == DRAINING
        assert not stopping.done()
        g.open()
        assert len((await in_flight).embeddings) == 1
        await asyncio.wait_for(stopping, timeout=10)


async def test_full_queue_is_resource_exhausted_and_service_recovers(
    serve: ServeFactory, tiny_model: EmbeddingModel, gate: Callable[[EmbeddingModel], Gate]
) -> None:
    async with serve(tiny_model, max_queue_inputs=4, max_batch_size=2) as running:
        g = gate(tiny_model)
        first = asyncio.ensure_future(running.stub.Embed(embed_pb2.EmbedRequest(inputs=["a", "b"])))
        await g.wait_started()  # the first request occupies the model
        second = asyncio.ensure_future(
            running.stub.Embed(embed_pb2.EmbedRequest(inputs=["c", "d", "e"]))
        )
        await eventually(lambda: running.server.batcher.queued_inputs == 3)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.stub.Embed(embed_pb2.EmbedRequest(inputs=["f", "g"]), timeout=5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        g.open()
        assert len((await first).embeddings) == 2
        assert len((await second).embeddings) == 3
        again = await running.stub.Embed(embed_pb2.EmbedRequest(inputs=["f", "g"]))
        assert len(again.embeddings) == 2


async def test_cancelled_and_expired_calls_drop_their_work_and_batcher_keeps_going(
    serve: ServeFactory, tiny_model: EmbeddingModel, gate: Callable[[EmbeddingModel], Gate]
) -> None:
    async with serve(tiny_model, max_batch_size=1) as running:
        g = gate(tiny_model)
        first = asyncio.ensure_future(running.stub.Embed(embed_pb2.EmbedRequest(inputs=["a"])))
        await g.wait_started()
        expiring = running.stub.Embed(embed_pb2.EmbedRequest(inputs=["b"] * 5), timeout=0.3)
        cancelled = running.stub.Embed(embed_pb2.EmbedRequest(inputs=["c"] * 7))
        await eventually(lambda: running.server.batcher.queued_inputs == 12)
        cancelled.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await expiring
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The server notices both within moments and drops their queued inputs.
        await eventually(lambda: running.server.batcher.queued_inputs == 0, within_s=5)
        g.open()
        assert len((await first).embeddings) == 1
        reply = await running.stub.Embed(embed_pb2.EmbedRequest(inputs=TEXTS), timeout=10)
        # Only the first and the last request reached the model; the dropped 12 inputs did not.
        assert sum(g.batches) == 1 + len(TEXTS)
        np.testing.assert_allclose(_vectors(reply), tiny_model.encode(TEXTS), atol=1e-5)


async def test_usage_recorded_before_answer(
    serve: ServeFactory, tiny_model: EmbeddingModel, fake_metering: tuple[FakeMetering, str]
) -> None:
    metering, address = fake_metering
    metering.hold = asyncio.Event()
    sink = MeteringUsageSink(address, timeout_s=5)
    async with serve(tiny_model, sink=sink, model_name="intent-embed") as running:
        call = asyncio.ensure_future(
            running.stub.Embed(
                embed_pb2.EmbedRequest(
                    inputs=TEXTS, org_id="org_1", project_id="proj_9", request_id="req-42"
                ),
                timeout=10,
            )
        )
        await asyncio.wait_for(metering.received.wait(), 10)
        await asyncio.sleep(0.1)
        assert not call.done(), "answered before metering acknowledged the usage"
        metering.hold.set()
        reply = await call
        # An empty request id gets a generated one.
        await running.stub.Embed(embed_pb2.EmbedRequest(inputs=["hi"], org_id="org_1"))
    first, second = metering.events.values()
    assert (first.event_id, first.org_id, first.project_id, first.model) == (
        "req-42",
        "org_1",
        "proj_9",
        "intent-embed",
    )
    assert first.tokens == reply.usage.prompt_tokens and first.inputs == 3
    assert first.at.seconds > 0
    assert len(second.event_id) == 36 and second.project_id == ""


async def test_concurrent_usage_rides_in_one_call_and_a_refused_event_fails_only_its_request(
    serve: ServeFactory, tiny_model: EmbeddingModel, fake_metering: tuple[FakeMetering, str]
) -> None:
    metering, address = fake_metering
    metering.hold = asyncio.Event()
    metrics = EmbedMetrics()
    sink = MeteringUsageSink(address, timeout_s=10, metrics=metrics)

    def calls() -> float:  # RecordUsage calls the sink made
        return registry_value(metrics.registry, "embed_usage_calls_total")

    async with serve(tiny_model, sink=sink) as running:

        def call(org: str, n: int) -> asyncio.Future[embed_pb2.EmbedResponse]:
            request = embed_pb2.EmbedRequest(inputs=[f"text {n}"], org_id=org, request_id=f"r{n}")
            return asyncio.ensure_future(running.stub.Embed(request, timeout=20))

        first = call("org_1", 0)
        await asyncio.wait_for(metering.received.wait(), 10)  # call 1 is held in metering
        orgs = ["org_1"] * 9 + ["org_unknown"]
        rest = [call(org, n) for n, org in enumerate(orgs, start=1)]
        await eventually(
            lambda: registry_value(metrics.registry, "embed_usage_records_queued") == len(rest)
        )
        assert calls() == 1, "records were not held back while a call was in flight"
        metering.hold.set()
        replies = await asyncio.gather(first, *rest, return_exceptions=True)
    failed = [r for r in replies if isinstance(r, grpc.aio.AioRpcError)]
    assert [r.code() for r in failed] == [grpc.StatusCode.FAILED_PRECONDITION]
    assert replies[-1] is failed[0], "the refused event must fail its own request only"
    assert sorted(metering.events) == sorted(f"r{n}" for n in range(10))
    # One call for the first record, one for the ten that waited (refused as a whole for the
    # unknown org), then one per event to separate the refused one from the others.
    assert calls() == 2 + len(rest)

    metering.events.clear()
    metrics = EmbedMetrics()  # stopping a server closes its sink: a new one, counted anew
    sink = MeteringUsageSink(address, timeout_s=10, metrics=metrics)
    async with serve(tiny_model, sink=sink) as running:
        stub = running.stub
        await asyncio.gather(
            *(
                stub.Embed(embed_pb2.EmbedRequest(inputs=[f"q {n}"], org_id="org_1"), timeout=20)
                for n in range(32)
            )
        )
    assert len(metering.events) == 32
    assert calls() < 32, "concurrent records were not coalesced"


async def test_metering_failures_map_to_status_codes(
    serve: ServeFactory,
    tiny_model: EmbeddingModel,
    fake_metering: tuple[FakeMetering, str],
    free_port: int,
) -> None:
    metering, address = fake_metering
    async with serve(tiny_model, sink=MeteringUsageSink(address, timeout_s=5)) as running:
        with pytest.raises(grpc.aio.AioRpcError) as no_org:
            await running.stub.Embed(embed_pb2.EmbedRequest(inputs=["hi"]), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as unknown_org:
            await running.stub.Embed(
                embed_pb2.EmbedRequest(inputs=["hi"], org_id="org_unknown"), timeout=10
            )
    assert no_org.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "org_id" in (no_org.value.details() or "")
    assert unknown_org.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert metering.events == {}
    down = MeteringUsageSink(f"127.0.0.1:{free_port}", timeout_s=2)
    async with serve(tiny_model, sink=down) as running:
        with pytest.raises(grpc.aio.AioRpcError) as unreachable:
            await running.stub.Embed(
                embed_pb2.EmbedRequest(inputs=["hi"], org_id="org_1"), timeout=10
            )
    assert unreachable.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_vectors_match_sentence_transformers_under_concurrency(
    serve: ServeFactory, minilm_fp32: EmbeddingModel, minilm_dir: object
) -> None:
    from sentence_transformers import SentenceTransformer

    texts = [*clinc_test_texts(every=45)[:100], "word " * 300]
    reference = SentenceTransformer(str(minilm_dir), device="cpu").encode(
        texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=False
    )
    rng = random.Random(3)
    # Requests of different sizes sent at once, so inputs meet in batches of varying
    # composition and padding; each request is checked against the reference.
    chunks: list[tuple[int, int]] = []
    start = 0
    while start < len(texts):
        size = rng.choice([1, 1, 2, 3, 7, 16])
        chunks.append((start, min(start + size, len(texts))))
        start += size
    async with serve(minilm_fp32, max_batch_size=24, max_batch_tokens=1024) as running:
        replies = await asyncio.gather(
            *(
                running.stub.Embed(
                    embed_pb2.EmbedRequest(inputs=texts[a:b], truncate=True), timeout=60
                )
                for a, b in chunks
            )
        )
        assert registry_value(running.server.metrics.registry, "embed_batch_size_count") > 3
    got = np.concatenate([_vectors(r) for r in replies])
    cosines = (got * reference).sum(axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert cosines.min() >= 0.9999, f"worst input {int(cosines.argmin())}: {cosines.min()}"


async def test_a_record_metering_would_refuse_fails_before_it_is_sent(free_port: int) -> None:
    from datetime import UTC, datetime

    from embed_service.errors import UsageRejected
    from embed_service.usage import UsageRecord

    # Nothing listens at the address: a record that were sent would fail as UNAVAILABLE.
    sink = MeteringUsageSink(f"127.0.0.1:{free_port}", timeout_s=2)
    record = UsageRecord("req-1", "o" * 41, "", "intent-embed", 3, 1, datetime.now(UTC))
    with pytest.raises(UsageRejected) as refused:
        await sink.record(record)
    await sink.close()
    assert "events[0].org_id" in refused.value.message
