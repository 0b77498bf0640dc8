"""Stripe hanging takes nothing from the ledger's own calls: with every thread of the Stripe
pool stuck in a call to Stripe and its queue full, Authenticate stays fast and RecordUsage
commits; billing calls past the queue are refused at once with STRIPE_BUSY; once Stripe
answers again every admitted call completes. The pool's own accounting is tested beside it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from intent_embed.rich_status import STRIPE_BUSY, details_of
from intent_embed.v1 import metering_pb2, metering_pb2_grpc
from metering.billing_setup import CHECKOUT
from metering.errors import StripeBusy
from metering.ledger import Ledger
from metering.server import Metrics, start_server
from metering.settings import Settings
from metering.stripe_pool import StripePool
from tests.fakes.fake_stripe import FakeStripe
from tests.metering.harness import KEY, RETURN_URL, SECRET
from tests.support.waiting import eventually

THREADS, QUEUE = 4, 4
# More setup calls than the pool admits, and more than the event loop's default executor has
# threads on any machine (at most 32): without a bulkhead they would take all of those.
SETUP_CALLS = 40
AUTH_CALLS = 300
P99_BOUND_S = 0.050
ROUNDS = 3


@dataclass
class Stalled:
    fake: FakeStripe
    metrics: Metrics
    stub: metering_pb2_grpc.MeteringServiceStub

    def stripe_calls(self) -> float | None:
        """The operator's gauge of calls running or waiting on the Stripe pool."""
        return self.metrics.registry.get_sample_value("metering_stripe_calls")


