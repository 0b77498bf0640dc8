"""The billing worker: turns each org's cumulative usage into whole-dollar Stripe charges,
exactly once.

A run (every ``METERING_BILL_INTERVAL_S`` in the service, or ``admin bill-now``) does two steps:

1. For each org with a Stripe customer and a payment method, no pending charge, no hold and
   no retry pause: the charge policy (:mod:`metering.charge_policy`) says how many of its
   uncharged whole dollars (``owed_dollars(total_tokens)`` minus what succeeded charges cover)
   are due now; if k > 0 are, commit a *pending* charge row of 100*k cents with sequence
   number n+1 and idempotency key ``<org id>-<n+1>``, for the org's payment method. The unique
   (org, seq) key, ``FOR UPDATE SKIP LOCKED`` on the org row (PostgreSQL) and SQLite's single
   writer mean two workers never create two charges for the same dollars.
2. Every due pending charge (new ones, ones left by a crash, ones waiting for a retry) is sent
   to Stripe (:mod:`metering.stripe_charges`: one PaymentIntent per charge, never a second
   one for the same dollars). On PostgreSQL the charge row stays locked (``SKIP LOCKED``)
   while Stripe is called, so a second worker skips it; a dead worker's lock goes with its
   connection. Then the row is updated:

- succeeded: the charge covers its dollars; the org is in good standing again;
- hard decline (lost or stolen card, ...): failed, the org goes past due and is on hold until
  a new payment method is recorded; the debt stays owed and is charged anew then;
- soft decline (insufficient funds, ...), network errors after the SDK's own resends, and any
  other Stripe error: the row stays pending with the error and is retried after a pause of
  hours, a bounded number of times (then it fails as a hard decline does).

Times come from the worker's clock (injectable: the billing simulation runs months in
seconds).

What each answer does to the charge and the org is :mod:`metering.settlement`, shared with
the webhooks that report an intent's outcome later (:mod:`metering.webhooks`). Without
``METERING_STRIPE_API_KEY`` charges are computed and stay pending; the log says so.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from metering.charge_metadata import charge_metadata, project_tokens
from metering.charge_policy import ChargePolicy, Clock, OrgDollars, Period
from metering.models import (
    CHARGE_FAILED,
    CHARGE_PENDING,
    CHARGE_SUCCEEDED,
    STATE_NO_PAYMENT_METHOD,
    Charge,
    Org,
    UsageDaily,
    utcnow,
)
from metering.pricing import owed_dollars
from metering.settings import Settings
from metering.settlement import RetryPolicy, settle
from metering.standing import charged_dollars, has_payment_method, total_tokens
from metering.stripe_charges import Outcome, StripeCharges

log = logging.getLogger("metering.billing")

MAX_CHARGE_DOLLARS = 999_999


@dataclass(frozen=True)
class BillingConfig:
    stripe_api_key: str = ""
    stripe_api_base: str = "https://api.stripe.com"
    stripe_timeout_s: float = 30.0
    stripe_max_retries: int = 2
    retry_base_s: float = 3600.0
    retry_max_s: float = 72 * 3600.0
    max_attempts: int = 10
    retry_window_s: float = 30 * 86400.0
    charge_threshold_dollars: int = 20
    charge_period: Period = "month"

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(
            self.retry_base_s, self.retry_max_s, self.max_attempts, self.retry_window_s
        )

    @property
    def policy(self) -> ChargePolicy:
        return ChargePolicy(self.charge_threshold_dollars, self.charge_period)


def config_from(settings: Settings) -> BillingConfig:
    return BillingConfig(
        stripe_api_key=settings.stripe_api_key,
        stripe_api_base=settings.stripe_api_base,
        stripe_timeout_s=settings.stripe_timeout_s,
        stripe_max_retries=settings.stripe_max_retries,
        retry_base_s=settings.bill_retry_base_s,
        retry_max_s=settings.bill_retry_max_s,
        max_attempts=settings.bill_max_attempts,
        retry_window_s=settings.bill_retry_window_s,
        charge_threshold_dollars=settings.charge_threshold_dollars,
        charge_period=settings.charge_period,
    )


@dataclass
class RunReport:
    created: list[str] = field(default_factory=list)  # idempotency keys of new charges
    succeeded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    still_pending: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "created": self.created,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "pending": self.still_pending,
        }


def idempotency_key(org_id: str, seq: int) -> str:
    return f"{org_id}-{seq}"


def _tokens_before(session: Session, org_id: str, start: dt.datetime) -> int:
    """The org's tokens used on UTC days before `start` (a period's first day)."""
    total = session.exec(
        select(func.coalesce(func.sum(UsageDaily.tokens), 0)).where(
            UsageDaily.org_id == org_id, UsageDaily.day < start.date().isoformat()
        )
    ).one()
    return int(total)


class BillingWorker:
    """One billing worker; any number may run at once against the same ledger."""

    def __init__(self, engine: Engine, config: BillingConfig, clock: Clock = utcnow) -> None:
        self.engine = engine
        self.config = config
        self.clock = clock
        self._postgres = engine.dialect.name == "postgresql"
        self._stripe = (
            StripeCharges(
                config.stripe_api_key,
                config.stripe_api_base,
                config.stripe_max_retries,
                config.stripe_timeout_s,
            )
            if config.stripe_api_key
            else None
        )

    # ---- step 1: new charges -------------------------------------------------------------

    def run_once(self) -> RunReport:
        report = RunReport()
        now = self.clock()
        with Session(self.engine) as session:
            org_ids = list(
                session.exec(
                    select(Org.id)
                    .where(col(Org.stripe_customer_id).is_not(None))
                    .where(Org.billing_state != STATE_NO_PAYMENT_METHOD)
                    .where(col(Org.billing_hold).is_(None))
                    .order_by(col(Org.id))
                ).all()
            )
        for org_id in org_ids:
            key = self._create_charge(org_id, now)
            if key:
                report.created.append(key)
        self._send_pending(report)
        if report.created or report.succeeded or report.failed or report.still_pending:
            log.info(
                "event=billing_run created=%d succeeded=%d failed=%d pending=%d",
                len(report.created),
                len(report.succeeded),
                len(report.failed),
                len(report.still_pending),
            )
        return report

    def _create_charge(self, org_id: str, now: dt.datetime) -> str | None:
        try:
            with Session(self.engine) as session:
                query = select(Org).where(Org.id == org_id)
                if self._postgres:
                    query = query.with_for_update(skip_locked=True)
                org = session.exec(query).first()
                if org is None or not org.stripe_customer_id or not has_payment_method(org):
                    return None  # another worker holds this org, or its card went away
                if org.billing_hold is not None:
                    return None  # waits for a new payment method
                if org.billing_retry_at is not None and org.billing_retry_at > now:
                    return None
                charge = self._next_charge(session, org, org.stripe_customer_id, now)
                if charge is None:
                    return None
                # Read before the commit expires the row's attributes.
                key, seq, cents, tokens = (
                    charge.idempotency_key,
                    charge.seq,
                    charge.amount_cents,
                    charge.tokens_to,
                )
                session.add(charge)
                session.commit()
        except IntegrityError:
            # Another worker created this sequence number first: its charge stands, ours not.
            log.info("event=charge_race org=%s action=skipped", org_id)
            return None
        log.info(
            "event=charge_created org=%s seq=%d key=%s amount_cents=%d tokens_to=%d",
            org_id, seq, key, cents, tokens,
        )  # fmt: skip
        return key

    def _next_charge(
        self, session: Session, org: Org, customer_id: str, now: dt.datetime
    ) -> Charge | None:
        """The pending charge for the dollars the policy says are due now, if any."""
        seqs = session.exec(
            select(Charge.seq, Charge.state, Charge.created_at).where(Charge.org_id == org.id)
        ).all()
        if any(state == CHARGE_PENDING for _, state, _ in seqs):
            return None  # one charge in flight per org: it is resent in step 2
        tokens = total_tokens(session, org.id)
        covered = charged_dollars(session, org.id)
        start = self.config.policy.period_start(now)
        dollars = OrgDollars(
            uncharged=owed_dollars(tokens) - covered,
            closed_uncharged=owed_dollars(_tokens_before(session, org.id, start)) - covered,
            charged_this_period=any(
                state == CHARGE_SUCCEEDED and created >= start for _, state, created in seqs
            ),
        )
        # Stripe's largest single charge is $999,999.99; more waits for the next run.
        k = min(self.config.policy.dollars_to_charge(dollars), MAX_CHARGE_DOLLARS)
        if k <= 0:
            return None
        seq = max((n for n, _, _ in seqs), default=0) + 1
        last = session.exec(
            select(Charge)
            .where(Charge.org_id == org.id, Charge.state == CHARGE_SUCCEEDED)
            .order_by(col(Charge.seq).desc())
            .limit(1)
        ).first()
        tokens_from = last.tokens_to if last else 0
        before: Mapping[str, int] = json.loads(last.project_tokens_json) if last else {}
        projects = project_tokens(session, org.id)
        metadata = charge_metadata(
            org.id, seq, (tokens_from, tokens), (covered, covered + k), projects, before
        )
        return Charge(
            org_id=org.id,
            seq=seq,
            idempotency_key=idempotency_key(org.id, seq),
            amount_cents=100 * k,
            currency="usd",
            customer_id=customer_id,
            payment_method_id=org.payment_method_id,
            tokens_from=tokens_from,
            tokens_to=tokens,
            metadata_json=json.dumps(metadata, sort_keys=True),
            project_tokens_json=json.dumps(projects, sort_keys=True),
            state=CHARGE_PENDING,
            created_at=now,
            updated_at=now,
        )

    # ---- step 2: send pending charges ------------------------------------------------------

    def _send_pending(self, report: RunReport) -> None:
        now = self.clock()
        with Session(self.engine) as session:
            due = session.exec(
                select(Charge.id, Charge.idempotency_key)
                .where(Charge.state == CHARGE_PENDING)
                .where(
                    (col(Charge.next_attempt_at).is_(None)) | (col(Charge.next_attempt_at) <= now)
                )
                .order_by(col(Charge.id))
            ).all()
        if not due:
            return
        if self._stripe is None:
            log.warning(
                "event=stripe_off pending_charges=%d reason=METERING_STRIPE_API_KEY is empty, "
                "charges stay pending until it is set",
                len(due),
            )
            report.still_pending.extend(key for _, key in due)
            return
        for charge_id, key in due:
            try:
                outcome = self._send_one(int(charge_id))  # type: ignore[arg-type]
            except Exception:
                # Stripe errors are outcomes already; this is a bug or the ledger failing.
                # Either way the other orgs' charges still go out.
                log.exception("event=charge_send_crashed key=%s", key)
                continue
            if outcome == CHARGE_SUCCEEDED:
                report.succeeded.append(key)
            elif outcome == CHARGE_FAILED:
                report.failed.append(key)
            elif outcome == CHARGE_PENDING:
                report.still_pending.append(key)

    def _send_one(self, charge_id: int) -> str | None:
        """Sends one pending charge; returns its state after, or None if another worker has it."""
        query = select(Charge).where(Charge.id == charge_id, Charge.state == CHARGE_PENDING)
        if self._postgres:
            with Session(self.engine) as session:
                # Held during the Stripe call: a second worker skips this charge, and the lock
                # dies with a crashed worker's connection.
                charge = session.exec(query.with_for_update(skip_locked=True)).first()
                if charge is None:
                    return None
                outcome = self._stripe_attempt(charge)
                return self._apply(session, charge, outcome)
        # SQLite: never hold its single write lock across an HTTP call (usage writes would
        # stall); a concurrent resend is harmless because Stripe replays the idempotency key.
        with Session(self.engine) as session:
            charge = session.exec(query).first()
            if charge is None:
                return None
            session.expunge(charge)
        outcome = self._stripe_attempt(charge)
        with Session(self.engine) as session:
            fresh = session.get(Charge, charge_id)
            if fresh is None:
                return None
            if fresh.state != CHARGE_PENDING:
                return fresh.state  # another worker recorded Stripe's answer first
            return self._apply(session, fresh, outcome)

    def _stripe_attempt(self, charge: Charge) -> Outcome:
        assert self._stripe is not None
        return self._stripe.attempt(charge, self.clock())

    def _apply(self, session: Session, charge: Charge, outcome: Outcome) -> str:
        now = self.clock()
        charge.attempts += 1
        charge.first_attempt_at = charge.first_attempt_at or now
        state = settle(session, charge, outcome, self.config.retry, now)
        session.commit()
        return state
