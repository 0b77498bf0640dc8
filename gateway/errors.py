"""OpenAI-shaped API errors and the one place where upstream gRPC statuses become HTTP ones.

Every error the gateway answers has OpenAI's body `{"error": {"message", "type", "param",
"code"}}`, so the official clients raise the right exception class and show the message.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
import orjson

from intent_embed.rich_status import (
    BAD_SIGNATURE,
    BILLING_NOT_ACTIVE,
    STRIPE_BUSY,
    STRIPE_NOT_CONFIGURED,
    STRIPE_UNAVAILABLE,
    details_of,
)

# The upstream requests' fields (as their rich status names them) and the REST parameter a
# client fixes for each; OpenAI's `param`.
_PARAMS = {
    "inputs": "input",
    "token_inputs": "input",
    "dimensions": "dimensions",
    "start_date": "start",
    "end_date": "end",
    "project_id": "project_id",
}
# Where a user adds or updates its org's payment method, and the `code` of every 402 that
# self-service fixes: a client can branch on it and send the user there.
SETUP_ROUTE = "POST /v2/billing/setup"
BILLING_SETUP_REQUIRED = "billing_setup_required"


class ApiError(Exception):
    """An answer that is not a success: HTTP status plus OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def with_headers(self, headers: Mapping[str, str] | None) -> ApiError:
        self.headers.update(headers or {})
        return self

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None, code: str | None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def _param_of(field: str) -> str | None:
    """`inputs[3]` -> `input`: the REST parameter of an embed request field."""
    return _PARAMS.get(field.split("[", 1)[0].split(".", 1)[0])


def at_capacity(who: str, retry_after_s: int) -> ApiError:
    """429: `who` ("The gateway", "The embedding service") cannot take more work now."""
    return ApiError(
        429,
        f"{who} is at capacity; retry after the Retry-After delay.",
        type_="rate_limit_error",
        code="server_overloaded",
        headers={"Retry-After": str(retry_after_s)},
    )


def from_upstream(err: grpc.aio.AioRpcError, upstream: str, retry_after_s: int) -> ApiError:
    """Map an upstream gRPC failure to the HTTP answer a client can act on."""
    code = err.code()
    detail = err.details() or code.name
    rich = details_of(err)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        if rich.reason == BAD_SIGNATURE:
            return ApiError(400, detail, code="invalid_signature")
        return ApiError(400, detail, param=_param_of(rich.field), code="invalid_input")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return at_capacity("The embedding service", retry_after_s)
    if code == grpc.StatusCode.UNAVAILABLE and rich.reason == STRIPE_BUSY:
        # Refused before trying: Stripe is slow and enough billing calls already wait on it.
        return ApiError(
            503,
            "Billing is busy right now; retry after the Retry-After delay.",
            type_="service_unavailable",
            code="billing_busy",
            headers={"Retry-After": str(retry_after_s)},
        )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        who = "Stripe" if rich.reason == STRIPE_UNAVAILABLE else f"The {upstream} service"
        return ApiError(
            503,
            f"{who} is unavailable right now; retry shortly.",
            type_="service_unavailable",
            code="upstream_unavailable",
            headers={"Retry-After": str(retry_after_s)},
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return ApiError(403, detail, type_="permission_error", code="permission_denied")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        # Metering refused the usage: a billing problem is fixed by paying (402); anything
        # else (e.g. the org no longer exists) is a request that cannot succeed as sent (400).
        if rich.reason == BILLING_NOT_ACTIVE:
            return ApiError(
                402,
                f"{detail}. Add or update your payment method with {SETUP_ROUTE}.",
                type_="insufficient_quota",
                code=BILLING_SETUP_REQUIRED,
            )
        if rich.reason == STRIPE_NOT_CONFIGURED:
            return ApiError(
                503,
                "Self-service billing is not enabled on this deployment; ask its operator to "
                "set up your organization's payment method.",
                type_="service_unavailable",
                code="billing_not_configured",
            )
        return ApiError(400, detail, code="usage_rejected")
    if code == grpc.StatusCode.NOT_FOUND:
        return ApiError(404, detail, code="not_found")
    return ApiError(
        502,
        f"The {upstream} service failed ({code.name}); this is not a problem with your request.",
        type_="server_error",
        code="upstream_error",
    )
