"""Every error a client can meet: status, OpenAI body, and the header a client acts on."""

from __future__ import annotations

import socket
from typing import Any

import grpc
import openai
import pytest
import requests
from openai import OpenAI

from intent_embed.rich_status import BILLING_NOT_ACTIVE
from intent_embed.v1 import metering_pb2
from tests.gateway.harness import GOOD_KEY, UNPAID_KEY, FakeClock, Fakes, GatewayServer

AUTH = {"Authorization": f"Bearer {GOOD_KEY}"}


def post(
    gateway: GatewayServer,
    body: Any = None,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    path: str = "/v2/embeddings",
) -> requests.Response:
    return requests.post(
        gateway.url + path,
        json=body if data is None else None,
        data=data,
        headers=AUTH if headers is None else headers,
        timeout=30,
    )


def error_of(reply: requests.Response, status: int) -> dict[str, Any]:
    assert reply.status_code == status, (reply.status_code, reply.text[:300])
    assert reply.headers["content-type"].startswith("application/json")
    err = reply.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    return dict(err)


def test_missing_malformed_and_unknown_keys_are_401(gateway: GatewayServer) -> None:
    body = {"input": "hi", "model": "intent-embed"}
    assert error_of(post(gateway, body, headers={}), 401)["code"] == "missing_api_key"
    basic = post(gateway, body, headers={"Authorization": "Basic abc"})
    assert "Bearer" in error_of(basic, 401)["message"]
    assert error_of(post(gateway, body, headers={"Authorization": "Bearer"}), 401)
    bad = post(gateway, body, headers={"Authorization": "Bearer sk-nope-1"})
    assert error_of(bad, 401)["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{gateway.url}/v2", api_key="sk-nope-2", max_retries=0).embeddings.create(
            model="intent-embed", input="hi"
        )


def test_billing_not_ok_is_402_with_how_to_fix(gateway: GatewayServer, fakes: Fakes) -> None:
    unpaid = {"Authorization": f"Bearer {UNPAID_KEY}"}
    err = error_of(post(gateway, {"input": "hi", "model": "intent-embed"}, headers=unpaid), 402)
    # Metering's word on the org, then what the user does: the setup route, never an admin
    # command; the code is the one every self-service 402 has.
    assert err["message"].startswith("Organization org-2 has no payment method.")
    assert "POST /v2/billing/setup" in err["message"] and "/dashboard" in err["message"]
    assert "python -m metering" not in err["message"]
    assert err["code"] == "billing_setup_required" and err["type"] == "insufficient_quota"
    # An operator's billing page is named when one is configured.
    page = "https://billing.example.test/account"
    with GatewayServer(fakes.settings(billing_page_url=page)) as gw:
        err = error_of(post(gw, {"input": "hi", "model": "intent-embed"}, headers=unpaid), 402)
    assert page in err["message"] and "POST /v2/billing/setup" in err["message"]


def test_auth_is_cached_and_bad_keys_briefly(fakes: Fakes) -> None:
    clock = FakeClock()  # the cache expires when the test moves the clock, not by waiting
    settings = fakes.settings(auth_cache_s=2.0, auth_negative_cache_s=2.0)
    with GatewayServer(settings, clock=clock) as gw:
        body = {"input": "hi", "model": "intent-embed"}
        before = fakes.metering.auth_calls
        assert post(gw, body).status_code == 200
        # A revoked key keeps working from the cache, then stops once the entry expires.
        fakes.script.revoked.add(GOOD_KEY)
        for _ in range(3):
            assert post(gw, body).status_code == 200
        for _ in range(3):
            assert post(gw, body, headers={"Authorization": "Bearer sk-bad-x"}).status_code == 401
        assert fakes.metering.auth_calls - before == 2
        clock.advance(2.1)
        assert post(gw, body).status_code == 401


def test_a_refused_org_is_asked_about_again_soon(fakes: Fakes) -> None:
    # A user who just added a payment method must not wait out the long cache of paying keys.
    clock = FakeClock()
    settings = fakes.settings(auth_cache_s=60.0, auth_negative_cache_s=2.0)
    unpaid = {"Authorization": f"Bearer {UNPAID_KEY}"}
    body = {"input": "hi", "model": "intent-embed"}
    refused = fakes.metering.keys[UNPAID_KEY]
    with GatewayServer(settings, clock=clock) as gw:
        assert post(gw, body, headers=unpaid).status_code == 402
        paying = metering_pb2.AuthenticateResponse()
        paying.CopyFrom(refused)
        paying.billing_ok, paying.billing_state, paying.billing_message = True, "ok", ""
        fakes.metering.keys[UNPAID_KEY] = paying
        try:
            assert post(gw, body, headers=unpaid).status_code == 402  # still cached
            clock.advance(2.1)
            assert post(gw, body, headers=unpaid).status_code == 200
        finally:
            fakes.metering.keys[UNPAID_KEY] = refused


