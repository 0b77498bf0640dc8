"""Who may call metering: the roles of the project's services, the methods each may call,
and the interceptor central metering and the sidecar build from their token settings.

Central metering: ``RecordUsage`` from embed services and sidecars; the gateway's calls
(``Authenticate``, ``GetUsage``, ``CreateBillingSetup``, ``ApplyStripeEvent``) from the gateway
only. The sidecar: ``RecordUsage`` from the embed service of its pod. A process started with
no tokens at all refuses to start unless ``METERING_INSECURE_NO_AUTH`` says it was meant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from intent_embed.service_auth import ServiceAuthInterceptor, parse_tokens

GATEWAY = "gateway"
EMBED = "embed"
SIDECAR = "sidecar"

_SERVICE = "/intent_embed.v1.MeteringService/"
CENTRAL_METHODS: Mapping[str, frozenset[str]] = {
    _SERVICE + "RecordUsage": frozenset({EMBED, SIDECAR}),
    _SERVICE + "Authenticate": frozenset({GATEWAY}),
    _SERVICE + "GetUsage": frozenset({GATEWAY}),
    _SERVICE + "CreateBillingSetup": frozenset({GATEWAY}),
    _SERVICE + "ApplyStripeEvent": frozenset({GATEWAY}),
}
SIDECAR_METHODS: Mapping[str, frozenset[str]] = {_SERVICE + "RecordUsage": frozenset({EMBED})}

NO_TOKENS = (
    "no service tokens are set: set {names} (or METERING_INSECURE_NO_AUTH=true where every "
    "caller is trusted), so that only the project's services can record or read usage"
)


class NoTokens(Exception):
    """Neither tokens nor an explicit insecure mode: the process must not serve."""


def interceptor(
    tokens: Mapping[str, str],
    methods: Mapping[str, frozenset[str]],
    *,
    insecure: bool,
    on_refused: Callable[[str], None] = lambda code: None,
) -> ServiceAuthInterceptor | None:
    """The interceptor for these token settings (role -> comma-separated tokens), None when
    `insecure` is set and no token is; raises NoTokens when neither is."""
    parsed = {role: parse_tokens(value) for role, value in tokens.items()}
    if not any(parsed.values()):
        if insecure:
            return None
        names = ", ".join(f"METERING_{role.upper()}_TOKENS" for role in tokens)
        raise NoTokens(NO_TOKENS.format(names=names))
    return ServiceAuthInterceptor(parsed, methods, on_refused)
