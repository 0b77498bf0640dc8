"""Declines and Stripe errors by kind, on a simulated clock, through the real SDK and the fake
Stripe: soft declines retried hours later on the same PaymentIntent and at most ten times,
hard declines waiting for a new payment method, a key Stripe no longer keeps never resent
blindly, and one charge's unexpected error never stopping the others."""

from __future__ import annotations

import datetime as dt

from metering.billing_setup import SelfService
from metering.ledger import Ledger
from tests.fakes.fake_stripe import FakeStripe
from tests.metering.harness import SimClock, org_row, paying_org, use, worker

START = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)
HOURS = 3600.0


def confirmations(fake: FakeStripe) -> int:
    return sum(1 for r in fake.requests if r.path.endswith("/confirm"))


def test_a_soft_decline_is_retried_hours_later_on_the_same_intent(
    ledger: Ledger, fake: FakeStripe
) -> None:
    clock = SimClock(START)
    org = ledger.create_org("acme", "cus_acme").id
    _, key = ledger.create_key(org)
    use(ledger, org, 5_000_000, at=START)
    bill = worker(ledger, fake, clock=clock, retry_base_s=HOURS, retry_max_s=72 * HOURS)
    fake.then("decline:insufficient_funds")
    assert bill.run_once().still_pending == [f"{org}-1"]
    (charge,) = ledger.list_charges(org)
    assert charge.state == "pending" and "insufficient_funds" in (charge.error or "")
    assert charge.next_attempt_at == START + dt.timedelta(hours=1)
    assert ledger.authenticate(key).billing.state == "past_due"
    clock.advance(minutes=59)
    bill.run_once()
    assert len(fake.posts()) == 1 and confirmations(fake) == 0  # not yet
    clock.advance(minutes=2)
    assert bill.run_once().succeeded == [f"{org}-1"]
    # The same intent was confirmed again: one intent, paid once, no second charge row.
    (intent,) = fake.intents_for("cus_acme")
    assert (intent["status"], intent["confirmations"]) == ("succeeded", 2)
    assert [c.state for c in ledger.list_charges(org)] == ["succeeded"]
    assert ledger.usage(org).charged_dollars == 4
    assert ledger.authenticate(key).billing.state == "ok"


def test_soft_declines_stop_after_ten_attempts_and_wait_for_a_new_card(
    ledger: Ledger, fake: FakeStripe
) -> None:
    clock = SimClock(START)
    org = ledger.create_org("acme", "cus_acme").id
    use(ledger, org, 5_000_000, at=START)
    bill = worker(ledger, fake, clock=clock, retry_base_s=HOURS, retry_max_s=72 * HOURS)
    fake.then(*["decline:insufficient_funds"] * 10)  # an 11th attempt would succeed
    for _ in range(14):  # two weeks of daily runs, and more
        bill.run_once()
        clock.advance(hours=73)
    (intent,) = fake.intents_for("cus_acme")
    assert intent["confirmations"] == 10  # the creation and nine retries
    (charge,) = ledger.list_charges(org)
    assert (charge.state, charge.attempts) == ("failed", 10)
    assert charge.first_attempt_at is not None
    assert charge.updated_at - charge.first_attempt_at <= dt.timedelta(days=30)
    row = org_row(ledger, org)
    assert row.billing_state == "past_due" and row.billing_hold is not None
    # An operator attaches a new customer (card): charged at once.
    ledger.attach_stripe(org, "cus_new")
    assert bill.run_once().succeeded == [f"{org}-2"]


def test_retries_end_thirty_days_after_the_first_attempt(ledger: Ledger, fake: FakeStripe) -> None:
    clock = SimClock(START)
    org = ledger.create_org("acme", "cus_acme").id
    use(ledger, org, 5_000_000, at=START)
    # Pauses of 12, then 24 days: a third attempt would come 36 days after the first.
    bill = worker(ledger, fake, clock=clock, retry_base_s=12 * 24 * HOURS, retry_max_s=1e9)
    fake.then(*["decline:try_again_later"] * 2)  # a third attempt would succeed
    for _ in range(6):
        bill.run_once()
        clock.advance(days=12)
    (intent,) = fake.intents_for("cus_acme")
    assert intent["confirmations"] == 2
    (charge,) = ledger.list_charges(org)
    assert charge.state == "failed" and org_row(ledger, org).billing_hold is not None


