"""Self-service billing: where a user adds or manages its org's payment method, and the handle
that binds it and Stripe's webhooks (:mod:`metering.webhooks`) to one ledger.

`SelfService.setup` creates the org's Stripe customer on first use, or after its customer was
deleted at Stripe (the org id in its metadata; an org row that got a customer meanwhile keeps
the first) and answers with a Stripe
Checkout Session in setup mode, or, once the org has a payment method, a Billing Portal
session. Nothing about the org's standing changes here: only Stripe's webhook saying the
setup completed turns billing on.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import stripe
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from metering.errors import LedgerError, NotFound, StripeNotConfigured, StripeUnavailable
from metering.models import STATE_NO_PAYMENT_METHOD, Org
from metering.payment_method_events import deleted_customers
from metering.settings import Settings
from metering.settlement import RetryPolicy
from metering.standing import has_payment_method
from metering.stripe_accounts import StripeAccounts
from metering.webhooks import Applied, StripeWebhooks

CHECKOUT = "checkout"
PORTAL = "portal"


@dataclass(frozen=True)
class SetupLink:
    url: str
    kind: str  # CHECKOUT (add a payment method) or PORTAL (manage it)
    customer_id: str


class SelfService:
    """Payment-method setup and Stripe webhooks on one engine; Stripe off without its key."""

    def __init__(
        self,
        engine: Engine,
        accounts: StripeAccounts | None,
        webhook_secret: str,
        retry: RetryPolicy,
    ) -> None:
        self.engine = engine
        self._accounts = accounts
        self._webhook_secret = webhook_secret
        self.webhooks = StripeWebhooks(engine, webhook_secret, accounts, retry)

    def apply_event(self, payload: bytes, signature: str) -> Applied:
        return self.webhooks.apply(payload, signature)

    def setup(self, org_id: str, return_url: str) -> SetupLink:
        """The Stripe page where the org's user adds (or manages) its payment method."""
        accounts = self._configured()
        _check_url(return_url)
        with Session(self.engine) as session:
            org = session.get(Org, org_id)
            if org is None:
                raise NotFound(f"org {org_id!r} does not exist")
            customer, name, ready = org.stripe_customer_id, org.name, has_payment_method(org)
        try:
            if customer is None:
                customer = self._first_customer(accounts, org_id, name)
            if ready:
                return SetupLink(accounts.portal_url(customer, return_url), PORTAL, customer)
            url = accounts.checkout_url(customer, org_id, return_url)
        except stripe.StripeError as exc:
            raise StripeUnavailable(f"Stripe did not create the setup page: {exc}") from None
        return SetupLink(url, CHECKOUT, customer)

    def _configured(self) -> StripeAccounts:
        # Without webhooks a completed setup would never turn billing on: both are needed.
        missing = [
            name
            for name, value in (
                ("METERING_STRIPE_API_KEY", self._accounts),
                ("METERING_STRIPE_WEBHOOK_SECRET", self._webhook_secret),
            )
            if not value
        ]
        if missing or self._accounts is None:
            raise StripeNotConfigured(
                f"self-service billing is off: {' and '.join(missing)} not set"
            )
        return self._accounts

    def _first_customer(self, accounts: StripeAccounts, org_id: str, name: str) -> str:
        with Session(self.engine) as session:
            deleted = deleted_customers(session, org_id)
        created = accounts.create_customer(org_id, name, deleted)
        with Session(self.engine) as session:
            # Only an org still without a customer takes this one: a customer an operator
            # attached, or one a concurrent first setup stored, stays.
            session.execute(
                update(Org)
                .where(col(Org.id) == org_id, col(Org.stripe_customer_id).is_(None))
                .values(
                    stripe_customer_id=created,
                    payment_method_id=None,
                    billing_state=STATE_NO_PAYMENT_METHOD,
                )
            )
            session.commit()
            org = session.get(Org, org_id)
            assert org is not None and org.stripe_customer_id is not None
            return org.stripe_customer_id


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise LedgerError(
            f"return_url {url[:200]!r} is not an http(s) URL", field="return_url"
        )


def self_service_from(settings: Settings, engine: Engine) -> SelfService:
    accounts = (
        StripeAccounts(
            settings.stripe_api_key,
            settings.stripe_api_base,
            settings.stripe_max_retries,
            settings.stripe_timeout_s,
        )
        if settings.stripe_api_key
        else None
    )
    retry = RetryPolicy(
        settings.bill_retry_base_s,
        settings.bill_retry_max_s,
        settings.bill_max_attempts,
        settings.bill_retry_window_s,
    )
    return SelfService(engine, accounts, settings.stripe_webhook_secret, retry)
