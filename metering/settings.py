"""Settings of the central metering service, its billing worker and its admin CLI.

One pydantic-settings class; every field is read from ``METERING_<FIELD>`` (the sidecar has its
own class in :mod:`metering.sidecar.settings`). ``__main__`` creates the only instance.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    bill_interval_s: float = Field(
        300.0, ge=0, description="seconds between billing runs in the service (0: no worker)"
    )
    bill_retry_base_s: float = Field(
        30.0, gt=0, description="first retry pause after a Stripe error or decline (doubles)"
    )
    bill_retry_max_s: float = Field(
        6 * 3600.0, gt=0, description="cap of the retry pause after Stripe errors or declines"
    )
    max_unpaid_usd: int = Field(
        50, ge=0, description="owed but not yet paid dollars above which billing_ok is false"
    )
    commit_max_events: int = Field(
        5000, ge=1, description="most events one group commit writes in a transaction"
    )
    shutdown_grace_s: float = Field(10.0, ge=0, description="SIGTERM: time to finish calls")
    log_level: str = Field("INFO", description="logging level")
