"""With tracing on, a call to Stripe through the SDK's HTTP client (requests) is a span with
its method, URL and status, and the Stripe key, sent in a header, is in no span. Run in a
process of its own: tracing is process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from tests.fakes.fake_stripe import FakeStripe
from tests.support.clinc150 import REPO_ROOT
from tests.support.spans import spans_in

KEY = "sk_test_never_in_a_span"

SCRIPT = textwrap.dedent(
    """
    import sys
    from intent_embed import tracing
    from metering.stripe_api import stripe_client
    assert tracing.configure_tracing("metering")
    tracing.instrument_requests()
    client = stripe_client(sys.argv[1], sys.argv[2], max_retries=0, timeout_s=10)
    client.v1.customers.create(params={"name": "acme"})
    """
)


def test_a_stripe_call_is_a_span_without_the_key() -> None:
    fake = FakeStripe().start()
    try:
        env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "PYTHONPATH": str(REPO_ROOT)}
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, KEY, fake.base_url], cwd=REPO_ROOT, env=env,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        fake.stop()
    assert result.returncode == 0, result.stderr[-2000:]
    spans = spans_in(result.stdout)
    (call,) = [s for s in spans if s["kind"] == "SpanKind.CLIENT"]
    attributes = call["attributes"]
    method = attributes.get("http.request.method", attributes.get("http.method"))
    url = attributes.get("url.full", attributes.get("http.url", ""))
    assert method == "POST" and url.endswith("/v1/customers")
    assert KEY not in json.dumps(spans)
