"""An org's standing: what its charges already cover, and whether it may keep using the API.

`charged_dollars` is the one query for the dollars an org's charges cover (succeeded) or hold
(pending); the billing worker charges what owed dollars exceed it by, and `billing_status` lets
an org through while it has a payment method and its unpaid dollars stay within the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func
from sqlmodel import Session, select

from metering.models import (
    CHARGE_SUCCEEDED,
    STATE_NO_PAYMENT_METHOD,
    STATE_OK,
    STATE_PAST_DUE,
    Charge,
    Org,
    UsageTotal,
)
from metering.pricing import owed_dollars


@dataclass(frozen=True)
class BillingStatus:
    ok: bool
    state: str
    message: str


def charged_dollars(session: Session, org_id: str, state: str = CHARGE_SUCCEEDED) -> int:
    """Whole dollars of the org's charges in `state`: succeeded ones are the dollars covered."""
    cents = session.exec(
        select(func.coalesce(func.sum(Charge.amount_cents), 0)).where(
            Charge.org_id == org_id, Charge.state == state
        )
    ).one()
    return int(cents) // 100


def total_tokens(session: Session, org_id: str) -> int:
    """The org's cumulative billed tokens (what every dollar amount is computed from)."""
    total = session.get(UsageTotal, org_id)
    return total.tokens if total else 0


def billing_status(session: Session, org: Org, max_unpaid_usd: int) -> BillingStatus:
    """Whether the org may use the API now, and if not, the message that says how to fix it."""
    if not org.stripe_customer_id:
        return BillingStatus(
            False,
            STATE_NO_PAYMENT_METHOD,
            f"org {org.id} has no payment method: attach a Stripe customer with "
            f"`python -m metering admin attach-stripe --org {org.id} --customer cus_...`",
        )
    unpaid = owed_dollars(total_tokens(session, org.id)) - charged_dollars(session, org.id)
    over = unpaid > max_unpaid_usd
    if org.billing_state == STATE_PAST_DUE:
        message = (
            f"org {org.id} is past due: the last charge to Stripe customer "
            f"{org.stripe_customer_id} failed; update its card (unpaid ${unpaid}, "
            f"limit ${max_unpaid_usd})"
        )
        return BillingStatus(not over, STATE_PAST_DUE, message)
    if over:
        return BillingStatus(
            False,
            STATE_OK,
            f"org {org.id} has ${unpaid} unpaid, over the ${max_unpaid_usd} limit: "
            "wait for pending charges to be paid or check the org's Stripe customer",
        )
    return BillingStatus(True, STATE_OK, "")
