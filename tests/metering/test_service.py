"""MeteringService through a real gRPC channel: RecordUsage (idempotent, group commit, atomic
per call, bad input), Authenticate, GetUsage, health and the drain on stop."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from intent_embed.rich_status import DRAINING, details_of
from intent_embed.usage_events import MAX_EVENT_TOKENS
from intent_embed.v1 import metering_pb2
from metering.ledger import Ledger
from tests.metering.harness import Service
from tests.support.waiting import eventually


def event(
    event_id: str, org: str, tokens: int = 10, project: str = "", at: dt.datetime | None = None
) -> metering_pb2.UsageEvent:
    e = metering_pb2.UsageEvent(
        event_id=event_id, org_id=org, project_id=project, model="intent-embed", tokens=tokens,
        inputs=1,
    )
    if at is not None:
        ts = Timestamp()
        ts.FromDatetime(at)
        e.at.CopyFrom(ts)
    return e


async def record(service: Service, *events: metering_pb2.UsageEvent) -> tuple[int, int]:
    reply = await service.stub.RecordUsage(metering_pb2.RecordUsageRequest(events=events))
    return reply.recorded, reply.duplicates


async def usage(
    service: Service, org: str, project_id: str = "", since: Timestamp | None = None
) -> metering_pb2.GetUsageResponse:
    request = metering_pb2.GetUsageRequest(org_id=org, project_id=project_id)
    if since is not None:
        request.since.CopyFrom(since)
    return await service.stub.GetUsage(request)


async def test_health_is_serving_for_both_names(service: Service) -> None:
    health = health_pb2_grpc.HealthStub(service.channel)
    for name in ("", "intent_embed.v1.MeteringService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_record_usage_counts_retries_as_duplicates(service: Service) -> None:
    org = service.ledger.create_org("acme", "cus_1").id
    assert await record(service, event("r1", org, 100), event("r2", org, 50)) == (2, 0)
    # A client retry of the same request ids: acknowledged, not counted again.
    assert await record(service, event("r1", org, 100), event("r3", org, 7)) == (1, 1)
    # The same id twice in one call counts once.
    assert await record(service, event("r4", org, 1), event("r4", org, 1)) == (1, 1)
    reply = await usage(service, org)
    assert (reply.total_tokens, reply.total_requests) == (158, 4)


async def test_an_event_id_is_a_duplicate_only_within_its_org(service: Service) -> None:
    """Event ids are the callers' request ids: another org's id never drops this org's usage."""
    first = service.ledger.create_org("acme", "cus_1").id
    second = service.ledger.create_org("globex", "cus_2").id
    assert await record(service, event("req-1", first, 5)) == (1, 0)
    assert await record(service, event("req-1", second, 7)) == (1, 0)
    assert await record(service, event("req-1", second, 7)) == (0, 1)
    # Both in one call, too: two events, neither a duplicate of the other.
    assert await record(service, event("req-2", first, 1), event("req-2", second, 1)) == (2, 0)
    assert (await usage(service, first)).total_tokens == 6
    assert (await usage(service, second)).total_tokens == 8


