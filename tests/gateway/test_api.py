"""The gateway's happy paths as clients see them: the official `openai` client, the three
documentation examples as published, models, health, readiness and metrics."""

from __future__ import annotations

import base64
import uuid

import numpy as np
import pytest
import requests
from openai import OpenAI

from tests.gateway.harness import (
    DIMS,
    FAKE_REVISION,
    GOOD_KEY,
    ORG,
    PROJECT,
    Fakes,
    GatewayServer,
    fake_vector,
)
from tests.support.examples import curl_example, openai_example, python_example

QUERIES = ["how do i freeze my card", "what is my balance", "book a table for two at 7"]


@pytest.fixture
def client(gateway: GatewayServer) -> OpenAI:
    return OpenAI(base_url=f"{gateway.url}/v2", api_key=GOOD_KEY, max_retries=0)


def expected(texts: list[str], dims: int | None = None) -> np.ndarray:
    return np.stack([fake_vector(t.encode(), dims) for t in texts])


def test_single_string_default_base64(client: OpenAI, fakes: Fakes) -> None:
    # The openai client asks for base64 by default and decodes it back to floats.
    reply = client.embeddings.create(model="intent-embed", input=QUERIES[0])
    assert reply.model == "intent-embed" and reply.object == "list"
    assert [d.index for d in reply.data] == [0]
    got = np.array(reply.data[0].embedding, dtype=np.float32)
    np.testing.assert_array_equal(got, expected(QUERIES[:1])[0])
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == len(QUERIES[0].split())
    sent = fakes.embed.requests[-1]
    assert sent.packed and sent.org_id == ORG and list(sent.inputs) == QUERIES[:1]


def test_list_float_and_base64_agree(client: OpenAI) -> None:
    flt = client.embeddings.create(model="intent-embed", input=QUERIES, encoding_format="float")
    b64 = client.embeddings.create(model="intent-embed", input=QUERIES, encoding_format="base64")
    assert [d.index for d in flt.data] == [0, 1, 2]
    got = np.array([d.embedding for d in flt.data], dtype=np.float32)
    np.testing.assert_allclose(got, expected(QUERIES), rtol=1e-6)
    # Asked for explicitly, base64 comes back as the raw string: little-endian float32 bytes.
    decoded = [np.frombuffer(base64.b64decode(str(d.embedding)), dtype="<f4") for d in b64.data]
    np.testing.assert_array_equal(np.stack(decoded), expected(QUERIES))
    assert flt.usage.prompt_tokens == sum(len(q.split()) for q in QUERIES)


def test_token_ids_single_and_batch(client: OpenAI, fakes: Fakes) -> None:
    one = client.embeddings.create(model="intent-embed", input=[101, 2054, 2003])
    assert len(one.data) == 1 and one.usage.prompt_tokens == 3
    assert [list(t.ids) for t in fakes.embed.requests[-1].token_inputs] == [[101, 2054, 2003]]
    many = client.embeddings.create(
        model="intent-embed", input=[[7, 8], [9, 10, 11]], encoding_format="float"
    )
    assert len(many.data) == 2 and many.usage.prompt_tokens == 5
    want = fake_vector(np.asarray([9, 10, 11], dtype=np.uint32).tobytes(), None)
    np.testing.assert_allclose(many.data[1].embedding, want, rtol=1e-6)


def test_dimensions_are_passed_and_honoured(client: OpenAI, fakes: Fakes) -> None:
    reply = client.embeddings.create(
        model="intent-embed", input=QUERIES, dimensions=64, encoding_format="float"
    )
    got = np.array([d.embedding for d in reply.data])
    assert got.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert fakes.embed.requests[-1].dimensions == 64


def test_project_and_truncate_reach_the_embed_service(gateway: GatewayServer, fakes: Fakes) -> None:
    reply = requests.post(
        f"{gateway.url}/v1/embeddings",
        headers={"Authorization": f"Bearer {GOOD_KEY}"},
        json={"input": "hello there", "model": "intent-embed", "project_id": PROJECT,
              "truncate": True, "user": "end-user-7"},
        timeout=10,
    )  # fmt: skip
    assert reply.status_code == 200, reply.text
    sent = fakes.embed.requests[-1]
    assert sent.project_id == PROJECT and sent.truncate
    # The request id sent upstream (the usage idempotency key) is the one the client sees.
    assert sent.request_id == reply.headers["x-request-id"]


