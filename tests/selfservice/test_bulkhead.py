"""Stripe hanging, over HTTP: a key holder hammering `POST /v2/billing/setup` fills metering's
Stripe pool and is told to come back (503, Retry-After), while every other tenant's
`/v2/embeddings` goes on; once Stripe answers, the setup calls that waited get their pages."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from metering.settings import Settings as MeteringSettings
from tests.selfservice.harness import Stack
from tests.support.waiting import until

SETUP_CALLS = 40


def test_setup_while_stripe_hangs_is_503_busy_and_embeddings_go_on(stack: Stack) -> None:
    defaults = MeteringSettings()  # what the stack's metering runs with
    admitted = defaults.stripe_threads + defaults.stripe_queue
    assert SETUP_CALLS > admitted
    # Its customer exists, with a card: each call opens a Billing Portal session (a first
    # setup's customer creation shares one idempotency key, and Stripe answers 409 to a key
    # that is in flight already).
    hammer = stack.account("hammer", customer="cus_hammer")
    bystander = stack.account("bystander", customer="cus_bystander")
    stack.stripe.stall()
    try:
        with ThreadPoolExecutor(SETUP_CALLS) as threads:
            calls = [
                threads.submit(stack.call, "POST", "/v2/billing/setup", hammer.key)
                for _ in range(SETUP_CALLS)
            ]
            until(
                lambda: sum(c.done() for c in calls) >= SETUP_CALLS - admitted,
                15,
                "setup calls past the pool refused",
            )
            refused = [c.result() for c in calls if c.done()]
            assert len(refused) == SETUP_CALLS - admitted
            for reply in refused:
                assert reply.status_code == 503
                assert int(reply.headers["retry-after"]) >= 1
                error = reply.json()["error"]
                assert error["code"] == "billing_busy"
                assert error["message"].startswith("Billing is busy")

            # Another tenant, never seen by this gateway (no cached authentication).
            assert stack.embed_once(bystander.key).status_code == 200
            assert stack.stripe.stalled() == defaults.stripe_threads

            stack.stripe.resume()
            waited = [c.result() for c in calls if c.result() not in refused]
        assert len(waited) == admitted
        assert [(r.status_code, r.text) for r in waited if r.status_code != 200] == []
        assert {r.json()["kind"] for r in waited} == {"portal"}
        assert stack.call("POST", "/v2/billing/setup", hammer.key).status_code == 200
    finally:
        stack.stripe.resume()
