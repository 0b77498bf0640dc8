"""The Stripe calls of self-service billing: an org's customer, the Checkout Session (setup
mode) and Billing Portal session a user is sent to, and the payment method a completed setup
produced, made the customer's default; and what Stripe says now about a customer or a payment
method, which the webhooks trust over an event's snapshot.

Every call is safe to repeat: the customer is created under an idempotency key derived from
the org (and how many of its customers were deleted), so two first setups at once get one
customer; setting a default twice sets it once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from metering.stripe_api import stripe_client

# Checkout in setup mode collects a payment method without charging; the currency tells it
# which payment method types can pay in it later.
CURRENCY = "usd"


class StripeAccounts:
    """Self-service billing's Stripe client (the real SDK, pointed at `api_base`)."""

    def __init__(self, api_key: str, api_base: str, max_retries: int, timeout_s: float) -> None:
        self._client = stripe_client(api_key, api_base, max_retries, timeout_s)

    def create_customer(self, org_id: str, org_name: str, deleted_before: int = 0) -> str:
        """A new customer for the org (its id in the metadata); the same one on a repeat.
        `deleted_before` counts the org's customers deleted at Stripe: within the 24 hours
        Stripe keeps a key, the plain key would answer with the deleted customer again."""
        key = f"customer-{org_id}" + (f"-{deleted_before}" if deleted_before else "")
        customer = self._client.v1.customers.create(
            {"name": org_name, "metadata": {"org_id": org_id}},
            options={"idempotency_key": key},
        )
        return str(customer.id)

    def checkout_url(self, customer_id: str, org_id: str, return_url: str) -> str:
        """A Checkout Session in setup mode: the page where the user adds a payment method."""
        params: dict[str, Any] = {
            "mode": "setup",
            "currency": CURRENCY,
            "customer": customer_id,
            "client_reference_id": org_id,
            "metadata": {"org_id": org_id},
            "setup_intent_data": {"metadata": {"org_id": org_id}},
            "success_url": return_url,
            "cancel_url": return_url,
        }
        session = self._client.v1.checkout.sessions.create(params)  # type: ignore[arg-type]
        return str(session.url)

    def portal_url(self, customer_id: str, return_url: str) -> str:
        """A Billing Portal session: where the user changes or removes its payment method."""
        session = self._client.v1.billing_portal.sessions.create(
            {"customer": customer_id, "return_url": return_url}
        )
        return str(session.url)

    def setup_payment_method(self, setup_intent_id: str) -> str | None:
        """The payment method a SetupIntent collected (None while it has none)."""
        intent = self._client.v1.setup_intents.retrieve(setup_intent_id)
        return stripe_id(intent.to_dict().get("payment_method"))

    def current_default(self, customer_id: str) -> tuple[bool, str | None]:
        """(whether the customer is deleted, its default payment method) as Stripe has them
        now."""
        customer = self._client.v1.customers.retrieve(customer_id).to_dict()
        if customer.get("deleted"):
            return True, None
        settings = customer.get("invoice_settings") or {}
        return False, stripe_id(settings.get("default_payment_method"))

    def owner_of(self, payment_method_id: str) -> str | None:
        """The customer the payment method is attached to now (None once detached)."""
        method = self._client.v1.payment_methods.retrieve(payment_method_id)
        return stripe_id(method.to_dict().get("customer"))

    def make_default(self, customer_id: str, payment_method_id: str) -> None:
        """Sets the customer's default payment method (what its invoices and portal show)."""
        self._client.v1.customers.update(
            customer_id, {"invoice_settings": {"default_payment_method": payment_method_id}}
        )


def stripe_id(value: object) -> str | None:
    """An id from a field Stripe sends either as the id or as the expanded object."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return str(value) if value else None
