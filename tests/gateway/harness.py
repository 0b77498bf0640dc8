"""What the gateway tests run against: the real app on a real HTTP port (uvicorn in a thread)
and fake EmbedService and MeteringService servicers on real gRPC ports.

The fakes answer deterministically (a text's vector is seeded from its bytes) and can be
scripted to fail with any status, so every error path is reached through real channels.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import uvicorn

from gateway.app import create_app
from gateway.metrics import serve_metrics
from gateway.settings import Settings
from intent_embed.grpc_server import abort
from intent_embed.v1 import embed_pb2, embed_pb2_grpc, metering_pb2
from tests.support.fake_metering import FakeMetering, ThreadedServer

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

    # (code, message) or (code, message, ErrorInfo reason)
    embed_failures: list[tuple[Any, ...]] = field(default_factory=list)
    embed_delay_s: float = 0.0
    embed_packed: bool = True
    auth_failures: list[tuple[grpc.StatusCode, str]] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)


FAKE_REVISION = "0123456789ab"


class FakeEmbed(embed_pb2_grpc.EmbedServiceServicer):
    """The embed service's answers and errors (with the rich details it sends), scripted."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[embed_pb2.EmbedRequest] = []
        self.delays_done = 0  # scripted delays that ran to their end

    async def Embed(
        self, request: embed_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embed_pb2.EmbedResponse:
        self.requests.append(request)
        if self.script.embed_failures:
            code, message, *reason = self.script.embed_failures.pop(0)
            await abort(context, code, message, reason=reason[0] if reason else "")
        if self.script.embed_delay_s:
            await asyncio.sleep(self.script.embed_delay_s)
            self.delays_done += 1
        if not request.org_id:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "org_id is required",
                        field="org_id")  # fmt: skip
        dims = request.dimensions if request.HasField("dimensions") else None
        if dims is not None and not 1 <= dims <= DIMS:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT,
                f"dimensions must be 1..{DIMS}, got {dims}", field="dimensions",
            )  # fmt: skip
        items: list[tuple[bytes, int]] = []
        if request.token_inputs:
            for ids in request.token_inputs:
                items.append((np.asarray(ids.ids, dtype=np.uint32).tobytes(), len(ids.ids)))
        else:
            items = [(t.encode(), text_tokens(t)) for t in request.inputs]
        field = "token_inputs" if request.token_inputs else "inputs"
        out = embed_pb2.EmbedResponse(model="intent-embed")
        total = 0
        for i, (seed, tokens) in enumerate(items):
            if tokens > MAX_INPUT_TOKENS:
                if not request.truncate:
                    await abort(
                        context, grpc.StatusCode.INVALID_ARGUMENT,
                        f"input {i} has {tokens} tokens, more than {MAX_INPUT_TOKENS}; shorten "
                        "it or set truncate", field=f"{field}[{i}]",
                    )  # fmt: skip
                tokens = MAX_INPUT_TOKENS
            total += tokens
            vec = fake_vector(seed, dims)
            if request.packed and self.script.embed_packed:
                out.embeddings.add(tokens=tokens, packed=vec.astype("<f4").tobytes())
            else:
                out.embeddings.add(tokens=tokens, values=vec.tolist())
        if total > MAX_REQUEST_TOKENS:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT,
                f"the request has {total} tokens, more than {MAX_REQUEST_TOKENS}; split the inputs "
                "into several requests", field=field,
            )  # fmt: skip
        out.usage.prompt_tokens = total
        out.usage.total_tokens = total
        return out

    async def Info(
        self, request: embed_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> embed_pb2.InfoResponse:
        return embed_pb2.InfoResponse(
            model="intent-embed", dimensions=DIMS, max_input_tokens=MAX_INPUT_TOKENS,
            revision=FAKE_REVISION,
        )  # fmt: skip


def fake_metering(script: Script) -> FakeMetering:
    """Metering that knows GOOD_KEY (a paying org) and UNPAID_KEY (no payment method)."""
    keys = {
        GOOD_KEY: metering_pb2.AuthenticateResponse(
            org_id=ORG, billing_ok=True, billing_state="ok", project_ids=[PROJECT]
        ),
        UNPAID_KEY: metering_pb2.AuthenticateResponse(
            org_id="org-2",
            billing_ok=False,
            billing_state="no_payment_method",
            billing_message="Organization org-2 has no payment method.",
        ),
    }
    return FakeMetering(keys=keys, revoked=script.revoked, auth_failures=script.auth_failures)


@dataclass
class Fakes:
    script: Script
    embed: FakeEmbed
    metering: FakeMetering
    embed_upstream: ThreadedServer
    metering_upstream: ThreadedServer

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "embed_addr": f"dns:///127.0.0.1:{self.embed_upstream.port}",
            "metering_addr": f"127.0.0.1:{self.metering_upstream.port}",
            "embed_timeout_s": 5.0,
            # Off unless a test is about them (tests/gateway/test_ratelimit.py): the package
            # shares one gateway, and load tests must not meet a per-org limit.
            "rate_limit_rpm": 0,
            "rate_limit_tpm": 0,
        }
        values.update(overrides)
        return Settings(**values)


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class GatewayServer:
    """The real app served by uvicorn (uvloop + httptools) in a thread on a free port."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings, clock=clock)
        # /metrics as `python -m gateway` serves it: apart, on a port of its own.
        self.metrics = serve_metrics(self.app.state.metrics.registry, "127.0.0.1", 0)
        self.metrics_url = f"http://127.0.0.1:{self.metrics.port}/metrics"
        config = uvicorn.Config(
            self.app,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            proxy_headers=False,  # as `python -m gateway` runs it: the app decides on them
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
        self.metrics.stop()