def test_unpacked_upstream_replies_still_work(client: OpenAI, fakes: Fakes) -> None:
    # A server that ignores `packed` (older embed build) answers with repeated floats.
    fakes.script.embed_packed = False
    reply = client.embeddings.create(model="intent-embed", input=QUERIES, encoding_format="float")
    np.testing.assert_allclose(
        np.array([d.embedding for d in reply.data]), expected(QUERIES), rtol=1e-6
    )


def test_documentation_examples_as_published(gateway: GatewayServer) -> None:
    host = gateway.url.removeprefix("http://")
    key = GOOD_KEY
    # The documentation's curl example: the same request (method, headers, body) from Python.
    reply = curl_example(host, key, timeout=30)
    body = reply.json()
    assert body["object"] == "list" and len(body["data"][0]["embedding"]) == 384
    assert body["usage"] == {"prompt_tokens": 5, "total_tokens": 5}

    response = python_example(host, key)
    embeddings = response.json()["embeddings"]
    assert len(embeddings) == 1
    np.testing.assert_allclose(embeddings[0], expected(["Your text to embed here"])[0], rtol=1e-6)
    assert response.json()["data"][0]["embedding"] == embeddings[0]

    assert len(openai_example(host, key)) == 384


def test_raw_base64_is_little_endian_float32(gateway: GatewayServer) -> None:
    reply = requests.post(
        f"{gateway.url}/v2/embeddings",
        headers={"Authorization": f"Bearer {GOOD_KEY}"},
        json={"input": QUERIES[1], "model": "intent-embed", "encoding_format": "base64"},
        timeout=10,
    )
    raw = base64.b64decode(reply.json()["data"][0]["embedding"])
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4"), expected(QUERIES[1:2])[0])


def test_models_list_and_get(client: OpenAI, gateway: GatewayServer) -> None:
    assert [m.id for m in client.models.list()] == ["intent-embed"]
    assert client.models.retrieve("intent-embed").id == "intent-embed"
    v1 = requests.get(f"{gateway.url}/v1/models", timeout=10).json()
    assert v1["data"][0]["id"] == "intent-embed"
    # What the embed service says it loaded: the content hash the model card names.
    assert v1["data"][0]["revision"] == FAKE_REVISION
    assert v1["data"][0]["dimensions"] == DIMS
    missing = requests.get(f"{gateway.url}/v2/models/gpt-9", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_health_readiness_and_metrics(gateway: GatewayServer, fakes: Fakes) -> None:
    assert requests.get(f"{gateway.url}/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(f"{gateway.url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"

    fakes.embed_upstream.set_serving(False)
    try:
        not_ready = requests.get(f"{gateway.url}/readyz", timeout=10)
        assert not_ready.status_code == 503
        assert not_ready.json()["embed"] == "NOT_SERVING"
    finally:
        fakes.embed_upstream.set_serving(True)

    requests.post(f"{gateway.url}/v2/embeddings", json={"input": "x"}, timeout=10)  # a 401
    # Not on the public API port: request and token counts are business volume.
    assert requests.get(f"{gateway.url}/metrics", timeout=10).status_code == 404
    text = requests.get(gateway.metrics_url, timeout=10).text
    assert 'gateway_requests_total{route="/v2/embeddings",status="401"}' in text
    assert 'gateway_request_seconds_bucket{le="0.005",route="/readyz"}' in text
    # Routes come from the app's own table: a path template is one label, whatever fills it;
    # a path no route serves is "other".
    requests.get(f"{gateway.url}/v2/models/intent-embed", timeout=10)
    requests.get(f"{gateway.url}/v2/models/no-such-model", timeout=10)
    requests.get(f"{gateway.url}/no/such/path/{uuid.uuid4().hex}", timeout=10)
    text = requests.get(gateway.metrics_url, timeout=10).text
    assert 'gateway_requests_total{route="/v2/models/{model}",status="200"}' in text
    assert 'gateway_requests_total{route="/v2/models/{model}",status="404"}' in text
    assert 'route="other",status="404"' in text
    assert "no/such/path" not in text and "no-such-model" not in text