def test_metering_unreachable_is_503_and_not_cached(fakes: Fakes) -> None:
    with GatewayServer(fakes.settings(auth_cache_s=0)) as gw:
        # One UNAVAILABLE (a metering replica draining) is retried by the channel, unseen.
        fakes.script.auth_failures.append((grpc.StatusCode.UNAVAILABLE, "draining"))
        assert post(gw, {"input": "hi", "model": "intent-embed"}).status_code == 200
        assert not fakes.script.auth_failures
        # Down for the retry too: 503, and the next call asks again.
        fakes.script.auth_failures.extend([(grpc.StatusCode.UNAVAILABLE, "down")] * 2)
        err = error_of(post(gw, {"input": "hi", "model": "intent-embed"}), 503)
        assert "metering" in err["message"]
        assert post(gw, {"input": "hi", "model": "intent-embed"}).status_code == 200
        metrics = requests.get(gw.metrics_url, timeout=10).text
        assert (
            'gateway_upstream_errors_total{code="UNAVAILABLE",upstream="metering"} 1.0' in metrics
        )


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"model": "intent-embed"}, "input", "required"),
        ({"input": None, "model": "intent-embed"}, "input", "required"),
        ({"input": "hi"}, "model", "required"),
        ({"input": "hi", "model": 7}, "model", "string"),
        ({"input": "", "model": "intent-embed"}, "input", "empty"),
        ({"input": [], "model": "intent-embed"}, "input", "empty"),
        ({"input": ["a", ""], "model": "intent-embed"}, "input", "input 1"),
        ({"input": ["a", 3], "model": "intent-embed"}, "input", "input 1"),
        ({"input": [1, "a"], "model": "intent-embed"}, "input", "token 1"),
        ({"input": [1, -2], "model": "intent-embed"}, "input", "token 1"),
        ({"input": [1, 2**40], "model": "intent-embed"}, "input", "token 1"),
        ({"input": [1.5], "model": "intent-embed"}, "input", "must be"),
        ({"input": [True], "model": "intent-embed"}, "input", "must be"),
        ({"input": [[1, 2], []], "model": "intent-embed"}, "input", "input 1"),
        ({"input": [[1, 2], 3], "model": "intent-embed"}, "input", "input 1"),
        ({"input": [None], "model": "intent-embed"}, "input", "must be"),
        ({"input": {"a": 1}, "model": "intent-embed"}, "input", "must be"),
        ({"input": 12, "model": "intent-embed"}, "input", "must be"),
        ({"input": "hi", "model": "intent-embed", "encoding_format": "int8"},
         "encoding_format", "base64"),
        ({"input": "hi", "model": "intent-embed", "dimensions": 0}, "dimensions", "positive"),
        ({"input": "hi", "model": "intent-embed", "dimensions": "64"}, "dimensions", "positive"),
        ({"input": "hi", "model": "intent-embed", "dimensions": 10**30}, "dimensions", "positive"),
        ({"input": "hi", "model": "intent-embed", "dimensions": 999}, "dimensions", "384"),
        ({"input": "hi", "model": "intent-embed", "truncate": "yes"}, "truncate", "true or false"),
        ({"input": "hi", "model": "intent-embed", "user": 5}, "user", "string"),
        ({"input": "hi", "model": "intent-embed", "project_id": 5}, "project_id", "string"),
        ({"input": "hi", "model": "intent-embed", "project_id": "proj-other"},
         "project_id", "not a project of your organization"),
        (["hi"], None, "JSON object"),
    ],
)  # fmt: skip
def test_invalid_bodies_are_400_naming_the_field(
    gateway: GatewayServer, body: Any, param: str | None, needle: str
) -> None:
    err = error_of(post(gateway, body), 400)
    assert err["param"] == param and needle in err["message"], err
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"not json", b'{"input": "a", "model": "intent-embed"', b"\xff\xfe", b"1e999",
     b'{"input": "\\ud800", "model": "intent-embed"}'],
)  # fmt: skip
def test_unparseable_bodies_are_400(gateway: GatewayServer, data: bytes) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    assert error_of(post(gateway, data=data, headers=headers), 400)["code"] == "invalid_json"


def test_wrong_content_type_with_json_body_still_works(gateway: GatewayServer) -> None:
    # curl -d without -H sends form encoding; the body is still the JSON the user meant.
    headers = {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}
    reply = post(gateway, data=b'{"input": "hi", "model": "intent-embed"}', headers=headers)
    assert reply.status_code == 200
    assert error_of(post(gateway, data=b"input=hi&model=x", headers=headers), 400)


