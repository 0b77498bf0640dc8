"""Benchmark section for the serving ceiling: what one embed process and one gateway core can
feed a GPU, measured on this CPU with the forward pass replaced by fixed vectors.

`python -m bench.noop_embed` is the embed service's own process and code (gRPC, validation,
tokenizer, batcher, response packing, usage records to a metering service) with no model work,
so its CPU per call is what a GPU node spends per call outside the forward pass. `h2load` sends
single-input calls at C = 1, 16 and 64 and 256-input calls; `wrk` sends REST requests through
the real gateway to it. Every row reports the measured process's CPU per call from `/proc`;
the section ends with the implied ceiling of one GPU node and the issue's targets.
`run(report)` is the section hook of `python -m bench`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.embed import short_queries
from bench.loadgen import Load, cpu_seconds, ensure_tool, grpc_frame, h2load, wrk, wrk_script
from bench.rest import BENCH_KEY, bench_metering, gateway_process
from devstack.probes import NotReady, free_port, stop_process, wait_serving
from intent_embed.v1 import embed_pb2
from tests.support.clinc150 import REPO_ROOT as REPO

CONCURRENCY = (1, 16, 64)
BULK_INPUTS = 256
BULK_CONCURRENCY = 8
SECONDS = float(os.environ.get("BENCH_CEILING_SECONDS", "6"))
BENCH_ORG = "org-bench"


@contextmanager
def noop_embed(
    metering_addr: str, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """`python -m bench.noop_embed` on a free port, recording usage at `metering_addr`, with
    `extra_env` on top of its environment: (address, pid)."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {
        **os.environ, "EMBED_HOST": "127.0.0.1", "EMBED_PORT": str(port),
        "EMBED_METRICS_PORT": "0", "EMBED_METERING_ADDR": metering_addr,
        "EMBED_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1", **(extra_env or {}),
    }  # fmt: skip
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.noop_embed"], env=env, cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        try:
            try:
                wait_serving(address, proc, within_s=240)
            except NotReady as exc:
                log.seek(0)
                raise RuntimeError(f"no-op embed service: {exc}: {log.read()[-2000:]!r}") from None
            yield address, proc.pid
        finally:
            stop_process(proc)


@dataclass(frozen=True)
class NodeCeiling:
    """What the measured CPU costs imply for one GPU node: single-input calls/s and inputs/s
    that one embed process can take (its rate under load), and the gateway cores those calls
    need (one core gives 1e6 / its µs per call)."""

    embed_calls_per_s: float
    embed_bulk_inputs_per_s: float
    gateway_cpu_us: float

    @property
    def gateway_calls_per_core(self) -> float:
        return 1e6 / self.gateway_cpu_us

    def gateway_cores_needed(self) -> float:
        return self.embed_calls_per_s / self.gateway_calls_per_core

    def lines(self) -> list[str]:
        return [
            f"one embed process feeds {self.embed_calls_per_s:,.0f} single-input calls/s, "
            f"{self.embed_bulk_inputs_per_s:,.0f} inputs/s in {BULK_INPUTS}-input calls",
            f"one gateway core feeds {self.gateway_calls_per_core:,.0f} REST calls/s; "
            f"{self.gateway_cores_needed():.1f} gateway cores keep one embed process busy "
            "with single-input calls",
        ]


def _us(load: Load) -> float:
    return 1000 * (load.server_cpu_ms or 0.0)


def call_frames(queries: list[str]) -> tuple[bytes, bytes]:
    """The gRPC bodies the section sends: one query, and BULK_INPUTS queries (cycled)."""

    def frame(inputs: list[str]) -> bytes:
        return grpc_frame(embed_pb2.EmbedRequest(inputs=inputs, packed=True, org_id=BENCH_ORG))

    return frame(queries[:1]), frame([queries[i % len(queries)] for i in range(BULK_INPUTS)])