@pytest.fixture
async def stalled(ledger: Ledger, fake: FakeStripe) -> AsyncIterator[Stalled]:
    """The service with self-service billing on the fake Stripe, which hangs until resumed."""
    settings = Settings(
        stripe_api_key=KEY,
        stripe_api_base=fake.base_url,
        stripe_webhook_secret=SECRET,
        stripe_max_retries=0,
        stripe_timeout_s=60.0,  # Stripe hangs for the whole test, the SDK waits it out
        stripe_threads=THREADS,
        stripe_queue=QUEUE,
        insecure_no_auth=True,
    )
    metrics = Metrics()
    running = await start_server(ledger, settings, metrics, address="127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    fake.stall()
    try:
        yield Stalled(fake, metrics, metering_pb2_grpc.MeteringServiceStub(channel))
    finally:
        fake.resume()
        await channel.close()
        await running.stop(1.0, quiet_s=0)


async def _setup(
    stub: metering_pb2_grpc.MeteringServiceStub, org: str
) -> metering_pb2.CreateBillingSetupResponse | grpc.aio.AioRpcError:
    try:
        return await stub.CreateBillingSetup(
            metering_pb2.CreateBillingSetupRequest(org_id=org, return_url=RETURN_URL),
            timeout=60,
        )
    except grpc.aio.AioRpcError as err:
        return err


async def _authenticate_latencies(
    stub: metering_pb2_grpc.MeteringServiceStub, key: str, org: str
) -> list[float]:
    latencies = []
    for _ in range(AUTH_CALLS):
        started = time.monotonic()
        reply = await stub.Authenticate(metering_pb2.AuthenticateRequest(api_key=key), timeout=5)
        latencies.append(time.monotonic() - started)
        assert reply.org_id == org
    return latencies


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def test_stripe_hanging_leaves_authentication_and_usage_their_threads(
    ledger: Ledger, stalled: Stalled
) -> None:
    stub = stalled.stub
    orgs = [ledger.create_org(f"setup{i}").id for i in range(SETUP_CALLS)]
    org = ledger.create_org("steady").id
    project = ledger.create_project(org, "p").id
    _, key = ledger.create_key(org, "k")

    setups = [asyncio.create_task(_setup(stub, o)) for o in orgs]
    await eventually(lambda: stalled.fake.stalled() >= THREADS, what="threads stuck in Stripe")

    # Starved, Authenticate waits for a thread until Stripe answers (every round fails); a
    # shared machine's passing hiccup spoils one round of a few hundred calls, not three.
    rounds: list[float] = []
    while len(rounds) < ROUNDS and (not rounds or rounds[-1] >= P99_BOUND_S):
        rounds.append(_p99(await _authenticate_latencies(stub, key, org)))
    assert rounds[-1] < P99_BOUND_S, f"Authenticate p99 while Stripe hangs, s: {rounds}"

    event = metering_pb2.UsageEvent(
        event_id="while-stripe-hangs", org_id=org, project_id=project,
        model="intent-embed", tokens=1234, inputs=1,
    )  # fmt: skip
    recorded = await stub.RecordUsage(metering_pb2.RecordUsageRequest(events=[event]), timeout=5)
    assert recorded.recorded == 1
    usage = await stub.GetUsage(metering_pb2.GetUsageRequest(org_id=org), timeout=5)
    assert usage.total_tokens == 1234

    # The setup calls past the pool's threads and queue came back while Stripe still hangs,
    # refused without trying; the queued ones wait for a thread, not in Stripe.
    overflow = SETUP_CALLS - THREADS - QUEUE
    await eventually(lambda: sum(t.done() for t in setups) >= overflow, 10, "refusals")
    done = [t for t in setups if t.done()]
    refused = [t.result() for t in done]
    assert len(refused) == overflow
    for err in refused:
        assert isinstance(err, grpc.aio.AioRpcError)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert details_of(err).reason == STRIPE_BUSY
    assert stalled.fake.stalled() == THREADS
    assert stalled.stripe_calls() == THREADS + QUEUE

    # Stripe answers again: every admitted call gets its page, and the pool takes new ones.
    stalled.fake.resume()
    admitted = await asyncio.wait_for(asyncio.gather(*(t for t in setups if t not in done)), 60)
    assert len(admitted) == THREADS + QUEUE
    assert all(isinstance(r, metering_pb2.CreateBillingSetupResponse) for r in admitted)
    assert {r.kind for r in admitted} == {CHECKOUT}  # type: ignore[union-attr]
    again = await _setup(stub, orgs[-1])
    assert isinstance(again, metering_pb2.CreateBillingSetupResponse), again
    assert stalled.stripe_calls() == 0


async def test_webhooks_wait_in_the_same_bounded_pool(ledger: Ledger, stalled: Stalled) -> None:
    orgs = [ledger.create_org(f"setup{i}").id for i in range(THREADS + QUEUE)]
    setups = [asyncio.create_task(_setup(stalled.stub, o)) for o in orgs]
    await eventually(lambda: stalled.fake.stalled() == THREADS, what="threads stuck in Stripe")
    await eventually(lambda: stalled.stripe_calls() == THREADS + QUEUE, what="a full queue")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stalled.stub.ApplyStripeEvent(
            metering_pb2.ApplyStripeEventRequest(payload=b"{}", signature="t=1,v1=00"), timeout=5
        )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert details_of(info.value).reason == STRIPE_BUSY
    stalled.fake.resume()
    assert len(await asyncio.wait_for(asyncio.gather(*setups), 60)) == THREADS + QUEUE
    with pytest.raises(grpc.aio.AioRpcError) as info:  # verified now, so refused for its body
        await stalled.stub.ApplyStripeEvent(
            metering_pb2.ApplyStripeEventRequest(payload=b"{}", signature="t=1,v1=00"), timeout=5
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_waiting_call_whose_caller_left_frees_its_place() -> None:
    pool = StripePool(1, 1, name="test-stripe")
    release = threading.Event()
    try:
        running = asyncio.create_task(pool.run(release.wait))
        await eventually(lambda: pool.admitted == 1, what="the first call running")
        waiting = asyncio.create_task(pool.run(lambda: "never"))
        await eventually(lambda: pool.admitted == 2, what="the second call waiting")
        with pytest.raises(StripeBusy):
            await pool.run(lambda: "refused")
        waiting.cancel()  # its client gave up (a deadline): it never starts
        await eventually(lambda: pool.admitted == 1, what="the cancelled call's place freed")
        late = asyncio.create_task(pool.run(lambda: "admitted"))
        await asyncio.sleep(0)
        release.set()
        assert await running is True
        assert await late == "admitted"
        assert pool.admitted == 0
    finally:
        release.set()
        pool.shutdown()
