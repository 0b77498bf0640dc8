"""Benchmark section for the embedding service over gRPC, against the raw model's ceiling.

Measures in one run, on the same machine and model: the raw in-process model (no server):
the service's unpadded forward in float32 and, where the hardware has it natively, bfloat16;
transformers' padded float32 forward; the naive whole-model bf16 cast: batch-1 latency and
throughput at the best batch size. Then `python -m embed_service` as its own process (metering
off, the service's default dtype) driven by a separate load process (`bench.loadgen`) with
C = 1, 16 and 64 concurrent callers sending one short CLINC150 test query per call:
embeddings/s, p50/p99, the mean batch the service formed, the service's peak RSS, and the
ratios served/raw.
`run(report)` is the section hook of `python -m bench`; `python -m bench embed` runs it alone.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from devstack.probes import NotReady, free_port, wait_serving
from tests.support.clinc150 import REPO_ROOT as REPO
from tests.support.clinc150 import clinc_test_texts

CONCURRENCY = (1, 16, 64)
SECONDS = float(os.environ.get("BENCH_EMBED_SECONDS", "8"))
RAW_SECONDS = float(os.environ.get("BENCH_EMBED_RAW_SECONDS", "1.5"))
RAW_BATCHES = (16, 32, 64, 128)

def load_queries() -> list[str]:
    """The CLINC150 test queries (a short fallback list in a bare clone)."""
    return clinc_test_texts()


def raw_ceiling(
    dtype: str, queries: list[str], unpadded: bool = True, whole_model: bool = False
) -> dict[str, Any]:
    """Batch-1 latency and best-batch throughput of the model in this process, no server.

    `unpadded` runs the service's unpadded forward, else transformers' padded one. `whole_model`
    casts every weight to `dtype` and runs transformers' padded forward: the naive variant
    (`model.to(bfloat16)`), which the service does not ship because it fails the cosine >=
    0.9999 quality bar.
    """
    import torch

    from embed_service.model import EmbeddingModel
    from embed_service.settings import default_model_path

    model = EmbeddingModel.from_directory(
        default_model_path(), device="auto", dtype="float32" if whole_model else dtype,
        num_threads=os.cpu_count() or 1, unpadded=unpadded and not whole_model,
    )
    if whole_model:
        model.dtype = getattr(torch, dtype)
        model.model.to(model.dtype)
    model.encode(queries[:64], batch_size=64)  # warm-up
    latencies: list[float] = []
    deadline = time.monotonic() + RAW_SECONDS
    i = 0
    while time.monotonic() < deadline or len(latencies) < 20:
        started = time.monotonic()
        model.encode([queries[i % len(queries)]])
        latencies.append(time.monotonic() - started)
        i += 1
    throughput: dict[int, float] = {}
    for batch in RAW_BATCHES:
        done, started = 0, time.monotonic()
        while time.monotonic() - started < RAW_SECONDS or done == 0:
            chunk = [queries[(done + k) % len(queries)] for k in range(batch)]
            model.encode(chunk, batch_size=batch)
            done += batch
        throughput[batch] = done / (time.monotonic() - started)
    best = max(throughput, key=lambda b: throughput[b])
    return {
        "dtype": model.dtype_name,
        "device": str(model.device),
        "batch1_ms": 1000 * statistics.median(latencies),
        # The fastest call: close to the uncontended latency when other processes share the
        # CPU (a descheduled OpenMP thread stalls every parallel region of a batch-1 forward).
        "batch1_min_ms": 1000 * min(latencies),
        "batch1_per_s": 1 / statistics.median(latencies),
        "per_batch": throughput,
        "best_batch": best,
        "best_per_s": throughput[best],
    }


def _rss_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _batch_stats(metrics_url: str) -> tuple[float, float]:
    """(sum, count) of the service's embed_batch_size histogram."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    total = float(re.search(r"^embed_batch_size_sum (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    count = float(re.search(r"^embed_batch_size_count (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    return total, count


def _raw_ceilings(report: Any, short: list[str]) -> dict[str, dict[str, Any]]:
    """The raw model's numbers in every variant this machine has, one report line each."""
    import torch

    from embed_service.precision import cpu_has_native_bf16

    bf16 = torch.cuda.is_available() or cpu_has_native_bf16()
    # (name, dtype, unpadded, whole model cast): the service's forward in each dtype, the
    # padded float32 transformers forward, and the naive model.to(bfloat16).
    variants = [
        ("float32 padded", "float32", False, False),
        ("float32 unpadded", "float32", True, False),
        ("bfloat16 unpadded", "bfloat16", True, False),
        ("bfloat16 whole-model padded (not shipped)", "bfloat16", False, True),
    ][: 4 if bf16 else 2]
    raw: dict[str, dict[str, Any]] = {}
    for name, dtype, unpadded, whole in variants:
        # In a worker thread, as the service runs its forward passes. On the shared 2-core
        # machine batch-1 forwards here sometimes stall for whole stretches (~450 ms a call,
        # against 7-15 ms otherwise); the min column shows the unstalled figure.
        with ThreadPoolExecutor(1) as pool:
            r = raw[name] = pool.submit(raw_ceiling, dtype, short, unpadded, whole).result()
        per_batch = ", ".join(f"b{b} {v:.0f}/s" for b, v in r["per_batch"].items())
        report.line(
            f"raw {name} on {r['device']}: batch 1 p50 {r['batch1_ms']:.2f} ms "
            f"(min {r['batch1_min_ms']:.2f} ms, {r['batch1_per_s']:.0f}/s); {per_batch}; "
            f"best b{r['best_batch']} {r['best_per_s']:.0f}/s"
        )
    return raw