def _embed_rows(report: Any, address: str, pid: int) -> dict[str, Load]:
    rows: dict[str, Load] = {}
    single, bulk = call_frames(short_queries())
    h2load(address, single, 4, 1, pid)  # warm-up
    for c in CONCURRENCY:
        load = h2load(address, single, c, SECONDS, pid)
        rows[f"C={c}"] = load
        report.line(f"  {load.line()}  = {_us(load):.0f} µs CPU/call")
    load = h2load(address, bulk, BULK_CONCURRENCY, SECONDS, pid)
    load.name = f"gRPC {BULK_INPUTS} inputs C={BULK_CONCURRENCY}"
    rows["bulk"] = load
    report.line(
        f"  {load.line()}  = {load.per_s * BULK_INPUTS:,.0f} inputs/s, "
        f"{_us(load) / BULK_INPUTS:.1f} µs CPU/input"
    )
    return rows


def _rest_rows(report: Any, url: str, gateway_pid: int, embed_pid: int) -> dict[int, Load]:
    rows: dict[int, Load] = {}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        wrk_script(short_queries(), BENCH_KEY, script)
        wrk(url, script, 4, 1, gateway_pid)  # warm-up
        for c in (1, 64):
            embed0 = cpu_seconds(embed_pid)
            load = wrk(url, script, c, SECONDS, gateway_pid)
            embed_us = 1e6 * (cpu_seconds(embed_pid) - embed0) / max(load.ok, 1)
            rows[c] = load
            report.line(
                f"  {load.line()}  = gateway {_us(load):.0f} µs, embed {embed_us:.0f} µs CPU/call"
            )
    return rows


def run(report: Any) -> None:
    """The serving-ceiling section of `python -m bench`."""
    if not ensure_tool("h2load") or not ensure_tool("wrk"):
        report.line("h2load or wrk is missing and could not be installed: section skipped")
        return
    report.line(f"{os.cpu_count()} CPUs; forward pass replaced by fixed vectors "
                "(bench.noop_embed); usage recorded to an in-process metering")  # fmt: skip
    gateway_port = free_port()
    with (
        bench_metering() as metering,
        noop_embed(metering.server.address) as (embed_addr, embed_pid),
    ):
        report.line("embed service, gRPC, one query per call unless said:")
        grpc_rows = _embed_rows(report, embed_addr, embed_pid)
        report.line("gateway in front of it, REST:")
        with gateway_process(gateway_port, embed_addr, metering.server.address) as gateway_pid:
            url = f"http://127.0.0.1:{gateway_port}/v2/embeddings"
            rest = _rest_rows(report, url, gateway_pid, embed_pid)
    node = NodeCeiling(
        embed_calls_per_s=grpc_rows["C=64"].per_s,
        embed_bulk_inputs_per_s=grpc_rows["bulk"].per_s * BULK_INPUTS,
        gateway_cpu_us=_us(rest[64]),
    )
    report.line("implied ceiling of one GPU node (CPU outside the model, this CPU):")
    for line in node.lines():
        report.line(f"  {line}")
    report.line("targets:")
    report.line(f"  embed C=64 {grpc_rows['C=64'].per_s:,.0f} calls/s (>= 4,000), "
                f"{_us(grpc_rows['C=64']):.0f} µs CPU/call (<= 150)")  # fmt: skip
    report.line(f"  embed {BULK_INPUTS}-input calls {node.embed_bulk_inputs_per_s:,.0f} "
                "inputs/s (>= 80,000)")  # fmt: skip
    report.line(f"  gateway c=64 {rest[64].per_s:,.0f} calls/s (>= 3,000), "
                f"{_us(rest[64]):.0f} µs CPU/call (<= 250); c=1 p50 {rest[1].p50_ms:.2f} ms "
                "(<= 1 ms)")  # fmt: skip


if __name__ == "__main__":
    from bench.__main__ import Report

    run(Report())
