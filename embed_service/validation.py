"""What a valid EmbedRequest is: its inputs turned into token ids, or InvalidInput naming the
field and input to fix.

Inputs are texts (`inputs`) or token ids of the model's tokenizer without special tokens
(`token_inputs`); every input must be non-empty and, unless `truncate` is set, fit the model's
limit; a request carries at most `max_inputs` inputs and `max_request_tokens` tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from embed_service.errors import InvalidInput
from embed_service.model import EmbeddingModel
from embed_service.settings import Settings
from intent_embed.v1 import embed_pb2

# Tokenizing more texts than this on the event loop would stall other calls for milliseconds.
_TOKENIZE_INLINE_MAX = 32


def _check_shape(
    request: embed_pb2.EmbedRequest, model: EmbeddingModel, settings: Settings
) -> None:
    texts: Sequence[str] = request.inputs
    if texts and request.token_inputs:
        raise InvalidInput("set either inputs or token_inputs, not both", field="inputs")
    count = len(texts) or len(request.token_inputs)
    if count == 0:
        raise InvalidInput("no inputs: send at least one text in inputs", field="inputs")
    if count > settings.max_inputs:
        raise InvalidInput(
            f"{count} inputs; at most {settings.max_inputs} per request: "
            "split them over several requests",
            field="inputs",
        )
    if request.HasField("dimensions") and not 1 <= request.dimensions <= model.dimensions:
        raise InvalidInput(
            f"dimensions is {request.dimensions}; it must be between 1 and "
            f"{model.dimensions} for this model",
            field="dimensions",
        )


def _ids_of_token_inputs(
    token_inputs: Sequence[embed_pb2.TokenIds], vocab: int
) -> list[list[int]]:
    ids = []
    for i, token_input in enumerate(token_inputs):
        row = list(token_input.ids)
        if not row:
            raise InvalidInput(
                f"input {i} has no token ids; send at least one", field=f"token_inputs[{i}]"
            )
        top = max(row)
        if top >= vocab:
            raise InvalidInput(
                f"input {i} has token id {top}, outside this model's vocabulary "
                f"(ids 0..{vocab - 1})",
                field=f"token_inputs[{i}]",
            )
        ids.append(row)
    return ids


async def token_ids(
    request: embed_pb2.EmbedRequest, model: EmbeddingModel, settings: Settings
) -> list[list[int]]:
    """Token ids of every input (no special tokens), truncated if asked; or InvalidInput."""
    _check_shape(request, model, settings)
    texts: Sequence[str] = request.inputs
    field = "inputs" if texts else "token_inputs"
    if texts:
        for i, text in enumerate(texts):
            if not text.strip():
                raise InvalidInput(
                    f"input {i} is empty; send text with at least one word", field=f"inputs[{i}]"
                )
        if len(texts) > _TOKENIZE_INLINE_MAX:
            ids = await asyncio.to_thread(model.tokenize, texts)
        else:
            ids = model.tokenize(texts)
    else:
        ids = _ids_of_token_inputs(request.token_inputs, model.vocab_size)
    limit = model.max_input_tokens
    for i, row in enumerate(ids):
        if len(row) > limit:
            if not request.truncate:
                raise InvalidInput(
                    f"input {i} has {len(row)} tokens; this model accepts at most {limit}; "
                    "set truncate to cut it",
                    field=f"{field}[{i}]",
                )
            ids[i] = row[:limit]
        elif not row:
            raise InvalidInput(
                f"input {i} has no tokens; send text with at least one word", field=f"{field}[{i}]"
            )
    total = sum(len(row) for row in ids)
    if total > settings.max_request_tokens:
        raise InvalidInput(
            f"the request has {total} tokens; at most {settings.max_request_tokens} "
            "per request: split the inputs over several requests",
            field=field,
        )
    return ids
