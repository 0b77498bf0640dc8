"""Robustness: generated bodies never get a 5xx, and 64 concurrent clients get no errors."""

from __future__ import annotations

import concurrent.futures
import json
import time
from typing import Any

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.harness import GOOD_KEY, PROJECT, Fakes, GatewayServer

AUTH = {"Authorization": f"Bearer {GOOD_KEY}", "Content-Type": "application/json"}

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
inputs = (
    st.text(max_size=40)
    | st.lists(st.text(max_size=20), max_size=5)
    | st.lists(st.integers(min_value=-5, max_value=2**33), max_size=6)
    | st.lists(st.lists(st.integers(min_value=-5, max_value=2**33), max_size=4), max_size=4)
    | json_values
)
bodies = (
    st.fixed_dictionaries(
        {},
        optional={
            "input": inputs,
            "model": st.sampled_from(["intent-embed", "", "gpt-x"]) | json_values,
            "encoding_format": st.sampled_from(["float", "base64", "int8"]) | json_values,
            "dimensions": st.integers(min_value=-3, max_value=2**70) | json_values,
            "truncate": st.booleans() | json_values,
            "user": st.text(max_size=10) | json_values,
            "project_id": st.sampled_from([PROJECT, "nope", ""]) | json_values,
        },
    )
    | json_values
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies)
def test_generated_json_bodies_never_get_a_5xx(gateway: GatewayServer, body: Any) -> None:
    for path in ("/v2/embeddings", "/v2/predict"):
        reply = requests.post(gateway.url + path, data=json.dumps(body), headers=AUTH, timeout=30)
        assert reply.status_code < 500, (body, reply.status_code, reply.text[:300])
        if reply.status_code != 200:
            assert set(reply.json()["error"]) == {"message", "type", "param", "code"}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.binary(max_size=200), content_type=st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded", ""]
))  # fmt: skip
def test_generated_raw_bodies_never_get_a_5xx(
    gateway: GatewayServer, data: bytes, content_type: str
) -> None:
    headers = {"Authorization": f"Bearer {GOOD_KEY}", "Content-Type": content_type}
    reply = requests.post(gateway.url + "/v2/embeddings", data=data, headers=headers, timeout=30)
    assert reply.status_code < 500, (data, reply.status_code, reply.text[:300])


def test_openapi_schema_describes_the_body(gateway: GatewayServer) -> None:
    schema = requests.get(gateway.url + "/openapi.json", timeout=10).json()
    body = schema["paths"]["/v2/embeddings"]["post"]["requestBody"]
    props = body["content"]["application/json"]["schema"]["properties"]
    assert {"input", "model", "encoding_format", "dimensions", "project_id", "truncate"} <= set(
        props
    )


def test_64_concurrent_clients_get_no_errors(gateway: GatewayServer, fakes: Fakes) -> None:
    deadline = time.monotonic() + 3.0

    def client(i: int) -> tuple[list[int], int]:
        statuses: list[int] = []
        tokens = 0
        with requests.Session() as session:
            n = 0
            while time.monotonic() < deadline:
                text = f"where is my parcel {i} {n}"
                reply = session.post(
                    gateway.url + "/v2/embeddings",
                    json={"input": text, "model": "intent-embed"},
                    headers=AUTH,
                    timeout=30,
                )
                statuses.append(reply.status_code)
                if reply.status_code == 200:
                    tokens += reply.json()["usage"]["prompt_tokens"]
                n += 1
        return statuses, tokens

    before = len(fakes.embed.requests)
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        results = list(pool.map(client, range(64)))
    statuses = [s for ss, _ in results for s in ss]
    assert len(statuses) >= 64 and set(statuses) == {200}
    # Every answered request reached the embed service exactly once (no hidden retries).
    assert len(fakes.embed.requests) - before == len(statuses)
    assert sum(t for _, t in results) == 6 * len(statuses)
