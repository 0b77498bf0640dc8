"""Reading Prometheus samples: from a registry in this process, or from a /metrics page."""

from __future__ import annotations

import urllib.request

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families


def registry_value(
    registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None
) -> float:
    """A sample's value in `registry` (0 when it has not been set yet)."""
    return registry.get_sample_value(name, labels or {}) or 0.0


def scraped_value(url: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The sum of the samples called `name` with `labels` on the /metrics page at `url`."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(
                sample.labels.get(k) == v for k, v in (labels or {}).items()
            ):
                total += sample.value
    return total
