"""``GET /v2/usage``: the caller's own org's usage per day and per project, its running
total, what was charged and what is pending, from metering's GetUsage.

The org is always the API key's: no parameter names another org, and a project of another
org is answered like an unknown one. Dates are UTC days, both inclusive; without them the
report covers the 30 days up to today. Money is integers: costs in nano-dollars (exact: 940
per token at $0.94 per 1M tokens, so days and projects add up to the period), and whole
dollars for what is owed, charged and pending (billing charges whole dollars of the cumulative
total, never a sum of per-day costs).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import FastAPI, Query, Request
from pydantic import BaseModel, Field

from gateway.account_calls import account_caller, call_metering, settings_of
from gateway.api_docs import SECURITY
from gateway.billing import how_to_fix
from gateway.openai_schema import ErrorSchema
from intent_embed.v1 import metering_pb2

USAGE_PATH = "/v2/usage"
DEFAULT_DAYS = 30


class Amount(BaseModel):
    tokens: int = Field(description="billed tokens")
    requests: int
    cost_nanodollars: int = Field(description="exact cost in 10^-9 USD: tokens * 940")


class DayAmount(Amount):
    day: str = Field(description="UTC date, YYYY-MM-DD")


class ProjectAmount(Amount):
    project_id: str | None = Field(description="null: usage sent without a project_id")
    name: str


class Bucket(DayAmount):
    project_id: str | None


class Total(Amount):
    owed_dollars: int = Field(description="whole dollars owed for all tokens so far (floor)")
    charged_dollars: int = Field(description="dollars of charges Stripe confirmed")
    pending_dollars: int = Field(description="dollars of charges Stripe has not confirmed yet")


class Billing(BaseModel):
    state: str = Field(description="ok, no_payment_method or past_due")
    ok: bool = Field(description="whether embedding requests are accepted now")
    has_payment_method: bool
    message: str = Field(
        description="what is wrong and how to fix it (empty while billing is in good standing)"
    )


class UsageResponse(BaseModel):
    object: Literal["usage"] = "usage"
    org_id: str
    org_name: str
    start: str
    end: str
    project_id: str | None
    days: list[DayAmount] = Field(description="every day from start to end, zeros included")
    projects: list[ProjectAmount] = Field(
        description="every project of the org (or the one asked for) over the period; usage "
        "without a project last"
    )
    buckets: list[Bucket] = Field(description="per day and project, days with usage only")
    period: Amount = Field(description="the sum of `days`")
    total: Total = Field(description="the running total: all usage and charges so far")
    billing: Billing


def _amount(
    source: metering_pb2.DayUsage | metering_pb2.ProjectUsage | metering_pb2.UsageBucket,
) -> dict[str, int]:
    return {
        "tokens": source.tokens,
        "requests": source.requests,
        "cost_nanodollars": source.cost_nanodollars,
    }


def _response(
    reply: metering_pb2.GetUsageResponse, start: dt.date, end: dt.date, project_id: str | None
) -> UsageResponse:
    days = [DayAmount(day=d.day, **_amount(d)) for d in reply.days]
    return UsageResponse(
        org_id=reply.org_id,
        org_name=reply.org_name,
        start=start.isoformat(),
        end=end.isoformat(),
        project_id=project_id,
        days=days,
        projects=[
            ProjectAmount(project_id=p.project_id or None, name=p.name, **_amount(p))
            for p in reply.projects
        ],
        buckets=[
            Bucket(day=b.day, project_id=b.project_id or None, **_amount(b)) for b in reply.buckets
        ],
        period=Amount(
            tokens=sum(d.tokens for d in days),
            requests=sum(d.requests for d in days),
            cost_nanodollars=sum(d.cost_nanodollars for d in days),
        ),
        total=Total(
            tokens=reply.total_tokens,
            requests=reply.total_requests,
            cost_nanodollars=reply.total_cost_nanodollars,
            owed_dollars=reply.owed_dollars,
            charged_dollars=reply.charged_dollars,
            pending_dollars=reply.pending_dollars,
        ),
        billing=Billing(
            state=reply.billing_state,
            ok=reply.billing_ok,
            has_payment_method=reply.has_payment_method,
            message="",
        ),
    )


Start = Annotated[
    dt.date | None, Query(description="first UTC day, YYYY-MM-DD (default: 29 days before end)")
]
End = Annotated[dt.date | None, Query(description="last UTC day, YYYY-MM-DD (default: today)")]
ProjectId = Annotated[str | None, Query(description="only this project of your organization")]


async def usage(
    request: Request, start: Start = None, end: End = None, project_id: ProjectId = None
) -> UsageResponse:
    caller = await account_caller(request)
    settings = settings_of(request)
    end = end or dt.datetime.now(dt.UTC).date()
    # Clamped: an end date in year 1 has no 29 days before it (found by schemathesis).
    start = start or dt.date.fromordinal(max(1, end.toordinal() - (DEFAULT_DAYS - 1)))
    reply: metering_pb2.GetUsageResponse = await call_metering(
        request,
        "GetUsage",
        metering_pb2.GetUsageRequest(
            org_id=caller.org_id,
            project_id=project_id or "",
            start_date=start.isoformat(),
            end_date=end.isoformat(),
        ),
        settings.metering_timeout_s,
    )
    report = _response(reply, start, end, project_id or None)
    if reply.billing_message:  # refused, or past due while still under the unpaid limit
        report.billing.message = f"{reply.billing_message} {how_to_fix(settings.billing_page_url)}"
    return report


def add_usage_route(app: FastAPI) -> None:
    app.add_api_route(
        USAGE_PATH,
        usage,
        methods=["GET"],
        response_model=UsageResponse,
        summary="Usage and cost of your organization",
        description="Tokens, requests and cost per day and per project, the running total, "
        "and what was charged and is pending. Open to organizations refused with 402.",
        responses={
            400: {"model": ErrorSchema, "description": "bad dates, or not your project"},
            401: {"model": ErrorSchema, "description": "missing or bad API key"},
            503: {"model": ErrorSchema, "description": "metering is unavailable"},
        },
        openapi_extra={"security": SECURITY},
        tags=["usage"],
    )
