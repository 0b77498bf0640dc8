"""Stripe's events that change an org's payment method, applied so that the newest state wins.

Stripe does not order webhook deliveries and retries a failed one for up to three days, so an
event's snapshot can be older than what the ledger already holds. Both rules apply, because
neither is enough alone:

- **Stripe's current state over the snapshot.** For ``customer.updated`` the customer is read
  from Stripe now and its current default payment method is what the org gets (a customer
  deleted meanwhile is handled as ``customer.deleted``). A completed setup's payment method
  is applied only while Stripe still has it attached to the customer: a card removed since
  stays gone.
- **The newest event wins.** Each org keeps Stripe's ``created`` of the newest payment-method
  event applied to it (``orgs.payment_method_event_at``); an older one changes nothing, at
  Stripe or in the ledger. The current state alone cannot order setups: making a setup's card
  the customer's default is this module's doing, not Stripe's, so a late
  ``setup_intent.succeeded`` for the card added first would make it the default again.
  ``created`` counts seconds, so a tie applies: the events of one setup, and the
  ``customer.updated`` that our own default change causes, share a second.

The events: ``checkout.session.completed`` (setup mode) and ``setup_intent.succeeded`` make
the setup's payment method the customer's default at Stripe and the org's; ``customer.updated``
gives the org the customer's current default; either way the org is in good standing again
and a charge waiting to retry a soft decline is retried with it at the next run.
``payment_method.detached`` leaves the org whose payment method it was with none (a detached
payment method is never attached again, so its order does not matter). ``customer.deleted``
leaves the org with no customer and no payment method: billing is off (402) until its user
sets up billing again, under a new customer.

Left open: a setup delivered late, after its user chose an older card in the Billing Portal
but before that choice's own event arrived, makes the setup's card the default (Stripe's
customer says nothing about when its default was chosen); the user chooses again.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import stripe
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from metering.errors import StripeNotConfigured, StripeUnavailable
from metering.models import (
    CHARGE_PENDING,
    STATE_NO_PAYMENT_METHOD,
    STATE_OK,
    Charge,
    Org,
    StripeEvent,
)
from metering.stripe_accounts import StripeAccounts, stripe_id

log = logging.getLogger("metering.webhooks")

SETUP_COMPLETED = ("checkout.session.completed", "setup_intent.succeeded")
CUSTOMER_UPDATED = "customer.updated"
CUSTOMER_DELETED = "customer.deleted"
DETACHED = "payment_method.detached"
HANDLED = (*SETUP_COMPLETED, CUSTOMER_UPDATED, CUSTOMER_DELETED, DETACHED)

# Outcomes (what `stripe_events.outcome` records).
SET = "payment_method_set"
REMOVED = "payment_method_removed"
DELETED = "customer_deleted"
STALE = "stale"
UNKNOWN_CUSTOMER = "unknown_customer"
UNCHANGED = "unchanged"
IGNORED = "ignored"

Event = Mapping[str, Any]


@dataclass(frozen=True)
class Current:
    """What Stripe said before the transaction: the payment method the event gives the org
    (None: none), whether the customer is gone, and whether Stripe's default was set to it."""

    payment_method: str | None = None
    customer_deleted: bool = False
    made_default: bool = False


def is_setup(kind: str, obj: Event) -> bool:
    return kind in SETUP_COMPLETED and (
        kind != "checkout.session.completed" or obj.get("mode") == "setup"
    )


def deleted_customers(session: Session, org_id: str) -> int:
    """How many of the org's Stripe customers were deleted (their events say so)."""
    query = (
        select(func.count())
        .select_from(StripeEvent)
        .where(StripeEvent.org_id == org_id, StripeEvent.outcome == DELETED)
    )
    return int(session.exec(query).one())


