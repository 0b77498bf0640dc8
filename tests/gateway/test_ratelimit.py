"""Per-org rate limits as a client meets them: the official `openai` client gets a 429 with
OpenAI's body, Retry-After and the x-ratelimit-* headers once its org is over its requests or
tokens per minute, other orgs are served, an org's own limits from Authenticate win over the
gateway's defaults; with Redis, two real gateway processes hold an org to one budget; with
Redis gone, the gateway serves (fails open)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
import requests
from openai import OpenAI

from devstack.probes import free_port, http_ok, wait_ready
from gateway.ratelimit import duration
from intent_embed.v1 import metering_pb2
from tests.gateway.harness import Fakes, GatewayServer

REPO = Path(__file__).resolve().parents[2]
HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


def inside_one_window(window_s: int = 60, needed_s: float = 20.0) -> None:
    """Waits, when needed, until `needed_s` seconds are left in the current window. The
    library's windows are aligned to the clock: a burst that crosses a boundary is counted
    partly in the previous window, weighted, and its remaining counts are then off by one."""
    left = window_s - time.time() % window_s
    if left < needed_s:
        time.sleep(left + 0.05)


@pytest.fixture
def orgs(fakes: Fakes) -> Iterator[dict[str, str]]:
    """Keys of fresh orgs, by name: "a" and "b" on the defaults, "vip" (5 requests a minute)
    and "tight" (1 request, 4 tokens a minute) with limits of their own from the ledger; each
    test starts with at least 20 s left in the minute's window."""
    inside_one_window()
    run = uuid.uuid4().hex[:8]
    own = {"a": (0, 0), "b": (0, 0), "vip": (5, 0), "tight": (1, 4)}
    keys: dict[str, str] = {}
    for name, (rpm, tpm) in own.items():
        key = f"sk-rl-{name}-{run}"
        fakes.metering.keys[key] = metering_pb2.AuthenticateResponse(
            org_id=f"org-{name}-{run}", billing_ok=True, billing_state="ok",
            requests_per_minute=rpm, tokens_per_minute=tpm,
        )  # fmt: skip
        keys[name] = key
    yield keys
    for key in keys.values():
        del fakes.metering.keys[key]


def embed(url: str, key: str, text: str = "hello world") -> Any:
    """One embeddings call with the official client, its HTTP answer kept (429s included)."""
    client = OpenAI(base_url=f"{url}/v2", api_key=key, max_retries=0)
    try:
        raw = client.embeddings.with_raw_response.create(model="intent-embed", input=text)
    except openai.RateLimitError as exc:
        return exc.response
    return raw.http_response


def remaining(reply: Any, limit: str = "requests") -> int:
    return int(reply.headers[f"x-ratelimit-remaining-{limit}"])


