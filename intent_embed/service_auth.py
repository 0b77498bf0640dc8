"""Which service is calling: per-service bearer tokens in gRPC call metadata, and the roles
a server lets call each of its methods.

A client channel built with :func:`client_interceptors` sends ``authorization: Bearer TOKEN``
on every call. A server runs a :class:`ServiceAuthInterceptor` that knows each role's tokens
(several per role, so a token is rotated by adding the new one, moving the callers, then
removing the old; a client given several sends the first) and the roles allowed per method:
a call without a known token is answered ``UNAUTHENTICATED``, one from a role not allowed
``PERMISSION_DENIED``, both before the servicer runs, so a refused call changes nothing. A
method missing from the table is refused to everyone. Health and reflection stay open: probes
carry no token.

Tokens are compared by their SHA-256, so a lookup's timing says nothing about a token's bytes;
they never appear in a log line or an error message.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc

from intent_embed.rich_status import status_with_details
from intent_embed.server_calls import is_probe, refusal

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
# ErrorInfo reasons a caller may branch on.
NO_SERVICE_TOKEN = "NO_SERVICE_TOKEN"
ROLE_NOT_ALLOWED = "ROLE_NOT_ALLOWED"


def parse_tokens(value: str) -> list[str]:
    """The tokens of a comma-separated setting (blank entries ignored)."""
    return [t.strip() for t in value.split(",") if t.strip()]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class ServiceAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls without a known token, or from a role `allowed` does not name for the
    method (`allowed`: full method name such as ``/pkg.Service/Method`` -> roles)."""

    def __init__(
        self,
        tokens: Mapping[str, Iterable[str]],
        allowed: Mapping[str, frozenset[str]],
        on_refused: Callable[[str], None] = lambda code: None,
    ) -> None:
        self._roles: dict[bytes, str] = {}
        for role, role_tokens in tokens.items():
            for token in role_tokens:
                if _digest(token) in self._roles:
                    raise ValueError(f"one token is given to two roles (one is {role!r})")
                self._roles[_digest(token)] = role
        self._allowed = dict(allowed)
        self._on_refused = on_refused

    def role_of(self, metadata: Iterable[tuple[str, Any]] | None) -> str | None:
        """The role whose token the call carries, or None."""
        for key, value in metadata or ():
            if key == AUTHORIZATION and isinstance(value, str) and value.startswith("Bearer "):
                return self._roles.get(_digest(value[7:]))
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        if is_probe(method):
            return await continuation(details)
        role = self.role_of(details.invocation_metadata)
        if role is None:
            return self._refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                "this service accepts calls from the project's services only: send the "
                "caller's service token as 'authorization: Bearer TOKEN'",
                NO_SERVICE_TOKEN,
            )
        if role not in self._allowed.get(method, frozenset()):
            log.warning("service_call_refused role=%s method=%s", role, method)
            return self._refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the {role} service may not call {method}",
                ROLE_NOT_ALLOWED,
            )
        return await continuation(details)

    def _refusal(
        self, code: grpc.StatusCode, message: str, reason: str
    ) -> grpc.RpcMethodHandler:
        self._on_refused(code.name)
        return refusal(status_with_details(code, message, reason=reason))


class _BearerToken(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds the service's token to every unary call of a channel."""

    def __init__(self, token: str) -> None:
        self._header = (AUTHORIZATION, f"Bearer {token}")

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._header)
        with_token = grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials,
            details.wait_for_ready,
        )  # fmt: skip
        return await continuation(with_token, request)


def client_interceptors(tokens: str) -> list[grpc.aio.ClientInterceptor]:
    """The interceptors of a channel whose calls carry the first of `tokens` (comma-separated,
    so one secret can hold the new and the old token of a rotation; none when empty)."""
    first = parse_tokens(tokens)[:1]
    return [_BearerToken(first[0])] if first else []
