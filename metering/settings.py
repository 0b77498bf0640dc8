"""Settings of the central metering service, its billing worker and its admin CLI.

One pydantic-settings class; every field is read from ``METERING_<FIELD>`` (the sidecar has its
own class in :mod:`metering.sidecar.settings`). ``__main__`` creates the only instance.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from intent_embed.logs import LOG_FORMAT_HELP, LogFormat
from metering.charge_policy import Period


class Settings(BaseSettings):
    """Central metering settings (env prefix ``METERING_``)."""

    model_config = SettingsConfigDict(env_prefix="METERING_", extra="ignore")

    host: str = Field("0.0.0.0", description="gRPC listen address")
    port: int = Field(50052, description="gRPC port")
    metrics_host: str = Field("0.0.0.0", description="Prometheus /metrics listen address")
    metrics_port: int = Field(9102, description="Prometheus /metrics port (0: off)")
    database_url: str = Field(
        "sqlite:///./metering.db",
        description="ledger database: sqlite:///FILE (WAL) or postgresql+psycopg://...",
    )
    migrate_on_start: bool = Field(False, description="run Alembic migrations at start")
    stripe_api_key: str = Field("", description="Stripe secret key; empty: Stripe off")
    stripe_webhook_secret: str = Field(
        "",
        description="signing secret of the Stripe webhook endpoint (whsec_...); empty: "
        "webhooks and self-service payment-method setup are off",
    )
    stripe_api_base: str = Field(
        "https://api.stripe.com", description="Stripe API base URL (tests point it elsewhere)"
    )
    stripe_timeout_s: float = Field(30.0, gt=0, description="timeout of one Stripe HTTP call")
    stripe_max_retries: int = Field(
        2, ge=0, description="SDK resends (same idempotency key) on network errors and 5xx"
    )
    stripe_threads: int = Field(
        8,
        ge=1,
        description="threads of their own for the self-service calls that wait on Stripe "
        "(billing setup, portal, webhooks), apart from those of Authenticate and RecordUsage",
    )
    stripe_queue: int = Field(
        16,
        ge=0,
        description="self-service calls that may wait for one of those threads; past that a "
        "call is refused at once (UNAVAILABLE, reason STRIPE_BUSY; HTTP 503 at the gateway)",
    )
    bill_interval_s: float = Field(
        300.0, ge=0, description="seconds between billing runs in the service (0: no worker)"
    )
    charge_threshold_dollars: int = Field(
        20,
        ge=1,
        description="charge an org as soon as its uncharged whole dollars reach this; below "
        "it, at most one charge per period",
    )
    charge_period: Period = Field(
        "month",
        description="billing period (UTC calendar month, ISO week or day): at its end the "
        "whole dollars owed are charged, if at least $1",
    )
    bill_retry_base_s: float = Field(
        3600.0,
        gt=0,
        description="first retry pause after a soft decline or a Stripe error (doubles)",
    )
    bill_retry_max_s: float = Field(
        72 * 3600.0, gt=0, description="cap of the retry pause after soft declines or errors"
    )
    bill_max_attempts: int = Field(
        10, ge=1, description="most attempts of one charge before it waits for a new card"
    )
    bill_retry_window_s: float = Field(
        30 * 86400.0,
        gt=0,
        description="no attempt of a charge later than this after its first attempt",
    )
    max_unpaid_usd: int = Field(
        50, ge=0, description="owed but not yet paid dollars above which billing_ok is false"
    )
    commit_max_events: int = Field(
        5000, ge=1, description="most events one group commit writes in a transaction"
    )
    shutdown_grace_s: float = Field(10.0, ge=0, description="SIGTERM: time to finish calls")
    gateway_tokens: str = Field(
        "",
        description="service tokens of the gateway, comma-separated (Authenticate, GetUsage, "
        "CreateBillingSetup, ApplyStripeEvent); several while one is being rotated",
    )
    embed_tokens: str = Field(
        "", description="service tokens of embed services, comma-separated (RecordUsage)"
    )
    sidecar_tokens: str = Field(
        "", description="service tokens of metering sidecars, comma-separated (RecordUsage)"
    )
    insecure_no_auth: bool = Field(
        False,
        description="serve callers without service tokens (tests, a closed laptop); without "
        "it and without tokens the service refuses to start",
    )
    log_level: str = Field("INFO", description="logging level")
    log_format: LogFormat = Field("keyvalue", description=LOG_FORMAT_HELP)
