"""Self-service billing in metering against the fake Stripe through the real SDK: the setup
page and the org's customer, and Stripe's signed webhooks verified and applied once per event
id (setup completed, payment method detached or changed, PaymentIntents settled late), on
SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from intent_embed.rich_status import BAD_SIGNATURE, STRIPE_NOT_CONFIGURED, details_of
from intent_embed.v1 import metering_pb2, metering_pb2_grpc
from metering.billing_setup import CHECKOUT, PORTAL, SelfService
from metering.errors import BadSignature, StripeNotConfigured
from metering.ledger import Ledger
from metering.models import StripeEvent
from metering.server import Metrics, start_server
from metering.settings import Settings
from metering.settlement import RetryPolicy
from tests.fakes.fake_stripe import FakeStripe
from tests.fakes.fake_stripe_billing import Delivery, signature_header
from tests.metering.harness import (
    KEY,
    RETURN_URL,
    SECRET,
    Service,
    deliver_to,
    org_row,
    paying_org,
    use,
    worker,
)


def applied_events(ledger: Ledger) -> int:
    with Session(ledger.engine) as session:
        return int(session.exec(select(func.count()).select_from(StripeEvent)).one())


def test_setup_creates_the_customer_once_and_billing_waits_for_the_webhook(
    ledger: Ledger, desk: SelfService, fake: FakeStripe
) -> None:
    org = ledger.create_org("acme").id
    _, key = ledger.create_key(org)
    links = []
    threads = [
        threading.Thread(target=lambda: links.append(desk.setup(org, RETURN_URL)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Three first setups at once: one Stripe customer, with the org in its metadata.
    (customer,) = fake.customers.values()
    assert customer["metadata"] == {"org_id": org}
    assert {link.customer_id for link in links} == {customer["id"]}
    assert {link.kind for link in links} == {CHECKOUT}
    session = fake.checkout_sessions[links[0].url.rsplit("/", 1)[1]]
    assert (session["mode"], session["customer"], session["success_url"]) == (
        "setup", customer["id"], RETURN_URL,
    )  # fmt: skip
    # A customer is not a payment method: still refused until Stripe says the setup completed.
    assert ledger.authenticate(key).billing.state == "no_payment_method"
    delivery = fake.complete_checkout(session["id"])
    assert delivery.body["outcome"] == "payment_method_set" and not delivery.body["duplicate"]
    auth = ledger.authenticate(key)
    assert auth.billing.ok and auth.billing.state == "ok"
    method = org_row(ledger, org).payment_method_id
    assert method == fake.setup_intents[session["setup_intent"]]["payment_method"]
    assert fake.customers[customer["id"]]["invoice_settings"]["default_payment_method"] == method
    # With a payment method, setup opens the Billing Portal for the same customer.
    again = desk.setup(org, RETURN_URL)
    assert again.kind == PORTAL and again.customer_id == customer["id"]
    assert len(fake.customers) == 1


def test_the_same_event_twice_changes_nothing_the_second_time(
    ledger: Ledger, desk: SelfService, fake: FakeStripe
) -> None:
    org, _, _ = paying_org(ledger, desk, fake)
    (event_id,) = fake.events
    before = org_row(ledger, org)
    again = fake.redeliver(event_id)
    assert again.status == 200 and again.body["duplicate"]
    assert again.body["outcome"] == "payment_method_set"  # what the first delivery did
    assert org_row(ledger, org) == before
    assert applied_events(ledger) == 1


def test_a_bad_signature_changes_nothing(
    ledger: Ledger, desk: SelfService, fake: FakeStripe
) -> None:
    org = ledger.create_org("acme").id
    link = desk.setup(org, RETURN_URL)
    fake.webhook_sink = lambda payload, header: (202, {})  # hold it: the test sends it below
    fake.complete_checkout(link.url.rsplit("/", 1)[1])
    (event_id,) = fake.events
    payload = fake.events[event_id]
    fake.webhook_sink = deliver_to(desk)
    forged = fake.redeliver(event_id, secret="whsec_someone_else")
    assert forged.status == 400 and "signature" in forged.body["error"].lower()
    for body, header in (
        (payload, ""),
        (payload.replace(b"setup", b"payment"), _header(fake, payload)),
        (b"not json", _header(fake, b"not json")),
    ):
        with pytest.raises(BadSignature):
            desk.apply_event(body, header)
    assert applied_events(ledger) == 0
    assert org_row(ledger, org).billing_state == "no_payment_method"
    # The genuine delivery still applies afterwards: a refused one did not mark it seen.
    assert fake.redeliver(event_id).body["outcome"] == "payment_method_set"


def _header(fake: FakeStripe, payload: bytes) -> str:
    return signature_header(payload, fake.webhook_secret, int(time.time()))


def test_unknown_event_types_are_acknowledged_and_ignored(
    ledger: Ledger, desk: SelfService, fake: FakeStripe
) -> None:
    delivery = fake.send_event("invoice.created", {"id": "in_1", "object": "invoice"})
    assert delivery.status == 200 and delivery.body["outcome"] == "ignored"
    assert fake.redeliver(delivery.event_id).body["duplicate"]


def test_without_secret_or_key_self_service_says_it_is_off(ledger: Ledger) -> None:
    org = ledger.create_org("acme").id
    off = SelfService(ledger.engine, None, "", RetryPolicy())
    with pytest.raises(StripeNotConfigured, match="METERING_STRIPE_API_KEY"):
        off.setup(org, RETURN_URL)
    with pytest.raises(StripeNotConfigured, match="METERING_STRIPE_WEBHOOK_SECRET"):
        off.apply_event(b"{}", "t=1,v1=00")


def test_detached_payment_method_stops_billing_and_charges(
    ledger: Ledger, desk: SelfService, fake: FakeStripe
) -> None:
    org, key, method = paying_org(ledger, desk, fake)
    use(ledger, org, 5_000_000)
    assert fake.detach(method).body["outcome"] == "payment_method_removed"
    assert ledger.authenticate(key).billing.state == "no_payment_method"
    # No card: the worker charges nothing and the debt stays owed.
    assert worker(ledger, fake).run_once().created == []
    assert ledger.usage(org).owed_dollars == 4
    # A new card from the portal (the customer's new default) lets the org in again, and the
    # next charge goes to that card.
    customer = org_row(ledger, org).stripe_customer_id
    assert customer is not None
    fake.payment_methods["pm_new"] = {"id": "pm_new", "object": "payment_method",
                                      "customer": customer}  # fmt: skip
    assert fake.choose_default(customer, "pm_new").body["outcome"] == "payment_method_set"
    assert ledger.authenticate(key).billing.ok
    worker(ledger, fake).run_once()
    (intent,) = fake.intents_for(customer)
    assert intent["payment_method"] == "pm_new" and intent["amount"] == 400


def charge_left_processing(
    ledger: Ledger, desk: SelfService, fake: FakeStripe
) -> tuple[str, str, str]:
    """A paying org whose $4 charge Stripe left processing: (org, key, the intent's id)."""
    org, key, _ = paying_org(ledger, desk, fake)
    use(ledger, org, 5_000_000)
    fake.then("processing")
    report = worker(ledger, fake, retry_base_s=60).run_once()
    assert report.still_pending == [f"{org}-1"]
    (charge,) = ledger.list_charges(org)
    assert charge.state == "pending" and charge.stripe_payment_intent_id is not None
    return org, key, charge.stripe_payment_intent_id


def test_processing_intent_that_fails_later_marks_past_due_exactly_once(
    ledger: Ledger, desk: SelfService, fake: FakeStripe
) -> None:
    org, key, intent = charge_left_processing(ledger, desk, fake)
    failed = fake.settle_intent(intent, succeeded=False)
    assert failed.body["outcome"] == "charge_failed"
    (after,) = ledger.list_charges(org)
    assert after.state == "failed" and "declined" in (after.error or "")
    assert org_row(ledger, org).billing_failures == 1
    auth = ledger.authenticate(key)
    assert auth.billing.state == "past_due"
    # Stripe resends the event; and the worker runs again: nothing counts twice.
    assert fake.redeliver(failed.event_id).body["duplicate"]
    worker(ledger, fake).run_once()
    assert org_row(ledger, org).billing_failures == 1
    assert [c.state for c in ledger.list_charges(org)] == ["failed"]
    usage = ledger.usage(org)
    assert (usage.owed_dollars, usage.charged_dollars, usage.pending_dollars) == (4, 0, 0)


def test_processing_intent_that_succeeds_later_is_counted_once(
    ledger: Ledger, desk: SelfService, fake: FakeStripe
) -> None:
    org, _, intent = charge_left_processing(ledger, desk, fake)
    done = fake.settle_intent(intent, succeeded=True)
    assert done.body["outcome"] == "charge_succeeded"
    fake.redeliver(done.event_id)
    worker(ledger, fake).run_once()
    usage = ledger.usage(org)
    assert (usage.charged_dollars, usage.pending_dollars) == (4, 0)
    assert [pi["id"] for pi in fake.payment_intents.values()] == [intent]


@pytest.mark.parametrize(("decline", "state"), [("stolen_card", "failed"),
                                                ("insufficient_funds", "pending")])  # fmt: skip
def test_a_decline_the_worker_already_wrote_is_not_counted_again(
    ledger: Ledger, desk: SelfService, fake: FakeStripe, decline: str, state: str
) -> None:
    org, _, _ = paying_org(ledger, desk, fake)
    use(ledger, org, 5_000_000)
    fake.then(f"decline:{decline}")
    worker(ledger, fake, retry_base_s=60).run_once()
    (intent,) = fake.payment_intents.values()
    late: Delivery = fake.send_event("payment_intent.payment_failed", intent)
    assert late.body["outcome"] == "unchanged"
    # A hard decline failed the charge once; a soft one stays pending for its retry.
    (charge,) = ledger.list_charges(org)
    assert charge.state == state
    assert org_row(ledger, org).billing_failures == (1 if state == "failed" else 0)


def test_an_intent_is_found_by_its_metadata_when_its_id_was_never_written(
    ledger: Ledger, desk: SelfService, fake: FakeStripe
) -> None:
    org, _, _ = paying_org(ledger, desk, fake)
    use(ledger, org, 5_000_000)
    worker(ledger, None).run_once()  # Stripe off: pending, no intent id (as after a crash)
    (charge,) = ledger.list_charges(org)
    fake.payment_intents["pi_lost"] = {
        "id": "pi_lost", "object": "payment_intent", "amount": 400, "status": "processing",
        "customer": charge.customer_id, "metadata": {"org_id": org, "charge_seq": "1"},
    }  # fmt: skip
    assert fake.settle_intent("pi_lost", succeeded=True).body["outcome"] == "charge_succeeded"
    (charge,) = ledger.list_charges(org)
    assert (charge.state, charge.stripe_payment_intent_id) == ("succeeded", "pi_lost")


def test_concurrent_deliveries_of_one_event_apply_it_once(
    ledger: Ledger, desk: SelfService, fake: FakeStripe
) -> None:
    org, _, intent = charge_left_processing(ledger, desk, fake)
    fake.webhook_sink = lambda payload, header: (202, {})  # hold it: sent below, at once
    event_id = fake.settle_intent(intent, succeeded=False).event_id
    fake.webhook_sink = deliver_to(desk)
    barrier = threading.Barrier(4)

    def send() -> None:
        barrier.wait()
        fake.redeliver(event_id)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    results = [d for d in fake.deliveries if d.event_id == event_id and d.status == 200]
    assert sorted(d.body["duplicate"] for d in results) == [False, True, True, True]
    assert org_row(ledger, org).billing_failures == 1


async def test_grpc_statuses_say_what_is_wrong(service: Service) -> None:
    org = service.ledger.create_org("acme").id
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.stub.CreateBillingSetup(
            metering_pb2.CreateBillingSetupRequest(org_id=org, return_url=RETURN_URL)
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details_of(info.value).reason == STRIPE_NOT_CONFIGURED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.stub.ApplyStripeEvent(
            metering_pb2.ApplyStripeEventRequest(payload=b"{}", signature="t=1,v1=00")
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_grpc_bad_signature_is_invalid_argument(ledger: Ledger, fake: FakeStripe) -> None:
    settings = Settings(
        stripe_api_key=KEY, stripe_api_base=fake.base_url, stripe_webhook_secret=SECRET,
        insecure_no_auth=True,
    )
    running = await start_server(ledger, settings, Metrics(), address="127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = metering_pb2_grpc.MeteringServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ApplyStripeEvent(
                    metering_pb2.ApplyStripeEventRequest(payload=b"{}", signature="t=1,v1=00")
                )
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert details_of(info.value).reason == BAD_SIGNATURE
            org = ledger.create_org("acme").id
            reply = await stub.CreateBillingSetup(
                metering_pb2.CreateBillingSetupRequest(org_id=org, return_url=RETURN_URL)
            )
            assert reply.kind == CHECKOUT and reply.url.startswith(fake.base_url + "/pay/")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.CreateBillingSetup(
                    metering_pb2.CreateBillingSetupRequest(org_id=org, return_url="javascript:x")
                )
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await running.stop(1.0, quiet_s=0)