async def test_concurrent_calls_are_committed_together_and_exactly(service: Service) -> None:
    org = service.ledger.create_org("acme", "cus_1").id
    calls = [record(service, event(f"e{i}", org, i + 1)) for i in range(200)]
    # Half of them again, racing their first delivery.
    calls += [record(service, event(f"e{i}", org, i + 1)) for i in range(0, 200, 2)]
    results = await asyncio.gather(*calls)
    assert sum(r for r, _ in results) == 200
    assert sum(d for _, d in results) == 100
    reply = await usage(service, org)
    assert reply.total_tokens == sum(range(1, 201))
    assert reply.total_requests == 200
    # Group commit: fewer transactions than calls.
    groups = next(iter(service.metrics.group_calls.collect())).samples
    count = next(s.value for s in groups if s.name.endswith("_count"))
    total = next(s.value for s in groups if s.name.endswith("_sum"))
    assert total == 300
    assert count < 300


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (metering_pb2.UsageEvent(org_id="x", tokens=1), "events[1].event_id"),
        (metering_pb2.UsageEvent(event_id="b", tokens=1), "events[1].org_id"),
        (metering_pb2.UsageEvent(event_id="b", org_id="x", tokens=2**64 - 1), "events[1].tokens"),
        # One token more than one embed request may carry: more than any real request costs.
        (metering_pb2.UsageEvent(event_id="b", org_id="x", tokens=300_001), "events[1].tokens"),
        (metering_pb2.UsageEvent(event_id="b", org_id="x", tokens=1, inputs=2049), "inputs"),
        (metering_pb2.UsageEvent(event_id="b" * 300, org_id="x", tokens=1), "events[1].event_id"),
    ],
)
async def test_malformed_events_are_refused_and_nothing_is_written(
    service: Service, bad: metering_pb2.UsageEvent, needle: str
) -> None:
    org = service.ledger.create_org("acme", "cus_1").id
    if bad.org_id == "x":
        bad.org_id = org
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await record(service, event("good", org, 5), bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (info.value.details() or "")
    assert (await usage(service, org)).total_tokens == 0


async def test_empty_request_is_invalid(service: Service) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.stub.RecordUsage(metering_pb2.RecordUsageRequest())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_org_or_foreign_project_fails_only_that_call(service: Service) -> None:
    org = service.ledger.create_org("acme", "cus_1").id
    other = service.ledger.create_org("other", "cus_2").id
    foreign = service.ledger.create_project(other, "theirs").id
    bad_org = record(service, event("a1", org, 5), event("a2", "org_missing", 5))
    bad_project = record(service, event("b1", org, 5, project=foreign))
    good = record(service, event("c1", org, 7))
    results = await asyncio.gather(bad_org, bad_project, good, return_exceptions=True)
    for failed, needle in ((results[0], "org_missing"), (results[1], foreign)):
        assert isinstance(failed, grpc.aio.AioRpcError)
        assert failed.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert needle in (failed.details() or "")
    assert results[2] == (1, 0)
    assert (await usage(service, org)).total_tokens == 7
    # The refused ids were not stored: sending them again correctly records them.
    assert await record(service, event("a1", org, 5)) == (1, 0)


async def test_usage_per_project_and_day(service: Service) -> None:
    ledger = service.ledger
    org = ledger.create_org("acme", "cus_1").id
    p1 = ledger.create_project(org, "web").id
    p2 = ledger.create_project(org, "batch").id
    d1 = dt.datetime(2026, 11, 20, 23, 59, tzinfo=dt.UTC)
    d2 = dt.datetime(2026, 11, 21, 0, 1, tzinfo=dt.UTC)
    await record(
        service, event("1", org, 10, p1, d1), event("2", org, 20, p1, d2),
        event("3", org, 30, p2, d2), event("4", org, 40, "", d1),
    )
    reply = await usage(service, org)
    buckets = {(b.day, b.project_id): (b.tokens, b.requests) for b in reply.buckets}
    assert buckets == {
        ("2026-11-20", ""): (40, 1), ("2026-11-20", p1): (10, 1),
        ("2026-11-21", p1): (20, 1), ("2026-11-21", p2): (30, 1),
    }
    since = Timestamp()
    since.FromDatetime(dt.datetime(2026, 11, 21, tzinfo=dt.UTC))
    reply = await usage(service, org, project_id=p1, since=since)
    assert [(b.day, b.tokens) for b in reply.buckets] == [("2026-11-21", 20)]
    assert reply.total_tokens == 100  # totals stay all-time: billing is computed from them
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await usage(service, "org_missing")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_usage_between_dates_per_day_and_project_with_exact_costs(
    service: Service,
) -> None:
    ledger = service.ledger
    org = ledger.create_org("acme", "cus_1").id
    web = ledger.create_project(org, "web").id
    idle = ledger.create_project(org, "idle").id
    day = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
    await record(
        service, event("a", org, 200_001, web, day), event("b", org, 5, "", day),
        event("c", org, 7, web, day + dt.timedelta(days=2)),
        event("d", org, 99, web, day - dt.timedelta(days=1)),  # before the range
    )  # fmt: skip
    request = metering_pb2.GetUsageRequest(
        org_id=org, start_date="2026-11-20", end_date="2026-11-23"
    )
    reply = await service.stub.GetUsage(request)
    # Every day of the range, zeros included; costs exact in nano-dollars (940 per token).
    assert [(d.day, d.tokens, d.requests, d.cost_nanodollars) for d in reply.days] == [
        ("2026-11-20", 200_006, 2, 188_005_640), ("2026-11-21", 0, 0, 0),
        ("2026-11-22", 7, 1, 6_580), ("2026-11-23", 0, 0, 0),
    ]  # fmt: skip
    assert [(p.project_id, p.name, p.tokens) for p in reply.projects] == [
        (web, "web", 200_008), (idle, "idle", 0), ("", "", 5),
    ]  # fmt: skip
    assert sum(b.cost_nanodollars for b in reply.buckets) == 940 * 200_013
    assert (reply.total_tokens, reply.total_cost_nanodollars) == (200_112, 940 * 200_112)
    assert reply.org_name == "acme" and reply.billing_ok and reply.has_payment_method
    for bad, field in (
        (metering_pb2.GetUsageRequest(start_date="2026-11-31"), "start_date"),
        (metering_pb2.GetUsageRequest(end_date="11/20/2026"), "end_date"),
        (metering_pb2.GetUsageRequest(start_date="2026-11-22", end_date="2026-11-21"),
         "start_date"),
        (metering_pb2.GetUsageRequest(start_date="2025-01-01", end_date="2026-11-21"),
         "start_date"),
        (metering_pb2.GetUsageRequest(project_id="proj_other"), "project_id"),
    ):  # fmt: skip
        bad.org_id = org
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await service.stub.GetUsage(bad)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert details_of(info.value).field == field


async def test_authenticate(service: Service) -> None:
    ledger: Ledger = service.ledger
    org = ledger.create_org("acme", "cus_1")
    project = ledger.create_project(org.id, "web")
    row, key = ledger.create_key(org.id, "ci")
    reply = await service.stub.Authenticate(metering_pb2.AuthenticateRequest(api_key=key))
    assert (reply.org_id, reply.org_name, reply.key_id) == (org.id, "acme", row.id)
    assert reply.billing_ok and reply.billing_state == "ok"
    assert list(reply.project_ids) == [project.id]
    assert key.startswith(row.id + "_")  # the visible prefix is the key id

    for wrong in ("", "sk-nope", key[:-1] + ("A" if key[-1] != "A" else "B"), row.id + "_x"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await service.stub.Authenticate(metering_pb2.AuthenticateRequest(api_key=wrong))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

    ledger.revoke_key(row.id)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.stub.Authenticate(metering_pb2.AuthenticateRequest(api_key=key))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (info.value.details() or "")


async def test_billing_ok_needs_a_customer_and_bounded_unpaid_debt(service: Service) -> None:
    ledger = service.ledger
    org = ledger.create_org("acme")
    _, key = ledger.create_key(org.id)
    reply = await service.stub.Authenticate(metering_pb2.AuthenticateRequest(api_key=key))
    assert not reply.billing_ok
    assert reply.billing_state == "no_payment_method"
    # Users read this message (the gateway adds how to fix it): no operator command in it.
    assert "no payment method" in reply.billing_message
    assert "python -m metering" not in reply.billing_message
    ledger.attach_stripe(org.id, "cus_9")
    # $51 owed and nothing paid is over the $50 limit.
    tokens = (51 * 100_000_000 + 93) // 94
    whole, rest = divmod(tokens, MAX_EVENT_TOKENS)  # as many requests as it takes
    sizes = [MAX_EVENT_TOKENS] * whole + [rest]
    await record(service, *(event(f"big{i}", org.id, n) for i, n in enumerate(sizes)))
    reply = await service.stub.Authenticate(metering_pb2.AuthenticateRequest(api_key=key))
    assert not reply.billing_ok
    assert "$51" in reply.billing_message


async def test_ledger_failure_answers_unavailable_and_acks_nothing(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    org = service.ledger.create_org("acme", "cus_1").id
    attempts = 0

    def broken(calls: object) -> list[object]:
        nonlocal attempts
        attempts += 1
        raise OperationalError("INSERT", {}, Exception("disk I/O error"))

    # The database refuses every write (the group committer's writer is the ledger's).
    monkeypatch.setattr(service.running.committer, "_write", broken)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await record(service, event("x1", org, 5))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "retry" in (info.value.details() or "")
    assert attempts == 3  # a passing database error is retried before giving up
    monkeypatch.undo()
    assert await record(service, event("x1", org, 5)) == (1, 0)


async def test_central_metering_refuses_unavailable_while_it_drains(service: Service) -> None:
    """Central metering's own stop: a call racing it is refused UNAVAILABLE, never CANCELLED."""
    stopping = asyncio.ensure_future(service.running.stop(10, quiet_s=0.5))
    await eventually(lambda: service.running.grpc_server.drain.draining, within_s=5)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await service.stub.GetUsage(metering_pb2.GetUsageRequest(org_id="acme"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert details_of(refused.value).reason == DRAINING
    await asyncio.wait_for(stopping, timeout=5)
