"""Faults with real processes and SIGKILL: the metering service killed during a stream of
RecordUsage (every acknowledged event stored once, retries not double counted), the billing
worker killed between the Stripe call and its commit (exactly one PaymentIntent), and two
billing workers at once (no double charge), on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from devstack import probes
from intent_embed.v1 import metering_pb2, metering_pb2_grpc
from metering.database import make_engine
from metering.ledger import Ledger
from metering.models import utcnow
from metering.usage import Event
from tests.fakes.fake_stripe import FakeStripe

ROOT = Path(__file__).resolve().parents[2]
STRIPE_KEY = "sk_test_faults"


def env_for(url: str, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "METERING_DATABASE_URL": url,
        "METERING_HOST": "127.0.0.1",
        "METERING_METRICS_PORT": "0",
        "METERING_BILL_INTERVAL_S": "0",
        "METERING_LOG_LEVEL": "WARNING",
        "METERING_INSECURE_NO_AUTH": "true",
        # Exactly-once under faults is about any charge: charge from the first dollar.
        "METERING_CHARGE_THRESHOLD_DOLLARS": "1",
    }
    env.update(extra)
    return env


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "metering", *args],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def _record_until_acked(
    stub: metering_pb2_grpc.MeteringServiceStub, request: metering_pb2.RecordUsageRequest
) -> tuple[metering_pb2.RecordUsageResponse, int]:
    """What a client does: retry the same event ids until acknowledged; the reply and retries."""
    retried = 0
    while True:
        try:
            return await stub.RecordUsage(request, timeout=2), retried
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ), exc
            retried += 1
            await asyncio.sleep(0.05)


async def test_metering_killed_mid_stream_loses_and_doubles_nothing(
    sqlite_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    engine = make_engine(sqlite_url)
    org = Ledger(engine).create_org("acme", "cus_1").id
    port = probes.free_port()
    env = env_for(sqlite_url, METERING_PORT=str(port))
    log = tmp_path / "metering.log"
    procs.append(start([], env, log))
    await asyncio.to_thread(probes.wait_serving, f"127.0.0.1:{port}", procs[-1], 60)

    rng = random.Random(3)
    sent: dict[str, int] = {}  # every event id a client ever sent, with its tokens
    acked: set[str] = set()
    duplicates = 0
    retried = 0
    killed = asyncio.Event()

    async def client(n: int, channel: grpc.aio.Channel) -> None:
        nonlocal duplicates, retried
        stub = metering_pb2_grpc.MeteringServiceStub(channel)
        for call in range(40):
            events = []
            for j in range(5):
                event_id = f"c{n}-{call}-{j}"
                sent[event_id] = rng.randint(1, 5000)
                events.append(
                    metering_pb2.UsageEvent(
                        event_id=event_id, org_id=org, model="m", tokens=sent[event_id], inputs=1
                    )
                )
            request = metering_pb2.RecordUsageRequest(events=events)
            reply, tries = await _record_until_acked(stub, request)
            retried += tries
            acked.update(e.event_id for e in events)
            duplicates += reply.duplicates
            if call == 10 and n == 0:
                killed.set()

    async def killer() -> None:
        await killed.wait()
        procs[-1].send_signal(signal.SIGKILL)
        procs[-1].wait(10)
        procs.append(start([], env, log))
        await asyncio.to_thread(probes.wait_serving, f"127.0.0.1:{port}", procs[-1], 60)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await asyncio.wait_for(
            asyncio.gather(killer(), *(client(n, channel) for n in range(16))), timeout=180
        )
    assert retried > 0  # the kill did hit calls in flight
    assert acked == set(sent)
    usage = Ledger(engine).usage(org)
    assert usage.total_requests == len(sent) == 16 * 40 * 5
    assert usage.total_tokens == sum(sent.values())
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT count(*), sum(tokens) FROM usage_events").one()
    assert tuple(stored) == (len(sent), sum(sent.values()))
    procs[-1].send_signal(signal.SIGTERM)
    assert procs[-1].wait(30) == 0
    engine.dispose()


def _seed_org(url: str, name: str, customer: str, tokens: int) -> str:
    engine = make_engine(url)
    ledger = Ledger(engine)
    org = ledger.create_org(name, customer).id
    ledger.record_calls([[Event(f"{org}-use", org, "", "m", tokens, 1, utcnow())]])
    engine.dispose()
    return org


def test_billing_worker_killed_after_stripe_call_charges_once(
    sqlite_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    org = _seed_org(sqlite_url, "acme", "cus_acme", 5_000_000)
    fake = FakeStripe().start()
    try:
        fake.then("slow:60")  # Stripe charges, then answers late: the worker dies before
        env = env_for(
            sqlite_url,
            METERING_STRIPE_API_KEY=STRIPE_KEY,
            METERING_STRIPE_API_BASE=fake.base_url,
            METERING_STRIPE_TIMEOUT_S="120",
            METERING_STRIPE_MAX_RETRIES="0",
        )
        log = tmp_path / "billing.log"
        procs.append(start(["billing", "--once"], env, log))
        assert fake.created.wait(60), log.read_text()
        procs[-1].send_signal(signal.SIGKILL)
        procs[-1].wait(10)
        engine = make_engine(sqlite_url)
        (charge,) = Ledger(engine).list_charges(org)
        assert charge.state == "pending"  # committed before Stripe was called
        procs.append(start(["billing", "--once"], env, log))
        assert procs[-1].wait(60) == 0, log.read_text()
        (charge,) = Ledger(engine).list_charges(org)
        (intent,) = fake.payment_intents.values()
        assert charge.state == "succeeded" and charge.stripe_payment_intent_id == intent["id"]
        assert intent["amount"] == 400
        posts = fake.posts()
        assert [p.idempotency_key for p in posts] == [f"{org}-1", f"{org}-1"]
        assert posts[1].replayed
        engine.dispose()
    finally:
        fake.stop()


def _two_workers_at_once(url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    orgs = [_seed_org(url, f"org{i}", f"cus_{i}", 5_000_000 + i) for i in range(12)]
    fake = FakeStripe(delay_s=0.05).start()
    try:
        env = env_for(
            url, METERING_STRIPE_API_KEY=STRIPE_KEY, METERING_STRIPE_API_BASE=fake.base_url
        )
        workers = [start(["billing", "--once"], env, tmp_path / f"w{i}.log") for i in range(2)]
        procs.extend(workers)
        for w in workers:
            assert w.wait(120) == 0
        for i, org in enumerate(orgs):
            assert [pi["amount"] for pi in fake.intents_for(f"cus_{i}")] == [400]
            (charge,) = Ledger(make_engine(url)).list_charges(org)
            assert charge.state == "succeeded"
        assert len(fake.payment_intents) == len(orgs)
    finally:
        fake.stop()


def test_two_billing_workers_at_once_sqlite(
    sqlite_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    _two_workers_at_once(sqlite_url, tmp_path, procs)


@pytest.mark.postgres
def test_two_billing_workers_at_once_postgres(
    pg_url: str, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    _two_workers_at_once(pg_url, tmp_path, procs)
