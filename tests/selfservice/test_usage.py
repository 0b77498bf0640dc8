"""`GET /v2/usage` against the real ledger: per day and per project what the ledger holds,
the running total with what was charged and what is pending, for two orgs with two projects
each, and never one org's numbers under the other's key; bad queries get OpenAI-style 400s."""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from typing import Any

import pytest
from sqlmodel import Session, select

from metering.billing import BillingConfig, BillingWorker
from metering.models import UsageDaily
from tests.selfservice.harness import STRIPE_KEY, Account, Stack

TODAY = dt.datetime.now(dt.UTC).date()


def at(days_ago: int) -> dt.datetime:
    day = TODAY - dt.timedelta(days=days_ago)
    return dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.UTC)


def ledger_daily(stack: Stack, org_id: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(day, project) -> (tokens, requests), read from the ledger's table itself."""
    sums: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    with Session(stack.ledger.engine) as session:
        for row in session.exec(select(UsageDaily).where(UsageDaily.org_id == org_id)).all():
            sums[(row.day, row.project_id)][0] += row.tokens
            sums[(row.day, row.project_id)][1] += row.requests
    return {key: (t, r) for key, (t, r) in sums.items()}


def bill(stack: Stack) -> None:
    # From the first dollar: these tests follow a $4 charge, not the charge policy.
    config = BillingConfig(
        stripe_api_key=STRIPE_KEY,
        stripe_api_base=stack.stripe.base_url,
        charge_threshold_dollars=1,
    )
    BillingWorker(stack.ledger.engine, config).run_once()


@pytest.fixture(scope="module")
def orgs(stack: Stack) -> tuple[Account, Account]:
    """Two orgs, two projects each, usage on several days; one charge paid, one pending."""
    a = stack.account("alpha", customer="cus_alpha_usage")
    b = stack.account("beta", customer="cus_beta_usage")
    for days_ago, tokens in ((0, 1_200_000), (2, 900_000), (45, 333)):
        stack.use(a.org_id, a.projects[0], tokens, at(days_ago))
    stack.use(a.org_id, a.projects[1], 2_500_000, at(1))
    stack.use(a.org_id, a.projects[1], 7, at(1))
    stack.use(a.org_id, "", 41, at(0))  # usage sent without a project
    stack.use(b.org_id, b.projects[0], 3_000_000, at(3))
    stack.use(b.org_id, b.projects[1], 10, at(0))
    stack.stripe.processing_customers.add("cus_beta_usage")  # alpha's charge is paid, beta's not
    bill(stack)
    return a, b


def get_usage(stack: Stack, key: str, **params: str) -> dict[str, Any]:
    reply = stack.call("GET", "/v2/usage", key, params=params)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def expect_matches_ledger(stack: Stack, body: dict[str, Any], account: Account) -> None:
    daily = ledger_daily(stack, account.org_id)
    in_range = {k: v for k, v in daily.items() if body["start"] <= k[0] <= body["end"]}
    days = {d["day"]: (d["tokens"], d["requests"]) for d in body["days"] if d["tokens"]}
    per_day: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (day, _), (tokens, requests) in in_range.items():
        per_day[day][0] += tokens
        per_day[day][1] += requests
    assert days == {day: (t, r) for day, (t, r) in per_day.items()}
    buckets = {(b["day"], b["project_id"] or ""): (b["tokens"], b["requests"])
               for b in body["buckets"]}  # fmt: skip
    assert buckets == in_range
    projects = {(p["project_id"] or ""): (p["tokens"], p["requests"]) for p in body["projects"]}
    want: dict[str, list[int]] = {p: [0, 0] for p in account.projects}
    for (_, project), (tokens, requests) in in_range.items():
        want.setdefault(project, [0, 0])
        want[project][0] += tokens
        want[project][1] += requests
    assert projects == {p: (t, r) for p, (t, r) in want.items()}
    for row in body["days"] + body["projects"] + body["buckets"]:
        assert row["cost_nanodollars"] == 940 * row["tokens"]
    assert body["period"]["tokens"] == sum(t for t, _ in in_range.values())
    report = stack.ledger.usage(account.org_id)
    total = body["total"]
    assert (total["tokens"], total["requests"]) == (report.total_tokens, report.total_requests)
    assert total["tokens"] == sum(t for t, _ in daily.values())
    assert total["owed_dollars"] == total["tokens"] * 94 // 100_000_000
    assert (total["charged_dollars"], total["pending_dollars"]) == (
        report.charged_dollars, report.pending_dollars,
    )  # fmt: skip


def test_usage_equals_the_ledger_for_each_org(stack: Stack, orgs: tuple[Account, Account]) -> None:
    a, b = orgs
    alpha = get_usage(stack, a.key)
    assert alpha["org_id"] == a.org_id and alpha["object"] == "usage"
    assert (alpha["start"], alpha["end"]) == (
        (TODAY - dt.timedelta(days=29)).isoformat(), TODAY.isoformat(),
    )  # fmt: skip
    assert len(alpha["days"]) == 30 and alpha["days"][-1]["day"] == TODAY.isoformat()
    expect_matches_ledger(stack, alpha, a)
    assert alpha["total"]["charged_dollars"] == 4 and alpha["total"]["pending_dollars"] == 0
    assert alpha["projects"][-1] == {"project_id": None, "name": "", "tokens": 41,
                                     "requests": 1, "cost_nanodollars": 38_540}  # fmt: skip
    assert alpha["billing"] == {"state": "ok", "ok": True, "has_payment_method": True,
                                "message": ""}  # fmt: skip

    beta = get_usage(stack, b.key)
    expect_matches_ledger(stack, beta, b)
    assert beta["total"]["charged_dollars"] == 0 and beta["total"]["pending_dollars"] == 2
    # The whole history, and one project alone.
    wide = get_usage(stack, a.key, start=at(60).date().isoformat(), end=TODAY.isoformat())
    expect_matches_ledger(stack, wide, a)
    assert len(wide["days"]) == 61 and wide["period"]["tokens"] == wide["total"]["tokens"]
    only = get_usage(stack, a.key, project_id=a.projects[1])
    assert [p["project_id"] for p in only["projects"]] == [a.projects[1]]
    assert only["period"]["tokens"] == 2_500_007 and only["project_id"] == a.projects[1]


def test_a_key_never_sees_another_orgs_numbers(
    stack: Stack, orgs: tuple[Account, Account]
) -> None:
    a, b = orgs
    beta_text = json.dumps(get_usage(stack, b.key))
    for foreign in (a.org_id, *a.projects, "alpha"):
        assert foreign not in beta_text
    theirs = stack.call("GET", "/v2/usage", b.key, params={"project_id": a.projects[0]})
    unknown = stack.call("GET", "/v2/usage", b.key, params={"project_id": "proj_nope"})
    for reply in (theirs, unknown):
        assert reply.status_code == 400
        assert reply.json()["error"]["param"] == "project_id"
        assert a.org_id not in reply.text
    # An org id in the query is not a parameter: the key decides the org.
    assert get_usage(stack, b.key, org_id=a.org_id)["org_id"] == b.org_id


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"start": "yesterday"}, "start"),
        ({"end": "2026-02-30"}, "end"),
        ({"start": "2026-03-02", "end": "2026-03-01"}, "start"),
        ({"start": "2024-01-01", "end": "2026-01-01"}, "start"),
        ({"start": "20260301", "end": "2026-03-02"}, "start"),
    ],
)
def test_bad_queries_are_400_naming_the_parameter(
    stack: Stack, orgs: tuple[Account, Account], params: dict[str, str], param: str
) -> None:
    reply = stack.call("GET", "/v2/usage", orgs[0].key, params=params)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_usage_needs_a_key_but_not_a_payment_method(stack: Stack) -> None:
    assert stack.call("GET", "/v2/usage", None).status_code == 401
    user = stack.account("unpaid")
    body = get_usage(stack, user.key)
    assert body["billing"]["ok"] is False and body["billing"]["state"] == "no_payment_method"
    assert "POST /v2/billing/setup" in body["billing"]["message"]


def test_an_end_date_in_year_one_is_answered_not_a_500(
    stack: Stack, orgs: tuple[Account, Account]
) -> None:
    """The default start, 29 days before the end, does not exist before 0001-01-01."""
    body = get_usage(stack, orgs[0].key, end="0001-01-02")
    assert [day["day"] for day in body["days"]] == ["0001-01-01", "0001-01-02"]
