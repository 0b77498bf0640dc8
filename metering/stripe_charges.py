"""Sending one charge to Stripe and classifying what came back.

A charge is one PaymentIntent, confirmed off-session for a payment method: the org's (set up
through Stripe), else the customer's ``invoice_settings.default_payment_method`` (read from
Stripe: PaymentIntents never fall back to it), fixed on the charge at its first attempt so
every resend sends the same body. Exactly once, whatever happens between attempts:

- creation carries an ``Idempotency-Key`` (the charge's own, ``<org>-<seq>``), so a resend
  after a timeout or crash gets Stripe's first answer back instead of a second payment;
- Stripe keeps a key's answer for 24 hours only, so a key older than that is never resent:
  the intent is first looked for by the org and sequence number in its metadata, and only if
  Stripe has none is it created, under a new key;
- once the intent's id is known it is never created again: a retry after a soft decline
  confirms that same intent again (an intent succeeds at most once), and an intent still
  processing is asked for its outcome.

The outcome says which state the charge row moves to and what this attempt sent; the billing
worker (:mod:`metering.billing`) writes it through :mod:`metering.settlement`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, replace
from typing import Any

import stripe

from metering.declines import decline_kind
from metering.models import CHARGE_FAILED, CHARGE_PENDING, CHARGE_SUCCEEDED, Charge
from metering.stripe_accounts import stripe_id
from metering.stripe_api import stripe_client

log = logging.getLogger("metering.billing")

# Stripe prunes idempotency keys once they are at least 24 hours old; an hour of margin
# covers the difference between its clock and ours.
KEY_REUSE_LIMIT = dt.timedelta(hours=23)
# Intent states in which confirming again is how a charge is retried.
RETRYABLE_STATUSES = ("requires_payment_method", "requires_confirmation")


@dataclass(frozen=True)
class Outcome:
    """What one Stripe attempt came to, before it is written to the charge row."""

    state: str
    error: str | None = None
    intent_id: str | None = None
    status: str | None = None
    declined: bool = False  # the card said no (the org is shown past due)
    hold: str | None = None  # set: only a new payment method can make it pay
    no_payment_method: bool = False  # neither the org nor the customer has one
    payment_method_id: str | None = None  # what the attempt charged
    request_key: str | None = None  # the Idempotency-Key the creation was sent with
    request_key_at: dt.datetime | None = None  # when that key was first used


@dataclass
class _Sent:
    """What this attempt sent, kept on the charge whatever Stripe answers."""

    intent_id: str | None
    payment_method_id: str | None = None
    request_key: str | None = None
    request_key_at: dt.datetime | None = None


class StripeCharges:
    """The Stripe client of one billing worker (the real SDK, pointed at `api_base`)."""

    def __init__(self, api_key: str, api_base: str, max_retries: int, timeout_s: float) -> None:
        self._client = stripe_client(api_key, api_base, max_retries, timeout_s)

    def attempt(self, charge: Charge, now: dt.datetime) -> Outcome:
        """One attempt; never raises for a Stripe error (one charge must not stop a run)."""
        sent = _Sent(charge.stripe_payment_intent_id, charge.payment_method_id)
        try:
            outcome = self._attempt(charge, now, sent)
        except stripe.CardError as exc:
            outcome = _declined(exc)
        except (
            stripe.APIConnectionError,
            stripe.RateLimitError,
            stripe.APIError,
            stripe.IdempotencyError,
        ) as exc:
            # Transient: keep the charge pending, resend later (same key while Stripe has it).
            outcome = Outcome(CHARGE_PENDING, f"{type(exc).__name__}: {exc.user_message or exc}")
        except stripe.InvalidRequestError as exc:
            # Stripe refuses this charge as sent: like a decline the org must act; the debt
            # stays owed.
            message = f"{type(exc).__name__}: {exc.user_message or exc}"
            outcome = Outcome(CHARGE_FAILED, message, _intent_id_of(exc), "invalid_request")
        except stripe.StripeError as exc:
            # E.g. a restricted key without permission: ours to fix. This charge waits a
            # pause like any failed attempt; the other orgs' charges go on.
            log.error(
                "event=stripe_unexpected org=%s seq=%d error=%r", charge.org_id, charge.seq, exc
            )
            outcome = Outcome(CHARGE_PENDING, f"unexpected {type(exc).__name__}: {exc}")
        return replace(
            outcome,
            intent_id=outcome.intent_id or sent.intent_id,
            payment_method_id=sent.payment_method_id,
            request_key=sent.request_key,
            request_key_at=sent.request_key_at,
        )

    def _attempt(self, charge: Charge, now: dt.datetime, sent: _Sent) -> Outcome:
        key_at = charge.request_key_at or charge.created_at
        key_expired = now - key_at >= KEY_REUSE_LIMIT
        if sent.intent_id is None and key_expired:
            # The key may be gone at Stripe: a resend could pay twice. Ask Stripe first.
            sent.intent_id = self._find_intent(charge)
        if sent.intent_id is not None:
            return self._retry_intent(charge, sent)
        sent.payment_method_id = sent.payment_method_id or self._default_method(charge)
        if sent.payment_method_id is None:
            return _no_payment_method(charge)
        if key_expired:
            sent.request_key, sent.request_key_at = _attempt_key(charge, "a"), now
        else:
            sent.request_key = charge.request_key or charge.idempotency_key
            sent.request_key_at = charge.request_key_at or now
        intent = self._client.v1.payment_intents.create(
            self._create_params(charge, sent.payment_method_id),  # type: ignore[arg-type]
            options={"idempotency_key": sent.request_key},
        )
        return _outcome_of(intent)

    def _retry_intent(self, charge: Charge, sent: _Sent) -> Outcome:
        """The charge's existing intent: its outcome, after confirming it again if it was
        declined before (a confirmed intent succeeds at most once)."""
        assert sent.intent_id is not None
        intent = self._client.v1.payment_intents.retrieve(sent.intent_id)
        if str(getattr(intent, "status", "")) in RETRYABLE_STATUSES:
            sent.payment_method_id = sent.payment_method_id or self._default_method(charge)
            if sent.payment_method_id is None:
                return _no_payment_method(charge)
            intent = self._client.v1.payment_intents.confirm(
                sent.intent_id,
                {"payment_method": sent.payment_method_id, "off_session": True},
                options={"idempotency_key": _attempt_key(charge, "c")},
            )
        return _outcome_of(intent)

    def _find_intent(self, charge: Charge) -> str | None:
        """The intent Stripe holds for this charge (by its metadata), if any. Search lags
        creation by about a minute; this is only asked about keys a day old."""
        query = f"metadata['org_id']:'{charge.org_id}' AND metadata['charge_seq']:'{charge.seq}'"
        found = self._client.v1.payment_intents.search({"query": query})
        intents = [i.to_dict() for i in found.data]
        intents = [i for i in intents if stripe_id(i.get("customer")) == charge.customer_id]
        # A succeeded one, if there is one, is the one that counts.
        intents.sort(key=lambda i: i.get("status") != "succeeded")
        return str(intents[0]["id"]) if intents else None

    def _default_method(self, charge: Charge) -> str | None:
        customer = self._client.v1.customers.retrieve(charge.customer_id)
        settings = customer.to_dict().get("invoice_settings") or {}
        return stripe_id(settings.get("default_payment_method"))

    @staticmethod
    def _create_params(charge: Charge, payment_method_id: str) -> dict[str, Any]:
        return {
            "amount": charge.amount_cents,
            "currency": charge.currency,
            "customer": charge.customer_id,
            "payment_method": payment_method_id,
            "confirm": True,
            "off_session": True,
            "description": f"intent-embed usage, charge {charge.seq}",
            "metadata": json.loads(charge.metadata_json),
        }


def _attempt_key(charge: Charge, kind: str) -> str:
    """A key of its own for this attempt (`a`: a new creation, `c`: a confirmation)."""
    return f"{charge.idempotency_key}-{kind}{charge.attempts + 1}"


def _outcome_of(intent: Any) -> Outcome:
    status = str(getattr(intent, "status", "") or "")
    intent_id = str(getattr(intent, "id", "") or "") or None
    if status == "succeeded":
        return Outcome(CHARGE_SUCCEEDED, None, intent_id, status)
    if status == "processing":
        return Outcome(CHARGE_PENDING, "payment processing at Stripe", intent_id, status)
    if status == "requires_action":
        # Off-session the customer cannot authenticate: they have to act.
        return Outcome(
            CHARGE_FAILED,
            "the card asks the customer to authenticate",
            intent_id,
            status,
            declined=True,
            hold="authentication_required",
        )
    if status in RETRYABLE_STATUSES:
        return Outcome(
            CHARGE_PENDING, f"payment intent status {status}", intent_id, status, declined=True
        )
    return Outcome(CHARGE_FAILED, f"payment intent status {status}", intent_id, status)


def _declined(exc: stripe.CardError) -> Outcome:
    error = exc.error
    decline_code = getattr(error, "decline_code", None) if error is not None else None
    advice_code = getattr(error, "advice_code", None) if error is not None else None
    reason = decline_code or exc.code or "declined"
    message = f"card declined ({reason}): {exc.user_message or exc}"
    if decline_kind(exc.code, decline_code, advice_code) == "hard":
        return Outcome(
            CHARGE_FAILED,
            message,
            _intent_id_of(exc),
            "declined",
            declined=True,
            hold=f"hard decline: {reason}",
        )
    return Outcome(CHARGE_PENDING, message, _intent_id_of(exc), "declined", declined=True)


def _no_payment_method(charge: Charge) -> Outcome:
    return Outcome(
        CHARGE_FAILED,
        f"customer {charge.customer_id} has no default payment method and the org none",
        no_payment_method=True,
    )


def _intent_id_of(exc: stripe.StripeError) -> str | None:
    error = getattr(exc, "error", None)
    intent = getattr(error, "payment_intent", None) if error is not None else None
    intent_id = getattr(intent, "id", None) if intent is not None else None
    return str(intent_id) if intent_id else None
