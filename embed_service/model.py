"""The embedding model: a sentence-transformers style directory run with plain transformers.

Owns loading (weights, tokenizer, pooling mode, normalisation and maximum length as the
directory's sentence-transformers files say), device and dtype choice, token counting
(tokenizer tokens without special tokens), and which forward pass (`encoder`) turns token ids
into float32 vectors.

BERT encoders (all-MiniLM-L6-v2 and models fine-tuned from it) run on the unpadded path of
`encoder.torch_unpadded`; any other architecture runs transformers' padded forward
(`encoder.torch_padded`), where reduced precision is applied to the Linear layers of all blocks
but the last. Device and dtype are chosen in `embed_service.precision`, the backend in
`embed_service.backends`. Invariant either way: vectors stay at cosine >= 0.9999 of float32,
which casting the whole model (`model.to(bfloat16)`) does not. Measurements:
docs/performance.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from embed_service.adapter import ModelSource, merge_adapter
from embed_service.backends import choose as choose_backend
from embed_service.backends import onnx_runs_here
from embed_service.precision import lower_linear_precision, resolve_device, resolve_dtype
from encoder.forward import Forward
from encoder.layout import Framing
from encoder.onnx_runtime import OnnxRuntime
from encoder.router import Router
from encoder.torch_padded import TorchPadded
from encoder.torch_unpadded import TorchUnpadded
from encoder.unpadded import is_plain_bert

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolingConfig:
    mode: str  # "mean" or "cls"
    normalize: bool
    max_seq_length: int  # including special tokens


def read_pooling_config(path: Path, max_position_embeddings: int) -> PoolingConfig:
    """Pooling mode, normalisation and length limit from the sentence-transformers files.

    A directory without them is treated as mean pooling, normalised, limited by the model's
    position embeddings (what sentence-transformers does for a bare transformers model, except
    that we normalise because every user of this service compares vectors by cosine).
    """
    mode, normalize, max_len = "mean", True, max_position_embeddings
    modules_file = path / "modules.json"
    if modules_file.exists():
        modules = json.loads(modules_file.read_text())
        types = [m.get("type", "") for m in modules]
        normalize = any(t.endswith("Normalize") for t in types)
        for m in modules:
            if m.get("type", "").endswith("Pooling"):
                pooling_file = path / m.get("path", "1_Pooling") / "config.json"
                if pooling_file.exists():
                    cfg = json.loads(pooling_file.read_text())
                    if cfg.get("pooling_mode_cls_token"):
                        mode = "cls"
                    elif cfg.get("pooling_mode_mean_tokens", True):
                        mode = "mean"
                    else:
                        raise ValueError(f"unsupported pooling in {pooling_file}: {cfg}")
    sbert_file = path / "sentence_bert_config.json"
    if sbert_file.exists():
        seq = json.loads(sbert_file.read_text()).get("max_seq_length")
        if seq:
            max_len = min(int(seq), max_position_embeddings)
    return PoolingConfig(mode=mode, normalize=normalize, max_seq_length=max_len)


class EmbeddingModel:
    """A loaded model; `encode` for tools, `tokenize` + `embed_ids` for the service's batcher."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        fast_tokenizer: Any,
        framing: Framing,
        pooling: PoolingConfig,
        device: torch.device,
        router: Router,
        revision: str = "",
    ) -> None:
        self.model = model
        self.revision = revision
        self.router = router
        self.num_threads = torch.get_num_threads()
        self.tokenizer = tokenizer
        self.framing = framing
        self.pooling = pooling
        self.device = device
        config: Any = model.config
        self.dimensions = int(config.hidden_size)
        self.vocab_size = len(tokenizer)
        self.max_seq_length = pooling.max_seq_length
        self.num_special_tokens = framing.extra
        # Token limit of one input as users count it (no special tokens): the model's limit
        # minus what the tokenizer adds around a single sequence.
        self.max_input_tokens = self.max_seq_length - self.num_special_tokens
        self._fast = fast_tokenizer

    @classmethod
    def from_directory(
        cls,
        path: str | os.PathLike[str],
        device: str = "auto",
        dtype: str = "auto",
        num_threads: int = 0,
        unpadded: bool = True,
        backend: str = "auto",
    ) -> EmbeddingModel:
        """Loads a local model directory, or an adapter directory merged into its base
        (`embed_service.adapter`); never touches the network.

        `unpadded` runs BERT encoders on the unpadded path (`encoder.torch_unpadded`); False,
        or a model that path does not cover, runs transformers' padded forward. `model` stays
        the float32 transformers module on the unpadded path (training code uses it directly).
        `backend` picks PyTorch or ONNX Runtime (`embed_service.backends`; auto: measured).
        """
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        if num_threads > 0:
            torch.set_num_threads(num_threads)
        directory = Path(path)
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        started = time.monotonic()
        source = ModelSource.of(directory)
        tokenizer = AutoTokenizer.from_pretrained(source.weights_dir, local_files_only=True)
        model = AutoModel.from_pretrained(
            source.weights_dir, local_files_only=True, dtype=torch.float32
        )
        if source.adapter is not None:
            merge_adapter(model, source.adapter)
        model.eval()
        model.to(dev)
        pooling = read_pooling_config(source.weights_dir, int(model.config.max_position_embeddings))
        framing = _framing(tokenizer)
        fast = _bare_fast_tokenizer(tokenizer)
        pytorch = _pytorch_forward(model, tokenizer, framing, pooling, dev, torch_dtype, unpadded)
        onnx = (
            partial(
                OnnxRuntime.of,
                model,
                framing,
                pooling.mode,
                pooling.normalize,
                torch.get_num_threads(),
            )
            if onnx_runs_here(model, dev)
            else None
        )
        router = choose_backend(pytorch, onnx, partial(_tokenize, tokenizer, fast), backend, dtype)
        loaded = cls(model, tokenizer, fast, framing, pooling, dev, router, source.revision)
        log.info(
            "model_loaded path=%s revision=%s adapter=%s device=%s dtype=%s backend=%s "
            "pooling=%s normalize=%s max_seq=%d threads=%d seconds=%.2f",
            directory.name,
            source.revision,
            source.adapter is not None,
            dev,
            loaded.dtype_name,
            loaded.backend,
            pooling.mode,
            pooling.normalize,
            pooling.max_seq_length,
            loaded.num_threads,
            time.monotonic() - started,
        )
        return loaded

    @property
    def dtype_name(self) -> str:
        """The dtype of PyTorch's forward where it runs any batch; ONNX Runtime's is float32."""
        return self.router.dtype

    @property
    def backend(self) -> str:
        """Which forward pass runs: onnxruntime, torch-unpadded or torch-padded; when batches
        are split by size, `onnxruntime<=N+torch-unpadded`."""
        return self.router.name

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text without special tokens and without truncation.

        Goes straight to the Rust tokenizer where there is one: the transformers call around it
        is a large share of the service's per-request CPU (docs/performance.md).
        """
        return _tokenize(self.tokenizer, self._fast, texts)

    def embed_ids(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Vectors [n, dim] float32 of inputs given as ids without special tokens (`Forward`).

        Each input must already fit `max_input_tokens`. Attention (and, on the padded path,
        every layer) works on the batch padded to its longest input, so callers group inputs
        of similar length.
        """
        return self.router(batch)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Vectors [n, dim] float32 of `texts`, truncated to the model's limit, in input order.

        Texts are sorted by length so each batch pads little; the result is in input order.
        """
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        ids = [t[: self.max_input_tokens] for t in self.tokenize(texts)]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.empty((len(ids), self.dimensions), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self.embed_ids([ids[i] for i in chunk])
        return out


def _pytorch_forward(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    framing: Framing,
    pooling: PoolingConfig,
    device: torch.device,
    dtype: torch.dtype,
    unpadded: bool,
) -> Forward:
    """The unpadded forward for a plain BERT encoder (unless `unpadded` is off), else
    transformers' padded forward with the Linear layers lowered to `dtype`."""
    if unpadded and is_plain_bert(model):
        return TorchUnpadded(model, framing, pooling.mode, pooling.normalize, dtype, device)
    if dtype != torch.float32:
        lower_linear_precision(model, dtype)
    token_types = "token_type_ids" in tokenizer.model_input_names
    return TorchPadded(model, framing, pooling.mode, pooling.normalize, dtype, device, token_types)


