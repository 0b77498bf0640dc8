"""Fixtures for the gateway tests: the real app on a real HTTP port (uvicorn in a thread)
against fake EmbedService and MeteringService servicers on real gRPC ports.

The fakes answer deterministically (a text's vector is seeded from its bytes) and can be
scripted to fail with any status, so every error path is reached through real channels.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
import uvicorn
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.app import create_app
from gateway.settings import Settings
from intent_embed.v1 import embed_pb2, embed_pb2_grpc, metering_pb2, metering_pb2_grpc

DIMS = 384
MAX_INPUT_TOKENS = 256
MAX_REQUEST_TOKENS = 300_000
GOOD_KEY = "sk-test-good"
UNPAID_KEY = "sk-test-unpaid"
ORG = "org-1"
PROJECT = "proj-1"


def fake_vector(seed_bytes: bytes, dimensions: int | None) -> np.ndarray:
    """The fake model: a unit vector seeded from the input, cut to `dimensions` and renormed."""
    seed = int.from_bytes(hashlib.sha256(seed_bytes).digest()[:8], "little")
    vec = np.random.default_rng(seed).standard_normal(DIMS).astype(np.float32)
    if dimensions:
        vec = vec[:dimensions]
    return (vec / np.linalg.norm(vec)).astype(np.float32)


def text_tokens(text: str) -> int:
    return len(text.split()) or 1


@dataclass
class Script:
    """What the fakes will do next; tests set it, an autouse fixture resets it."""

    embed_failures: list[tuple[grpc.StatusCode, str]] = field(default_factory=list)
    embed_delay_s: float = 0.0
    embed_packed: bool = True
    auth_failures: list[tuple[grpc.StatusCode, str]] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)


FAKE_REVISION = "0123456789ab"


class FakeEmbed(embed_pb2_grpc.EmbedServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[embed_pb2.EmbedRequest] = []
        self.lock = threading.Lock()

    def Embed(self, request: embed_pb2.EmbedRequest, context: Any) -> embed_pb2.EmbedResponse:
        with self.lock:
            self.requests.append(request)
            failure = self.script.embed_failures.pop(0) if self.script.embed_failures else None
        if failure is not None:
            context.abort(*failure)
        if self.script.embed_delay_s:
            time.sleep(self.script.embed_delay_s)
        if not request.org_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "org_id is required")
        dims = request.dimensions if request.HasField("dimensions") else None
        if dims is not None and not 1 <= dims <= DIMS:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"dimensions must be 1..{DIMS}, got {dims}"
            )
        items: list[tuple[bytes, int]] = []
        if request.token_inputs:
            for ids in request.token_inputs:
                items.append((np.asarray(ids.ids, dtype=np.uint32).tobytes(), len(ids.ids)))
        else:
            items = [(t.encode(), text_tokens(t)) for t in request.inputs]
        out = embed_pb2.EmbedResponse(model="intent-embed")
        total = 0
        for i, (seed, tokens) in enumerate(items):
            if tokens > MAX_INPUT_TOKENS:
                if not request.truncate:
                    context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"input {i} has {tokens} tokens, more than {MAX_INPUT_TOKENS}; shorten "
                        "it or set truncate",
                    )
                tokens = MAX_INPUT_TOKENS
            total += tokens
            vec = fake_vector(seed, dims)
            if request.packed and self.script.embed_packed:
                out.embeddings.add(tokens=tokens, packed=vec.astype("<f4").tobytes())
            else:
                out.embeddings.add(tokens=tokens, values=vec.tolist())
        if total > MAX_REQUEST_TOKENS:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request has {total} tokens, more than {MAX_REQUEST_TOKENS}; split the inputs "
                "into several requests",
            )
        out.usage.prompt_tokens = total
        out.usage.total_tokens = total
        return out

    def Info(self, request: embed_pb2.InfoRequest, context: Any) -> embed_pb2.InfoResponse:
        return embed_pb2.InfoResponse(
            model="intent-embed", dimensions=DIMS, max_input_tokens=MAX_INPUT_TOKENS,
            revision=FAKE_REVISION,
        )  # fmt: skip


class FakeMetering(metering_pb2_grpc.MeteringServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script
        self.auth_calls = 0
        self.lock = threading.Lock()

    def Authenticate(
        self, request: metering_pb2.AuthenticateRequest, context: Any
    ) -> metering_pb2.AuthenticateResponse:
        with self.lock:
            self.auth_calls += 1
            failure = self.script.auth_failures.pop(0) if self.script.auth_failures else None
        if failure is not None:
            context.abort(*failure)
        if request.api_key in self.script.revoked:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "revoked")
        if request.api_key == GOOD_KEY:
            return metering_pb2.AuthenticateResponse(
                org_id=ORG, billing_ok=True, billing_state="ok", project_ids=[PROJECT]
            )
        if request.api_key == UNPAID_KEY:
            return metering_pb2.AuthenticateResponse(
                org_id="org-2",
                billing_ok=False,
                billing_state="no_payment_method",
                billing_message="Add a payment method to your organization to use the API.",
            )
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown key")
        raise AssertionError("unreachable")


@dataclass
class Upstream:
    server: grpc.Server
    port: int
    health: health.HealthServicer


def start_upstream(servicer: Any, adder: Any, service_name: str) -> Upstream:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    adder(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", service_name):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return Upstream(server, port, health_servicer)


@dataclass
class Fakes:
    script: Script
    embed: FakeEmbed
    metering: FakeMetering
    embed_upstream: Upstream
    metering_upstream: Upstream

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "embed_addr": f"dns:///127.0.0.1:{self.embed_upstream.port}",
            "metering_addr": f"127.0.0.1:{self.metering_upstream.port}",
            "embed_timeout_s": 5.0,
        }
        values.update(overrides)
        return Settings(**values)


class GatewayServer:
    """The real app served by uvicorn (uvloop + httptools) in a thread on a free port."""

    def __init__(self, settings: Settings) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    def __enter__(self) -> GatewayServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(scope="package")
def fakes() -> Iterator[Fakes]:
    script = Script()
    embed = FakeEmbed(script)
    metering = FakeMetering(script)
    embed_up = start_upstream(
        embed, embed_pb2_grpc.add_EmbedServiceServicer_to_server, "intent_embed.v1.EmbedService"
    )
    metering_up = start_upstream(
        metering,
        metering_pb2_grpc.add_MeteringServiceServicer_to_server,
        "intent_embed.v1.MeteringService",
    )
    yield Fakes(script, embed, metering, embed_up, metering_up)
    embed_up.server.stop(0)
    metering_up.server.stop(0)


@pytest.fixture(autouse=True)
def _reset_script(fakes: Fakes) -> Iterator[None]:
    yield
    script = fakes.script
    script.embed_failures.clear()
    script.auth_failures.clear()
    script.revoked.clear()
    script.embed_delay_s = 0.0
    script.embed_packed = True


@pytest.fixture(scope="package")
def gateway(fakes: Fakes) -> Iterator[GatewayServer]:
    with GatewayServer(fakes.settings()) as server:
        yield server
