"""The billing worker against the fake Stripe API through the real stripe SDK: whole-dollar
amounts from cumulative tokens, exactly-once charges, the payment method charged, 500s,
timeouts, Stripe off. Declines are :mod:`tests.metering.test_declines`, when to charge
:mod:`tests.metering.test_charge_policy`."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import random
import threading

import pytest
import stripe

from metering.billing_setup import SelfService
from metering.ledger import Ledger
from metering.pricing import owed_dollars
from metering.usage import Event
from tests.fakes.fake_stripe import FakeStripe
from tests.metering.harness import KEY, org_row, paying_org, use, worker


def charged(ledger: Ledger, org: str) -> int:
    return ledger.usage(org).charged_dollars


def test_five_million_tokens_is_exactly_four_dollars(ledger: Ledger, fake: FakeStripe) -> None:
    org = ledger.create_org("acme", "cus_acme").id
    web = ledger.create_project(org, "web").id
    use(ledger, org, 3_000_000, project=web)
    use(ledger, org, 2_000_000)
    report = worker(ledger, fake).run_once()
    assert report.created == [f"{org}-1"] and report.succeeded == [f"{org}-1"]
    (pi,) = fake.intents_for("cus_acme")
    assert (pi["amount"], pi["currency"], pi["status"]) == (400, "usd", "succeeded")
    assert pi["confirm"] and pi["off_session"]
    meta = pi["metadata"]
    assert (meta["tokens_from"], meta["tokens_to"]) == ("0", "5000000")
    assert meta[f"project:{web}"] == "3000000" and meta["project:none"] == "2000000"
    (post,) = fake.posts()
    assert post.idempotency_key == f"{org}-1"
    usage = ledger.usage(org)
    assert (usage.owed_dollars, usage.charged_dollars, usage.pending_dollars) == (4, 4, 0)
    # Nothing new owed: a second run charges nothing.
    assert worker(ledger, fake).run_once().created == []
    assert len(fake.payment_intents) == 1


def test_one_token_crosses_the_first_dollar(ledger: Ledger, fake: FakeStripe) -> None:
    org = ledger.create_org("acme", "cus_acme").id
    use(ledger, org, 1_063_829)
    assert worker(ledger, fake).run_once().created == []
    assert fake.posts() == []
    use(ledger, org, 1)
    worker(ledger, fake).run_once()
    (pi,) = fake.intents_for("cus_acme")
    assert pi["amount"] == 100
    meta = pi["metadata"]
    assert (meta["tokens_from"], meta["tokens_to"]) == ("0", "1063830")


def test_many_small_requests_are_billed_from_the_exact_sum(
    ledger: Ledger, fake: FakeStripe
) -> None:
    org = ledger.create_org("acme", "cus_acme").id
    # 20,000 requests of 107 tokens: each costs 0.01 cents, rounded per request it would be $0.
    use(ledger, org, *([107] * 20_000))
    worker(ledger, fake).run_once()
    assert ledger.usage(org).total_tokens == 2_140_000
    assert charged(ledger, org) == 2 == owed_dollars(2_140_000)


def test_charges_always_equal_the_floor_of_cumulative_cost(
    ledger: Ledger, fake: FakeStripe
) -> None:
    rng = random.Random(7)
    org = ledger.create_org("acme", "cus_acme").id
    bill = worker(ledger, fake)
    total = 0
    for _ in range(25):
        batch = [rng.randint(0, 400_000) for _ in range(rng.randint(1, 8))]
        use(ledger, org, *batch)
        total += sum(batch)
        if rng.random() < 0.6:
            bill.run_once()
            assert charged(ledger, org) == total * 94 // 100_000_000
    bill.run_once()
    assert charged(ledger, org) == owed_dollars(total)
    intents = fake.intents_for("cus_acme")
    assert sum(pi["amount"] for pi in intents) == 100 * owed_dollars(total)
    # Token ranges chain without gap or overlap.
    charges = ledger.list_charges(org)
    assert [c.seq for c in charges] == list(range(1, len(charges) + 1))
    for before, after in itertools.pairwise(charges):
        assert after.tokens_from == before.tokens_to


def test_without_stripe_key_charges_stay_pending_and_logs_say_so(
    ledger: Ledger, fake: FakeStripe, caplog: pytest.LogCaptureFixture
) -> None:
    org = ledger.create_org("acme", "cus_acme").id
    use(ledger, org, 5_000_000)
    with caplog.at_level(logging.WARNING, logger="metering.billing"):
        report = worker(ledger, None).run_once()
    assert report.still_pending == [f"{org}-1"]
    assert "METERING_STRIPE_API_KEY" in caplog.text
    usage = ledger.usage(org)
    assert (usage.charged_dollars, usage.pending_dollars) == (0, 4)
    # Turned on later: the pending charge is sent with its own key, nothing more.
    use(ledger, org, 2_000_000)
    report = worker(ledger, fake).run_once()
    assert report.succeeded == [f"{org}-1"]
    assert [p.idempotency_key for p in fake.posts()] == [f"{org}-1"]
    worker(ledger, fake).run_once()
    assert charged(ledger, org) == owed_dollars(7_000_000) == 6
    assert [pi["amount"] for pi in fake.intents_for("cus_acme")] == [400, 200]


def test_org_without_customer_is_not_charged_but_keeps_its_debt(
    ledger: Ledger, fake: FakeStripe
) -> None:
    org = ledger.create_org("acme").id
    use(ledger, org, 5_000_000)
    assert worker(ledger, fake).run_once().created == []
    assert ledger.usage(org).owed_dollars == 4
    ledger.attach_stripe(org, "cus_late")
    worker(ledger, fake).run_once()
    assert [pi["amount"] for pi in fake.intents_for("cus_late")] == [400]


def test_the_customers_default_payment_method_is_charged(ledger: Ledger, fake: FakeStripe) -> None:
    # A customer an operator attached: its card was set up at Stripe, not through us.
    fake.add_customer("cus_acme", "pm_house")
    org = ledger.create_org("acme", "cus_acme").id
    use(ledger, org, 5_000_000)
    assert worker(ledger, fake).run_once().succeeded == [f"{org}-1"]
    (pi,) = fake.intents_for("cus_acme")
    assert (pi["payment_method"], pi["amount"], pi["status"]) == ("pm_house", 400, "succeeded")
    (charge,) = ledger.list_charges(org)
    assert charge.payment_method_id == "pm_house"


def test_a_customer_without_any_payment_method_is_not_charged(
    ledger: Ledger, fake: FakeStripe
) -> None:
    fake.add_customer("cus_bare", None)
    org = ledger.create_org("bare", "cus_bare").id
    _, key = ledger.create_key(org)
    use(ledger, org, 5_000_000)
    assert worker(ledger, fake).run_once().failed == [f"{org}-1"]
    assert fake.intents_for("cus_bare") == []
    assert ledger.authenticate(key).billing.state == "no_payment_method"
    assert ledger.usage(org).owed_dollars == 4 and charged(ledger, org) == 0


def test_attaching_another_customer_forgets_the_old_payment_method(
    ledger: Ledger, desk: SelfService, fake: FakeStripe
) -> None:
    org, _, old_method = paying_org(ledger, desk, fake)
    fake.add_customer("cus_other", "pm_other")
    ledger.attach_stripe(org, "cus_other")
    assert org_row(ledger, org).payment_method_id is None
    use(ledger, org, 5_000_000)
    worker(ledger, fake).run_once()
    (pi,) = fake.payment_intents.values()
    assert (pi["customer"], pi["payment_method"]) == ("cus_other", "pm_other")
    assert pi["payment_method"] != old_method


def test_stripe_500_is_resent_with_the_same_key(ledger: Ledger, fake: FakeStripe) -> None:
    org = ledger.create_org("acme", "cus_acme").id
    use(ledger, org, 5_000_000)
    fake.then("500")
    report = worker(ledger, fake).run_once()
    assert report.succeeded == [f"{org}-1"]
    posts = fake.posts()
    assert [p.status for p in posts] == [500, 200]
    assert {p.idempotency_key for p in posts} == {f"{org}-1"}
    assert len(fake.payment_intents) == 1


def test_stripe_down_leaves_charge_pending_then_sends_it_once(
    ledger: Ledger, fake: FakeStripe
) -> None:
    org = ledger.create_org("acme", "cus_acme").id
    use(ledger, org, 5_000_000)
    fake.then("500", "500", "500")
    report = worker(ledger, fake, retries=2).run_once()
    assert report.still_pending == [f"{org}-1"]
    (charge,) = ledger.list_charges(org)
    assert charge.state == "pending" and "APIError" in (charge.error or "")
    assert charge.next_attempt_at is not None
    assert ledger.usage(org).pending_dollars == 4
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE charges SET next_attempt_at = NULL")
    use(ledger, org, 3_000_000)  # more usage while pending: not mixed into the pending charge
    report = worker(ledger, fake).run_once()
    assert report.succeeded == [f"{org}-1"]
    assert {p.idempotency_key for p in fake.posts()} == {f"{org}-1"}
    worker(ledger, fake).run_once()
    assert [pi["amount"] for pi in fake.intents_for("cus_acme")] == [400, 300]


def test_timeout_is_resent_with_the_same_key_and_charges_once(
    ledger: Ledger, fake: FakeStripe
) -> None:
    org = ledger.create_org("acme", "cus_acme").id
    use(ledger, org, 5_000_000)
    fake.then("slow:2.0")
    report = worker(ledger, fake, timeout=0.5).run_once()
    assert report.succeeded == [f"{org}-1"]
    posts = fake.posts()
    assert len(posts) >= 2 and posts[-1].replayed
    assert len(fake.payment_intents) == 1


def test_fake_stripe_idempotency(fake: FakeStripe) -> None:
    client = stripe.StripeClient(KEY, base_addresses={"api": fake.base_url})
    params = {"amount": 100, "currency": "usd", "customer": "cus_x", "confirm": True,
              "payment_method": "pm_x"}  # fmt: skip
    first = client.v1.payment_intents.create(params, {"idempotency_key": "k1"})  # type: ignore[arg-type]
    again = client.v1.payment_intents.create(params, {"idempotency_key": "k1"})  # type: ignore[arg-type]
    assert first.id == again.id and len(fake.payment_intents) == 1
    other_body = dict(params, amount=200)
    with pytest.raises(stripe.IdempotencyError):
        client.v1.payment_intents.create(other_body, {"idempotency_key": "k1"})  # type: ignore[arg-type]
    with pytest.raises(stripe.AuthenticationError):
        other = stripe.StripeClient("sk_live_x", base_addresses={"api": fake.base_url})
        other.v1.customers.create()
    assert client.v1.customers.create().id.startswith("cus_")


def test_usage_at_is_kept_in_utc(ledger: Ledger) -> None:
    org = ledger.create_org("acme").id
    at = dt.datetime(2026, 1, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    ledger.record_calls([[Event("tz", org, "", "m", 5, 1, at)]])
    assert [b.day for b in ledger.usage(org).buckets] == ["2025-12-31"]


def _workers_in_threads(ledger: Ledger, fake: FakeStripe) -> None:
    fake.delay_s = 0.1
    orgs = [ledger.create_org(f"o{i}", f"cus_{i}").id for i in range(8)]
    for org in orgs:
        use(ledger, org, 3_000_000)
    barrier = threading.Barrier(3)

    def run() -> None:
        barrier.wait()
        worker(ledger, fake).run_once()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, org in enumerate(orgs):
        assert [pi["amount"] for pi in fake.intents_for(f"cus_{i}")] == [200]
        assert [c.state for c in ledger.list_charges(org)] == ["succeeded"]


def test_three_workers_at_once_charge_each_dollar_once(ledger: Ledger, fake: FakeStripe) -> None:
    _workers_in_threads(ledger, fake)


@pytest.mark.postgres
def test_three_workers_at_once_on_postgres(pg_url: str, fake: FakeStripe) -> None:
    from metering.database import make_engine

    engine = make_engine(pg_url)
    _workers_in_threads(Ledger(engine), fake)
    # Row locks, not replays, kept them apart: each charge was sent by one worker only.
    assert len(fake.posts()) == 8
    engine.dispose()


def test_debt_over_stripes_largest_charge_is_split_across_runs(
    ledger: Ledger, fake: FakeStripe
) -> None:
    org = ledger.create_org("whale", "cus_whale").id
    tokens = 1_500_000 * 100_000_000 // 94 + 1  # just over $1.5M owed
    use(ledger, org, *([1_000_000_000] * (tokens // 1_000_000_000)), tokens % 1_000_000_000)
    assert ledger.usage(org).owed_dollars == 1_500_000
    bill = worker(ledger, fake)
    bill.run_once()
    bill.run_once()
    assert [pi["amount"] for pi in fake.intents_for("cus_whale")] == [99_999_900, 50_000_100]
    assert charged(ledger, org) == 1_500_000
