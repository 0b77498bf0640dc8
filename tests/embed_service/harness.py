"""What the embedding-service tests share besides fixtures: a gate that holds forward passes,
and the in-process server handle the `serve` fixture yields."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest

from embed_service.model import EmbeddingModel
from embed_service.server import EmbedServer
from intent_embed.v1 import embed_pb2_grpc


class Gate:
    """Holds every forward pass of a model until opened; counts the passes that started."""

    def __init__(self, model: EmbeddingModel, monkeypatch: pytest.MonkeyPatch) -> None:
        self._open = threading.Event()
        self.started = threading.Semaphore(0)
        self.batches: list[int] = []
        original = model.embed_ids

        def gated(batch: Any) -> np.ndarray:
            self.batches.append(len(batch))
            self.started.release()
            self._open.wait(timeout=60)
            return original(batch)

        monkeypatch.setattr(model, "embed_ids", gated)

    def open(self) -> None:
        self._open.set()

    async def wait_started(self, within_s: float = 10.0) -> None:
        ok = await asyncio.to_thread(self.started.acquire, True, within_s)
        assert ok, "no forward pass started"


@dataclass
class Running:
    server: EmbedServer
    channel: grpc.aio.Channel
    stub: embed_pb2_grpc.EmbedServiceStub
    address: str


ServeFactory = Callable[..., AbstractAsyncContextManager[Running]]


