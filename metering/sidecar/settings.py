"""Settings of the metering sidecar (``python -m metering sidecar``); every field is read from
``METERING_<FIELD>`` and may be given as ``--<field>`` on the command line."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from intent_embed.logs import LOG_FORMAT_HELP, LogFormat


class SidecarSettings(BaseSettings):
    """Settings of the sidecar process; every field is read from ``METERING_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="METERING_", extra="ignore")

    host: str = Field(
        "127.0.0.1", description="gRPC listen address; localhost, only the embed server calls it"
    )
    port: int = Field(50052, description="gRPC port (the embed server's METERING_ADDR)")
    metrics_host: str = Field("0.0.0.0", description="Prometheus /metrics listen address")
    metrics_port: int = Field(9102, description="Prometheus /metrics port")
    spool_path: str = Field("./metering-spool.db", description="SQLite spool file (WAL mode)")
    spool_max_events: int = Field(
        100_000, ge=1, description="spool capacity; beyond it RecordUsage is RESOURCE_EXHAUSTED"
    )
    spool_synchronous: Literal["full", "normal"] = Field(
        "full", description="SQLite synchronous: full survives power loss, normal a crash"
    )
    spool_dedup_window_s: float = Field(
        600.0, gt=0, description="forwarded ids remembered this long to count retries as dups"
    )
    central_addr: str = Field(
        "", description="central metering gRPC target, e.g. dns:///metering:50052 (required)"
    )
    forward_batch: int = Field(500, ge=1, description="events per forwarded RecordUsage call")
    forward_interval_s: float = Field(
        1.0, gt=0, description="idle poll interval of the forwarder, and its first retry pause"
    )
    forward_timeout_s: float = Field(10.0, gt=0, description="deadline of one forward call")
    forward_backoff_max_s: float = Field(
        30.0, gt=0, description="cap of the retry backoff after forward errors"
    )
    shutdown_grace_s: float = Field(
        25.0, ge=0, description="time after SIGTERM to forward what is spooled"
    )
    embed_tokens: str = Field(
        "",
        description="service tokens of the embed service that may call RecordUsage, "
        "comma-separated (the same secret central metering knows)",
    )
    central_token: str = Field(
        "", description="this sidecar's service token, sent with every call to central metering"
    )
    insecure_no_auth: bool = Field(
        False,
        description="accept RecordUsage without a service token; without it and without "
        "embed tokens the sidecar refuses to start",
    )
    log_level: str = Field("INFO", description="logging level")
    log_format: LogFormat = Field("keyvalue", description=LOG_FORMAT_HELP)


