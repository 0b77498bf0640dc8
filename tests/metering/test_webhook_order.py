"""Stripe's webhooks delivered out of order, late and again days later: the newest payment
method wins in the ledger and at Stripe, and a deleted customer turns billing off. Through the
real SDK against the fake Stripe, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from metering.billing_setup import CHECKOUT, SelfService
from metering.ledger import Ledger
from metering.stripe_accounts import StripeAccounts
from tests.fakes.fake_stripe import FakeStripe
from tests.fakes.fake_stripe_billing import Delivery
from tests.metering.harness import KEY, RETURN_URL, deliver_to, org_row, paying_org, use, worker

DAY_S = 86_400.0


class StripeTime:
    """Stripe's clock, as the fake stamps events' `created`: it moves when the test says."""

    def __init__(self) -> None:
        self.now = 1_790_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def stripe_time(fake: FakeStripe) -> Iterator[StripeTime]:
    fake.clock = clock = StripeTime()
    yield clock


def endpoint_down(fake: FakeStripe) -> None:
    """Deliveries fail (as when the gateway is unreachable): Stripe keeps them to retry."""
    fake.webhook_sink = lambda payload, header: (503, {})


def default_at_stripe(fake: FakeStripe, customer: str) -> str | None:
    settings = fake.customers[customer].get("invoice_settings") or {}
    return settings.get("default_payment_method")


def test_late_and_retried_events_never_bring_an_old_card_back(
    ledger: Ledger, desk: SelfService, fake: FakeStripe, stripe_time: StripeTime
) -> None:
    org = ledger.create_org("acme").id
    _, key = ledger.create_key(org)
    link = desk.setup(org, RETURN_URL)
    customer = link.customer_id
    endpoint_down(fake)
    # Card A through Checkout, then cards B and C added as the default in the portal.
    first = fake.complete_checkout(link.url.rsplit("/", 1)[1])
    card_a = fake.setup_intents[fake.checkout_sessions[link.url.rsplit("/", 1)[1]]
                                ["setup_intent"]]["payment_method"]  # fmt: skip
    stripe_time.advance(60)
    second = fake.choose_default(customer)
    stripe_time.advance(60)
    third = fake.choose_default(customer)
    card_c = default_at_stripe(fake, customer)
    assert card_c is not None and card_a != card_c
    # The endpoint is back: Stripe delivers the newest first, the others on later retries.
    fake.webhook_sink = deliver_to(desk)
    assert fake.redeliver(third.event_id).body["outcome"] == "payment_method_set"
    assert org_row(ledger, org).payment_method_id == card_c
    stripe_time.advance(3 * DAY_S)  # Stripe retries a failed delivery for up to 3 days
    for late in (first, second):
        assert fake.redeliver(late.event_id).body["outcome"] == "stale"
    assert org_row(ledger, org).payment_method_id == card_c
    assert default_at_stripe(fake, customer) == card_c
    assert ledger.authenticate(key).billing.ok
    # Each event applied once: delivered again, none changes anything.
    for event in (first, second, third):
        assert fake.redeliver(event.event_id).body["duplicate"]
    # The charge goes to the newest card.
    use(ledger, org, 5_000_000)
    worker(ledger, fake).run_once()
    (intent,) = fake.intents_for(customer)
    assert (intent["payment_method"], intent["amount"]) == (card_c, 400)


def test_a_late_customer_update_applies_what_stripe_has_now(
    ledger: Ledger, desk: SelfService, fake: FakeStripe, stripe_time: StripeTime
) -> None:
    org, _, card_a = paying_org(ledger, desk, fake)
    customer = org_row(ledger, org).stripe_customer_id
    assert customer is not None
    stripe_time.advance(60)
    endpoint_down(fake)
    to_b = fake.choose_default(customer)
    stripe_time.advance(60)
    to_a = fake.choose_default(customer, card_a)  # the user goes back to card A
    fake.webhook_sink = deliver_to(desk)
    # The event whose snapshot says B arrives first: Stripe says A now, and A it stays.
    assert fake.redeliver(to_b.event_id).body["outcome"] == "unchanged"
    assert org_row(ledger, org).payment_method_id == card_a
    assert fake.redeliver(to_a.event_id).body["outcome"] == "unchanged"
    assert org_row(ledger, org).payment_method_id == card_a
    assert default_at_stripe(fake, customer) == card_a


def test_a_setup_delivered_after_its_card_was_removed_does_not_bring_it_back(
    ledger: Ledger, desk: SelfService, fake: FakeStripe, stripe_time: StripeTime
) -> None:
    org = ledger.create_org("acme").id
    _, key = ledger.create_key(org)
    link = desk.setup(org, RETURN_URL)
    session_id = link.url.rsplit("/", 1)[1]
    endpoint_down(fake)
    setup = fake.complete_checkout(session_id)
    card = fake.setup_intents[fake.checkout_sessions[session_id]["setup_intent"]]["payment_method"]
    stripe_time.advance(60)
    fake.webhook_sink = deliver_to(desk)
    assert fake.detach(card).body["outcome"] == "unchanged"  # not the org's card yet
    fake.redeliver(setup.event_id)
    assert org_row(ledger, org).payment_method_id is None
    assert ledger.authenticate(key).billing.state == "no_payment_method"
    assert default_at_stripe(fake, link.customer_id) is None


def test_a_deleted_customer_turns_billing_off_until_a_new_setup(
    ledger: Ledger, desk: SelfService, fake: FakeStripe, stripe_time: StripeTime
) -> None:
    org, key, _ = paying_org(ledger, desk, fake)
    use(ledger, org, 5_000_000)
    customer = org_row(ledger, org).stripe_customer_id
    assert customer is not None
    stripe_time.advance(60)
    endpoint_down(fake)
    late: Delivery = fake.choose_default(customer)
    stripe_time.advance(60)
    fake.webhook_sink = deliver_to(desk)
    deleted = fake.delete_customer(customer)
    assert deleted.body["outcome"] == "customer_deleted"
    auth = ledger.authenticate(key)
    assert not auth.billing.ok and auth.billing.state == "no_payment_method"
    assert worker(ledger, fake).run_once().created == []
    assert fake.intents_for(customer) == []
    # The customer's last update, delivered after its deletion, finds no org.
    assert fake.redeliver(late.event_id).body["outcome"] == "unknown_customer"
    assert fake.redeliver(deleted.event_id).body["duplicate"]
    assert not ledger.authenticate(key).billing.ok
    # A new setup makes a new customer (not the deleted one, which Stripe's key would
    # replay), and billing is on again: the $4 owed goes to the new card.
    link = desk.setup(org, RETURN_URL)
    assert link.kind == CHECKOUT and link.customer_id != customer
    assert fake.complete_checkout(link.url.rsplit("/", 1)[1]).body["outcome"] == (
        "payment_method_set"
    )
    assert ledger.authenticate(key).billing.ok
    worker(ledger, fake).run_once()
    (intent,) = fake.intents_for(link.customer_id)
    assert intent["amount"] == 400


def test_a_customer_is_created_anew_only_after_a_deletion(fake: FakeStripe) -> None:
    accounts = StripeAccounts(KEY, fake.base_url, max_retries=0, timeout_s=5.0)
    first = accounts.create_customer("org_1", "acme")
    assert accounts.create_customer("org_1", "acme") == first  # a repeat: the same customer
    assert accounts.create_customer("org_1", "acme", deleted_before=1) != first
