"""Stripe's webhooks: each delivery verified with the SDK, each event applied once.

`StripeWebhooks.apply` verifies the ``Stripe-Signature`` header with
``stripe.Webhook.construct_event`` and ``METERING_STRIPE_WEBHOOK_SECRET`` (a bad signature
changes nothing), then applies the event in one transaction that also stores its id in
``stripe_events``: a redelivery, or two deliveries racing, find the id and change nothing.
Stripe calls an event needs (what Stripe says now about the customer or the payment method, making
a setup's payment method the customer's default) are made before that transaction, never while
it holds the ledger's write lock; they are safe to repeat. The events acted on:

- those that change an org's payment method (a completed setup, ``customer.updated``,
  ``payment_method.detached``, ``customer.deleted``): :mod:`metering.payment_method_events`,
  which lets Stripe's current state and the newest event win over a late delivery's snapshot;
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
from sqlmodel import Session, select

from metering.errors import BadSignature, StripeNotConfigured
from metering.models import (
    CHARGE_FAILED,
    CHARGE_PENDING,
    CHARGE_SUCCEEDED,
    Charge,
    StripeEvent,
    utcnow,
)
from metering.payment_method_events import IGNORED, STALE, UNCHANGED, Current, PaymentMethodEvents
from metering.settlement import RetryPolicy, settle
from metering.stripe_accounts import StripeAccounts, stripe_id
from metering.stripe_charges import Outcome

log = logging.getLogger("metering.webhooks")

INTENT_SUCCEEDED = "payment_intent.succeeded"
INTENT_FAILED = ("payment_intent.payment_failed", "payment_intent.canceled")

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
        self._retry = retry
        self._methods = PaymentMethodEvents(engine, accounts)
        self._postgres = engine.dialect.name == "postgresql"

    def apply(self, payload: bytes, signature: str) -> Applied:
        event = self._verify(payload, signature)
        event_id, kind = str(event["id"]), str(event["type"])
        seen = self._seen(event_id)
        if seen is not None:
            return seen
        obj: Event = (event.get("data") or {}).get("object") or {}
        created = event.get("created")
        stripe_created = (
            dt.datetime.fromtimestamp(created, dt.UTC) if isinstance(created, int) else None
        )
        methods = self._methods.handles(kind, obj)
        current = self._methods.read(kind, obj, stripe_created) if methods else Current()
        row = StripeEvent(
            id=event_id, type=kind[:100], outcome="applying", stripe_created=stripe_created
        )
        try:
            with Session(self.engine) as session:
                # The id first: a second delivery racing this one waits here, then finds it.
                session.add(row)
                session.flush()
                if methods:
                    outcome, org_id = self._methods.write(
                        session, kind, obj, stripe_created, current
                    )
                else:
                    outcome, org_id = self._write(session, kind, obj)
                row.outcome, row.org_id = outcome, org_id
                session.add(row)
                session.commit()
        except IntegrityError:
            return self._seen(event_id) or Applied(event_id, kind, True, UNCHANGED)
        if outcome == STALE and current.made_default and org_id:
            self._methods.restore_default(org_id)
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

    # ---- the ledger's changes, inside the transaction -----------------------------------

    def _write(self, session: Session, kind: str, obj: Event) -> tuple[str, str | None]:
        if kind == INTENT_SUCCEEDED or kind in INTENT_FAILED:
            return self._settle_intent(session, kind, obj)
        return IGNORED, None

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
