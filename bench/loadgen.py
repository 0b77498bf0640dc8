"""The load process of the embed benchmark: C concurrent gRPC callers, one short query per call.

Run as its own process (`python -m bench.loadgen ADDRESS C SECONDS QUERIES_FILE`) so the
client's CPU is not the service's; prints one JSON line with calls, errors, calls/s and
latency percentiles in milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import grpc

from intent_embed.v1 import embed_pb2, embed_pb2_grpc


async def drive(address: str, concurrency: int, seconds: float, queries: list[str]) -> dict:
    # Callers share one channel, as a gateway replica does.
    async with grpc.aio.insecure_channel(address) as channel:
        stub = embed_pb2_grpc.EmbedServiceStub(channel)
        await channel.channel_ready()
        latencies: list[float] = []
        errors: dict[str, int] = {}
        warm_until = time.monotonic() + min(1.0, seconds / 4)
        stop_at = warm_until + seconds

        async def caller(offset: int) -> None:
            i = offset
            while True:
                now = time.monotonic()
                if now >= stop_at:
                    return
                request = embed_pb2.EmbedRequest(inputs=[queries[i % len(queries)]], packed=True)
                i += concurrency
                try:
                    await stub.Embed(request, timeout=30)
                except grpc.aio.AioRpcError as err:
                    errors[err.code().name] = errors.get(err.code().name, 0) + 1
                    continue
                done = time.monotonic()
                if now >= warm_until:
                    latencies.append(done - now)

        await asyncio.gather(*(caller(k) for k in range(concurrency)))
    latencies.sort()

    def pct(q: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    return {
        "concurrency": concurrency,
        "calls": len(latencies),
        "errors": errors,
        "per_s": len(latencies) / seconds,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def main(argv: list[str]) -> int:
    address, concurrency, seconds, queries_file = argv
    queries = Path(queries_file).read_text().splitlines()
    result = asyncio.run(drive(address, int(concurrency), float(seconds), queries))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
