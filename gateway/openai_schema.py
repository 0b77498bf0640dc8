"""The OpenAI embeddings wire format: request validation and response encoding.

Requests are validated by hand from the parsed JSON rather than through a pydantic model so
that every client mistake gets a precise OpenAI-style 400 (naming the field and the input
index) and so that large token-id lists are not copied through a model. Responses are built
straight from the packed little-endian float32 bytes the embed service returns: base64 is
those bytes encoded, float JSON is orjson serialising a numpy view, never a per-float loop.
The pydantic models at the bottom only describe the contract in the OpenAPI schema.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, Field

from gateway.errors import ApiError

UINT32_MAX = 2**32 - 1
ENCODING_FORMATS = ("float", "base64")


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """A validated request: exactly one of `texts` and `token_ids` is set."""

    model: str
    texts: list[str] | None
    token_ids: list[list[int]] | None
    encoding_format: str
    dimensions: int | None
    truncate: bool
    project_id: str

    @property
    def count(self) -> int:
        return len(self.texts if self.texts is not None else self.token_ids or [])


def _bad(message: str, param: str | None, code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _is_int(value: object) -> bool:
    # bool is a subclass of int in Python, but `true` is not a token id in JSON.
    return type(value) is int


def _token_list(ids: list[Any], where: str) -> list[int]:
    if not ids:
        raise _bad(f"{where} is an empty token list; give at least one token id.", "input")
    for j, tok in enumerate(ids):
        if not _is_int(tok) or tok < 0 or tok > UINT32_MAX:
            raise _bad(
                f"{where} token {j} is {str(tok)[:40]!r}; token ids must be non-negative integers "
                "of this model's tokenizer.",
                "input",
            )
    return ids


def _parse_input(value: object, max_inputs: int) -> tuple[list[str] | None, list[list[int]] | None]:
    if isinstance(value, str):
        if not value:
            raise _bad("'input' is an empty string; give the text to embed.", "input")
        return [value], None
    if not isinstance(value, list):
        raise _bad(
            "'input' must be a string, an array of strings, an array of token ids or an array "
            "of token-id arrays.",
            "input",
            "invalid_type",
        )
    if not value:
        raise _bad("'input' is an empty array; give at least one input.", "input")
    first = value[0]
    if _is_int(first):  # one input given as token ids: its length is tokens, not inputs
        return None, [_token_list(value, "input 0")]
    if len(value) > max_inputs:
        raise _bad(
            f"'input' has {len(value)} items; at most {max_inputs} are allowed per request, "
            "split it into several requests.",
            "input",
            "too_many_inputs",
        )
    if isinstance(first, str):
        for i, text in enumerate(value):
            if not isinstance(text, str):
                raise _bad(
                    f"input {i} is not a string; an array of strings must hold only strings.",
                    "input",
                    "invalid_type",
                )
            if not text:
                raise _bad(f"input {i} is an empty string; give the text to embed.", "input")
        return value, None
    if isinstance(first, list):
        out: list[list[int]] = []
        for i, ids in enumerate(value):
            if not isinstance(ids, list):
                raise _bad(
                    f"input {i} is not an array; token-id arrays must all be arrays.",
                    "input",
                    "invalid_type",
                )
            out.append(_token_list(ids, f"input {i}"))
        return None, out
    raise _bad(
        "'input' items must be strings, token ids (integers) or token-id arrays.",
        "input",
        "invalid_type",
    )


def parse_request(body: object, model_name: str, max_inputs: int) -> EmbeddingRequest:
    """Validate a decoded JSON body; raise `ApiError` (400/404) naming what to fix."""
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.", None, "invalid_json")
    model = body.get("model")
    if model is None:
        raise _bad(
            f"'model' is required; use {model_name!r}.", "model", "missing_required_parameter"
        )
    if not isinstance(model, str):
        raise _bad(f"'model' must be a string; use {model_name!r}.", "model", "invalid_type")
    if model != model_name:
        raise ApiError(
            404,
            f"The model {model[:100]!r} does not exist; this API serves {model_name!r}.",
            param="model",
            code="model_not_found",
        )
    if "input" not in body or body["input"] is None:
        raise _bad("'input' is required.", "input", "missing_required_parameter")
    texts, token_ids = _parse_input(body["input"], max_inputs)

    encoding_format = body.get("encoding_format")
    if encoding_format is None:
        encoding_format = "float"
    elif encoding_format not in ENCODING_FORMATS:
        raise _bad("'encoding_format' must be 'float' or 'base64'.", "encoding_format")

    dimensions = body.get("dimensions")
    if dimensions is not None and (not _is_int(dimensions) or not 1 <= dimensions <= UINT32_MAX):
        raise _bad("'dimensions' must be a positive integer.", "dimensions")

    truncate = body.get("truncate")
    if truncate is None:
        truncate = False
    elif not isinstance(truncate, bool):
        raise _bad("'truncate' must be true or false.", "truncate", "invalid_type")

    project_id = body.get("project_id")
    if project_id is None:
        project_id = ""
    elif not isinstance(project_id, str):
        raise _bad("'project_id' must be a string.", "project_id", "invalid_type")

    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("'user' must be a string.", "user", "invalid_type")

    return EmbeddingRequest(
        model=model,
        texts=texts,
        token_ids=token_ids,
        encoding_format=encoding_format,
        dimensions=dimensions,
        truncate=truncate,
        project_id=project_id,
    )


def vectors_matrix(embeddings: Sequence[Any]) -> np.ndarray | list[np.ndarray]:
    """The reply's vectors as float32: one (n, d) array when all rows have the same length.

    Reads `packed` (little-endian float32 bytes) when the server filled it and falls back to
    the repeated `values` for a server that ignores `packed`.
    """
    if embeddings and all(e.packed for e in embeddings):
        rows = [e.packed for e in embeddings]
        if len({len(r) for r in rows}) == 1:
            flat = np.frombuffer(b"".join(rows), dtype="<f4")
            return flat.reshape(len(rows), -1).astype(np.float32, copy=False)
        return [np.frombuffer(r, dtype="<f4").astype(np.float32, copy=False) for r in rows]
    return [np.asarray(e.values, dtype=np.float32) for e in embeddings]


def encode_response(
    vectors: np.ndarray | list[np.ndarray],
    encoding_format: str,
    model: str,
    prompt_tokens: int,
    total_tokens: int,
    with_embeddings_field: bool = False,
) -> bytes:
    """OpenAI's embeddings list as JSON bytes (plus `embeddings` for /v2/predict)."""
    data: list[dict[str, Any]]
    if encoding_format == "base64":
        data = [
            {
                "object": "embedding",
                "embedding": base64.b64encode(
                    np.ascontiguousarray(row, dtype="<f4").tobytes()
                ).decode("ascii"),
                "index": i,
            }
            for i, row in enumerate(vectors)
        ]
    else:
        data = [
            {"object": "embedding", "embedding": row, "index": i} for i, row in enumerate(vectors)
        ]
    payload: dict[str, Any] = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": total_tokens},
    }
    if with_embeddings_field:
        payload["embeddings"] = vectors
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


# ---- OpenAPI description only (requests are validated by `parse_request`) ----


class EmbeddingRequestSchema(BaseModel):
    """Body of POST /v2/embeddings, as OpenAI's plus `project_id` and `truncate`."""

    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="text, texts, token ids or token-id arrays (at most 2048 inputs)"
    )
    model: str = Field(description="the model name; this API serves 'intent-embed'")
    encoding_format: Literal["float", "base64"] | None = Field(
        None, description="float (default) or base64 of little-endian float32"
    )
    dimensions: int | None = Field(None, ge=1, description="keep the first d values, re-normalised")
    user: str | None = Field(None, description="your end-user's id (accepted, not stored)")
    project_id: str | None = Field(None, description="project of your org to attribute usage to")
    truncate: bool | None = Field(None, description="cut inputs over the model's limit")


class EmbeddingObject(BaseModel):
    object: Literal["embedding"]
    embedding: list[float] | str
    index: int


class UsageObject(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponseSchema(BaseModel):
    object: Literal["list"]
    data: list[EmbeddingObject]
    model: str
    usage: UsageObject


class PredictResponseSchema(EmbeddingResponseSchema):
    embeddings: list[list[float]]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorSchema(BaseModel):
    error: ErrorDetail
