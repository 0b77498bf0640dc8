"""The ledger's tables (SQLModel): orgs, projects, API keys, usage events, running totals,
per-day usage, Stripe charges and the Stripe webhook events already applied.

Tokens and money are integers (BIGINT). Times are timezone-aware UTC datetimes. The schema is
created and evolved by the Alembic migrations in :mod:`metering.migrations`; these classes are
what the code reads and writes, and the first migration mirrors them.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Index, PrimaryKeyConstraint, UniqueConstraint
from sqlmodel import Field, SQLModel

from intent_embed.usage_events import MAX_EVENT_ID_CHARS, MAX_ID_CHARS, MAX_MODEL_CHARS

# Billing states an org can be in. "no_payment_method" is stored for an org whose customer
# was created by self-service setup (or whose payment method was detached) and derived for
# an org without a Stripe customer at all.
STATE_OK = "ok"
STATE_PAST_DUE = "past_due"
STATE_NO_PAYMENT_METHOD = "no_payment_method"

# Charge states: pending until Stripe answers for good; failed charges do not cover any debt.
CHARGE_PENDING = "pending"
CHARGE_SUCCEEDED = "succeeded"
CHARGE_FAILED = "failed"


def utcnow() -> dt.datetime:
    """Now, timezone-aware UTC (the ledger stores every time in UTC)."""
    return dt.datetime.now(dt.UTC)


class Org(SQLModel, table=True):
    __tablename__ = "orgs"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    stripe_customer_id: str | None = Field(default=None, index=True, max_length=200)
    # The payment method a Stripe webhook reported set up (None for a customer an operator
    # attached: its payment method was set up outside, at Stripe).
    payment_method_id: str | None = Field(default=None, max_length=200)
    billing_state: str = Field(default=STATE_OK, max_length=40)
    # After a decline or Stripe error, no new charge is attempted before this time.
    billing_retry_at: dt.datetime | None = None
    billing_failures: int = 0
    # Set (the reason, for operators) after a hard decline or a charge that ran out of
    # retries: no charge is attempted until a new payment method is recorded, which clears it.
    billing_hold: str | None = Field(default=None, max_length=200)
    # Stripe's `created` of the newest payment-method event applied to the org: an older one
    # delivered late (Stripe does not order deliveries, and retries for 3 days) is ignored.
    payment_method_event_at: dt.datetime | None = None
    # Requests and tokens per minute the gateway allows the org; None: the gateway's default.
    rate_limit_rpm: int | None = Field(default=None, sa_type=BigInteger)
    rate_limit_tpm: int | None = Field(default=None, sa_type=BigInteger)
    created_at: dt.datetime = Field(default_factory=utcnow)


class Project(SQLModel, table=True):
    __tablename__ = "projects"

    id: str = Field(primary_key=True, max_length=40)
    org_id: str = Field(foreign_key="orgs.id", index=True, max_length=40)
    name: str = Field(max_length=200)
    created_at: dt.datetime = Field(default_factory=utcnow)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    # The visible prefix of the key (also what logs show); the secret part is only hashed.
    id: str = Field(primary_key=True, max_length=40)
    org_id: str = Field(foreign_key="orgs.id", index=True, max_length=40)
    name: str = Field(default="", max_length=200)
    key_hash: str = Field(max_length=64)
    created_at: dt.datetime = Field(default_factory=utcnow)
    revoked_at: dt.datetime | None = None


class UsageEvent(SQLModel, table=True):
    """One recorded request; the same event id under another org is another event, so a
    caller's id can never drop a different org's usage as a duplicate."""

    __tablename__ = "usage_events"
    __table_args__ = (
        PrimaryKeyConstraint("org_id", "event_id", name="usage_events_pkey"),
        Index("ix_usage_events_org_at", "org_id", "at"),
    )

    event_id: str = Field(max_length=MAX_EVENT_ID_CHARS)
    org_id: str = Field(max_length=MAX_ID_CHARS)
    project_id: str = Field(default="", max_length=MAX_ID_CHARS)
    model: str = Field(default="", max_length=MAX_MODEL_CHARS)
    tokens: int = Field(sa_type=BigInteger)
    inputs: int = 0
    at: dt.datetime
    recorded_at: dt.datetime = Field(default_factory=utcnow)


class UsageTotal(SQLModel, table=True):
    """Per-org running totals: what billing is computed from (cumulative, all time)."""

    __tablename__ = "usage_totals"

    org_id: str = Field(primary_key=True, max_length=40)
    tokens: int = Field(default=0, sa_type=BigInteger)
    requests: int = Field(default=0, sa_type=BigInteger)
    inputs: int = Field(default=0, sa_type=BigInteger)


class UsageDaily(SQLModel, table=True):
    """Usage per org, project, model and UTC day (project "" = not attributed)."""

    __tablename__ = "usage_daily"

    org_id: str = Field(primary_key=True, max_length=40)
    project_id: str = Field(primary_key=True, max_length=40)
    model: str = Field(primary_key=True, max_length=200)
    day: str = Field(primary_key=True, max_length=10)
    tokens: int = Field(default=0, sa_type=BigInteger)
    requests: int = Field(default=0, sa_type=BigInteger)
    inputs: int = Field(default=0, sa_type=BigInteger)


class Charge(SQLModel, table=True):
    """One whole-dollar Stripe PaymentIntent; committed as pending before Stripe is called."""

    __tablename__ = "charges"
    __table_args__ = (UniqueConstraint("org_id", "seq", name="uq_charges_org_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    org_id: str = Field(foreign_key="orgs.id", index=True, max_length=40)
    seq: int
    idempotency_key: str = Field(unique=True, max_length=100)
    amount_cents: int = Field(sa_type=BigInteger)
    currency: str = Field(default="usd", max_length=3)
    customer_id: str = Field(max_length=200)
    # The org's payment method when the charge was created: fixed, so every resend sends the
    # same body under the same idempotency key (None: the customer's default at Stripe).
    payment_method_id: str | None = Field(default=None, max_length=200)
    # Cumulative tokens / owed dollars this charge brings the org up to (its token range ends
    # here; it starts where the previous covering charge ended).
    tokens_from: int = Field(default=0, sa_type=BigInteger)
    tokens_to: int = Field(default=0, sa_type=BigInteger)
    # JSON text of the Stripe metadata, fixed at creation so every retry sends the same body.
    metadata_json: str = Field(default="{}")
    # JSON {project_id: cumulative tokens} at creation: the next charge's breakdown starts here.
    project_tokens_json: str = Field(default="{}")
    state: str = Field(default=CHARGE_PENDING, index=True, max_length=20)
    stripe_payment_intent_id: str | None = Field(default=None, max_length=200)
    stripe_status: str | None = Field(default=None, max_length=40)
    error: str | None = Field(default=None, max_length=2000)
    attempts: int = 0
    next_attempt_at: dt.datetime | None = None
    # When the first attempt was sent: retries stop 30 days (the setting) after it.
    first_attempt_at: dt.datetime | None = None
    # The Idempotency-Key the PaymentIntent creation was last sent with, and when it was
    # first used: Stripe keeps a key's answer for 24 hours only, so an older one is not resent.
    request_key: str | None = Field(default=None, max_length=120)
    request_key_at: dt.datetime | None = None
    created_at: dt.datetime = Field(default_factory=utcnow)
    updated_at: dt.datetime = Field(default_factory=utcnow)


class StripeEvent(SQLModel, table=True):
    """A Stripe webhook event already applied: its id is the key that makes a redelivery,
    or a second delivery racing the first, change nothing."""

    __tablename__ = "stripe_events"

    id: str = Field(primary_key=True, max_length=255)
    type: str = Field(max_length=100)
    # What applying it did ("ignored" for types metering does not act on) and to which org.
    outcome: str = Field(max_length=40)
    org_id: str | None = Field(default=None, max_length=40)
    stripe_created: dt.datetime | None = None
    applied_at: dt.datetime = Field(default_factory=utcnow)