class PaymentMethodEvents:
    """Reads Stripe's current state for an event (outside any transaction), then applies it
    to the org inside the caller's transaction."""

    def __init__(self, engine: Engine, accounts: StripeAccounts | None) -> None:
        self.engine = engine
        self._accounts = accounts
        self._postgres = engine.dialect.name == "postgresql"

    @staticmethod
    def handles(kind: str, obj: Event) -> bool:
        return kind in HANDLED and (kind not in SETUP_COMPLETED or is_setup(kind, obj))

    # ---- Stripe calls, before the transaction (never while holding the write lock) ------

    def read(self, kind: str, obj: Event, created: dt.datetime | None) -> Current:
        if kind in (DETACHED, CUSTOMER_DELETED):
            return Current()
        customer = stripe_id(obj.get("id") if kind == CUSTOMER_UPDATED else obj.get("customer"))
        with Session(self.engine) as session:
            org = self._org_of(session, customer, lock=False) if customer else None
            if org is None or customer is None or _older(org, created):
                return Current()  # nothing to read: the write finds it unknown or stale
        accounts = self._configured(kind)
        try:
            if kind == CUSTOMER_UPDATED:
                deleted, default = accounts.current_default(customer)
                return Current(default, customer_deleted=deleted)
            method = self._setup_payment_method(accounts, kind, obj)
            if method is None or accounts.owner_of(method) != customer:
                return Current()  # detached since (or never collected): nothing to apply
            accounts.make_default(customer, method)
        except stripe.StripeError as exc:
            log.warning("event=stripe_call_failed during=%s error=%s", kind, exc)
            raise StripeUnavailable(f"Stripe did not answer while applying {kind}") from None
        return Current(method, made_default=True)

    def _configured(self, kind: str) -> StripeAccounts:
        if self._accounts is None:
            raise StripeNotConfigured(
                f"{kind} needs Stripe's current state but METERING_STRIPE_API_KEY is empty"
            )
        return self._accounts

    @staticmethod
    def _setup_payment_method(accounts: StripeAccounts, kind: str, obj: Event) -> str | None:
        if kind == "checkout.session.completed":
            intent = stripe_id(obj.get("setup_intent"))
            return accounts.setup_payment_method(intent) if intent else None
        return stripe_id(obj.get("payment_method"))

    def restore_default(self, org_id: str) -> None:
        """After a setup found stale inside the transaction (a newer event won the race since
        `read` made its card the default): Stripe's default back to the org's."""
        with Session(self.engine) as session:
            org = session.get(Org, org_id)
            customer, method = (org.stripe_customer_id, org.payment_method_id) if org else (
                None, None)  # fmt: skip
        if customer and method and self._accounts is not None:
            try:
                self._accounts.make_default(customer, method)
            except stripe.StripeError as exc:
                log.warning("event=default_not_restored org=%s error=%s", org_id, exc)

    # ---- the ledger's changes, inside the caller's transaction ---------------------------

    def write(
        self, session: Session, kind: str, obj: Event, created: dt.datetime | None, now: Current
    ) -> tuple[str, str | None]:
        if kind in SETUP_COMPLETED and not is_setup(kind, obj):
            return IGNORED, None
        if kind == DETACHED:
            return self._payment_method_gone(session, str(obj.get("id") or ""))
        customer = stripe_id(obj.get("customer") if kind in SETUP_COMPLETED else obj.get("id"))
        org = self._org_of(session, customer, lock=True) if customer else None
        if org is None:
            return UNKNOWN_CUSTOMER, None
        if _older(org, created):
            log.info("event=stale_event type=%s org=%s", kind, org.id)
            return STALE, org.id
        if created is not None:
            org.payment_method_event_at = created
        session.add(org)
        if kind == CUSTOMER_DELETED or now.customer_deleted:
            return self._customer_deleted(org)
        if not now.payment_method or (
            org.payment_method_id == now.payment_method
            and org.billing_state != STATE_NO_PAYMENT_METHOD
        ):
            return UNCHANGED, org.id
        # A new payment method: billing gets a fresh chance at once, as after `attach-stripe`.
        org.payment_method_id = now.payment_method
        org.billing_hold = None  # the wait after a hard decline ends here
        org.billing_state = STATE_OK
        org.billing_failures = 0
        org.billing_retry_at = None
        self._retry_declined_with(session, org.id, now.payment_method)
        return SET, org.id

    def _org_of(self, session: Session, customer: str, *, lock: bool) -> Org | None:
        query = select(Org).where(Org.stripe_customer_id == customer)
        if lock and self._postgres:
            query = query.with_for_update()
        return session.exec(query).first()

    @staticmethod
    def _customer_deleted(org: Org) -> tuple[str, str | None]:
        # Nothing can be charged to a deleted customer: the org is back where it started, and
        # its next setup creates a new customer. Charges still pending wait (the worker skips
        # an org without a customer).
        org.stripe_customer_id = None
        org.payment_method_id = None
        org.billing_state = STATE_NO_PAYMENT_METHOD
        org.billing_retry_at = None
        return DELETED, org.id

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
        return REMOVED, org.id


def _older(org: Org, created: dt.datetime | None) -> bool:
    """Whether the event is older than the newest payment-method event the org has had."""
    last = org.payment_method_event_at
    if created is None or last is None:
        return False
    if last.tzinfo is None:  # SQLite hands back naive datetimes; they were written in UTC
        last = last.replace(tzinfo=dt.UTC)
    return created < last
