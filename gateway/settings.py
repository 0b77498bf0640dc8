"""The gateway's settings: one pydantic-settings class read from `GATEWAY_*` variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from intent_embed.logs import LOG_FORMAT_HELP, LogFormat


class Settings(BaseSettings):
    """Everything the gateway can be told; each field is `GATEWAY_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    host: str = Field(default="0.0.0.0", description="interface the HTTP server binds")
    port: int = Field(default=8080, ge=0, le=65535, description="HTTP port of the API")
    metrics_port: int = Field(
        default=9104,
        ge=0,
        le=65535,
        description="Prometheus /metrics port, apart from the public API port (0: off)",
    )
    embed_addr: str = Field(
        default="dns:///127.0.0.1:50051",
        description="embed service gRPC target; dns:/// lets round_robin spread over all pods",
    )
    metering_addr: str = Field(
        default="127.0.0.1:50052", description="metering gRPC address (auth)"
    )
    metering_token: str = Field(
        default="",
        description="the gateway's service token, sent with every call to metering (metering's "
        "METERING_GATEWAY_TOKENS lists it)",
    )
    auth_cache_s: float = Field(
        default=30.0, ge=0, description="how long a key's Authenticate answer is reused"
    )
    auth_negative_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="how long a rejected key stays rejected without asking metering",
    )
    auth_cache_max_keys: int = Field(
        default=10_000, ge=1, description="API keys kept in the auth cache"
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1, description="largest request body (413)"
    )
    max_inflight: int = Field(
        default=1024,
        ge=1,
        description="embedding requests in progress before new ones get 429 (memory bound)",
    )
    max_inputs: int = Field(default=2048, ge=1, description="most inputs in one request")
    embed_timeout_s: float = Field(default=30.0, gt=0, description="deadline of one Embed call")
    metering_timeout_s: float = Field(
        default=5.0, gt=0, description="deadline of one Authenticate call"
    )
    ready_timeout_s: float = Field(
        default=2.0, gt=0, description="deadline of /readyz health checks"
    )
    billing_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="deadline of the billing calls that may wait on Stripe (setup, webhooks)",
    )
    billing_page_url: str = Field(
        default="",
        description="public URL of the page where users manage billing: named in 402 answers "
        "and where Stripe sends users back after setup; empty: this gateway's /dashboard",
    )
    behind_proxy: bool = Field(
        default=False,
        description="the gateway is reached only through a TLS-terminating proxy that sets "
        "X-Forwarded-Proto and X-Forwarded-Host: the return URL derived for Stripe (when "
        "billing_page_url is empty) takes its scheme and host from them. Leave off when clients "
        "reach the gateway directly: anyone could set those headers",
    )
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After seconds sent with a 429")
    rate_limit_rpm: int = Field(
        default=3000,
        ge=0,
        description="requests per minute an org may make, unless the ledger gives it its own "
        "(admin set-limits); 0: no limit",
    )
    rate_limit_tpm: int = Field(
        default=1_000_000,
        ge=0,
        description="input tokens per minute an org may embed, unless the ledger gives it its "
        "own; 0: no limit",
    )
    rate_limit_redis_url: str = Field(
        default="",
        description="Redis (redis://host:6379/0) that every gateway replica counts rate limits "
        "in; empty: each process counts alone, in memory (one replica, make run)",
    )
    rate_limit_key_prefix: str = Field(
        default="intent-embed", description="prefix of the rate-limit keys in Redis"
    )
    rate_limit_timeout_s: float = Field(
        default=0.25,
        gt=0,
        description="deadline of one rate-limit call to Redis; past it the request is served "
        "without a limit check (fail open) and Redis is left alone for 2 s",
    )
    rate_limit_window_s: int = Field(
        default=60,
        ge=1,
        description="the window of both rate limits, in seconds (60: per minute, as named)",
    )
    model_name: str = Field(default="intent-embed", description="the one model name the API serves")
    log_level: str = Field(default="info", description="logging level")
    log_format: LogFormat = Field("keyvalue", description=LOG_FORMAT_HELP)
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes")
    keep_alive_s: int = Field(
        default=75,
        ge=1,
        description="idle HTTP keep-alive; above a load balancer's idle timeout (often 60 s) "
        "so it never reuses a connection the gateway just closed",
    )
    graceful_shutdown_s: float = Field(
        default=10.0, ge=0, description="on SIGTERM, how long in-flight requests may finish"
    )
