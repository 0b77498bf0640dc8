"""One request, one trace: with `OTEL_TRACES_EXPORTER=console` the three real processes print
their spans, and the spans of one REST call share a trace id from the gateway through the embed
service (queue wait, batch, forward, usage record) to central metering (ledger commit), with
the batch's size and tokens as attributes and no API key, service token or input text in any
span. Off (the default, every other test here) no span is printed at all."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from devstack.stack import Ports, Stack
from tests.support.spans import printed_spans


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[Stack, dict[str, Any]]]:
    import tempfile

    with tempfile.TemporaryDirectory() as data_dir:
        stack = Stack(
            data_dir=Path(data_dir),
            ports=Ports.free(),
            extra_env={
                "OTEL_TRACES_EXPORTER": "console",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                "GATEWAY_RATE_LIMIT_RPM": "0",
                "GATEWAY_RATE_LIMIT_TPM": "0",
            },
        )
        demo = stack.ensure_demo()
        stack.start(timeout=240)
        try:
            yield stack, demo
        finally:
            stack.stop()


def test_one_rest_request_is_one_trace_across_the_three_services(
    traced: tuple[Stack, dict[str, Any]],
) -> None:
    stack, demo = traced
    key = str(demo["api_key"])
    text = f"where is my parcel {uuid.uuid4().hex}"
    client = OpenAI(base_url=f"{stack.gateway_url}/v2", api_key=key, max_retries=0)
    assert len(client.embeddings.create(model="intent-embed", input=text).data) == 1
    stack.stop()  # each process flushes its spans on exit

    logs = {name: service.log_path for name, service in stack.services.items()}
    spans = {name: printed_spans(path) for name, path in logs.items()}
    (request,) = [s for s in spans["gateway"] if s["kind"] == "SpanKind.SERVER"
                  and s["attributes"].get("http.route") == "/v2/embeddings"]  # fmt: skip
    trace_id = request["context"]["trace_id"]
    in_trace = {
        name: {s["name"]: s for s in found if s["context"]["trace_id"] == trace_id}
        for name, found in spans.items()
    }
    assert "/intent_embed.v1.EmbedService/Embed" in in_trace["gateway"]
    embed = in_trace["embed"]
    for name in ("embed.batch", "embed.queue_wait", "embed.forward", "usage.record"):
        assert name in embed, sorted(embed)
    batch = embed["embed.batch"]["attributes"]
    assert batch["embed.inputs"] == 1 and batch["embed.tokens"] > 0
    assert batch["embed.backend"] and batch["embed.batch_size"] >= 1
    assert "ledger.commit" in in_trace["metering"], sorted(in_trace["metering"])
    services = {s["resource"]["attributes"]["service.name"]
                for found in in_trace.values() for s in found.values()}  # fmt: skip
    assert services == {"gateway", "embed", "metering"}

    printed = json.dumps(spans)
    for secret in (key, text, *stack.tokens.values()):
        assert secret not in printed