def test_a_new_card_after_a_soft_decline_is_charged_at_the_next_run(
    ledger: Ledger, desk: SelfService, fake: FakeStripe
) -> None:
    clock = SimClock(START)
    org, _, old_card = paying_org(ledger, desk, fake)
    use(ledger, org, 5_000_000, at=START)
    bill = worker(ledger, fake, clock=clock, retry_base_s=HOURS, retry_max_s=72 * HOURS)
    fake.then("decline:insufficient_funds")
    assert bill.run_once().still_pending == [f"{org}-1"]
    customer = org_row(ledger, org).stripe_customer_id
    assert customer is not None
    outcome = fake.choose_default(customer, "pm_new").body["outcome"]
    assert outcome == "payment_method_set"
    clock.advance(minutes=5)  # well inside the hour's pause
    assert bill.run_once().succeeded == [f"{org}-1"]
    (intent,) = fake.intents_for(str(customer))
    assert (intent["payment_method"], intent["confirmations"]) == ("pm_new", 2)
    assert intent["payment_method"] != old_card


def test_a_hard_decline_waits_for_a_new_payment_method(
    ledger: Ledger, desk: SelfService, fake: FakeStripe
) -> None:
    clock = SimClock(START)
    org, key, _ = paying_org(ledger, desk, fake)
    use(ledger, org, 5_000_000, at=START)
    bill = worker(ledger, fake, clock=clock)
    fake.then("decline:stolen_card")
    assert bill.run_once().failed == [f"{org}-1"]
    billing = ledger.authenticate(key).billing
    assert billing.state == "past_due" and "new payment method" in billing.message
    assert "stolen" not in billing.message  # issuers' reasons are not for the customer
    # Days pass and more is owed: the card is never asked again.
    for _ in range(5):
        clock.advance(days=1)
        use(ledger, org, 10_000_000, at=clock.now)
        assert bill.run_once().created == []
    assert len(fake.posts()) == 1
    # The user picks another card in the Billing Portal; Stripe's webhook ends the wait.
    customer = org_row(ledger, org).stripe_customer_id
    assert customer is not None
    outcome = fake.choose_default(customer, "pm_new").body["outcome"]
    assert outcome == "payment_method_set"
    assert bill.run_once().succeeded == [f"{org}-2"]
    paid = [pi for pi in fake.payment_intents.values() if pi["status"] == "succeeded"]
    assert [(pi["payment_method"], pi["amount"]) for pi in paid] == [("pm_new", 5100)]
    assert ledger.authenticate(key).billing.state == "ok"


def test_a_retry_after_stripe_dropped_the_key_finds_the_intent_first(
    ledger: Ledger, fake: FakeStripe
) -> None:
    clock = SimClock(START)
    org = ledger.create_org("acme", "cus_acme").id
    use(ledger, org, 5_000_000, at=START)
    # Stripe charges, but its answer comes after the worker gave up.
    fake.then("slow:1.0")
    report = worker(ledger, fake, clock=clock, timeout=0.3, retries=0).run_once()
    assert report.still_pending == [f"{org}-1"]
    # A day later Stripe no longer holds the key: resending it would charge again.
    clock.advance(hours=25)
    fake.forget_keys()
    assert worker(ledger, fake, clock=clock).run_once().succeeded == [f"{org}-1"]
    (intent,) = fake.intents_for("cus_acme")
    (charge,) = ledger.list_charges(org)
    assert charge.stripe_payment_intent_id == intent["id"] and charge.state == "succeeded"
    assert len(fake.posts()) == 1


def test_a_key_a_day_old_with_no_intent_at_stripe_is_replaced(
    ledger: Ledger, fake: FakeStripe
) -> None:
    clock = SimClock(START)
    org = ledger.create_org("acme", "cus_acme").id
    use(ledger, org, 5_000_000, at=START)
    fake.then("500", "500", "500")
    worker(ledger, fake, clock=clock, retries=2).run_once()
    clock.advance(hours=25)
    assert worker(ledger, fake, clock=clock).run_once().succeeded == [f"{org}-1"]
    keys = [p.idempotency_key for p in fake.posts()]
    assert keys == [f"{org}-1"] * 3 + [f"{org}-1-a2"]
    assert [pi["amount"] for pi in fake.intents_for("cus_acme")] == [400]


def test_an_unexpected_stripe_error_of_one_charge_does_not_stop_the_others(
    ledger: Ledger, fake: FakeStripe
) -> None:
    clock = SimClock(START)
    orgs = [ledger.create_org(f"o{i}", f"cus_{i}").id for i in range(3)]
    for org in orgs:
        use(ledger, org, 5_000_000, at=START)
    fake.then("403")  # a restricted key without permission, for the first charge sent
    report = worker(ledger, fake, clock=clock).run_once()
    assert len(report.succeeded) == 2 and len(report.still_pending) == 1
    (stuck,) = report.still_pending
    (charge,) = [c for org in orgs for c in ledger.list_charges(org) if c.idempotency_key == stuck]
    assert "PermissionError" in (charge.error or "")
    # The next runs go on with the others; the failed one waits its pause, then goes out.
    posts = len(fake.posts())
    worker(ledger, fake, clock=clock).run_once()
    assert len(fake.posts()) == posts
    clock.advance(hours=2)
    assert worker(ledger, fake, clock=clock).run_once().succeeded == [stuck]
