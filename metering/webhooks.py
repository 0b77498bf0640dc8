"""Stripe's webhooks: each delivery verified with the SDK, each event applied once.

`StripeWebhooks.apply` verifies the ``Stripe-Signature`` header with
``stripe.Webhook.construct_event`` and ``METERING_STRIPE_WEBHOOK_SECRET`` (a bad signature
changes nothing), then applies the event in one transaction that also stores its id in
``stripe_events``: a redelivery, or two deliveries racing, find the id and change nothing.
Stripe calls an event needs (the payment method a setup produced, making it the customer's
default) are made before that transaction, never while it holds the ledger's write lock; they
are safe to repeat. The events acted on:

- ``checkout.session.completed`` (setup mode), ``setup_intent.succeeded``: the payment method
  becomes the customer's default and the org's; the org is in good standing again;
- ``customer.updated``: a new default payment method chosen in the Billing Portal, the same;
  either way a charge waiting to retry a soft decline is retried with it at the next run;
- ``payment_method.detached``: the org's payment method gone, the org has none;
- ``payment_intent.succeeded``, ``payment_intent.payment_failed``, ``payment_intent.canceled``:
  the charge of that intent (found by its id, or by the org and sequence number in its
  metadata) is settled as the billing worker settles it (:mod:`metering.settlement`), only if
  it is still pending and not a decline the worker saw itself (it retries soft declines on
  the same intent), so an answer the worker already wrote is never counted twice; a late
  success of a charge marked failed is written too (the money arrived: it covers its dollars).

Every other type is acknowledged and ignored.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import stripe
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from metering.errors import BadSignature, StripeNotConfigured, StripeUnavailable
from metering.models import (
    CHARGE_FAILED,
    CHARGE_PENDING,
    CHARGE_SUCCEEDED,
    STATE_NO_PAYMENT_METHOD,
    STATE_OK,
    Charge,
    Org,
    StripeEvent,
    utcnow,
)
from metering.settlement import RetryPolicy, settle
from metering.stripe_accounts import StripeAccounts, stripe_id
from metering.stripe_charges import Outcome

log = logging.getLogger("metering.webhooks")

SETUP_COMPLETED = ("checkout.session.completed", "setup_intent.succeeded")
INTENT_SUCCEEDED = "payment_intent.succeeded"
INTENT_FAILED = ("payment_intent.payment_failed", "payment_intent.canceled")
IGNORED = "ignored"
UNCHANGED = "unchanged"

Event = Mapping[str, Any]


@dataclass(frozen=True)
class Applied:
    """What one delivery came to; `duplicate` when its event had been applied already."""

    event_id: str
    type: str
    duplicate: bool
    outcome: str
    org_id: str = ""


class StripeWebhooks:
    """Verifies and applies Stripe webhook deliveries on one ledger engine."""

    def __init__(
        self,
        engine: Engine,
        secret: str,
        accounts: StripeAccounts | None,
        retry: RetryPolicy,
    ) -> None:
        self.engine = engine
        self._secret = secret
        self._accounts = accounts
        self._retry = retry
        self._postgres = engine.dialect.name == "postgresql"

    def apply(self, payload: bytes, signature: str) -> Applied:
        event = self._verify(payload, signature)
        event_id, kind = str(event["id"]), str(event["type"])
        seen = self._seen(event_id)
        if seen is not None:
            return seen
        obj: Event = (event.get("data") or {}).get("object") or {}
        payment_method = self._prepare(kind, obj)
        created = event.get("created")
        row = StripeEvent(
            id=event_id,
            type=kind[:100],
            outcome="applying",
            stripe_created=dt.datetime.fromtimestamp(created, dt.UTC)
            if isinstance(created, int)
            else None,
        )
        try:
            with Session(self.engine) as session:
                # The id first: a second delivery racing this one waits here, then finds it.
                session.add(row)
                session.flush()
                outcome, org_id = self._write(session, kind, obj, payment_method)
                row.outcome, row.org_id = outcome, org_id
                session.add(row)
                session.commit()
        except IntegrityError:
            return self._seen(event_id) or Applied(event_id, kind, True, UNCHANGED)
        log.info(
            "event=stripe_event_applied id=%s type=%s outcome=%s org=%s",
            event_id, kind, outcome, org_id or "-",
        )  # fmt: skip
        return Applied(event_id, kind, False, outcome, org_id or "")

    # ---- verification and what was applied before ---------------------------------------

    def _verify(self, payload: bytes, signature: str) -> Event:
        if not self._secret:
            raise StripeNotConfigured(
                "Stripe webhooks are off: METERING_STRIPE_WEBHOOK_SECRET is empty"
            )
        try:
            event = stripe.Webhook.construct_event(payload, signature, self._secret)
        except stripe.SignatureVerificationError as exc:
            raise BadSignature(f"the Stripe-Signature does not verify: {exc}") from None
        except ValueError as exc:  # not JSON (or not UTF-8), or not a snapshot event
            raise BadSignature(f"the body is not a Stripe event: {exc}") from None
        values = event.to_dict()
        if not values.get("id") or not values.get("type"):
            raise BadSignature("the body is not a Stripe event: it has no id or type")
        return values

    def _seen(self, event_id: str) -> Applied | None:
        with Session(self.engine) as session:
            row = session.get(StripeEvent, event_id)
            if row is None:
                return None
            return Applied(row.id, row.type, True, row.outcome, row.org_id or "")

    # ---- Stripe calls, before the transaction -------------------------------------------

    def _prepare(self, kind: str, obj: Event) -> str | None:
        """For a completed setup: the payment method it produced, made the customer's default
        (when the customer is an org's). None for every other event."""
        if kind not in SETUP_COMPLETED or not self._is_setup(kind, obj):
            return None
        customer = stripe_id(obj.get("customer"))
        with Session(self.engine) as session:
            if customer is None or self._org_of_customer(session, customer, lock=False) is None:
                return None
        if self._accounts is None:
            raise StripeNotConfigured(
                "a setup completed but METERING_STRIPE_API_KEY is empty: its payment method "
                "cannot be read"
            )
        try:
            if kind == "checkout.session.completed":
                intent = stripe_id(obj.get("setup_intent"))
                payment_method = self._accounts.setup_payment_method(intent) if intent else None
            else:
                payment_method = stripe_id(obj.get("payment_method"))
            if payment_method:
                self._accounts.make_default(customer, payment_method)
        except stripe.StripeError as exc:
            log.warning("event=stripe_call_failed during=%s error=%s", kind, exc)
            raise StripeUnavailable(f"Stripe did not answer while applying {kind}") from None
        return payment_method

    @staticmethod
    def _is_setup(kind: str, obj: Event) -> bool:
        return kind != "checkout.session.completed" or obj.get("mode") == "setup"

    # ---- the ledger's changes, inside the transaction -----------------------------------

    def _write(
        self, session: Session, kind: str, obj: Event, payment_method: str | None
    ) -> tuple[str, str | None]:
        if kind in SETUP_COMPLETED:
            if not self._is_setup(kind, obj):
                return IGNORED, None
            return self._set_payment_method(session, stripe_id(obj.get("customer")), payment_method)
        if kind == "customer.updated":
            default = stripe_id((obj.get("invoice_settings") or {}).get("default_payment_method"))
            return self._set_payment_method(session, stripe_id(obj.get("id")), default)
        if kind == "payment_method.detached":
            return self._payment_method_gone(session, str(obj.get("id") or ""))
        if kind == INTENT_SUCCEEDED or kind in INTENT_FAILED:
            return self._settle_intent(session, kind, obj)
        return IGNORED, None

    def _org_of_customer(self, session: Session, customer: str, *, lock: bool) -> Org | None:
        query = select(Org).where(Org.stripe_customer_id == customer)
        if lock and self._postgres:
            query = query.with_for_update()
        return session.exec(query).first()

    def _set_payment_method(
        self, session: Session, customer: str | None, payment_method: str | None
    ) -> tuple[str, str | None]:
        org = self._org_of_customer(session, customer, lock=True) if customer else None
        if org is None:
            return "unknown_customer", None
        if not payment_method:
            return UNCHANGED, org.id
        if org.payment_method_id == payment_method and org.billing_state != STATE_NO_PAYMENT_METHOD:
            return UNCHANGED, org.id
        # A new payment method: billing gets a fresh chance at once, as after `attach-stripe`.
        org.payment_method_id = payment_method
        org.billing_hold = None  # the wait after a hard decline ends here
        org.billing_state = STATE_OK
        org.billing_failures = 0
        org.billing_retry_at = None
        session.add(org)
        self._retry_declined_with(session, org.id, payment_method)
        return "payment_method_set", org.id

    def _retry_declined_with(self, session: Session, org_id: str, payment_method: str) -> None:
        """A charge waiting to retry a soft decline is confirmed with the new payment method,
        at the next run: the user fixed what was wrong. (Its intent exists, so no resend of a
        creation changes its body under the same key.)"""
        query = select(Charge).where(
            Charge.org_id == org_id,
            Charge.state == CHARGE_PENDING,
            Charge.stripe_status == "declined",
            col(Charge.stripe_payment_intent_id).is_not(None),
        )
        if self._postgres:
            query = query.with_for_update()
        for charge in session.exec(query).all():
            charge.payment_method_id = payment_method
            charge.next_attempt_at = None
            session.add(charge)

    def _payment_method_gone(self, session: Session, payment_method: str) -> tuple[str, str | None]:
        query = select(Org).where(Org.payment_method_id == payment_method)
        if self._postgres:
            query = query.with_for_update()
        org = session.exec(query).first() if payment_method else None
        if org is None:
            return UNCHANGED, None
        org.payment_method_id = None
        org.billing_state = STATE_NO_PAYMENT_METHOD
        session.add(org)
        return "payment_method_removed", org.id

    def _settle_intent(self, session: Session, kind: str, obj: Event) -> tuple[str, str | None]:
        charge = self._charge_of_intent(session, obj)
        if charge is None:
            return "unknown_payment", None
        intent_id, status = str(obj.get("id")), str(obj.get("status") or "")
        if kind == INTENT_SUCCEEDED:
            if charge.state == CHARGE_SUCCEEDED:
                return UNCHANGED, charge.org_id
            if charge.state == CHARGE_FAILED:
                log.warning("event=late_success org=%s seq=%d", charge.org_id, charge.seq)
            outcome = Outcome(CHARGE_SUCCEEDED, None, intent_id, status or "succeeded")
        else:
            if charge.state != CHARGE_PENDING or charge.stripe_status == "declined":
                # The worker wrote this answer already (a soft decline: it retries later).
                return UNCHANGED, charge.org_id
            error = (obj.get("last_payment_error") or {}).get("message") or kind
            outcome = Outcome(CHARGE_FAILED, f"payment failed: {error}", intent_id, status)
        return "charge_" + settle(session, charge, outcome, self._retry, utcnow()), charge.org_id

    def _charge_of_intent(self, session: Session, obj: Event) -> Charge | None:
        intent_id = str(obj.get("id") or "")
        query = select(Charge).where(Charge.stripe_payment_intent_id == intent_id)
        if self._postgres:
            query = query.with_for_update()
        charge = session.exec(query).first() if intent_id else None
        if charge is not None:
            return charge
        # The worker may have died before writing the intent's id: find it by the metadata it
        # sent, and only if the customer matches and no other intent is recorded for it.
        metadata = obj.get("metadata") or {}
        seq = str(metadata.get("charge_seq") or "")
        if not seq.isdigit():
            return None
        query = select(Charge).where(
            Charge.org_id == str(metadata.get("org_id") or ""), Charge.seq == int(seq)
        )
        if self._postgres:
            query = query.with_for_update()
        charge = session.exec(query).first()
        if charge is None or charge.customer_id != stripe_id(obj.get("customer")):
            return None
        if charge.stripe_payment_intent_id not in (None, intent_id):
            return None
        return charge