def test_a_body_with_several_problems_gets_the_first(gateway: GatewayServer) -> None:
    # The order a user fixes them in: the model (404) before the input, an input count before
    # its items, items in order.
    err = error_of(post(gateway, {"input": 12, "model": "gpt-x"}), 404)
    assert err["code"] == "model_not_found"
    err = error_of(post(gateway, {"input": ["a"] * 2049 + [""], "model": "intent-embed"}), 400)
    assert err["code"] == "too_many_inputs"
    err = error_of(post(gateway, {"input": ["a", 3, ""], "model": "intent-embed"}), 400)
    assert err["message"].startswith("input 1 is not a string") and err["code"] == "invalid_type"
    body = {"input": [[1], [2, "x"]], "model": "intent-embed", "dimensions": 0}
    assert error_of(post(gateway, body), 400)["message"].startswith("input 1 token 1 is 'x'")
    # A repeated key counts once, with its last value, as in any JSON parser's dict.
    raw = b'{"model": 7, "input": "hi", "model": "intent-embed"}'
    assert post(gateway, data=raw, headers={**AUTH, "Content-Type": "application/json"}).ok


def test_unknown_model_is_404_model_not_found(gateway: GatewayServer) -> None:
    err = error_of(post(gateway, {"input": "hi", "model": "text-embedding-3-small"}), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        OpenAI(base_url=f"{gateway.url}/v2", api_key=GOOD_KEY, max_retries=0).embeddings.create(
            model="gpt-x", input="hi"
        )


def test_too_many_inputs_and_tokens(gateway: GatewayServer) -> None:
    err = error_of(post(gateway, {"input": ["a"] * 2049, "model": "intent-embed"}), 400)
    assert "2048" in err["message"] and err["code"] == "too_many_inputs"
    assert post(gateway, {"input": ["a"] * 2048, "model": "intent-embed"}).status_code == 200
    # One input as 3000 token ids is one input (too long), not 3000 inputs.
    err = error_of(post(gateway, {"input": [5] * 3000, "model": "intent-embed"}), 400)
    assert "input 0" in err["message"] and "truncate" in err["message"]
    cut = post(gateway, {"input": [5] * 3000, "model": "intent-embed", "truncate": True})
    assert cut.status_code == 200 and cut.json()["usage"]["prompt_tokens"] == 256
    # 2048 x 150 token ids = 307,200 tokens: over the 300,000 the embed service accepts.
    err = error_of(post(gateway, {"input": [[5] * 150] * 2048, "model": "intent-embed"}), 400)
    assert "300000" in err["message"] and err["param"] == "input"


def test_too_long_input_names_index_and_truncate(gateway: GatewayServer) -> None:
    err = error_of(post(gateway, {"input": ["ok", "word " * 400], "model": "intent-embed"}), 400)
    assert "input 1" in err["message"] and "truncate" in err["message"]
    assert err["param"] == "input"
    cut = post(gateway, {"input": "word " * 400, "model": "intent-embed", "truncate": True})
    assert cut.status_code == 200 and cut.json()["usage"]["prompt_tokens"] == 256


def test_body_over_limit_is_413(fakes: Fakes) -> None:
    with GatewayServer(fakes.settings(max_body_bytes=1000)) as gw:
        big = {"input": "x" * 2000, "model": "intent-embed"}
        assert error_of(post(gw, big), 413)["code"] == "request_too_large"

        def chunks() -> Any:  # no Content-Length: the streamed size is what counts
            yield b'{"input": "'
            for _ in range(20):
                yield b"y" * 100
            yield b'", "model": "intent-embed"}'

        streamed = requests.post(gw.url + "/v2/embeddings", data=chunks(), headers=AUTH, timeout=30)
        assert "content-length" not in {k.lower() for k in streamed.request.headers}
        assert error_of(streamed, 413)["code"] == "request_too_large"
        assert post(gw, {"input": "small", "model": "intent-embed"}).status_code == 200


@pytest.mark.parametrize(
    ("code", "status", "error_code"),
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "server_overloaded"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 503, "upstream_unavailable"),
        (grpc.StatusCode.FAILED_PRECONDITION, 400, "usage_rejected"),
        (grpc.StatusCode.INTERNAL, 502, "upstream_error"),
        (grpc.StatusCode.UNAUTHENTICATED, 401, "invalid_api_key"),
    ],
)
def test_upstream_statuses_map_to_http(
    gateway: GatewayServer, fakes: Fakes, code: grpc.StatusCode, status: int, error_code: str
) -> None:
    fakes.script.embed_failures.append((code, "unknown org org-1"))
    reply = post(gateway, {"input": "hi", "model": "intent-embed"})
    assert error_of(reply, status)["code"] == error_code
    assert reply.headers["x-request-id"]
    if status == 429:
        assert reply.headers["retry-after"] == "1"


