"""The parts of the gateway's OpenAPI document FastAPI cannot derive on its own: the embedding
request body with `model` as an enum of the served model names (so generated clients and API
fuzzers send a model that exists and reach the embedding logic instead of stopping at 404), and
the bearer API key as the document's security scheme.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from fastapi import FastAPI

from gateway.openai_schema import EmbeddingBody, input_shapes

JSON = "application/json"
BEARER = "bearerAuth"
SECURITY: list[dict[str, list[str]]] = [{BEARER: []}]


def embedding_request_doc(model_names: Sequence[str], max_inputs: int) -> dict[str, Any]:
    """`openapi_extra` of the embedding routes: their body, and that they need a key.

    The body is `EmbeddingBody`'s JSON Schema, with what depends on the settings: `input` as
    its shapes with the count limit, `model` as the served names."""
    _, components = msgspec.json.schema_components([EmbeddingBody])
    schema = components[EmbeddingBody.__name__]
    schema["properties"]["input"] = {
        "anyOf": [msgspec.json.schema(shape) for shape in input_shapes(max_inputs)],
        "description": "a text, texts, token ids or token-id arrays (of the model's tokenizer, "
        f"without special tokens); at most {max_inputs} inputs",
    }
    schema["properties"]["model"] = {
        "type": "string",
        "enum": list(model_names),
        "description": "the model to use: " + ", ".join(repr(n) for n in model_names),
    }
    return {
        "requestBody": {"required": True, "content": {JSON: {"schema": schema}}},
        "security": SECURITY,
    }


def add_security_scheme(app: FastAPI) -> None:
    """Declares the API key (`Authorization: Bearer <key>`) as the document's `bearerAuth`."""
    derive = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = derive()
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes[BEARER] = {
                "type": "http",
                "scheme": "bearer",
                "description": "an API key of your organization",
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
