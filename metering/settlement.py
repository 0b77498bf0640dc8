"""What Stripe's answer about one charge does to the ledger, whoever heard it: the billing
worker's own call (:mod:`metering.billing`) or a webhook that came later
(:mod:`metering.webhooks`).

A charge that succeeded covers its dollars and puts the org back in good standing; one that
failed covers nothing, keeps the debt owed and puts the org past due with a growing pause
before the next attempt; one still pending is asked about again after a pause. The caller
holds the charge row (locked on PostgreSQL) and commits.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlmodel import Session

from metering.models import (
    CHARGE_FAILED,
    CHARGE_PENDING,
    CHARGE_SUCCEEDED,
    STATE_NO_PAYMENT_METHOD,
    STATE_OK,
    STATE_PAST_DUE,
    Charge,
    Org,
)
from metering.stripe_charges import Outcome

log = logging.getLogger("metering.billing")


@dataclass(frozen=True)
class RetryPolicy:
    """Pauses after failures: `base_s`, doubling per failure, at most `max_s`."""

    base_s: float = 30.0
    max_s: float = 6 * 3600.0

    def pause(self, failures: int) -> dt.timedelta:
        return dt.timedelta(seconds=min(self.max_s, self.base_s * 2 ** max(0, failures - 1)))


def settle(
    session: Session, charge: Charge, outcome: Outcome, retry: RetryPolicy, now: dt.datetime
) -> str:
    """Writes `outcome` to the charge and its org (both added to `session`); the new state."""
    charge.updated_at = now
    charge.stripe_payment_intent_id = outcome.intent_id or charge.stripe_payment_intent_id
    charge.stripe_status = outcome.status or charge.stripe_status
    charge.error = outcome.error[:2000] if outcome.error else None
    org = session.get(Org, charge.org_id)
    if outcome.state == CHARGE_SUCCEEDED:
        _succeeded(charge, org)
    elif outcome.state == CHARGE_PENDING:
        delay = retry.pause(charge.attempts)
        charge.next_attempt_at = now + delay
        log.warning(
            "event=charge_retry_later org=%s seq=%d key=%s attempts=%d delay_s=%.0f error=%s",
            charge.org_id, charge.seq, charge.idempotency_key, charge.attempts,
            delay.total_seconds(), outcome.error,
        )  # fmt: skip
    else:
        _failed(charge, org, outcome, retry, now)
    if org is not None:
        session.add(org)
    session.add(charge)
    return charge.state


def _succeeded(charge: Charge, org: Org | None) -> None:
    charge.state = CHARGE_SUCCEEDED
    charge.next_attempt_at = None
    if org is not None:
        if org.billing_state == STATE_PAST_DUE:
            org.billing_state = STATE_OK
        org.billing_failures = 0
        org.billing_retry_at = None
    log.info(
        "event=charge_succeeded org=%s seq=%d key=%s amount_cents=%d pi=%s",
        charge.org_id, charge.seq, charge.idempotency_key, charge.amount_cents,
        charge.stripe_payment_intent_id,
    )  # fmt: skip


def _failed(
    charge: Charge, org: Org | None, outcome: Outcome, retry: RetryPolicy, now: dt.datetime
) -> None:
    charge.state = CHARGE_FAILED
    charge.next_attempt_at = None
    if org is not None:
        # Without a payment method the user's next step is to add one: that state says so.
        if org.billing_state != STATE_NO_PAYMENT_METHOD:
            org.billing_state = STATE_PAST_DUE
        org.billing_failures += 1
        org.billing_retry_at = now + retry.pause(org.billing_failures)
    log.warning(
        "event=charge_failed org=%s seq=%d key=%s amount_cents=%d error=%s",
        charge.org_id, charge.seq, charge.idempotency_key, charge.amount_cents, outcome.error,
    )  # fmt: skip
