"""What the metering tests share: the in-process MeteringService handle the `service` fixture
yields, usage written straight to the ledger, a billing worker pointed at the fake Stripe (on
a simulated clock when a test needs time to pass), and self-service billing's webhook sink
and paying org."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from sqlmodel import Session

from intent_embed.v1 import metering_pb2_grpc
from metering.billing import BillingConfig, BillingWorker
from metering.billing_setup import SelfService
from metering.charge_policy import Clock
from metering.errors import BadSignature
from metering.ledger import Ledger
from metering.models import Org, utcnow
from metering.server import Metrics, RunningServer
from metering.usage import Event, Recorded
from tests.fakes.fake_stripe import FakeStripe

# The fake Stripe accepts any key of this prefix.
KEY = "sk_test_metering"
SECRET = "whsec_test_metering"
RETURN_URL = "https://api.example.test/dashboard"
_event_ids = itertools.count()


@dataclass
class Service:
    ledger: Ledger
    metrics: Metrics
    running: RunningServer
    channel: grpc.aio.Channel
    stub: metering_pb2_grpc.MeteringServiceStub


def use(
    ledger: Ledger, org: str, *tokens: int, project: str = "", at: dt.datetime | None = None
) -> None:
    """One usage event per `tokens` value for the org (and project), recorded `at` (now)."""
    when = at or utcnow()
    events = [
        Event(f"ev{next(_event_ids)}", org, project, "intent-embed", t, 1, when) for t in tokens
    ]
    (result,) = ledger.record_calls([events])
    assert isinstance(result, Recorded) and result.recorded == len(tokens)


def worker(
    ledger: Ledger,
    fake: FakeStripe | None,
    *,
    timeout: float = 5.0,
    retries: int = 2,
    retry_base_s: float = 0.0,
    retry_max_s: float = 1.0,
    threshold: int = 1,
    clock: Clock = utcnow,
) -> BillingWorker:
    """A billing worker on the ledger, sending to `fake` (None: Stripe off). Its policy
    charges from the first dollar unless told otherwise: the exactly-once tests need charges,
    the policy's own tests set the threshold."""
    config = BillingConfig(
        stripe_api_key=KEY if fake is not None else "",
        stripe_api_base=fake.base_url if fake is not None else "http://127.0.0.1:9",
        stripe_timeout_s=timeout,
        stripe_max_retries=retries,
        retry_base_s=retry_base_s or 0.001,
        retry_max_s=retry_max_s,
        charge_threshold_dollars=threshold,
    )
    return BillingWorker(ledger.engine, config, clock)


class SimClock:
    """A billing worker's clock that moves only when the test says (UTC)."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> dt.datetime:
        self.now += dt.timedelta(**delta)
        return self.now


def deliver_to(service: SelfService) -> Callable[[bytes, str], tuple[int, dict[str, Any]]]:
    """The fake's webhook sink: what the gateway does with a delivery, without HTTP."""

    def deliver(payload: bytes, signature: str) -> tuple[int, dict[str, Any]]:
        try:
            return 200, dataclasses.asdict(service.apply_event(payload, signature))
        except BadSignature as exc:
            return 400, {"error": str(exc)}

    return deliver


def org_row(ledger: Ledger, org_id: str) -> Org:
    with Session(ledger.engine) as session:
        org = session.get(Org, org_id)
        assert org is not None
        return org


def paying_org(ledger: Ledger, desk: SelfService, fake: FakeStripe) -> tuple[str, str, str]:
    """An org that set up a card through Checkout: (org id, its key, the payment method)."""
    org = ledger.create_org("acme").id
    _, key = ledger.create_key(org)
    link = desk.setup(org, RETURN_URL)
    delivery = fake.complete_checkout(link.url.rsplit("/", 1)[1])
    assert delivery.status == 200, delivery
    payment_method = org_row(ledger, org).payment_method_id
    assert payment_method is not None
    return org, key, payment_method
