"""Benchmark section for what tracing costs: the no-op embed service (bench.noop_embed, the
service's own process with fixed vectors for the forward) under single-input gRPC calls at
C=16, with tracing off and on (OpenTelemetry at 100% sampling, spans exported by the console
exporter into /dev/null, so serialising and exporting them is paid), alternated twice so that
the machine's drift shows. Off, the per-call work left is the code's checks for tracing, timed
here on their own against the CPU a call costs. `run(report)` is the section hook.
"""

from __future__ import annotations

import os
import timeit
from typing import Any

from bench.ceiling import BENCH_ORG, noop_embed
from bench.embed import short_queries
from bench.loadgen import Load, ensure_tool, grpc_frame, h2load
from bench.rest import bench_metering
from intent_embed import tracing
from intent_embed.v1 import embed_pb2

CONCURRENCY = 16
SECONDS = float(os.environ.get("BENCH_TRACING_SECONDS", "6"))
TRACING_ON = {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "always_on"}


def _off_checks_ns() -> float:
    """Nanoseconds per call of what an Embed call runs for tracing when it is off."""

    def per_call() -> None:
        tracing.enabled()
        with tracing.span("usage.record", tokens=1):
            pass

    runs = 200_000
    return 1e9 * min(timeit.repeat(per_call, number=runs, repeat=3)) / runs


def _measure(metering_addr: str, env: dict[str, str], query: str) -> Load:
    with noop_embed(metering_addr, env) as (address, pid):
        frame = grpc_frame(embed_pb2.EmbedRequest(inputs=[query], packed=True, org_id=BENCH_ORG))
        h2load(address, frame, 4, 1, pid)  # warm-up
        return h2load(address, frame, CONCURRENCY, SECONDS, pid)


def run(report: Any) -> None:
    """The tracing section of `python -m bench`."""
    if not ensure_tool("h2load"):
        report.line("h2load is missing and could not be installed: section skipped")
        return
    query = short_queries()[0]
    report.line(f"no-op embed service, gRPC single-input calls at C={CONCURRENCY}, "
                f"{SECONDS:.0f} s each, off and on alternated:")  # fmt: skip
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    with bench_metering() as metering:
        for label, env in (("off", {}), ("on", TRACING_ON)) * 2:
            load = _measure(metering.server.address, env, query)
            us = 1000 * (load.server_cpu_ms or 0.0)
            cpu[label].append(us)
            report.line(f"  tracing {label:3}  {load.per_s:,.0f} calls/s  {us:.0f} µs CPU/call")
    off = min(cpu["off"])
    on = min(cpu["on"])
    report.line(f"tracing on costs {on - off:.0f} µs CPU per call ({(on - off) / off:+.0%} of "
                "the call's CPU outside the model), best run of each")  # fmt: skip
    checks = _off_checks_ns()
    report.line(f"tracing off: {checks:.0f} ns per call of checks, {checks / 10 / off:.3f}% "
                "of a call's CPU (nothing else is installed)")  # fmt: skip
