"""Every bad request gets INVALID_ARGUMENT with a message naming the input and the fix, through a
real gRPC channel; and a bad request never breaks the service for the next good one."""

from __future__ import annotations

import grpc
import pytest

from embed_service.model import EmbeddingModel
from intent_embed.v1 import embed_pb2
from tests.embed_service.harness import ServeFactory


def _request(**fields: object) -> embed_pb2.EmbedRequest:
    return embed_pb2.EmbedRequest(**fields)  # type: ignore[arg-type]


BAD_REQUESTS = [
    (_request(), "no inputs"),
    (_request(inputs=["fine", ""]), "input 1 is empty"),
    (_request(inputs=["fine", "ok", "   \n\t"]), "input 2 is empty"),
    (_request(inputs=["hi"] * 9), "9 inputs; at most 8"),
    (_request(inputs=["hi"], dimensions=0), "dimensions is 0"),
    (_request(inputs=["hi"], dimensions=33), "dimensions is 33"),
    (_request(inputs=["ok", "ok", "ok", "word " * 100]), "input 3 has 100 tokens"),
    (
        _request(token_inputs=[embed_pb2.TokenIds(ids=[5, 99999])]),
        "input 0 has token id 99999",
    ),
    (_request(token_inputs=[embed_pb2.TokenIds(ids=[5]), embed_pb2.TokenIds()]), "input 1 has no"),
    (
        _request(inputs=["a"], token_inputs=[embed_pb2.TokenIds(ids=[5])]),
        "either inputs or token_inputs",
    ),
    (_request(inputs=["word " * 60] * 6, truncate=True), "at most 300 per request"),
]


@pytest.mark.parametrize(("request_", "message"), BAD_REQUESTS)
async def test_bad_input_is_invalid_argument_with_actionable_message(
    serve: ServeFactory, tiny_model: EmbeddingModel, request_: embed_pb2.EmbedRequest, message: str
) -> None:
    async with serve(tiny_model, max_inputs=8, max_request_tokens=300) as running:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.stub.Embed(request_, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (caught.value.details() or "")
        # The service still answers a good request afterwards.
        reply = await running.stub.Embed(_request(inputs=["hello there"]), timeout=10)
        assert len(reply.embeddings) == 1


async def test_too_long_input_message_says_how_to_fix(
    serve: ServeFactory, tiny_model: EmbeddingModel
) -> None:
    async with serve(tiny_model) as running:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await running.stub.Embed(_request(inputs=["x", "word " * 70]), timeout=10)
    details = caught.value.details() or ""
    assert details == (
        f"input 1 has 70 tokens; this model accepts at most {tiny_model.max_input_tokens}; "
        "set truncate to cut it"
    )
