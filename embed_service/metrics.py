"""The embedding service's Prometheus metrics (names fixed by the cross-service conventions).

Metrics live in their own registry owned by an `EmbedMetrics` instance, so tests can build as
many servers as they like without clashing in prometheus_client's global registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_PADDED_TOKENS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class EmbedMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.inputs = Counter("embed_inputs", "Inputs embedded", registry=r)
        self.tokens = Counter("embed_tokens", "Tokens embedded (no special tokens)", registry=r)
        self.batch_size = Histogram(
            "embed_batch_size", "Inputs per forward pass", buckets=_BATCH_SIZES, registry=r
        )
        self.batch_padded_tokens = Histogram(
            "embed_batch_padded_tokens",
            "Padded tokens per forward pass (rows x longest row)",
            buckets=_PADDED_TOKENS,
            registry=r,
        )
        self.queue_depth = Gauge("embed_queue_depth", "Inputs waiting for the model", registry=r)
        self.inflight = Gauge(
            "embed_inflight_requests", "Embed calls being handled (autoscaling signal)", registry=r
        )
        self.queue_seconds = Histogram(
            "embed_queue_seconds", "Time an input waits before its forward pass",
            buckets=_SECONDS, registry=r,
        )
        self.usage_calls = Counter(
            "embed_usage_calls", "RecordUsage calls made to metering", registry=r
        )
        self.usage_records_queued = Gauge(
            "embed_usage_records_queued",
            "Usage records waiting for the RecordUsage call in flight to finish",
            registry=r,
        )
        self.forward_seconds = Histogram(
            "embed_forward_seconds", "Duration of one forward pass", buckets=_SECONDS, registry=r
        )
