"""Fixtures of the metering tests: a migrated SQLite ledger per test, a PostgreSQL ledger in
its own schema when METERING_TEST_DATABASE_URL is set, the gRPC server in-process, and the fake
Stripe API with self-service billing delivering its webhooks to the ledger."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import grpc
import pytest
from sqlalchemy import create_engine, text

from intent_embed.v1 import metering_pb2_grpc
from metering.billing_setup import SelfService
from metering.database import make_engine, migrate
from metering.ledger import Ledger
from metering.server import Metrics, start_server
from metering.settings import Settings
from metering.settlement import RetryPolicy
from metering.stripe_accounts import StripeAccounts
from tests.fakes.fake_stripe import FakeStripe
from tests.metering.harness import KEY, SECRET, Service, deliver_to

PG_URL_ENV = "METERING_TEST_DATABASE_URL"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate(url)
    return url


def _with_search_path(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A migrated ledger in a fresh PostgreSQL schema, dropped afterwards."""
    base = os.environ.get(PG_URL_ENV)
    if not base:
        pytest.skip(f"{PG_URL_ENV} is not set (PostgreSQL tests need a server)")
    schema = f"metering_test_{secrets.token_hex(4)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = _with_search_path(base, schema)
    try:
        migrate(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    """The ledger on a SQLite file, and again on PostgreSQL when a server is configured."""
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    engine = make_engine(url)
    yield Ledger(engine, max_unpaid_usd=50)
    engine.dispose()


@pytest.fixture
async def service(ledger: Ledger) -> AsyncIterator[Service]:
    """The MeteringService on 127.0.0.1:<free port>, reached through a real channel."""
    metrics = Metrics()
    settings = Settings(insecure_no_auth=True)  # tests/metering/test_service_identity.py: tokens
    running = await start_server(ledger, settings, metrics, address="127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield Service(ledger, metrics, running, channel,
                      metering_pb2_grpc.MeteringServiceStub(channel))
    finally:
        await channel.close()
        await running.stop(1.0, quiet_s=0)


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    """The fake Stripe API on a free port (the real SDK talks to it)."""
    server = FakeStripe().start()
    yield server
    server.stop()


@pytest.fixture
def desk(ledger: Ledger, fake: FakeStripe) -> SelfService:
    """Self-service billing on the ledger, Stripe being the fake, which delivers to it."""
    fake.webhook_secret = SECRET
    accounts = StripeAccounts(KEY, fake.base_url, max_retries=0, timeout_s=5.0)
    service = SelfService(ledger.engine, accounts, SECRET, RetryPolicy(30.0, 3600.0))
    fake.webhook_sink = deliver_to(service)
    return service
