"""Benchmark section for the REST path: the gateway in front of the real embed service.

In one run it measures, on the same machine and model: the raw in-process model (batch-1
latency and best-batch throughput), the direct gRPC path at C = 1, 16, 64 callers, and the
REST path through the gateway with `wrk` at 1, 16, 64 and 256 connections (one CLINC150 test
query per request), plus the gateway's CPU per request. Auth is answered by a small in-process
MeteringService that accepts the bench key; the embed service runs with metering off.
`run(report)` is the section hook of `python -m bench`; `python -m bench.rest` runs it alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.embed import load_queries
from bench.metering import cpu_seconds
from devstack.probes import free_port, grpc_serving, http_ok, stop_process, wait_ready
from intent_embed.v1 import embed_pb2, embed_pb2_grpc, metering_pb2
from tests.support.clinc150 import REPO_ROOT as REPO
from tests.support.fake_metering import FakeMetering, FakeServer, ThreadedServer

BENCH_KEY = "sk-bench-rest"
GRPC_CONCURRENCY = (1, 16, 64)
WRK_CONNECTIONS = (1, 16, 64, 256)
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


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    ok: int
    errors: str = "0"
    cpu_us_per_req: float | None = None

    def line(self) -> str:
        cpu = (
            "" if self.cpu_us_per_req is None else f"  gateway_cpu={self.cpu_us_per_req:.0f}us/req"
        )
        return (
            f"  {self.name:<24} {self.rps:8.1f} req/s  p50={self.p50_ms:7.2f} ms  "
            f"p99={self.p99_ms:7.2f} ms  ok={self.ok}  errors={self.errors}{cpu}"
        )


def raw_model(queries: list[str]) -> tuple[float, float, str]:
    """Batch-1 p50 latency (ms) and best-batch throughput (q/s) in-process, dtype as served.

    The embed section's measurement (`bench.embed.raw_ceiling`, forwards on a worker thread as
    in the service), so both sections divide by a ceiling measured the same way.
    """

    def measure() -> dict[str, Any]:
        # All torch work on this one thread: the dtype probe runs OpenMP regions, and a pool
        # left on the main thread made the worker's forwards twice as slow (see embed_service).
        import torch

        from bench.embed import raw_ceiling
        from embed_service.precision import resolve_dtype

        dtype = str(resolve_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
        return raw_ceiling(dtype, queries)

    with futures.ThreadPoolExecutor(1) as pool:
        r = pool.submit(measure).result()
    return r["batch1_ms"], r["best_per_s"], f"{r['dtype']}, best b{r['best_batch']}"


async def _grpc_load(addr: str, queries: list[str], concurrency: int, seconds: float) -> Result:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = embed_pb2_grpc.EmbedServiceStub(channel)
        await stub.Embed(embed_pb2.EmbedRequest(inputs=queries[:1], packed=True), timeout=30)
        deadline = time.monotonic() + seconds

        async def caller(i: int) -> None:
            n = i
            while time.monotonic() < deadline:
                request = embed_pb2.EmbedRequest(
                    inputs=[queries[n % len(queries)]], request_id=str(uuid.uuid4()), packed=True
                )
                n += concurrency
                start = time.monotonic()
                try:
                    await stub.Embed(request, timeout=30)
                    latencies.append(time.monotonic() - start)
                except grpc.aio.AioRpcError as err:
                    errors[err.code().name] = errors.get(err.code().name, 0) + 1

        started = time.monotonic()
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        elapsed = time.monotonic() - started
    latencies.sort()
    return Result(
        name=f"gRPC C={concurrency}",
        rps=len(latencies) / elapsed,
        p50_ms=1000 * latencies[len(latencies) // 2] if latencies else float("nan"),
        p99_ms=1000 * latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        ok=len(latencies),
        errors=",".join(f"{k}:{v}" for k, v in errors.items()) or "0",
    )


_LUA = """
local bodies = {%s}
local n = #bodies
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
ok, overloaded, other = 0, 0, 0
function request()
  i = i + 1
  return wrk.format(nil, nil, nil, bodies[(i %% n) + 1])
