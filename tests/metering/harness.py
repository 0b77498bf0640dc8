"""What the metering tests share: the in-process MeteringService handle the `service` fixture
yields, usage written straight to the ledger, and a billing worker pointed at the fake Stripe."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import grpc

from intent_embed.v1 import metering_pb2_grpc
from metering.billing import BillingConfig, BillingWorker
from metering.ledger import Ledger
from metering.models import utcnow
from metering.server import Metrics, RunningServer
from metering.usage import Event, Recorded
from tests.fakes.fake_stripe import FakeStripe

# The fake Stripe accepts any key of this prefix.
KEY = "sk_test_metering"
_event_ids = itertools.count()


@dataclass
class Service:
    ledger: Ledger
    metrics: Metrics
    running: RunningServer
    channel: grpc.aio.Channel
    stub: metering_pb2_grpc.MeteringServiceStub


def use(ledger: Ledger, org: str, *tokens: int, project: str = "") -> None:
    """One usage event per `tokens` value for the org (and project), recorded now."""
    events = [
        Event(f"ev{next(_event_ids)}", org, project, "intent-embed", t, 1, utcnow())
        for t in tokens
    ]
    (result,) = ledger.record_calls([events])
    assert isinstance(result, Recorded) and result.recorded == len(tokens)


def worker(ledger: Ledger, fake: FakeStripe | None, **kw: object) -> BillingWorker:
    """A billing worker on the ledger, sending to `fake` (None: Stripe off)."""
    config = BillingConfig(
        stripe_api_key=KEY if fake is not None else "",
        stripe_api_base=fake.base_url if fake is not None else "http://127.0.0.1:9",
        stripe_timeout_s=float(kw.pop("timeout", 5.0)),  # type: ignore[arg-type]
        stripe_max_retries=int(kw.pop("retries", 2)),  # type: ignore[call-overload]
        retry_base_s=float(kw.pop("retry_base_s", 0.0)) or 0.001,  # type: ignore[arg-type]
        retry_max_s=1.0,
    )
    return BillingWorker(ledger.engine, config)
