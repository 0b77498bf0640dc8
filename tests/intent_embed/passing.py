"""A server interceptor that only counts the calls it sees: what makes `GrpcServer` count and
drain through its interceptor instead of wrapping the handlers at registration."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest


class Passing(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self) -> None:
        self.calls = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        self.calls += 1
        return await continuation(details)


# Runs a test with no other interceptor (handlers wrapped at registration) and with one.
PASS_THROUGH = pytest.mark.parametrize(
    "others", [pytest.param([], id="wrapped"), pytest.param([Passing()], id="intercepted")]
)
