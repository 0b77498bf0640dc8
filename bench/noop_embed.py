"""`python -m bench.noop_embed`: the embed service with its forward pass replaced by fixed
vectors, for the serving-ceiling benchmark (`bench.ceiling`) only.

Everything else is the service's own code in the service's own process: settings, gRPC server,
validation, tokenizer, batcher, response packing and usage records. What it costs per call is
what a GPU node's embed process spends outside the model, where the forward takes well under a
millisecond. It lives under `bench/` so that no setting of `embed_service` can select it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

import numpy as np

from embed_service import __main__ as service_main
from embed_service.model import EmbeddingModel
from intent_embed.logs import configure_logging
from intent_embed.tracing import configure_tracing


def fixed_vectors(model: EmbeddingModel, batch: Sequence[Sequence[int]]) -> np.ndarray:
    """One fresh [n, dim] float32 array of the same unit vector, as a forward pass would
    return: the batcher scatters and the servicer packs it like real vectors."""
    out = np.empty((len(batch), model.dimensions), dtype=np.float32)
    out[:] = 1.0 / np.sqrt(model.dimensions)
    return out


def main(argv: list[str] | None = None) -> int:
    settings = service_main.parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(settings.log_level, settings.log_format)
    configure_tracing("embed")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The probe would time the replaced forward; PyTorch's path is loaded and never run.
    settings.backend = "torch"
    EmbeddingModel.embed_ids = fixed_vectors  # type: ignore[method-assign,assignment]
    asyncio.run(service_main.serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
