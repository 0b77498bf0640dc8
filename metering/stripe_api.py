"""The Stripe client of metering's jobs: the real SDK pointed at ``METERING_STRIPE_API_BASE``,
with the configured timeout and the SDK's own resends (same idempotency key) on network errors
and 5xx. The billing worker (:mod:`metering.stripe_charges`) and self-service billing
(:mod:`metering.stripe_accounts`) both build theirs here.
"""

from __future__ import annotations

import stripe


def stripe_client(
    api_key: str, api_base: str, max_retries: int, timeout_s: float
) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base},
        max_network_retries=max_retries,
        http_client=stripe.RequestsClient(timeout=timeout_s),
    )
