"""`--embed-addr` evaluation talks to a real gRPC server: batches of at most 256 inputs, the
eval org id, packed or plain vectors decoded in input order."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest

from intent_embed.v1 import embed_pb2, embed_pb2_grpc
from intent_model.encoders import ServiceEncoder


def _vector(text: str) -> list[float]:
    return [float(len(text)), float(sum(map(ord, text)) % 97), 1.0]


class _FakeEmbed(embed_pb2_grpc.EmbedServiceServicer):
    def __init__(self, packed: bool) -> None:
        self.packed = packed
        self.requests: list[embed_pb2.EmbedRequest] = []

    def Embed(self, request: embed_pb2.EmbedRequest, context: grpc.ServicerContext):
        self.requests.append(request)
        out = []
        for text in request.inputs:
            v = _vector(text)
            if self.packed and request.packed:
                out.append(embed_pb2.Embedding(packed=struct.pack("<3f", *v)))
            else:
                out.append(embed_pb2.Embedding(values=v))
        return embed_pb2.EmbedResponse(embeddings=out, model="intent-embed")

    def Info(self, request: embed_pb2.InfoRequest, context: grpc.ServicerContext):
        return embed_pb2.InfoResponse(model="intent-embed", dimensions=3, device="cpu")


@pytest.fixture(params=[True, False], ids=["packed", "values"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, _FakeEmbed]]:
    fake = _FakeEmbed(packed=request.param)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    embed_pb2_grpc.add_EmbedServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", fake
    server.stop(None)


def test_service_encoder_batches_and_keeps_order(served: tuple[str, _FakeEmbed]) -> None:
    addr, fake = served
    texts = [f"utterance number {i}" for i in range(600)]
    encoder = ServiceEncoder(addr)
    try:
        vectors = encoder.encode(texts)
    finally:
        encoder.close()
    np.testing.assert_allclose(vectors, np.array([_vector(t) for t in texts], dtype=np.float32))
    assert [len(r.inputs) for r in fake.requests] == [256, 256, 88]
    assert {r.org_id for r in fake.requests} == {"eval"}
    assert len({r.request_id for r in fake.requests}) == 3  # distinct usage idempotency keys
    assert "model=intent-embed" in encoder.describe()
