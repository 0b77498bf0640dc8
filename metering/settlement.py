"""What Stripe's answer about one charge does to the ledger, whoever heard it: the billing
worker's own call (:mod:`metering.billing`) or a webhook that came later
(:mod:`metering.webhooks`).

A charge that succeeded covers its dollars and puts the org back in good standing. One still
pending (a soft decline, a network or unexpected Stripe error, an intent still processing) is
attempted again after a pause doubling from hours, at most `max_attempts` times within
`window_s` of its first attempt; a soft decline also puts the org past due. A charge that
failed covers nothing and keeps the debt owed: after a hard decline (or once out of retries)
the org is past due and on hold until a new payment method is recorded; after any other
failure it waits a growing pause. The caller holds the charge row (locked on PostgreSQL) and
commits.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, replace

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
    """Pauses after failures: `base_s`, doubling per failure, at most `max_s`; a charge gets
    at most `max_attempts` attempts within `window_s` of its first (card-network limits)."""

    base_s: float = 3600.0
    max_s: float = 72 * 3600.0
    max_attempts: int = 10
    window_s: float = 30 * 86400.0

    def exhausted(self, charge: Charge, now: dt.datetime) -> bool:
        """Whether the charge may not be attempted again: out of attempts, or its next
        attempt would fall outside the window that began with its first."""
        if charge.attempts >= self.max_attempts:
            return True
        first = charge.first_attempt_at or now
        next_at = now + self.pause(charge.attempts)
        return next_at - first > dt.timedelta(seconds=self.window_s)

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
    charge.payment_method_id = outcome.payment_method_id or charge.payment_method_id
    if outcome.request_key:
        charge.request_key, charge.request_key_at = outcome.request_key, outcome.request_key_at
    org = session.get(Org, charge.org_id)
    # An intent still processing is only asked about: that is no attempt at the card.
    retrying = outcome.state == CHARGE_PENDING and outcome.status != "processing"
    if retrying and retry.exhausted(charge, now):
        reason = f"charge {charge.seq}: no retry left after {charge.attempts} attempts"
        outcome = replace(outcome, state=CHARGE_FAILED, hold=reason)
    if outcome.state == CHARGE_SUCCEEDED:
        _succeeded(charge, org)
    elif outcome.state == CHARGE_PENDING:
        _retry_later(charge, org, outcome, retry, now)
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


def _retry_later(
    charge: Charge, org: Org | None, outcome: Outcome, retry: RetryPolicy, now: dt.datetime
) -> None:
    delay = retry.pause(charge.attempts)
    charge.next_attempt_at = now + delay
    if outcome.declined and org is not None and org.billing_state != STATE_NO_PAYMENT_METHOD:
        # The card said no: the user sees it now, while the charge is retried.
        org.billing_state = STATE_PAST_DUE
    log.warning(
        "event=charge_retry_later org=%s seq=%d key=%s attempts=%d delay_s=%.0f error=%s",
        charge.org_id, charge.seq, charge.idempotency_key, charge.attempts,
        delay.total_seconds(), outcome.error,
    )  # fmt: skip


def _failed(
    charge: Charge, org: Org | None, outcome: Outcome, retry: RetryPolicy, now: dt.datetime
) -> None:
    charge.state = CHARGE_FAILED
    charge.next_attempt_at = None
    if org is not None:
        # Without a payment method the user's next step is to add one: that state says so.
        if outcome.no_payment_method:
            org.billing_state = STATE_NO_PAYMENT_METHOD
        elif org.billing_state != STATE_NO_PAYMENT_METHOD:
            org.billing_state = STATE_PAST_DUE
        org.billing_failures += 1
        if outcome.hold:
            # Asking the same card again cannot help: wait for a new payment method.
            org.billing_hold = outcome.hold[:200]
            org.billing_retry_at = None
        else:
            org.billing_retry_at = now + retry.pause(org.billing_failures)
    log.warning(
        "event=charge_failed org=%s seq=%d key=%s amount_cents=%d hold=%s error=%s",
        charge.org_id, charge.seq, charge.idempotency_key, charge.amount_cents,
        outcome.hold or "-", outcome.error,
    )  # fmt: skip
