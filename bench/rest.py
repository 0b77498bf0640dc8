"""Benchmark section for the REST path: the gateway in front of the real embed service.

`wrk` posts one CLINC150 test query per request at 1, 16, 64 and 256 connections; reported
with the gateway's CPU per request, the load generator's CPU share and every rate as a fraction
of the raw model and of the machine's limit (measured once per run by the embed section, or here
when this section runs alone). Then the gateway alone, against a stub embed service that answers
at once, so its own latency and CPU are not hidden by the model. Auth is answered by a small
in-process MeteringService that accepts the bench key; the embed service runs with metering
off. `run(report)` is the section hook of `python -m bench`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from bench.embed import baseline, embed_service, info, served_raw, service_line
from bench.limits import wakeup_cost
from bench.loadgen import Load, ensure_tool, grpc_frame, h2load, wrk, wrk_script
from devstack.probes import free_port, http_ok, stop_process, wait_ready
from intent_embed.v1 import embed_pb2, embed_pb2_grpc, metering_pb2
from tests.support.clinc150 import REPO_ROOT as REPO
from tests.support.fake_metering import FakeMetering, FakeServer, ThreadedServer

BENCH_KEY = "sk-bench-rest"
CONNECTIONS = (1, 16, 64, 256)
SECONDS = float(os.environ.get("BENCH_REST_SECONDS", "6"))


def bench_metering() -> ThreadedServer:
    """Metering for the gateway's auth: the bench key belongs to a paying org."""
    key = metering_pb2.AuthenticateResponse(
        org_id="org-bench", billing_ok=True, billing_state="ok", key_id="bench"
    )
    return ThreadedServer(FakeServer.metering(FakeMetering(keys={BENCH_KEY: key})))


