"""What the self-service tests run against: the real metering service on a SQLite ledger (in
process, on a real gRPC port), the fake Stripe API it talks to through the real SDK and that
delivers signed webhooks to the gateway, a fake embed service, and the real gateway app on a
real HTTP port. A paying user's whole path: 402, setup, Stripe, webhook, usage, dashboard.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from gateway.settings import Settings as GatewaySettings
from intent_embed.v1 import embed_pb2_grpc
from metering.database import make_engine, migrate
from metering.ledger import Ledger
from metering.server import Metrics, RunningServer, start_server
from metering.settings import Settings as MeteringSettings
from metering.usage import Event, Recorded
from tests.fakes.fake_stripe import FakeStripe
from tests.gateway.harness import FakeEmbed, GatewayServer, Script
from tests.support.fake_metering import FakeServer, ThreadedServer

STRIPE_KEY = "sk_test_selfservice"
WEBHOOK_SECRET = "whsec_test_selfservice"
# The gateway proves itself to metering with it, as in a deployment.
GATEWAY_TOKEN = "gateway-token-selfservice"
_event_ids = itertools.count()


class MeteringServer:
    """Central metering (`metering.server.start_server`) as an `AsyncServer`."""

    def __init__(self, ledger: Ledger, settings: MeteringSettings) -> None:
        self.ledger = ledger
        self.settings = settings
        self.port = 0
        self._running: RunningServer | None = None

    async def start(self) -> None:
        self._running = await start_server(
            self.ledger, self.settings, Metrics(), address="127.0.0.1:0"
        )
        self.port = self._running.port

    async def stop(self) -> None:
        if self._running is not None:
            await self._running.stop(1.0, quiet_s=0)

    async def set_serving(self, serving: bool) -> None:
        assert self._running is not None
        await self._running.grpc_server.set_serving(serving)


@dataclass
class Account:
    org_id: str
    key: str
    projects: list[str]


@dataclass
class Stack:
    ledger: Ledger
    stripe: FakeStripe
    gateway: GatewayServer
    embed: FakeEmbed

    @property
    def url(self) -> str:
        return self.gateway.url

    def account(self, name: str, projects: int = 2, customer: str | None = None) -> Account:
        """A new org (with an operator-attached Stripe customer, or none), its projects and
        an API key."""
        org = self.ledger.create_org(name, customer).id
        if customer is not None:  # one that exists at Stripe, with a card, as operators attach
            self.stripe.add_customer(customer, f"pm_card_{name}")
        ids = [self.ledger.create_project(org, f"{name}-p{i}").id for i in range(projects)]
        _, key = self.ledger.create_key(org, "test")
        return Account(org, key, ids)

    def use(self, org: str, project: str, tokens: int, at: dt.datetime) -> None:
        """One usage event straight into the ledger, as the embed service would record it."""
        event = Event(f"self{next(_event_ids)}", org, project, "intent-embed", tokens, 1, at)
        (result,) = self.ledger.record_calls([[event]])
        assert isinstance(result, Recorded) and result.recorded == 1

    def call(
        self,
        method: str,
        path: str,
        key: str | None,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> requests.Response:
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        return requests.request(
            method, self.url + path, headers={**auth, **(headers or {})}, timeout=30, **kw
        )

    def embed_once(self, key: str) -> requests.Response:
        body = {"input": "cancel my order", "model": "intent-embed"}
        return self.call("POST", "/v2/embeddings", key, json=body)


@contextlib.contextmanager
def running_stack(
    data_dir: Path, *, stripe: bool = True, **gateway_options: Any
) -> Iterator[Stack]:
    """The stack on free ports, with its ledger under `data_dir`; Stripe off when not `stripe`;
    `gateway_options` overrides gateway settings."""
    url = f"sqlite:///{data_dir / 'ledger.db'}"
    migrate(url)
    engine = make_engine(url)
    ledger = Ledger(engine, max_unpaid_usd=50)
    fake = FakeStripe(webhook_secret=WEBHOOK_SECRET).start()
    settings = MeteringSettings(
        stripe_api_key=STRIPE_KEY if stripe else "",
        stripe_api_base=fake.base_url,
        stripe_webhook_secret=WEBHOOK_SECRET if stripe else "",
        stripe_max_retries=0,
        stripe_timeout_s=10.0,
        gateway_tokens=GATEWAY_TOKEN,
    )
    embed = FakeEmbed(Script())
    embed_server = FakeServer(
        "intent_embed.v1.EmbedService",
        lambda server: embed_pb2_grpc.add_EmbedServiceServicer_to_server(embed, server),
    )
    try:
        with (
            ThreadedServer(MeteringServer(ledger, settings)) as metering,
            ThreadedServer(embed_server) as embed_up,
        ):
            gateway_settings = GatewaySettings(
                embed_addr=f"dns:///127.0.0.1:{embed_up.port}",
                metering_addr=f"127.0.0.1:{metering.port}",
                metering_token=GATEWAY_TOKEN,
                embed_timeout_s=5.0,
                **gateway_options,
            )
            with GatewayServer(gateway_settings) as gateway:
                fake.webhook_url = gateway.url + "/stripe/webhook"
                yield Stack(ledger, fake, gateway, embed)
    finally:
        fake.stop()
        engine.dispose()
