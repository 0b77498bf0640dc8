"""The sidecar's Prometheus metrics, in a registry of their own (no process globals)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge

from metering.sidecar.spool import Spool


class SidecarMetrics:
    """The sidecar's Prometheus metrics, in a registry of their own (no process globals)."""

    def __init__(self, spool: Spool) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        depth = Gauge(
            "metering_sidecar_spool_depth", "Usage events spooled, not yet acked by central",
            registry=r,
        )
        depth.set_function(lambda: spool.depth)
        age = Gauge(
            "metering_sidecar_oldest_unforwarded_age_seconds",
            "Age of the oldest spooled event (0 when the spool is empty)",
            registry=r,
        )
        age.set_function(lambda: _age(spool.oldest_spooled_at))
        capacity = Gauge(
            "metering_sidecar_spool_capacity", "METERING_SPOOL_MAX_EVENTS", registry=r
        )
        capacity.set(spool.max_events)
        dead = Gauge(
            "metering_sidecar_dead_letter_depth", "Events in the dead-letter table", registry=r
        )
        dead.set_function(lambda: spool.dead_letter_count)
        self.recorded_events = Counter(
            "metering_sidecar_recorded_events", "Events accepted into the spool", registry=r
        )
        self.duplicate_events = Counter(
            "metering_sidecar_duplicate_events", "Events already known (retries)", registry=r
        )
        self.forwarded_events = Counter(
            "metering_sidecar_forwarded_events", "Events acked by the central ledger", registry=r
        )
        self.forward_errors = Counter(
            "metering_sidecar_forward_errors", "Failed forward calls, by gRPC code",
            ["code"], registry=r,
        )
        self.dead_letters = Counter(
            "metering_sidecar_dead_letters", "Events moved to the dead-letter table", registry=r
        )


def _age(oldest: float | None) -> float:
    return 0.0 if oldest is None else max(0.0, time.time() - oldest)


