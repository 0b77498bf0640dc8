"""A paying user's billing, over HTTP as a client sees it: refused with 402 and told where to
go, sent to Stripe by `POST /v2/billing/setup`, let in once Stripe's signed webhook reaches
`POST /stripe/webhook`; the same webhook twice changes nothing, a bad signature gets 400."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session

from metering.billing import BillingConfig, BillingWorker
from metering.models import Org
from tests.selfservice.harness import STRIPE_KEY, Stack, running_stack


def org_row(stack: Stack, org_id: str) -> Org:
    with Session(stack.ledger.engine) as session:
        org = session.get(Org, org_id)
        assert org is not None
        return org


def test_an_org_without_payment_method_sets_one_up_and_is_let_in(stack: Stack) -> None:
    user = stack.account("newcomer")
    refused = stack.embed_once(user.key)
    assert refused.status_code == 402
    error = refused.json()["error"]
    assert error["code"] == "billing_setup_required"
    assert "POST /v2/billing/setup" in error["message"]
    assert "python -m metering" not in error["message"]

    setup = stack.call("POST", "/v2/billing/setup", user.key)
    assert setup.status_code == 200, setup.text
    link = setup.json()
    assert link["object"] == "billing.setup" and link["kind"] == "checkout"
    session_id = link["url"].rsplit("/", 1)[1]
    session = stack.stripe.checkout_sessions[session_id]
    assert session["success_url"] == stack.url + "/dashboard"
    assert stack.stripe.customers[session["customer"]]["metadata"] == {"org_id": user.org_id}
    # Opening the page is not paying: still refused until Stripe reports the setup complete.
    assert stack.embed_once(user.key).status_code == 402

    delivery = stack.stripe.complete_checkout(session_id)
    assert delivery.status == 200, delivery
    assert delivery.body["outcome"] == "payment_method_set" and not delivery.body["duplicate"]
    assert stack.embed_once(user.key).status_code == 200

    before = org_row(stack, user.org_id)
    again = stack.stripe.redeliver(delivery.event_id)
    assert again.status == 200 and again.body["duplicate"] is True
    assert org_row(stack, user.org_id) == before

    # Now that the org has a payment method, setup opens the Billing Portal instead.
    portal = stack.call("POST", "/v2/billing/setup", user.key).json()
    assert portal["kind"] == "portal" and "/portal/" in portal["url"]


def test_a_webhook_with_a_bad_signature_is_400_and_changes_nothing(stack: Stack) -> None:
    user = stack.account("forger")
    link = stack.call("POST", "/v2/billing/setup", user.key).json()
    stack.stripe.webhook_sink = lambda payload, header: (202, {})  # keep it from the gateway
    try:
        event_id = stack.stripe.complete_checkout(link["url"].rsplit("/", 1)[1]).event_id
    finally:
        stack.stripe.webhook_sink = None
    forged = stack.stripe.redeliver(event_id, secret="whsec_not_the_endpoints")
    assert forged.status == 400
    assert forged.body["error"]["code"] == "invalid_signature"
    unsigned = stack.call("POST", "/stripe/webhook", None, data=stack.stripe.events[event_id])
    assert unsigned.status_code == 400
    assert org_row(stack, user.org_id).payment_method_id is None
    assert stack.embed_once(user.key).status_code == 402
    # The genuine delivery is still applied afterwards.
    assert stack.stripe.redeliver(event_id).body["outcome"] == "payment_method_set"
    assert stack.embed_once(user.key).status_code == 200


def test_unknown_event_types_are_acknowledged(stack: Stack) -> None:
    delivery = stack.stripe.send_event("invoice.finalized", {"id": "in_x", "object": "invoice"})
    assert delivery.status == 200
    assert delivery.body == {
        "received": True, "event_id": delivery.event_id, "type": "invoice.finalized",
        "duplicate": False, "outcome": "ignored",
    }  # fmt: skip


def test_setup_needs_a_valid_key(stack: Stack) -> None:
    assert stack.call("POST", "/v2/billing/setup", None).status_code == 401
    assert stack.call("POST", "/v2/billing/setup", "ie_nope_x").status_code == 401


@pytest.fixture(scope="module")
def stripe_off(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(Path(tmp_path_factory.mktemp("stripe-off")), stripe=False) as running:
        yield running


def test_with_stripe_off_setup_and_webhooks_say_so(stripe_off: Stack) -> None:
    user = stripe_off.account("local")
    setup = stripe_off.call("POST", "/v2/billing/setup", user.key)
    assert setup.status_code == 503
    error = setup.json()["error"]
    assert error["code"] == "billing_not_configured" and "operator" in error["message"]
    webhook = stripe_off.call("POST", "/stripe/webhook", None, data=b"{}")
    assert webhook.status_code == 503


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(Path(tmp_path_factory.mktemp("proxy")), behind_proxy=True) as running:
        yield running


def test_stripe_sends_users_back_over_https_behind_a_tls_proxy_only_when_told(
    stack: Stack, behind_proxy: Stack
) -> None:
    # What a TLS-terminating proxy forwards: the user's scheme and host.
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.test"}

    def return_url(running: Stack, headers: dict[str, str]) -> str:
        user = running.account("proxied")
        setup = running.call("POST", "/v2/billing/setup", user.key, headers=headers)
        assert setup.status_code == 200, setup.text
        session_id = setup.json()["url"].rsplit("/", 1)[1]
        return str(running.stripe.checkout_sessions[session_id]["success_url"])

    assert return_url(behind_proxy, forwarded) == "https://api.example.test/dashboard"
    assert return_url(behind_proxy, {}) == behind_proxy.url + "/dashboard"
    # Headers a client may have forged, a path smuggled in as a host: not a URL of theirs.
    spoofed = {"X-Forwarded-Proto": "javascript", "X-Forwarded-Host": "evil.test/x?"}
    assert return_url(behind_proxy, spoofed) == behind_proxy.url + "/dashboard"
    # Not behind a proxy (the default): the same headers change nothing.
    assert return_url(stack, forwarded) == stack.url + "/dashboard"


def test_when_stripe_fails_setup_is_503_and_says_who(stack: Stack) -> None:
    user = stack.account("ghost", customer="cus_ghost")
    del stack.stripe.customers["cus_ghost"]  # an operator attached a customer Stripe lost
    reply = stack.call("POST", "/v2/billing/setup", user.key)
    assert reply.status_code == 503
    assert reply.json()["error"]["message"] == "Stripe is unavailable right now; retry shortly."


def test_a_charge_stripe_fails_later_makes_the_org_past_due_once(stack: Stack) -> None:
    user = stack.account("late-decline")
    link = stack.call("POST", "/v2/billing/setup", user.key).json()
    stack.stripe.complete_checkout(link["url"].rsplit("/", 1)[1])
    stack.use(user.org_id, user.projects[0], 5_000_000, dt.datetime.now(dt.UTC))
    customer = org_row(stack, user.org_id).stripe_customer_id
    assert customer is not None
    stack.stripe.processing_customers.add(customer)
    # From the first dollar: these tests follow a $4 charge, not the charge policy.
    config = BillingConfig(
        stripe_api_key=STRIPE_KEY,
        stripe_api_base=stack.stripe.base_url,
        charge_threshold_dollars=1,
    )
    BillingWorker(stack.ledger.engine, config).run_once()
    (intent,) = stack.stripe.intents_for(customer)
    assert stack.call("GET", "/v2/usage", user.key).json()["total"]["pending_dollars"] == 4

    failed = stack.stripe.settle_intent(intent["id"], succeeded=False)
    assert failed.status == 200 and failed.body["outcome"] == "charge_failed"
    assert stack.stripe.redeliver(failed.event_id).body["duplicate"] is True
    (charge,) = stack.ledger.list_charges(user.org_id)
    assert charge.state == "failed" and org_row(stack, user.org_id).billing_failures == 1
    usage = stack.call("GET", "/v2/usage", user.key).json()
    # Under the unpaid limit the org is still served, and told what to fix.
    assert usage["billing"]["state"] == "past_due" and usage["billing"]["ok"] is True
    assert "POST /v2/billing/setup" in usage["billing"]["message"]
    assert (usage["total"]["charged_dollars"], usage["total"]["pending_dollars"]) == (0, 0)