def test_org_over_its_requests_per_minute_gets_429_and_other_orgs_are_served(
    fakes: Fakes, orgs: dict[str, str]
) -> None:
    settings = fakes.settings(rate_limit_rpm=3, rate_limit_tpm=1000)
    with GatewayServer(settings) as gateway:
        answers = [embed(gateway.url, orgs["a"]) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert [remaining(a) for a in answers] == [2, 1, 0]
        first = answers[0].headers
        assert all(name in first for name in HEADERS), dict(first)
        assert (first["x-ratelimit-limit-requests"], first["x-ratelimit-limit-tokens"]) == (
            "3", "1000",
        )  # fmt: skip
        # The fake counts a token per word: "hello world" is 2 of the 1000.
        assert remaining(answers[0], "tokens") == 998
        assert remaining(answers[2], "tokens") == 994

        client = OpenAI(base_url=f"{gateway.url}/v2", api_key=orgs["a"], max_retries=0)
        with pytest.raises(openai.RateLimitError) as info:
            client.embeddings.create(model="intent-embed", input="one more")
        refused = info.value.response
        assert refused.status_code == 429
        assert refused.json() == {
            "error": {
                "message": refused.json()["error"]["message"],
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
        assert "3 requests per minute" in refused.json()["error"]["message"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 120
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.headers["x-ratelimit-limit-requests"] == "3"
        assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
        # Refused requests are not counted: the embed service never saw it.
        assert all(r.inputs != ["one more"] for r in fakes.embed.requests)

        other = embed(gateway.url, orgs["b"])
        assert other.status_code == 200 and remaining(other) == 2
        scraped = requests.get(gateway.metrics_url, timeout=10).text
        assert 'gateway_ratelimited_total{limit="requests"} 1.0' in scraped


def test_an_orgs_own_limits_from_the_ledger_win_over_the_defaults(
    fakes: Fakes, orgs: dict[str, str]
) -> None:
    with GatewayServer(fakes.settings(rate_limit_rpm=2, rate_limit_tpm=1000)) as gateway:
        vip = [embed(gateway.url, orgs["vip"]).status_code for _ in range(6)]
        assert vip == [200] * 5 + [429]
        default = [embed(gateway.url, orgs["a"]).status_code for _ in range(3)]
        assert default == [200, 200, 429]
        # "tight": 4 tokens a minute. The first request (2 tokens) leaves 2; the second is
        # admitted with tokens left but over its 1 request a minute.
        assert embed(gateway.url, orgs["tight"]).headers["x-ratelimit-limit-tokens"] == "4"
        refused = embed(gateway.url, orgs["tight"])
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "requests"


def test_tokens_per_minute_counts_what_usage_counts(fakes: Fakes, orgs: dict[str, str]) -> None:
    with GatewayServer(fakes.settings(rate_limit_rpm=0, rate_limit_tpm=10)) as gateway:
        six_words = "my card was charged twice today"
        first = embed(gateway.url, orgs["a"], six_words)
        assert first.status_code == 200 and remaining(first, "tokens") == 4
        # The requests limit is off: only the token headers are sent.
        assert "x-ratelimit-limit-requests" not in first.headers
        # Admitted while tokens are left; its real count is charged after, so the window fills.
        second = embed(gateway.url, orgs["a"], six_words)
        assert second.status_code == 200 and remaining(second, "tokens") == 0
        third = embed(gateway.url, orgs["a"], "hi")
        assert third.status_code == 429
        body = third.json()["error"]
        assert (body["type"], body["code"], body["param"]) == ("tokens", "rate_limit_exceeded",
                                                                None)  # fmt: skip
        assert third.headers["x-ratelimit-limit-tokens"] == "10"
        assert third.headers["x-ratelimit-remaining-tokens"] == "0"
        assert int(third.headers["Retry-After"]) >= 1
        assert embed(gateway.url, orgs["b"], six_words).status_code == 200


def test_retry_after_is_long_enough_and_no_longer_than_needed(
    fakes: Fakes, orgs: dict[str, str]
) -> None:
    # A short window keeps this fast; the arithmetic is the same as for a minute. Three
    # seconds, not one: on a loaded machine the first call alone took longer than one.
    window_s = 3
    settings = fakes.settings(rate_limit_rpm=1, rate_limit_tpm=0, rate_limit_window_s=window_s)
    with GatewayServer(settings) as gateway:
        assert embed(gateway.url, orgs["a"]).status_code == 200
        refused = embed(gateway.url, orgs["a"])
        assert refused.status_code == 429
        wait_s = int(refused.headers["Retry-After"])
        assert 1 <= wait_s <= window_s + 1
        time.sleep(wait_s)
        assert embed(gateway.url, orgs["a"]).status_code == 200


def test_redis_gone_fails_open(fakes: Fakes, orgs: dict[str, str]) -> None:
    # Nothing listens on this port: every limit check fails, and users are served anyway.
    settings = fakes.settings(
        rate_limit_rpm=1,
        rate_limit_tpm=10,
        rate_limit_redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    with GatewayServer(settings) as gateway:
        answers = [embed(gateway.url, orgs["a"]) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert "x-ratelimit-remaining-requests" not in answers[0].headers
        scraped = requests.get(gateway.metrics_url, timeout=10).text
        assert "gateway_ratelimit_unavailable_total 3.0" in scraped


def test_durations_are_written_as_openai_writes_them() -> None:
    assert [duration(s) for s in (0, 0.0201, 1, 1.5, 59.9991, 60, 360, 3600.5)] == [
        "0s", "21ms", "1s", "1.5s", "1m0s", "1m0s", "6m0s", "1h0m0.5s",
    ]  # fmt: skip


# ---- two gateway processes, one Redis -----------------------------------------------------


def _redis_url() -> str:
    """GATEWAY_TEST_REDIS_URL (CI sets it: unreachable then fails the test), else the local
    Redis when one answers, else skip."""
    url = os.environ.get("GATEWAY_TEST_REDIS_URL")
    if url:
        return url
    url = "redis://127.0.0.1:6379/0"
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
    except OSError:
        pytest.skip("no Redis: set GATEWAY_TEST_REDIS_URL (CI runs it against a real server)")
    return url


def _start_gateway(fakes: Fakes, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    settings = fakes.settings()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--log-level", "warning"],
        cwd=REPO,
        env={
            **os.environ, **env,
            "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), "GATEWAY_METRICS_PORT": "0",
            "GATEWAY_EMBED_ADDR": settings.embed_addr,
            "GATEWAY_METERING_ADDR": settings.metering_addr,
        },
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


def test_two_gateway_processes_share_one_budget_in_redis(
    fakes: Fakes, orgs: dict[str, str]
) -> None:
    url = _redis_url()
    host = urlsplit(url)
    socket.create_connection((host.hostname or "127.0.0.1", host.port or 6379), timeout=2).close()
    env = {
        "GATEWAY_RATE_LIMIT_REDIS_URL": url,
        # Keys of this test only: another run (or test) sharing the server counts apart.
        "GATEWAY_RATE_LIMIT_KEY_PREFIX": f"test-{uuid.uuid4().hex}",
        "GATEWAY_RATE_LIMIT_RPM": "4",
        "GATEWAY_RATE_LIMIT_TPM": "1000",
    }
    procs = [_start_gateway(fakes, env) for _ in range(2)]
    try:
        for proc, base in procs:
            health = base + "/healthz"
            wait_ready(partial(http_ok, health), proc, within_s=30, what="gateway")
        (_, one), (_, two) = procs
        # Org "a" alternates between the replicas: 4 requests a minute in all, not 4 each.
        answers = [embed(base, orgs["a"]) for base in (one, two, one, two, one, two)]
        assert [a.status_code for a in answers] == [200, 200, 200, 200, 429, 429]
        assert [remaining(a) for a in answers[:4]] == [3, 2, 1, 0]
        # Tokens too: 4 answered requests of 2 tokens each, whichever replica answered.
        assert remaining(answers[3], "tokens") == 1000 - 4 * 2
        assert answers[5].json()["error"]["code"] == "rate_limit_exceeded"
        # Org "b" is untouched by "a"'s use, on both replicas.
        assert [embed(base, orgs["b"]).status_code for base in (one, two)] == [200, 200]
        assert remaining(embed(two, orgs["b"])) == 1
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for proc, _ in procs:
        assert proc.stdout is not None
        assert b"Traceback" not in proc.stdout.read()
