"""An org's standing: what its charges already cover, and whether it may keep using the API.

`charged_dollars` is the one query for the dollars an org's charges cover (succeeded) or hold
(pending); the billing worker charges what owed dollars exceed it by, and `billing_status` lets
an org through while it has a payment method and its unpaid dollars stay within the limit. Its
message says what is wrong in the user's terms; what to do about it is the caller's to add (the
gateway points to its payment-method setup route, the admin CLI is for operators).
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


def state_of(org: Org) -> str:
    """The org's billing state; an org without a Stripe customer has no payment method."""
    return org.billing_state if org.stripe_customer_id else STATE_NO_PAYMENT_METHOD


def has_payment_method(org: Org) -> bool:
    """Whether charges can be sent for the org (a customer an operator attached counts)."""
    return state_of(org) != STATE_NO_PAYMENT_METHOD


def billing_status(session: Session, org: Org, max_unpaid_usd: int) -> BillingStatus:
    """Whether the org may use the API now, and if not, what stands in the way."""
    if not has_payment_method(org):
        return BillingStatus(
            False, STATE_NO_PAYMENT_METHOD, f"Organization {org.id} has no payment method."
        )
    unpaid = owed_dollars(total_tokens(session, org.id)) - charged_dollars(session, org.id)
    over = unpaid > max_unpaid_usd
    if org.billing_state == STATE_PAST_DUE and org.billing_hold:
        message = (
            f"Organization {org.id} is past due: its payment method was declined and will not "
            f"be charged again; a new payment method is needed (${unpaid} unpaid, limit "
            f"${max_unpaid_usd})."
        )
        return BillingStatus(not over, STATE_PAST_DUE, message)
    if org.billing_state == STATE_PAST_DUE:
        message = (
            f"Organization {org.id} is past due: the last charge to its payment method failed "
            f"(${unpaid} unpaid, limit ${max_unpaid_usd})."
        )
        return BillingStatus(not over, STATE_PAST_DUE, message)
    if over:
        return BillingStatus(
            False,
            STATE_OK,
            f"Organization {org.id} has ${unpaid} unpaid, over the ${max_unpaid_usd} limit, "
            "until its pending charges are paid.",
        )
    return BillingStatus(True, STATE_OK, "")
