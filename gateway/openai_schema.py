"""The OpenAI embeddings wire format: the request body's one definition, and response encoding.

`EmbeddingBody` is the body of the embedding routes, as a msgspec Struct: msgspec checks a body
against it in C while decoding it, and its JSON Schema is the body in the OpenAPI document. What
a type cannot say is checked on the decoded values: the model's name, that a list holds one kind
of input (its first item says which), and how many inputs it holds. A body msgspec refuses is
decoded again as plain JSON and each field checked on its own, so the answer is an OpenAI-style
400 (or 404) naming the first problem, its field and its input index. Responses are built
straight from the packed little-endian float32 bytes the embed service returns: base64 is those
bytes encoded, float JSON is orjson serialising a numpy view, never a per-float loop.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeAlias

import msgspec
import numpy as np
import orjson
from msgspec import Meta
from pydantic import BaseModel

from gateway.errors import ApiError

UINT32_MAX = 2**32 - 1

# A text must have a non-space character. The document says so, but the embed service checks it
# (as it checks token limits): here it would cost a regular-expression search per text.
Text: TypeAlias = Annotated[str, Meta(min_length=1, extra_json_schema={"pattern": r"\S"})]
TokenId: TypeAlias = Annotated[int, Meta(ge=0, le=UINT32_MAX)]
TokenIds: TypeAlias = Annotated[list[TokenId], Meta(min_length=1)]


class EmbeddingBody(msgspec.Struct):
    """Body of POST /v2/embeddings, as OpenAI's plus `project_id` and `truncate`."""

    # The docstring is the body's description in the OpenAPI document. Fields are in the order
    # a refused body is checked in, so a refusal names the first problem in this order. `input`
    # decodes as a text or a list of items that are each a text, a token id or a token-id array;
    # `_inputs` then holds a list to the kind of its first item, so what passes is one of the
    # shapes `input_shapes` documents.
    model: Annotated[str, Meta(description="the model's name")]
    input: Annotated[
        Text | Annotated[list[Text | TokenId | TokenIds], Meta(min_length=1)],
        Meta(description="text, texts, token ids or token-id arrays"),
    ]
    encoding_format: Annotated[
        Literal["float", "base64"] | None,
        Meta(description="float (default) or base64 of little-endian float32"),
    ] = None
    dimensions: Annotated[
        Annotated[int, Meta(ge=1, le=UINT32_MAX)] | None,
        Meta(description="keep the first d values, re-normalised"),
    ] = None
    truncate: Annotated[bool | None, Meta(description="cut inputs over the model's limit")] = None
    project_id: Annotated[
        str | None, Meta(description="project of your org to attribute usage to")
    ] = None
    user: Annotated[
        str | None,
        Meta(description="your end-user's id (accepted, not stored)"),
    ] = None


def input_shapes(max_inputs: int) -> list[Any]:
    """What `input` may be, one type per shape, as the OpenAPI document states it: a text,
    texts, one input's token ids, or token-id arrays, at most `max_inputs` inputs."""
    inputs = Meta(min_length=1, max_length=max_inputs)
    return [Text, Annotated[list[Text], inputs], TokenIds, Annotated[list[TokenIds], inputs]]


class EmbeddingRequest(msgspec.Struct, frozen=True):
    """A validated request: exactly one of `texts` and `token_ids` is set.

    A Struct, not a frozen dataclass: that cost more to build than decoding a short body."""

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


_DECODER = msgspec.json.Decoder(EmbeddingBody)
_FIELDS = msgspec.structs.fields(EmbeddingBody)
# Where in a value msgspec found the problem: `... - at `$[3][0]`` (absent at the value itself).
_PATH = re.compile(r" - at `\$((?:\[\d+\])*)`$")
# What each optional field must be, said as its refusal; `model` and `input` have their own.
_REFUSALS = {
    "encoding_format": ("'encoding_format' must be 'float' or 'base64'.", "invalid_value"),
    "dimensions": ("'dimensions' must be a positive integer.", "invalid_value"),
    "truncate": ("'truncate' must be true or false.", "invalid_type"),
    "project_id": ("'project_id' must be a string.", "invalid_type"),
    "user": ("'user' must be a string.", "invalid_type"),
}


def parse_request(raw: bytes, model_name: str, max_inputs: int) -> EmbeddingRequest:
    """Decode and validate a raw JSON body; raise `ApiError` (400/404) naming what to fix."""
    try:
        body = _DECODER.decode(raw)
    except msgspec.MsgspecError:
        body = _explain(raw, model_name, max_inputs)
    if body.model != model_name:
        raise _unknown_model(body.model, model_name)
    texts, token_ids = _inputs(body.input, max_inputs)
    return EmbeddingRequest(
        model=body.model,
        texts=texts,
        token_ids=token_ids,
        encoding_format=body.encoding_format or "float",
        dimensions=body.dimensions,
        truncate=bool(body.truncate),
        project_id=body.project_id or "",
    )


