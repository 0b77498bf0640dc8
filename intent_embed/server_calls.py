"""What the server interceptors of `GrpcServer` share: which calls are the server's own probes
(health checks and reflection, which the interceptors leave alone: probes carry no token, and a
draining server must still say NOT_SERVING), wrapping a unary method, and a handler that
refuses a call with a status before any work.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

_PROBES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

UnaryBehaviour = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def is_probe(method: str) -> bool:
    """Whether `method` (``/package.Service/Method``) is a health check or reflection."""
    return method.startswith(_PROBES)


def wrapped_unary(handler: grpc.RpcMethodHandler, behaviour: UnaryBehaviour) -> Any:
    """`handler`'s unary method replaced by `behaviour`, with its (de)serializers."""
    return grpc.unary_unary_rpc_method_handler(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def refusal(status: grpc.Status, on_call: Callable[[], None] = lambda: None) -> Any:
    """A handler that ends every call with `status` (`on_call` runs first); the request is
    never read, so its bytes are not even deserialized."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        on_call()
        await context.abort_with_status(status)

    return grpc.unary_unary_rpc_method_handler(refuse)