def _served(report: Any, short: list[str]) -> tuple[list[dict[str, Any]], Any, float, int | None]:
    """`python -m embed_service` under the load generator at each concurrency: the results,
    the service's Info, its peak RSS (MiB) and its exit status after SIGTERM."""
    port, metrics_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        EMBED_HOST="127.0.0.1", EMBED_PORT=str(port), EMBED_METRICS_PORT=str(metrics_port),
        EMBED_METERING_ADDR="", EMBED_LOG_LEVEL="WARNING", HF_HUB_OFFLINE="1",
    )
    with tempfile.TemporaryDirectory() as tmp:
        queries_file = Path(tmp) / "queries.txt"
        queries_file.write_text("\n".join(short))
        service = subprocess.Popen(
            [sys.executable, "-m", "embed_service"], env=env, cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "embed.log", "wb"),
        )
        try:
            try:
                wait_serving(address, service, within_s=180)
            except NotReady as exc:
                log = (Path(tmp) / "embed.log").read_text()[-2000:]
                raise RuntimeError(f"embed service: {exc}: {log}") from None
            info = _info(address)
            report.line(f"service: dtype {info.dtype} on {info.device}, "
                        f"max_batch_tokens {info.max_batch_tokens}, metering off")
            results = []
            for c in CONCURRENCY:
                before = _batch_stats(f"http://127.0.0.1:{metrics_port}/metrics")
                out = subprocess.run(
                    [sys.executable, "-m", "bench.loadgen", address, str(c), str(SECONDS),
                     str(queries_file)],
                    cwd=REPO, capture_output=True, text=True, timeout=SECONDS + 120, check=True,
                )
                after = _batch_stats(f"http://127.0.0.1:{metrics_port}/metrics")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                batches = after[1] - before[1]
                result["mean_batch"] = (after[0] - before[0]) / batches if batches else 0.0
                results.append(result)
                report.line(
                    f"gRPC C={c:>2}: {result['per_s']:7.0f} embeddings/s  "
                    f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  "
                    f"mean batch {result['mean_batch']:5.1f}  errors {result['errors'] or 0}"
                )
            peak = _rss_mib(service.pid, "VmHWM")
            report.line(f"service peak RSS: {peak:.0f} MiB")
        finally:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(timeout=60)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait()
    return results, info, peak, service.returncode


def run(report: Any) -> None:
    queries = load_queries()
    short = [q for q in queries if len(q.split()) <= 12]
    report.line(f"queries: {len(short)} short CLINC150 test texts; one per call; "
                f"{os.cpu_count()} CPUs (shared: numbers are noisy when others run)")
    raw = _raw_ceilings(report, short)
    ceiling_name = max(raw, key=lambda name: raw[name]["best_per_s"])
    ceiling = raw[ceiling_name]
    results, info, peak, returncode = _served(report, short)
    served_raw = raw.get(f"{info.dtype} unpadded", ceiling)
    by_c = {r["concurrency"]: r for r in results}
    ratio = by_c[64]["per_s"] / ceiling["best_per_s"]
    padded = by_c[64]["per_s"] / raw["float32 padded"]["best_per_s"]
    c1 = by_c[1]["p50_ms"]
    report.line(
        f"served/raw at C=64: {ratio:.2f} of the best raw ceiling ({ceiling_name}, "
        f"{ceiling['best_per_s']:.0f}/s; target >= 0.85); {padded:.2f} of the padded float32 "
        f"model ({raw['float32 padded']['best_per_s']:.0f}/s; target >= 0.8)"
    )
    report.line(
        f"C=1 p50 {c1:.2f} ms vs raw batch-1 {served_raw['batch1_ms']:.2f} ms "
        f"(+{c1 - served_raw['batch1_ms']:.2f} ms; target <= +2 ms)"
    )
    report.line(f"peak RSS {peak:.0f} MiB (target <= 1536 MiB)")
    report.line(f"exit code of the service after SIGTERM: {returncode}")


def _info(address: str) -> Any:
    from intent_embed.v1 import embed_pb2, embed_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        return embed_pb2_grpc.EmbedServiceStub(channel).Info(embed_pb2.InfoRequest(), timeout=5)


if __name__ == "__main__":
    from bench.__main__ import Report

    run(Report())
