"""Reports: an org's usage per project and day with the dollars owed, charged and pending
(GetUsage and `admin usage`), and its list of charges (`admin charges`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from metering.errors import NotFound
from metering.models import CHARGE_PENDING, Charge, Org, Project, UsageDaily, UsageTotal
from metering.pricing import owed_dollars
from metering.standing import BillingStatus, billing_status, charged_dollars


@dataclass(frozen=True)
class Bucket:
    day: str
    project_id: str
    tokens: int
    requests: int


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
    buckets: list[Bucket] = field(default_factory=list)


def _buckets(
    session: Session, org_id: str, project_id: str, since: dt.datetime | None
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
    return [
        Bucket(day=d, project_id=p, tokens=int(t), requests=int(r))
        for d, p, t, r in session.exec(query).all()
    ]


def usage_report(
    engine: Engine,
    org_id: str,
    max_unpaid_usd: int,
    project_id: str = "",
    since: dt.datetime | None = None,
) -> UsageReport:
    """Totals are all-time (billing is computed from them); buckets follow the filters."""
    with Session(engine) as session:
        org = session.get(Org, org_id)
        if org is None:
            raise NotFound(f"org {org_id!r} does not exist")
        if project_id:
            project = session.get(Project, project_id)
            if project is None or project.org_id != org_id:
                raise NotFound(f"project {project_id!r} is not a project of org {org_id}")
        total = session.get(UsageTotal, org_id)
        tokens = total.tokens if total else 0
        return UsageReport(
            org_id=org.id,
            org_name=org.name,
            total_tokens=tokens,
            total_requests=total.requests if total else 0,
            owed_dollars=owed_dollars(tokens),
            charged_dollars=charged_dollars(session, org_id),
            pending_dollars=charged_dollars(session, org_id, CHARGE_PENDING),
            billing=billing_status(session, org, max_unpaid_usd),
            buckets=_buckets(session, org_id, project_id, since),
        )


def list_charges(engine: Engine, org_id: str) -> list[Charge]:
    with Session(engine) as session:
        if session.get(Org, org_id) is None:
            raise NotFound(f"org {org_id!r} does not exist (list orgs with `admin orgs`)")
        query = select(Charge).where(Charge.org_id == org_id).order_by(col(Charge.seq))
        return list(session.exec(query).all())