end
function response(status, headers, body)
  if status == 200 then ok = ok + 1
  elseif status == 429 then overloaded = overloaded + 1
  else other = other + 1 end
end
local threads = {}
function setup(thread) table.insert(threads, thread) end
function done(summary, latency, requests)
  local a, b, c = 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("ok"); b = b + t:get("overloaded"); c = c + t:get("other")
  end
  io.write(string.format("STATUS ok=%%d 429=%%d other=%%d\\n", a, b, c))
end
"""


def wrk_script(queries: list[str], path: Path) -> None:
    rng = random.Random(7)
    picked = rng.sample(queries, min(1000, len(queries)))
    bodies = ",".join(
        "[==[" + json.dumps({"input": q, "model": "intent-embed"}) + "]==]" for q in picked
    )
    path.write_text(_LUA % (bodies, BENCH_KEY))


def _ms(text: str) -> float:
    value = float(re.sub(r"[a-z]+$", "", text))
    unit = re.sub(r"^[0-9.]+", "", text)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def run_wrk(url: str, script: Path, connections: int, seconds: float, gateway_pid: int) -> Result:
    threads = min(2, connections)
    cpu0 = cpu_seconds(gateway_pid)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:.0f}s", "--timeout", "10s",
         "--latency", "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    cpu = cpu_seconds(gateway_pid) - cpu0
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    # Anchored: the "+/- Stdev" column can end in "50%" too (e.g. "87.50%").
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    status = re.search(r"STATUS ok=(\d+) 429=(\d+) other=(\d+)", out)
    ok, over, other = (int(x) for x in status.groups()) if status else (0, 0, 0)
    sock = re.search(r"Socket errors: (.*)", out)
    total = max(ok + over + other, 1)
    errors = f"429:{over},other:{other}" + (f",socket({sock.group(1)})" if sock else "")
    return Result(
        name=f"REST wrk c={connections}",
        rps=rps * ok / total,  # successful answers per second
        p50_ms=p50,
        p99_ms=p99,
        ok=ok,
        errors=errors,
        cpu_us_per_req=1e6 * cpu / total,
    )


def ensure_wrk(report: Any) -> bool:
    if shutil.which("wrk"):
        return True
    report.line("  wrk missing: installing the Debian package")
    for cmd in (["apt-get", "install", "-y", "wrk"], ["apt-get", "update"],
                ["apt-get", "install", "-y", "wrk"]):  # fmt: skip
        subprocess.run(cmd, capture_output=True, timeout=300, check=False)
        if shutil.which("wrk"):
            return True
    return False


@contextmanager
def gateway_process(port: int, embed_addr: str, metering_addr: str) -> Iterator[int]:
    env = {
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_EMBED_ADDR": f"dns:///{embed_addr}",
        "GATEWAY_METERING_ADDR": metering_addr,
        "GATEWAY_LOG_LEVEL": "warning",
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
    """The gateway alone: REST vs direct gRPC against a stub embed service (no model), so the
    difference is the gateway's own latency and CPU, not model noise."""
    if not shutil.which("wrk"):
        return
    report.line("  gateway alone (stub embed service answering at once, no model):")
    port = free_port()
    with (
        bench_metering() as metering,
        stub_embed() as embed,
        gateway_process(port, embed.server.address, metering.server.address) as pid,
        tempfile.TemporaryDirectory() as tmp,
    ):
        embed_addr = embed.server.address
        direct = asyncio.run(_grpc_load(embed_addr, queries, 1, SECONDS / 2))
        script = Path(tmp) / "post.lua"
        wrk_script(queries, script)
        url = f"http://127.0.0.1:{port}/v2/embeddings"
        run_wrk(url, script, 4, 1, pid)  # warm-up
        rest1 = run_wrk(url, script, 1, SECONDS / 2, pid)
        rest64 = run_wrk(url, script, 64, SECONDS / 2, pid)
    direct.name = "stub gRPC C=1"
    rest1.name, rest64.name = "stub REST c=1", "stub REST c=64"
    for r in (direct, rest1, rest64):
        report.line(r.line())
    report.line(f"    gateway p50 overhead at C=1 (stub) = {rest1.p50_ms - direct.p50_ms:.2f} ms")


