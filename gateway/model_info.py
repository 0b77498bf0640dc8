"""`GET /v2/models`: the OpenAI model object of the served model, with what the embed service's
`Info` says about it (revision, dimensions, input limit).

Info is asked at most once per `ttl_s` (pods behind round_robin answer in turn; during a rollout
two revisions may be live, and the cache follows within `ttl_s`). When the embed service cannot
answer, the object still lists the model, with `revision` null, rather than failing a listing
that clients call to discover the model name.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc

from intent_embed.v1 import embed_pb2, embed_pb2_grpc

log = logging.getLogger(__name__)


class ModelInfo:
    def __init__(self, model_name: str, ttl_s: float, timeout_s: float) -> None:
        self.model_name = model_name
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._info: embed_pb2.InfoResponse | None = None
        self._fetched_at = float("-inf")

    async def card(self, stub: embed_pb2_grpc.EmbedServiceStub | None) -> dict[str, Any]:
        info = await self._current(stub)
        return {
            "id": self.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "intent-embed",
            "revision": info.revision or None if info else None,
            "dimensions": info.dimensions if info else None,
            "max_input_tokens": info.max_input_tokens if info else None,
        }

    async def _current(
        self, stub: embed_pb2_grpc.EmbedServiceStub | None
    ) -> embed_pb2.InfoResponse | None:
        if stub is None or time.monotonic() - self._fetched_at < self._ttl_s:
            return self._info
        try:
            self._info = await stub.Info(embed_pb2.InfoRequest(), timeout=self._timeout_s)
            self._fetched_at = time.monotonic()
        except grpc.aio.AioRpcError as err:
            log.warning("model_info_unavailable code=%s", err.code().name)
        return self._info