def test_billing_refusal_from_metering_is_402(gateway: GatewayServer, fakes: Fakes) -> None:
    fakes.script.embed_failures.append((
        grpc.StatusCode.FAILED_PRECONDITION, "org org-1 is past due; pay the open invoice",
        BILLING_NOT_ACTIVE,
    ))  # fmt: skip
    err = error_of(post(gateway, {"input": "hi", "model": "intent-embed"}), 402)
    assert err["code"] == "billing_setup_required" and "POST /v2/billing/setup" in err["message"]


def test_one_retry_on_unavailable_with_the_same_request_id(
    gateway: GatewayServer, fakes: Fakes
) -> None:
    fakes.script.embed_failures.append((grpc.StatusCode.UNAVAILABLE, "pod draining"))
    before = len(fakes.embed.requests)
    reply = post(gateway, {"input": "hi", "model": "intent-embed"})
    assert reply.status_code == 200
    tried = fakes.embed.requests[before:]
    assert len(tried) == 2
    assert tried[0].request_id == tried[1].request_id == reply.headers["x-request-id"]

    fakes.script.embed_failures.extend([(grpc.StatusCode.UNAVAILABLE, "down")] * 2)
    before = len(fakes.embed.requests)
    assert error_of(post(gateway, {"input": "hi", "model": "intent-embed"}), 503)
    assert len(fakes.embed.requests) - before == 2


def test_embed_deadline_is_503(fakes: Fakes) -> None:
    with GatewayServer(fakes.settings(embed_timeout_s=0.2)) as gw:
        fakes.script.embed_delay_s = 1.5  # without the deadline this would be a 200
        done_before = fakes.embed.delays_done
        assert error_of(post(gw, {"input": "hi", "model": "intent-embed"}), 503)
        # Answered at the deadline, while the upstream was still busy with the request.
        assert fakes.embed.delays_done == done_before


def test_embed_service_down_is_503_not_ready(fakes: Fakes) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with GatewayServer(fakes.settings(embed_addr=f"dns:///127.0.0.1:{dead}")) as gw:
        err = error_of(post(gw, {"input": "hi", "model": "intent-embed"}), 503)
        assert err["type"] == "service_unavailable"
        ready = requests.get(gw.url + "/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["metering"] == "SERVING"


def test_unknown_routes_and_methods_in_openai_shape(gateway: GatewayServer) -> None:
    assert error_of(requests.get(gateway.url + "/v2/nothing", timeout=10), 404)
    assert error_of(requests.get(gateway.url + "/v2/embeddings", timeout=10), 405)
    assert error_of(requests.get(gateway.url + "/v2/models/%00", timeout=10), 404)


def test_gateway_sheds_load_past_max_inflight_with_429(fakes: Fakes) -> None:
    import concurrent.futures

    with GatewayServer(fakes.settings(max_inflight=2)) as gw:
        fakes.script.embed_delay_s = 1.0
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            replies = list(
                pool.map(lambda _: post(gw, {"input": "hi", "model": "intent-embed"}), range(6))
            )
        statuses = sorted(r.status_code for r in replies)
        assert statuses.count(200) >= 2 and set(statuses) == {200, 429}, statuses
        shed = next(r for r in replies if r.status_code == 429)
        assert shed.headers["retry-after"] == "1"
        assert error_of(shed, 429)["code"] == "server_overloaded"


def test_concurrent_first_requests_share_one_authenticate(fakes: Fakes) -> None:
    import concurrent.futures

    with GatewayServer(fakes.settings()) as gw:
        fakes.script.embed_delay_s = 0.05
        before = fakes.metering.auth_calls
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            replies = list(
                pool.map(lambda _: post(gw, {"input": "hi", "model": "intent-embed"}), range(16))
            )
        assert [r.status_code for r in replies] == [200] * 16
        assert fakes.metering.auth_calls - before <= 2  # threads may start a little apart


def test_fastapi_validation_errors_become_openai_400s(fakes: Fakes) -> None:
    from fastapi.testclient import TestClient

    from gateway.app import create_app

    app = create_app(fakes.settings())

    @app.get("/probe")
    async def probe(n: int) -> dict[str, int]:  # any typed parameter FastAPI validates
        return {"n": n}

    reply = TestClient(app).get("/probe", params={"n": "abc"})
    err = error_of(reply, 400)  # type: ignore[arg-type]
    assert err["param"] == "n" and err["type"] == "invalid_request_error"