def run(report: Any) -> None:
    """The REST section of `python -m bench`."""
    report.line("REST gateway (wrk) vs gRPC vs raw model; one CLINC150 query per request")
    report.line("  note: 2 shared cores; the load generators compete with the servers for CPU")
    queries = load_queries()
    raw_p50, raw_rate, dtype = raw_model(queries)
    report.line(f"  raw in-process ({dtype}): batch-1 p50={raw_p50:.2f} ms, "
                 f"best batch {raw_rate:.0f} q/s")  # fmt: skip
    embed_port, gateway_port = free_port(), free_port()
    embed_addr = f"127.0.0.1:{embed_port}"
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    embed_env = {
        "HF_HUB_OFFLINE": "1", "EMBED_HOST": "127.0.0.1", "EMBED_PORT": str(embed_port),
        "EMBED_METRICS_PORT": "0", "EMBED_METERING_ADDR": "", "EMBED_LOG_LEVEL": "warning",
    }  # fmt: skip
    with (
        bench_metering() as metering,
        process(["-m", "embed_service"], embed_env, lambda: grpc_serving(embed_addr)),
        gateway_process(gateway_port, embed_addr, metering.server.address) as gateway_pid,
    ):
        grpc_results = [
            asyncio.run(_grpc_load(embed_addr, queries, c, SECONDS)) for c in GRPC_CONCURRENCY
        ]
        for r in grpc_results:
            report.line(r.line())
        rest_results: list[Result] = []
        if ensure_wrk(report):
            with tempfile.TemporaryDirectory() as tmp:
                script = Path(tmp) / "post.lua"
                wrk_script(queries, script)
                url = f"{gateway_url}/v2/embeddings"
                run_wrk(url, script, 8, 2, gateway_pid)  # warm-up
                for c in WRK_CONNECTIONS:
                    rest_results.append(run_wrk(url, script, c, SECONDS, gateway_pid))
                    report.line(rest_results[-1].line())
        else:
            report.line("  wrk unavailable: REST rows skipped")
    gateway_overhead(report, queries)
    if not rest_results:
        return
    by_c = {int(r.name.rsplit("=", 1)[1]): r for r in rest_results}
    grpc1 = grpc_results[0]
    overhead = by_c[1].p50_ms - grpc1.p50_ms
    at64 = by_c[64].rps / raw_rate
    worst = by_c[256]
    report.line("  targets:")
    report.line(f"    REST c=64 / raw best-batch = {at64:.2f} (target >= 0.60: "
                 f"{'PASS' if at64 >= 0.6 else 'MISS'}; stretch target >= 0.70: "
                 f"{'PASS' if at64 >= 0.7 else 'MISS'})")  # fmt: skip
    grpc64 = next(r for r in grpc_results if r.name == "gRPC C=64")
    report.line(f"    REST c=64 / gRPC C=64 = {by_c[64].rps / grpc64.rps:.2f} (what the gateway "
                 "keeps of the service's throughput)")  # fmt: skip
    report.line(f"    REST c=1 p50 = {by_c[1].p50_ms:.2f} ms (target <= 6) "
                 f"{'PASS' if by_c[1].p50_ms <= 6 else 'MISS'}")  # fmt: skip
    report.line(f"    gateway p50 overhead at C=1 = {overhead:.2f} ms over gRPC (target <= 2) "
                 f"{'PASS' if overhead <= 2 else 'MISS'}")  # fmt: skip
    clean = "other:0" in worst.errors and "socket" not in worst.errors
    report.line(f"    c=256: errors={worst.errors} (target: only 429s) "
                 f"{'PASS' if clean else 'MISS'}")  # fmt: skip


if __name__ == "__main__":
    from bench.__main__ import Report

    run(Report())