def _framing(tokenizer: PreTrainedTokenizerBase) -> Framing:
    """The ids the tokenizer puts before and after a single sequence, and its padding id."""
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    pad_id = int(tokenizer.pad_token_id or 0)
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return Framing(tuple(full[:start]), tuple(full[start + len(plain) :]), pad_id)
    raise ValueError("cannot locate the special tokens this tokenizer adds")


def _tokenize(
    tokenizer: PreTrainedTokenizerBase, fast: Any, texts: Sequence[str]
) -> list[list[int]]:
    """`EmbeddingModel.tokenize`, with `fast` the bare Rust tokenizer or None."""
    if not texts:
        return []
    if fast is not None:
        if len(texts) <= _SERIAL_ENCODE_MAX:  # encode_batch wakes a thread pool
            return [fast.encode(text, add_special_tokens=False).ids for text in texts]
        # The _fast variant skips the offsets nobody here reads (docs/performance.md).
        return [e.ids for e in fast.encode_batch_fast(list(texts), add_special_tokens=False)]
    encoded = tokenizer(
        list(texts),
        add_special_tokens=False,
        truncation=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )
    return [list(ids) for ids in encoded["input_ids"]]


# Up to this many texts are encoded one by one; more go through the parallel encode_batch.
_SERIAL_ENCODE_MAX = 8


def _bare_fast_tokenizer(tokenizer: PreTrainedTokenizerBase) -> Any:
    """A copy of the Rust tokenizer behind a fast transformers tokenizer, with no truncation and
    no padding set, or None for a slow (pure Python) tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    bare = Tokenizer.from_str(backend.to_str())
    bare.no_truncation()
    bare.no_padding()
    return bare


async def load_on_own_thread(load: Callable[[], EmbeddingModel]) -> EmbeddingModel:
    """Runs `load` (an `EmbeddingModel.from_directory` call, say) on a thread that ends when the
    model is loaded.

    Not `asyncio.to_thread`: libgomp gives every thread that runs an OpenMP region a pool of
    worker threads for the life of that thread. Loading runs such regions (the bf16 weight
    casts), and an executor thread lives on idle with its pool; with more OpenMP threads than
    CPUs libgomp cuts its spin-waits short, and every parallel region of the forward thread then
    pays futex wake-ups (a slower forward; docs/performance.md).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[EmbeddingModel] = loop.create_future()

    def settle(result: EmbeddingModel | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            model = load()
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, model, None)

    thread = threading.Thread(target=run, name="embed-load", daemon=True)
    thread.start()
    model = await done
    await asyncio.to_thread(thread.join)  # its OpenMP pool is gone once it has exited
    return model
