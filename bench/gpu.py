"""`python -m bench.gpu`: the CUDA path on a GPU, for a machine that has one.

1. The card's own limit: its bf16 dense matrix-multiply rate at the model's Linear shapes
   (`bench.limits.matmul_rate` at 8,192 rows).
2. The raw model (the service's unpadded forward in bf16, PyTorch): a batch sweep up to the
   token budget with short inputs (CLINC150 test queries) and long ones (the model's limit),
   in inputs/s, tokens/s and as a fraction of that limit.
3. `python -m embed_service` on the GPU (its defaults: bf16, PyTorch) called with requests of
   2,048 inputs by a few concurrent callers: inputs/s and tokens/s through gRPC.

`--device cpu` runs the same code on the CPU (the tests do, with a tiny model and small sizes);
`--quick` shortens every measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from bench.limits import ModelShape, matmul_rate

SWEEP_BATCHES = (64, 256, 1024, 2048)
REQUEST_INPUTS = 2048


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def sweep(model: Any, texts: list[str], batches: tuple[int, ...], seconds: float,
          device: str) -> list[dict[str, float]]:  # fmt: skip
    """Inputs/s and tokens/s of `model.embed_ids` at each batch size within the token budget."""
    ids = [t[: model.max_input_tokens] for t in model.tokenize(texts)]
    rows = []
    for batch in batches:
        chunk = [ids[i % len(ids)] for i in range(batch)]
        model.embed_ids(chunk)  # warm-up: kernels for this shape
        _sync(device)
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds or calls == 0:
            model.embed_ids(chunk)
            calls += 1
        _sync(device)
        elapsed = time.perf_counter() - started
        tokens = sum(len(row) + model.num_special_tokens for row in chunk)
        rows.append({
            "batch": batch,
            "inputs_per_s": batch * calls / elapsed,
            "tokens_per_s": tokens * calls / elapsed,
            "mean_tokens": tokens / batch,
        })  # fmt: skip
    return rows


async def _service_rate(address: str, texts: list[str], callers: int, seconds: float) -> float:
    import grpc

    from intent_embed.v1 import embed_pb2, embed_pb2_grpc

    request = embed_pb2.EmbedRequest(inputs=texts[:REQUEST_INPUTS], packed=True)
    done = 0
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as channel:
        stub = embed_pb2_grpc.EmbedServiceStub(channel)
        await stub.Embed(request, timeout=120)
        stop = time.monotonic() + seconds

        async def caller() -> None:
            nonlocal done
            while time.monotonic() < stop:
                await stub.Embed(request, timeout=120)
                done += len(request.inputs)

        started = time.monotonic()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return done / (time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    import torch

    from bench.embed import embed_service, info, short_queries
    from embed_service.model import EmbeddingModel
    from embed_service.settings import default_model_path

    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default=default_model_path())
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    seconds = 0.3 if args.quick else 3.0
    dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    model = EmbeddingModel.from_directory(args.model, device=args.device, dtype=dtype,
                                          backend="torch")  # fmt: skip
    out: dict[str, Any] = {"device": str(model.device), "dtype": model.dtype_name}
    if args.device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(0)
    shape = ModelShape.of(model.model.config)
    rate = matmul_rate(shape, model.dtype_name, args.device, rows=8192)
    out["matmul_gflops"] = rate
    short = short_queries()
    long = [" ".join(["word"] * model.max_input_tokens)] * 8
    budget_batches = tuple(b for b in SWEEP_BATCHES if b <= (64 if args.quick else 2048))
    for name, texts in (("short", short), ("long", long)):
        rows = sweep(model, texts, budget_batches, seconds, args.device)
        for row in rows:
            flops = shape.flops_per_query(int(row["mean_tokens"])) * row["inputs_per_s"]
            row["fraction_of_limit"] = flops / (rate * 1e9)
        out[f"sweep_{name}"] = rows
    env = {"EMBED_DEVICE": args.device, "EMBED_MAX_BATCH_TOKENS": "65536",
           "EMBED_MAX_BATCH_SIZE": "2048", "EMBED_MODEL_PATH": args.model}  # fmt: skip
    with embed_service(env) as (address, _, _):
        described = info(address)
        per_s = asyncio.run(_service_rate(address, short, 4, seconds * 3))
    tokens = sum(len(t) + 2 for t in model.tokenize(short[:REQUEST_INPUTS])) / REQUEST_INPUTS
    out["service"] = {
        "backend": described.backend,
        "dtype": described.dtype,
        "request_inputs": REQUEST_INPUTS,
        "inputs_per_s": per_s,
        "tokens_per_s": per_s * tokens,
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
