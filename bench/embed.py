"""Benchmark section for the embedding service over gRPC, against the raw model and the
machine's own limit.

In one run on one machine: the limit (`bench.limits`: matrix-multiply rate at the model's shapes
over the FLOPs of a query), the raw model in every forward pass this machine can run
(`bench.raw`), then `python -m embed_service` as its own process (metering off, its default
settings: it picks its forward pass itself) under `h2load` with C = 1, 16 and 64 concurrent
calls on one HTTP/2 connection, one short CLINC150 test query per call: calls/s, p50/p99, the
mean batch the service formed, its CPU per call and peak RSS, the load generator's CPU share,
and every rate as a fraction of the raw model and of the limit. h2load sends one body, so the
gRPC rows are compared with the raw model on batches of that same query. `run(report)` is the
section hook of `python -m bench`; the REST section reuses what this one measured.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from bench.limits import Limit, machine_limits
from bench.loadgen import Load, ensure_tool, grpc_frame, h2load
from bench.raw import Raw, Variant, measure, variants
from devstack.probes import NotReady, free_port, stop_process, wait_serving
from embed_service.settings import default_model_path
from intent_embed.v1 import embed_pb2, embed_pb2_grpc
from tests.support.clinc150 import REPO_ROOT as REPO
from tests.support.clinc150 import clinc_test_texts

CONCURRENCY = (1, 16, 64)
# Calls answered with a status other than OK; CANCELLED ones are those still in flight when
# h2load stops (it resets them), not failures.
_FAILED = (
    r'^grpc_server_handled_total\{grpc_code="(?!OK"|CANCELLED")[A-Z_]+",'
    r'grpc_method="Embed",grpc_service="intent_embed\.v1\.EmbedService"\} (\S+)$'
)
SECONDS = float(os.environ.get("BENCH_EMBED_SECONDS", "8"))


def short_queries() -> list[str]:
    """CLINC150 test queries of at most 12 words (a short fallback list in a bare clone)."""
    return [q for q in clinc_test_texts() if len(q.split()) <= 12]


def _metric(text: str, pattern: str) -> float:
    return sum(float(m) for m in re.findall(pattern, text, re.M))


def _service_metrics(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {
        "batch_sum": _metric(text, r"^embed_batch_size_sum (\S+)$"),
        "batch_count": _metric(text, r"^embed_batch_size_count (\S+)$"),
        "failed": _metric(text, _FAILED),
    }


def _rss_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def embed_service(env_extra: dict[str, str]) -> Iterator[tuple[str, int, int]]:
    """`python -m embed_service` on free ports: (address, metrics port, pid)."""
    port, metrics_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    env = {
        **os.environ, "EMBED_HOST": "127.0.0.1", "EMBED_PORT": str(port),
        "EMBED_METRICS_PORT": str(metrics_port), "EMBED_METERING_ADDR": "",
        "EMBED_LOG_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1", **env_extra,
    }  # fmt: skip
    with tempfile.TemporaryFile() as log:
        service = subprocess.Popen(
            [sys.executable, "-m", "embed_service"], env=env, cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        try:
            try:
                wait_serving(address, service, within_s=240)
            except NotReady as exc:
                log.seek(0)
                raise RuntimeError(f"embed service: {exc}: {log.read()[-2000:]!r}") from None
            yield address, metrics_port, service.pid
        finally:
            stop_process(service)


def info(address: str) -> Any:
    with grpc.insecure_channel(address) as channel:
        return embed_pb2_grpc.EmbedServiceStub(channel).Info(embed_pb2.InfoRequest(), timeout=5)


def service_line(described: Any) -> str:
    """What a started service runs (its start-up probe may choose differently each start)."""
    return f"service: backend {described.backend}, dtype {described.dtype} on {described.device}"


_SPLIT = re.compile(r"onnxruntime<=(\d+)\+(.+)")


def _find(raw: dict[str, Raw], backend: str, dtype: str) -> Raw:
    for r in raw.values():
        if r.backend == backend and r.variant.dtype == dtype:
            return r
    raise KeyError(f"no raw measurement of {backend} {dtype}")


def served_raw(raw: dict[str, Raw], backend: str, dtype: str) -> Raw:
    """The raw measurement of the forward pass the service chose; for batches split by size
    (`onnxruntime<=N+torch-...`), ONNX Runtime's rates up to N rows and PyTorch's above."""
    split = _SPLIT.fullmatch(backend)
    if split is None:
        return _find(raw, backend, dtype)
    rows = int(split.group(1))
    small, large = _find(raw, "onnxruntime", "float32"), _find(raw, split.group(2), dtype)
    name = f"onnxruntime up to {rows} rows, {large.variant.name} above"
    return Raw(
        variant=Variant(name, backend, dtype),
        backend=backend,
        batch1_ms=small.batch1_ms,
        batch1_min_ms=small.batch1_min_ms,
        per_batch={b: (small if b <= rows else large).per_batch[b] for b in small.per_batch},
    )


def raw_on_one_query(raw: dict[str, Raw], backend: str, dtype: str, query: str) -> Raw:
    """`served_raw` measured again on batches of `query` alone."""
    split = _SPLIT.fullmatch(backend)
    wanted = {"onnxruntime", split.group(2)} if split else {backend}
    again = {
        name: measure(default_model_path(), r.variant, [query])
        for name, r in raw.items()
        if r.backend in wanted and r.variant.dtype in (dtype, "float32")
    }
    return served_raw(again, backend, dtype)


def baseline(report: Any) -> tuple[list[str], dict[str, Limit], dict[str, Raw]]:
    """Queries, limits and raw measurements, once per bench run (the REST section reuses them)."""
    if "raw" in report.shared:
        return report.shared["queries"], report.shared["limits"], report.shared["raw"]
    import torch

    from embed_service.precision import cpu_has_native_bf16
    from encoder.onnx_runtime import onnxruntime_available

    queries = short_queries()
    native = torch.cuda.is_available() or cpu_has_native_bf16()
    dtypes = ["float32", "bfloat16"] if native else ["float32"]
    limits = machine_limits(default_model_path(), queries, dtypes)
    report.line(f"queries: {len(queries)} short CLINC150 test texts; {os.cpu_count()} CPUs")
    for limit in limits.values():
        report.line(f"limit {limit.describe()}")
    raw: dict[str, Raw] = {}
    for variant in variants(native, onnxruntime_available()):
        raw[variant.name] = measure(default_model_path(), variant, queries)
        report.line(raw[variant.name].line(limits[variant.dtype]))
    report.shared.update(queries=queries, limits=limits, raw=raw)
    return queries, limits, raw


def _grpc_rows(report: Any, address: str, metrics_port: int, pid: int, query: str,
               ceiling: Raw, limit: Limit) -> dict[int, Load]:  # fmt: skip
    """h2load sends one body, so every call embeds `query`; `ceiling` is the raw model on
    batches of that same query (no padding at all), not on the mixed-length queries."""
    body = grpc_frame(embed_pb2.EmbedRequest(inputs=[query], packed=True))
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    out: dict[int, Load] = {}
    for c in CONCURRENCY:
        before = _service_metrics(url)
        load = h2load(address, body, c, SECONDS, pid)
        after = _service_metrics(url)
        batches = after["batch_count"] - before["batch_count"]
        mean_batch = (after["batch_sum"] - before["batch_sum"]) / batches if batches else 0.0
        load.errors = f"{int(after['failed'] - before['failed'])} (gRPC status not OK)"
        out[c] = load
        report.line(
            f"{load.line()}  mean batch {mean_batch:.1f}  = {load.per_s / ceiling.best_per_s:.2f}"
            f" of raw, {limit.fraction(load.per_s):.2f} of the limit"
        )
    return out


def run(report: Any) -> None:
    queries, limits, raw = baseline(report)
    if not ensure_tool("h2load"):
        report.line("h2load (Debian nghttp2-client) is missing and could not be installed")
        return
    with embed_service({}) as (address, metrics_port, pid):
        described = info(address)
        ceiling = served_raw(raw, described.backend, described.dtype)
        limit = limits[described.dtype]
        report.line(f"{service_line(described)}; metering off")
        same = raw_on_one_query(raw, described.backend, described.dtype, queries[0])
        report.line(f"{same.line(limit)}  (only the gRPC rows' query {queries[0]!r})")
        rows = _grpc_rows(report, address, metrics_port, pid, queries[0], same, limit)
        peak = _rss_mib(pid, "VmHWM")  # the high-water mark since start
    report.shared["grpc"] = rows
    report.line("targets:")
    report.line(f"  raw {ceiling.variant.name} best = {limit.fraction(ceiling.best_per_s):.2f} "
                "of the limit (target >= 0.45)")  # fmt: skip
    report.line(f"  raw batch-1 p50 {ceiling.batch1_ms:.2f} ms (target <= 5 ms)")
    report.line(f"  gRPC C=64 / raw on the same query = {rows[64].per_s / same.best_per_s:.2f} "
                "(target >= 0.85)")  # fmt: skip
    report.line(f"  embed service peak RSS {peak:.0f} MiB (target <= 1536 MiB)")


if __name__ == "__main__":
    from bench.__main__ import Report

    run(Report())
