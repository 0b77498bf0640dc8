"""Reports: an org's usage per day and project with the dollars owed, charged and pending
(GetUsage, ``GET /v2/usage`` through the gateway, and ``admin usage``), and its list of charges
(``admin charges``).

Tokens and costs are integers: a cost is exact in nano-dollars (:mod:`metering.pricing`), so the
days and projects of a report add up to its period without rounding. Totals are all time
(billing is computed from them); days, projects and buckets follow the report's filters.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from metering.errors import LedgerError, NotFound
from metering.models import CHARGE_PENDING, Charge, Org, Project, UsageDaily, UsageTotal
from metering.pricing import cost_nanodollars, owed_dollars
from metering.standing import BillingStatus, billing_status, charged_dollars, has_payment_method

# Days are zero-filled between two given dates; a longer range is refused rather than built.
MAX_RANGE_DAYS = 366
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class _Costed:
    """Tokens priced exactly: what every row of a report has."""

    tokens: int

    @property
    def cost_nanodollars(self) -> int:
        return cost_nanodollars(self.tokens)


@dataclass(frozen=True)
class Bucket(_Costed):
    day: str
    project_id: str
    tokens: int
    requests: int


@dataclass(frozen=True)
class ProjectUsage(_Costed):
    project_id: str  # "": usage not attributed to a project
    name: str
    tokens: int
    requests: int


@dataclass(frozen=True)
class DateRange:
    """Inclusive UTC days; None: unbounded on that side."""

    start: dt.date | None = None
    end: dt.date | None = None

    def days(self) -> list[str] | None:
        """Every day of the range, when both ends are set."""
        if self.start is None or self.end is None:
            return None
        count = (self.end - self.start).days + 1
        return [(self.start + dt.timedelta(days=i)).isoformat() for i in range(count)]


@dataclass
class UsageReport:
    org_id: str
    org_name: str
    total_tokens: int
    total_requests: int
    owed_dollars: int
    charged_dollars: int
    pending_dollars: int
    billing: BillingStatus
    has_payment_method: bool = False
    buckets: list[Bucket] = field(default_factory=list)
    days: list[Bucket] = field(default_factory=list)  # project_id "": over the selection
    projects: list[ProjectUsage] = field(default_factory=list)
    period: DateRange = field(default_factory=DateRange)

    @property
    def total_cost_nanodollars(self) -> int:
        return cost_nanodollars(self.total_tokens)


def parse_range(start: str = "", end: str = "") -> DateRange:
    """The inclusive range of two YYYY-MM-DD dates ("" for no bound); LedgerError naming the
    field when a date is malformed, the range is reversed or longer than MAX_RANGE_DAYS."""
    days = [_day(start, "start_date"), _day(end, "end_date")]
    first, last = days
    if first is not None and last is not None:
        if first > last:
            raise LedgerError(
                f"start_date {start} is after end_date {end}", field="start_date"
            )
        if (last - first).days + 1 > MAX_RANGE_DAYS:
            raise LedgerError(
                f"{start}..{end} spans more than {MAX_RANGE_DAYS} days; ask for a shorter range",
                field="start_date",
            )
    return DateRange(first, last)


def _day(value: str, name: str) -> dt.date | None:
    if not value:
        return None
    try:
        if not _DATE.fullmatch(value):
            raise ValueError(value)
        return dt.date.fromisoformat(value)
    except ValueError:
        raise LedgerError(
            f"{name} {value[:40]!r} is not a date: use YYYY-MM-DD (UTC)", field=name
        ) from None


def _buckets(
    session: Session, org_id: str, project_id: str, since: dt.datetime | None, period: DateRange
) -> list[Bucket]:
    query = (
        select(
            UsageDaily.day,
            UsageDaily.project_id,
            func.sum(UsageDaily.tokens),
            func.sum(UsageDaily.requests),
        )
        .where(UsageDaily.org_id == org_id)
        .group_by(col(UsageDaily.day), col(UsageDaily.project_id))
        .order_by(col(UsageDaily.day), col(UsageDaily.project_id))
    )
    if project_id:
        query = query.where(UsageDaily.project_id == project_id)
    if since is not None:
        query = query.where(UsageDaily.day >= since.astimezone(dt.UTC).date().isoformat())
    if period.start is not None:
        query = query.where(UsageDaily.day >= period.start.isoformat())
    if period.end is not None:
        query = query.where(UsageDaily.day <= period.end.isoformat())
    return [
        Bucket(day=d, project_id=p, tokens=int(t), requests=int(r))
        for d, p, t, r in session.exec(query).all()
    ]


def _per_day(buckets: list[Bucket], every_day: list[str] | None) -> list[Bucket]:
    sums: dict[str, list[int]] = {day: [0, 0] for day in every_day or []}
    for b in buckets:
        day = sums.setdefault(b.day, [0, 0])
        day[0] += b.tokens
        day[1] += b.requests
    return [Bucket(day, "", tokens, requests) for day, (tokens, requests) in sorted(sums.items())]


def _per_project(buckets: list[Bucket], projects: list[Project]) -> list[ProjectUsage]:
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for b in buckets:
        sums[b.project_id][0] += b.tokens
        sums[b.project_id][1] += b.requests
    rows = [ProjectUsage(p.id, p.name, *sums.pop(p.id, [0, 0])) for p in projects]
    if "" in sums:
        rows.append(ProjectUsage("", "", *sums.pop("")))
    return rows


def usage_report(
    engine: Engine,
    org_id: str,
    max_unpaid_usd: int,
    project_id: str = "",
    since: dt.datetime | None = None,
    period: DateRange | None = None,
) -> UsageReport:
    """The org's report; NotFound for no such org, LedgerError for a project not of the org."""
    period = period or DateRange()
    with Session(engine) as session:
        org = session.get(Org, org_id)
        if org is None:
            raise NotFound(f"org {org_id!r} does not exist")
        query = select(Project).where(Project.org_id == org_id)
        if project_id:
            query = query.where(Project.id == project_id)
        projects = list(session.exec(query.order_by(col(Project.created_at))).all())
        if project_id and not projects:
            raise LedgerError(
                f"project {project_id[:100]!r} is not a project of org {org_id}",
                field="project_id",
            )
        total = session.get(UsageTotal, org_id)
        tokens = total.tokens if total else 0
        buckets = _buckets(session, org_id, project_id, since, period)
        return UsageReport(
            org_id=org.id,
            org_name=org.name,
            total_tokens=tokens,
            total_requests=total.requests if total else 0,
            owed_dollars=owed_dollars(tokens),
            charged_dollars=charged_dollars(session, org_id),
            pending_dollars=charged_dollars(session, org_id, CHARGE_PENDING),
            billing=billing_status(session, org, max_unpaid_usd),
            has_payment_method=has_payment_method(org),
            buckets=buckets,
            days=_per_day(buckets, period.days()),
            projects=_per_project(buckets, projects),
            period=period,
        )


def list_charges(engine: Engine, org_id: str) -> list[Charge]:
    with Session(engine) as session:
        if session.get(Org, org_id) is None:
            raise NotFound(f"org {org_id!r} does not exist (list orgs with `admin orgs`)")
        query = select(Charge).where(Charge.org_id == org_id).order_by(col(Charge.seq))
        return list(session.exec(query).all())
