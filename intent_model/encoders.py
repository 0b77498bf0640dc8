"""The two ways evaluation turns texts into vectors: in-process with the embed service's own
model code (so pooling, normalisation and truncation are exactly what is served), or through a
running embed service over gRPC (so a deployed model is measured as users get it)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import grpc
import numpy as np

from intent_embed.v1 import embed_pb2, embed_pb2_grpc

if TYPE_CHECKING:
    from embed_service.model import EmbeddingModel


# The service caps inputs per request (EMBED_MAX_INPUTS, 2048); 256 keeps each call small
# enough to stay well inside its token budget and deadline.
SERVICE_BATCH = 256


class Encoder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray: ...

    def describe(self) -> str: ...


class LocalEncoder:
    """Runs `embed_service.model.EmbeddingModel`, the service's own loading, pooling and
    normalisation code, in this process."""

    def __init__(self, model: EmbeddingModel, what: str, batch_size: int = 64) -> None:
        self._model = model
        self._batch_size = batch_size
        self._what = what

    @classmethod
    def from_directory(
        cls, model_dir: Path, device: str = "cpu", dtype: str = "float32", batch_size: int = 64
    ) -> LocalEncoder:
        from embed_service.model import EmbeddingModel

        model = EmbeddingModel.from_directory(model_dir, device=device, dtype=dtype)
        return cls(model, f"local model_dir={model_dir} device={device} dtype={dtype}", batch_size)

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self._model.encode(texts, batch_size=self._batch_size)
        return np.asarray(vectors, dtype=np.float32)

    def describe(self) -> str:
        return self._what

    @property
    def revision(self) -> str:
        return self._model.revision


class ServiceEncoder:
    """Calls `EmbedService.Embed` of a running service in batches of at most 256 inputs."""

    def __init__(self, addr: str, org_id: str = "eval", timeout_s: float = 120.0) -> None:
        self._channel = grpc.insecure_channel(addr)
        self._stub = embed_pb2_grpc.EmbedServiceStub(self._channel)
        self._org_id = org_id
        self._timeout_s = timeout_s
        info = self._stub.Info(embed_pb2.InfoRequest(), timeout=timeout_s)
        self._what = (
            f"service addr={addr} model={info.model} dims={info.dimensions} "
            f"device={info.device} dtype={info.dtype}"
        )

    def encode(self, texts: list[str]) -> np.ndarray:
        out: list[np.ndarray] = []
        for start in range(0, len(texts), SERVICE_BATCH):
            request = embed_pb2.EmbedRequest(
                inputs=texts[start : start + SERVICE_BATCH],
                org_id=self._org_id,
                request_id=str(uuid.uuid4()),
                packed=True,
            )
            response = self._stub.Embed(request, timeout=self._timeout_s)
            for emb in response.embeddings:
                if emb.packed:
                    out.append(np.frombuffer(emb.packed, dtype="<f4").astype(np.float32))
                else:
                    out.append(np.asarray(emb.values, dtype=np.float32))
        return np.stack(out)

    def describe(self) -> str:
        return self._what

    def close(self) -> None:
        self._channel.close()
