"""Sending one charge to Stripe and classifying what came back.

A charge goes out as a confirmed off-session PaymentIntent (for the org's payment method when
one was set up through Stripe) carrying the charge's own ``Idempotency-Key``, so a resend
after a crash gets Stripe's first answer back instead of a second payment; an intent still
processing is asked for again. The outcome says which state the charge row moves to; the
billing worker (:mod:`metering.billing`) writes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import stripe

from metering.models import CHARGE_FAILED, CHARGE_PENDING, CHARGE_SUCCEEDED, Charge
from metering.stripe_api import stripe_client


@dataclass(frozen=True)
class Outcome:
    """What one Stripe attempt came to, before it is written to the charge row."""

    state: str
    error: str | None = None
    intent_id: str | None = None
    status: str | None = None


class StripeCharges:
    """The Stripe client of one billing worker (the real SDK, pointed at `api_base`)."""

    def __init__(self, api_key: str, api_base: str, max_retries: int, timeout_s: float) -> None:
        self._client = stripe_client(api_key, api_base, max_retries, timeout_s)

    def attempt(self, charge: Charge) -> Outcome:
        try:
            intent = self._call(charge)
        except stripe.CardError as exc:
            return Outcome(
                CHARGE_FAILED,
                f"card declined: {exc.user_message or exc}",
                _intent_id_of(exc),
                "declined",
            )
        except (
            stripe.APIConnectionError,
            stripe.RateLimitError,
            stripe.APIError,
            stripe.IdempotencyError,
            stripe.AuthenticationError,
        ) as exc:
            # Transient, or ours to fix: keep the charge pending, resend with the same key.
            return Outcome(CHARGE_PENDING, f"{type(exc).__name__}: {exc.user_message or exc}")
        except stripe.InvalidRequestError as exc:
            # Stripe refuses this charge as sent (e.g. the customer has no usable card): like
            # a decline the org must act; the debt stays owed.
            return Outcome(
                CHARGE_FAILED,
                f"{type(exc).__name__}: {exc.user_message or exc}",
                _intent_id_of(exc),
                "invalid_request",
            )
        status = str(getattr(intent, "status", "") or "")
        intent_id = str(getattr(intent, "id", "") or "") or None
        if status == "succeeded":
            return Outcome(CHARGE_SUCCEEDED, None, intent_id, status)
        if status == "processing":
            return Outcome(CHARGE_PENDING, "payment processing at Stripe", intent_id, status)
        return Outcome(CHARGE_FAILED, f"payment intent status {status}", intent_id, status)

    def _call(self, charge: Charge) -> Any:
        if charge.stripe_payment_intent_id:
            # An earlier attempt got an intent still processing: ask for its outcome.
            return self._client.v1.payment_intents.retrieve(charge.stripe_payment_intent_id)
        params: dict[str, Any] = {
            "amount": charge.amount_cents,
            "currency": charge.currency,
            "customer": charge.customer_id,
            "confirm": True,
            "off_session": True,
            "description": f"intent-embed usage, charge {charge.seq}",
            "metadata": json.loads(charge.metadata_json),
        }
        if charge.payment_method_id:
            # A payment method set up through Checkout: PaymentIntents do not fall back to the
            # customer's invoice default, so name it.
            params["payment_method"] = charge.payment_method_id
        return self._client.v1.payment_intents.create(
            params,  # type: ignore[arg-type]
            options={"idempotency_key": charge.idempotency_key},
        )


def _intent_id_of(exc: stripe.StripeError) -> str | None:
    error = getattr(exc, "error", None)
    intent = getattr(error, "payment_intent", None) if error is not None else None
    intent_id = getattr(intent, "id", None) if intent is not None else None
    return str(intent_id) if intent_id else None