def _inputs(
    value: str | list[Any], max_inputs: int
) -> tuple[list[str] | None, list[list[int]] | None]:
    """A decoded `input` as texts or token-id arrays, once its list holds one kind of input.

    A list whose first item is a token id is one input (its length is tokens, not inputs)."""
    if isinstance(value, str):
        return [value], None
    kind = type(value[0])
    if kind is not int and len(value) > max_inputs:
        raise _too_many(len(value), max_inputs)
    other = _first_of_another_kind(value)
    if other is not None:
        raise _another_kind(value, other)
    if kind is int:
        return None, [value]
    return (value, None) if kind is str else (None, value)


def _too_many(count: int, max_inputs: int) -> ApiError:
    return _bad(
        f"'input' has {count} items; at most {max_inputs} are allowed per request, "
        "split it into several requests.",
        "input",
        "too_many_inputs",
    )


def _first_of_another_kind(items: list[Any]) -> int | None:
    # bool is a subclass of int in Python, but `true` is not a token id in JSON: types compared
    # exactly. One pass in C for the usual list of one kind.
    if len(set(map(type, items))) == 1:
        return None
    kind = type(items[0])
    return next(i for i, item in enumerate(items) if type(item) is not kind)


def _explain(raw: bytes, model_name: str, max_inputs: int) -> EmbeddingBody:
    """The body msgspec refused, decoded as plain JSON and checked a field at a time in
    `EmbeddingBody`'s order, so that the refusal names the first problem in that order (the
    model before the input, an input count before its items), as msgspec alone would not.

    A body whose fields all pass is returned: plain JSON keeps the last of repeated keys, while
    msgspec refuses a wrong value even when a later one replaces it."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _bad(
            f"The body is not valid JSON ({exc.msg}); send a JSON object such as "
            f'{{"input": "text", "model": "{model_name}"}}.',
            None,
            "invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.", None, "invalid_json")
    for field in _FIELDS:
        value = body.get(field.encode_name)
        if value is None and field.required:
            if field.name == "model":
                raise _bad(
                    f"'model' is required; use {model_name!r}.",
                    "model",
                    "missing_required_parameter",
                )
            raise _bad(f"'{field.name}' is required.", field.name, "missing_required_parameter")
        try:
            typed = msgspec.convert(value, field.type)
        except msgspec.ValidationError as exc:
            found = _PATH.search(str(exc))
            path = [int(i) for i in re.findall(r"\d+", found.group(1))] if found else []
            raise _refusal(field.name, value, path, model_name, max_inputs) from None
        if field.name == "model" and typed != model_name:
            raise _unknown_model(typed, model_name)
        if field.name == "input":
            _inputs(typed, max_inputs)
    converted: EmbeddingBody = msgspec.convert(body, EmbeddingBody)
    return converted


def _refusal(name: str, value: Any, path: list[int], model_name: str, max_inputs: int) -> ApiError:
    """Why `value` of field `name` is refused, msgspec having found the problem at `path`
    (item indices; none when the value itself is)."""
    if name == "model":
        return _bad(f"'model' must be a string; use {model_name!r}.", "model", "invalid_type")
    if name != "input":
        message, code = _REFUSALS[name]
        return _bad(message, name, code)
    if not path:
        if value == "":
            return _bad("'input' is an empty string; give the text to embed.", "input")
        if value == []:
            return _bad("'input' is an empty array; give at least one input.", "input")
        return _bad(
            "'input' must be a string, an array of strings, an array of token ids or an array "
            "of token-id arrays.",
            "input",
            "invalid_type",
        )
    if type(value[0]) is not int and len(value) > max_inputs:
        return _too_many(len(value), max_inputs)
    i = path[0]
    other = _first_of_another_kind(value)
    if other is not None and other <= i:  # the earlier problem, as a walk through the list meets it
        return _another_kind(value, other)
    if type(value[0]) is int:
        return _not_a_token(0, i, value[i])
    item = value[i]
    if len(path) > 1:
        return _not_a_token(i, path[1], item[path[1]])
    # An item refused as a whole is an empty one, or a first item of no input kind.
    if isinstance(item, str):
        return _bad(f"input {i} is an empty string; give the text to embed.", "input")
    if isinstance(item, list):
        return _bad(f"input {i} is an empty token list; give at least one token id.", "input")
    return _bad(
        "'input' items must be strings, token ids (integers) or token-id arrays.",
        "input",
        "invalid_type",
    )


def _another_kind(items: list[Any], i: int) -> ApiError:
    """Item `i` is not of the kind the list's first item set."""
    kind = type(items[0])
    if kind is int:
        return _not_a_token(0, i, items[i])
    if kind is str:
        return _bad(
            f"input {i} is not a string; an array of strings must hold only strings.",
            "input",
            "invalid_type",
        )
    return _bad(
        f"input {i} is not an array; token-id arrays must all be arrays.", "input", "invalid_type"
    )


def _not_a_token(i: int, j: int, token: object) -> ApiError:
    return _bad(
        f"input {i} token {j} is {str(token)[:40]!r}; token ids must be non-negative integers "
        "of this model's tokenizer.",
        "input",
    )


def _unknown_model(model: str, model_name: str) -> ApiError:
    return ApiError(
        404,
        f"The model {model[:100]!r} does not exist; this API serves {model_name!r}.",
        param="model",
        code="model_not_found",
    )


def _bad(message: str, param: str | None, code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


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


# ---- The responses, as the OpenAPI document describes them ----


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