@contextmanager
def process(args: list[str], env: dict[str, str], ready: Callable[[], bool]) -> Iterator[int]:
    """A child process, started, waited on until `ready()`, and stopped with SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env={**os.environ, **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_ready(ready, proc, within_s=180, what=" ".join(args))
        yield proc.pid
    finally:
        stop_process(proc)


@contextmanager
def gateway_process(port: int, embed_addr: str, metering_addr: str) -> Iterator[int]:
    env = {
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_EMBED_ADDR": f"dns:///{embed_addr}",
        "GATEWAY_METERING_ADDR": metering_addr,
        "GATEWAY_LOG_LEVEL": "warning",
        # One org at full speed: the bench measures capacity, not a tenant's limit.
        "GATEWAY_RATE_LIMIT_RPM": "0",
        "GATEWAY_RATE_LIMIT_TPM": "0",
    }
    with process(["-m", "gateway"], env, lambda: http_ok(f"http://127.0.0.1:{port}/readyz")) as pid:
        yield pid


class _StubEmbed(embed_pb2_grpc.EmbedServiceServicer):
    """Answers at once with a fixed vector: what is left of a request's cost is transport."""

    def __init__(self) -> None:
        self.vector = (b"\x00\x00\x80\x3d") * 384  # 0.0625 as little-endian float32

    async def Embed(
        self, request: embed_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embed_pb2.EmbedResponse:
        reply = embed_pb2.EmbedResponse(model="intent-embed")
        total = 0
        for text in request.inputs:
            tokens = len(text.split())
            total += tokens
            reply.embeddings.add(packed=self.vector, tokens=tokens)
        reply.usage.prompt_tokens = reply.usage.total_tokens = total
        return reply


def stub_embed() -> ThreadedServer:
    stub = _StubEmbed()
    return ThreadedServer(FakeServer(
        "intent_embed.v1.EmbedService",
        lambda server: embed_pb2_grpc.add_EmbedServiceServicer_to_server(stub, server),
    ))  # fmt: skip


def gateway_overhead(report: Any, queries: list[str]) -> None:
    """REST vs direct gRPC against a stub embed service (no model): the gateway's own latency
    and CPU per request."""
    report.line("gateway alone (stub embed service answering at once, no model):")
    port = free_port()
    with (
        bench_metering() as metering,
        stub_embed() as embed,
        gateway_process(port, embed.server.address, metering.server.address) as pid,
        tempfile.TemporaryDirectory() as tmp,
    ):
        body = grpc_frame(embed_pb2.EmbedRequest(inputs=[queries[0]], packed=True))
        direct = h2load(embed.server.address, body, 1, SECONDS / 2, os.getpid())
        direct.server_cpu_ms = None  # the stub runs in this process, with the bench itself
        script = Path(tmp) / "post.lua"
        wrk_script(queries, BENCH_KEY, script)
        url = f"http://127.0.0.1:{port}/v2/embeddings"
        wrk(url, script, 4, 1, pid)  # warm-up
        rest1, rest64 = (wrk(url, script, c, SECONDS / 2, pid) for c in (1, 64))
    direct.name, rest1.name, rest64.name = "stub gRPC C=1", "stub REST c=1", "stub REST c=64"
    for load in (direct, rest1, rest64):
        report.line("  " + load.line())
    report.line(f"  gateway p50 overhead at C=1 = {rest1.p50_ms - direct.p50_ms:.2f} ms")


def _rest_rows(report: Any, url: str, queries: list[str], gateway_pid: int,
               fraction: Callable[[float], str]) -> dict[int, Load]:  # fmt: skip
    out: dict[int, Load] = {}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        wrk_script(queries, BENCH_KEY, script)
        wrk(url, script, 8, 2, gateway_pid)  # warm-up
        for c in CONNECTIONS:
            out[c] = wrk(url, script, c, SECONDS, gateway_pid)
            report.line(f"{out[c].line()}  {fraction(out[c].per_s)}")
    return out


def run(report: Any) -> None:
    """The REST section of `python -m bench`."""
    queries, limits, raw = baseline(report)
    if not ensure_tool("wrk") or not ensure_tool("h2load"):
        report.line("wrk or h2load is missing and could not be installed: REST rows skipped")
        return
    gateway_port = free_port()
    with (
        bench_metering() as metering,
        embed_service({}) as (embed_addr, _, _),
        gateway_process(gateway_port, embed_addr, metering.server.address) as gateway_pid,
    ):
        described = info(embed_addr)
        ceiling = served_raw(raw, described.backend, described.dtype)
        limit = limits[described.dtype]
        report.line(f"{service_line(described)}; usage metering off, auth by a fake metering")

        def fraction(per_s: float) -> str:
            return (
                f"= {per_s / ceiling.best_per_s:.2f} of raw, "
                f"{limit.fraction(per_s):.2f} of the limit"
            )

        url = f"http://127.0.0.1:{gateway_port}/v2/embeddings"
        rows = _rest_rows(report, url, queries, gateway_pid, fraction)
    gateway_overhead(report, queries)
    report.line("targets:")
    report.line(f"  REST c=64 / raw = {rows[64].per_s / ceiling.best_per_s:.2f} (target >= 0.8)")
    grpc64 = report.shared.get("grpc", {}).get(64)
    if grpc64 is not None:
        report.line(f"  REST c=64 / gRPC C=64 = {rows[64].per_s / grpc64.per_s:.2f}")
    report.line(f"  REST c=1 p50 {rows[1].p50_ms:.2f} ms vs raw batch-1 {ceiling.batch1_ms:.2f} ms"
                f" (+{rows[1].p50_ms - ceiling.batch1_ms:.2f} ms; target <= +1 ms)")  # fmt: skip
    hot, cold = wakeup_cost()
    report.line(f"  idle wake-up on this machine: the same Python work {hot:.0f} µs back to back, "
                f"{cold:.0f} µs right after 3 ms asleep (x{cold / hot:.2f}); one call at a time "
                "wakes every process on its path")  # fmt: skip
    report.line(f"  c=256 errors: {rows[256].errors} (target: only 429 with Retry-After)")


if __name__ == "__main__":
    from bench.__main__ import Report

    run(Report())
