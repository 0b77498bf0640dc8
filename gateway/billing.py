"""Self-service billing at the public edge: the 402 that tells a user how to fix billing,
``POST /v2/billing/setup`` (the Stripe page where the caller's org adds or manages its payment
method) and ``POST /stripe/webhook`` (Stripe's signed events, handed to metering as received).

The gateway verifies nothing of a webhook itself: metering checks the signature with the
Stripe SDK and applies each event once (:mod:`metering.webhooks`); a bad signature answers 400
and changes nothing. After an event that changed an org, this replica forgets the org's cached
authentication, so the org's next request sees its new standing at once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
from fastapi import FastAPI, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from gateway.account_calls import account_caller, authenticator, call_metering, settings_of
from gateway.api_docs import SECURITY
from gateway.auth import Caller
from gateway.errors import BILLING_SETUP_REQUIRED, SETUP_ROUTE, ApiError
from gateway.openai_schema import ErrorSchema
from intent_embed.v1 import metering_pb2

log = logging.getLogger(__name__)

SETUP_PATH = "/v2/billing/setup"
WEBHOOK_PATH = "/stripe/webhook"
DASHBOARD_PATH = "/dashboard"
# A host name or address with an optional port: nothing that could change the URL's meaning.
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def how_to_fix(billing_page_url: str) -> str:
    """What a user does about billing, in the words of a 402 or a usage report."""
    page = billing_page_url or f"{DASHBOARD_PATH} on this API"
    return (
        f"Add or update your payment method: {SETUP_ROUTE} with your API key answers with the "
        f"URL of a page where you do it (or use the billing page: {page})."
    )


def payment_required(billing_page_url: str) -> Callable[[Caller], ApiError]:
    """The 402 builder the authenticator uses: metering's word on the org, then the fix."""
    fix = how_to_fix(billing_page_url)

    def build(caller: Caller) -> ApiError:
        situation = caller.billing_message or "Your organization cannot be billed right now."
        return ApiError(
            402, f"{situation} {fix}", type_="insufficient_quota", code=BILLING_SETUP_REQUIRED
        )

    return build


class BillingSetupResponse(BaseModel):
    """Where to send the user: open `url` in a browser."""

    object: Literal["billing.setup"] = "billing.setup"
    kind: Literal["checkout", "portal"] = Field(
        description="checkout: a Stripe page that adds a payment method; portal: the Stripe "
        "Billing Portal, where the org's payment method is changed or removed"
    )
    url: str = Field(description="the Stripe page; valid for a limited time")


class WebhookAck(BaseModel):
    received: Literal[True] = True
    event_id: str
    type: str
    duplicate: bool = Field(description="the event was applied before: nothing changed now")
    outcome: str


def public_base_url(request: Request, behind_proxy: bool) -> str:
    """This API's URL as its users reach it. Behind a TLS-terminating proxy the request itself
    says http:// and maybe an inner host; the proxy's X-Forwarded-Proto and -Host say what the
    user typed, and are trusted only when the operator says such a proxy is in front (a client
    reaching the gateway directly could set them)."""
    base = urlsplit(str(request.base_url))
    scheme, host = base.scheme, base.netloc
    if behind_proxy:
        # A chain of proxies appends: the first value is the one facing the user.
        proto = _first(request.headers.get("x-forwarded-proto")).lower()
        forwarded_host = _first(request.headers.get("x-forwarded-host"))
        if proto in ("http", "https"):
            scheme = proto
        if forwarded_host and _HOST.fullmatch(forwarded_host):
            host = forwarded_host
    return f"{scheme}://{host}{base.path.rstrip('/')}"


def _first(header: str | None) -> str:
    return (header or "").split(",", 1)[0].strip()


async def billing_setup(request: Request) -> BillingSetupResponse:
    caller = await account_caller(request)
    settings = settings_of(request)
    return_url = settings.billing_page_url or (
        public_base_url(request, settings.behind_proxy) + DASHBOARD_PATH
    )
    reply = await call_metering(
        request,
        "CreateBillingSetup",
        metering_pb2.CreateBillingSetupRequest(org_id=caller.org_id, return_url=return_url),
        settings.billing_timeout_s,
    )
    log.info("billing_setup org=%s kind=%s", caller.org_id, reply.kind)
    return BillingSetupResponse(kind=reply.kind, url=reply.url)


async def stripe_webhook(request: Request) -> Response:
    payload = await request.app.state.embeddings.read_body(request)
    settings = settings_of(request)
    reply = await call_metering(
        request,
        "ApplyStripeEvent",
        metering_pb2.ApplyStripeEventRequest(
            payload=payload, signature=request.headers.get("stripe-signature", "")
        ),
        settings.billing_timeout_s,
    )
    if reply.org_id and not reply.duplicate:
        authenticator(request).forget_org(reply.org_id)
    ack = WebhookAck(
        event_id=reply.event_id, type=reply.type, duplicate=reply.duplicate, outcome=reply.outcome
    )
    return Response(orjson.dumps(ack.model_dump()), media_type="application/json")


def _errors(*statuses: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorSchema, "description": what} for status, what in statuses}


def add_billing_routes(app: FastAPI) -> None:
    app.add_api_route(
        SETUP_PATH,
        billing_setup,
        methods=["POST"],
        response_model=BillingSetupResponse,
        summary="Add or manage the payment method of your organization",
        description="Answers with the URL of a Stripe page: Checkout (setup mode) while the "
        "organization has no payment method, else the Billing Portal. Billing turns on when "
        "Stripe reports the setup complete. Open to organizations refused with 402.",
        responses=_errors(
            (401, "missing or bad API key"),
            (503, "billing is not configured on this deployment, or Stripe is unavailable"),
        ),
        openapi_extra={"security": SECURITY},
        tags=["billing"],
    )
    app.add_api_route(
        WEBHOOK_PATH,
        stripe_webhook,
        methods=["POST"],
        response_model=WebhookAck,
        summary="Stripe webhook endpoint",
        description="For Stripe only: the body and its Stripe-Signature header are verified "
        "with the endpoint's signing secret, and each event is applied once.",
        responses=_errors(
            (400, "the signature does not verify, or the body is not a Stripe event"),
            (503, "webhooks are not configured, or Stripe or the ledger are unavailable"),
        ),
        tags=["billing"],
    )
