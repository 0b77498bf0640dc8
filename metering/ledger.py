"""The ledger: idempotent usage recording, API-key authentication, usage reports and the admin
operations on orgs, projects and keys.

Synchronous (SQLAlchemy) by design: the gRPC server calls it from worker threads, the admin CLI
and the billing worker call it directly. Usage is recorded in groups (one transaction for many
RecordUsage calls, see :mod:`metering.group_commit`); an event id already stored is a duplicate,
enforced by the database's unique key (``ON CONFLICT DO NOTHING``), so concurrent writers and
replicas can never count an event twice.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, col, select

from intent_embed.usage_events import first_problem
from metering import apikeys
from metering.models import (
    CHARGE_PENDING,
    CHARGE_SUCCEEDED,
    STATE_NO_PAYMENT_METHOD,
    STATE_OK,
    STATE_PAST_DUE,
    ApiKey,
    Charge,
    Org,
    Project,
    UsageDaily,
    UsageEvent,
    UsageTotal,
    utcnow,
)
from metering.pricing import owed_dollars

log = logging.getLogger("metering.ledger")

DEMO_ORG_NAME = "demo"
DEMO_PROJECT_NAME = "default"
DEMO_CUSTOMER_ID = "cus_demo_local"


class LedgerError(Exception):
    """Base of the errors the ledger reports to callers (message says what to fix)."""


class InvalidUsage(LedgerError):
    """A malformed usage event (gRPC INVALID_ARGUMENT)."""


class UnknownOrg(LedgerError):
    """Usage for an org or project the ledger does not know (gRPC FAILED_PRECONDITION)."""


class NotFound(LedgerError):
    """An admin or query operation named an id that does not exist."""


class Unauthenticated(LedgerError):
    """Unknown, malformed or revoked API key."""


@dataclass(frozen=True)
class Event:
    event_id: str
    org_id: str
    project_id: str
    model: str
    tokens: int
    inputs: int
    at: dt.datetime


@dataclass(frozen=True)
class Recorded:
    recorded: int
    duplicates: int
    tokens: int = 0  # tokens newly recorded (duplicates excluded)


@dataclass(frozen=True)
class BillingStatus:
    ok: bool
    state: str
    message: str


@dataclass(frozen=True)
class AuthInfo:
    org_id: str
    org_name: str
    key_id: str
    project_ids: list[str]
    billing: BillingStatus


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

    def as_dict(self) -> dict[str, Any]:
        per_project: dict[str, dict[str, int]] = defaultdict(lambda: {"tokens": 0, "requests": 0})
        for b in self.buckets:
            per_project[b.project_id]["tokens"] += b.tokens
            per_project[b.project_id]["requests"] += b.requests
        return {
            "org_id": self.org_id,
            "org_name": self.org_name,
            "total_tokens": self.total_tokens,
            "total_requests": self.total_requests,
            "owed_dollars": self.owed_dollars,
            "charged_dollars": self.charged_dollars,
            "pending_dollars": self.pending_dollars,
            "billing_state": self.billing.state,
            "billing_ok": self.billing.ok,
            "billing_message": self.billing.message,
            "per_project": dict(per_project),
            "per_day": [
                {
                    "day": b.day,
                    "project_id": b.project_id,
                    "tokens": b.tokens,
                    "requests": b.requests,
                }
                for b in self.buckets
            ],
        }


# The running-total upserts, as plain SQL that SQLite and PostgreSQL both accept: cheaper per
# group commit than SQLAlchemy's dialect-specific insert constructs.
_ADD_TOTALS = text(
    "INSERT INTO usage_totals (org_id, tokens, requests, inputs) "
    "VALUES (:org_id, :tokens, :requests, :inputs) "
    "ON CONFLICT (org_id) DO UPDATE SET tokens = usage_totals.tokens + excluded.tokens, "
    "requests = usage_totals.requests + excluded.requests, "
    "inputs = usage_totals.inputs + excluded.inputs"
)
_ADD_DAILY = text(
    "INSERT INTO usage_daily (org_id, project_id, model, day, tokens, requests, inputs) "
    "VALUES (:org_id, :project_id, :model, :day, :tokens, :requests, :inputs) "
    "ON CONFLICT (org_id, project_id, model, day) DO UPDATE SET "
    "tokens = usage_daily.tokens + excluded.tokens, "
    "requests = usage_daily.requests + excluded.requests, "
    "inputs = usage_daily.inputs + excluded.inputs"
)


def validate_events(events: Sequence[Event]) -> None:
    """Raises InvalidUsage naming the first bad event (index) and how to fix it."""
    problem = first_problem(events)
    if problem is not None:
        raise InvalidUsage(problem.message)


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Ledger:
    """All ledger reads and writes, on one engine."""

    def __init__(self, engine: Engine, *, max_unpaid_usd: int = 50) -> None:
        self.engine = engine
        self.max_unpaid_usd = max_unpaid_usd
        self._dialect = engine.dialect.name
        # Existence caches for RecordUsage (see record_calls); bounded by the number of orgs
        # and projects, and only ever grown inside the single group-commit writer.
        self._known_orgs: set[str] = set()
        self._project_org: dict[str, str] = {}
        # Built once: constructing the statement per group costs more than running it.
        events = UsageEvent.__table__  # type: ignore[attr-defined]
        self._events_insert = (
            self._insert(events)
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(events.c.event_id)
        )

    # ---- usage -------------------------------------------------------------------------

    def _insert(self, table: Any) -> Any:
        if self._dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    def record_calls(self, calls: Sequence[Sequence[Event]]) -> list[Recorded | LedgerError]:
        """Records several RecordUsage calls in ONE transaction (group commit).

        Each call is atomic: a call naming an unknown org or project gets UnknownOrg and
        writes nothing, without failing the other calls of the group. Returns one result per
        call, in order; the caller may acknowledge only after this returns.
        """
        results: list[Recorded | LedgerError] = [Recorded(0, 0)] * len(calls)
        org_ids = {e.org_id for call in calls for e in call}
        project_ids = {e.project_id for call in calls for e in call if e.project_id}
        with self.engine.begin() as conn:
            # Orgs and projects are never deleted and a project never changes org, so what
            # was found once stays true: only ids not seen before cost a query.
            unseen_orgs = org_ids - self._known_orgs
            if unseen_orgs:
                self._known_orgs |= self._existing(conn, col(Org.id), unseen_orgs)
            known_orgs = self._known_orgs
            for chunk in _chunks(sorted(project_ids - self._project_org.keys()), 500):
                rows = conn.execute(
                    select(Project.id, Project.org_id).where(col(Project.id).in_(chunk))
                )
                self._project_org.update({pid: oid for pid, oid in rows})
            project_org = self._project_org
            accepted: list[int] = []
            for i, call in enumerate(calls):
                error = self._unknown(call, known_orgs, project_org)
                if error is not None:
                    results[i] = error
                else:
                    accepted.append(i)
            # The same event id twice in one group (a client retry racing its first try):
            # the first is inserted, the rest are duplicates.
            owner: dict[str, int] = {}
            rows_to_insert: list[dict[str, Any]] = []
            now = utcnow()
            for i in accepted:
                for e in calls[i]:
                    if e.event_id in owner:
                        continue
                    owner[e.event_id] = i
                    rows_to_insert.append(
                        {
                            "event_id": e.event_id,
                            "org_id": e.org_id,
                            "project_id": e.project_id,
                            "model": e.model,
                            "tokens": e.tokens,
                            "inputs": e.inputs,
                            "at": e.at,
                            "recorded_at": now,
                        }
                    )
            # Sorted: two replicas inserting overlapping ids wait on each other in the same
            # order instead of deadlocking (PostgreSQL).
            rows_to_insert.sort(key=lambda row: row["event_id"])
            inserted = self._insert_events(conn, rows_to_insert)
            per_call_recorded: dict[int, int] = defaultdict(int)
            per_call_tokens: dict[int, int] = defaultdict(int)
            totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
            daily: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
            for i in accepted:
                for e in calls[i]:
                    if owner.get(e.event_id) != i or e.event_id not in inserted:
                        continue
                    # Only the first occurrence in the group counts; later copies are dups.
                    inserted.discard(e.event_id)
                    per_call_recorded[i] += 1
                    per_call_tokens[i] += e.tokens
                    t = totals[e.org_id]
                    t[0] += e.tokens
                    t[1] += 1
                    t[2] += e.inputs
                    d = daily[
                        (
                            e.org_id,
                            e.project_id,
                            e.model,
                            e.at.astimezone(dt.UTC).date().isoformat(),
                        )
                    ]
                    d[0] += e.tokens
                    d[1] += 1
                    d[2] += e.inputs
            self._add_totals(conn, totals)
            self._add_daily(conn, daily)
        for i in accepted:
            n = per_call_recorded[i]
            results[i] = Recorded(n, len(calls[i]) - n, per_call_tokens[i])
        return results

    @staticmethod
    def _existing(conn: Connection, column: Any, ids: set[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(sorted(ids), 500):
            found.update(conn.execute(select(column).where(column.in_(chunk))).scalars())
        return found

    @staticmethod
    def _unknown(
        call: Sequence[Event], known_orgs: set[str], project_org: dict[str, str]
    ) -> UnknownOrg | None:
        for i, e in enumerate(call):
            if e.org_id not in known_orgs:
                return UnknownOrg(
                    f"events[{i}].org_id={e.org_id!r} is not a known org: create it with "
                    "`python -m metering admin create-org` or fix the caller's org id"
                )
            if e.project_id and project_org.get(e.project_id) != e.org_id:
                return UnknownOrg(
                    f"events[{i}].project_id={e.project_id!r} is not a project of org "
                    f"{e.org_id!r}: send an empty project_id or one of the org's projects"
                )
        return None

    def _insert_events(self, conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
        if not rows:
            return set()
        inserted: set[str] = set()
        for chunk in _chunks(rows, 1000):
            result = conn.execute(self._events_insert, list(chunk))
            inserted.update(result.scalars())
        return inserted

    def _add_totals(self, conn: Connection, totals: dict[str, list[int]]) -> None:
        if not totals:
            return
        # Sorted: concurrent writers (replicas on PostgreSQL) lock rows in the same order.
        conn.execute(
            _ADD_TOTALS,
            [
                {"org_id": org, "tokens": t[0], "requests": t[1], "inputs": t[2]}
                for org, t in sorted(totals.items())
            ],
        )

    def _add_daily(
        self, conn: Connection, daily: dict[tuple[str, str, str, str], list[int]]
    ) -> None:
        if not daily:
            return
        conn.execute(
            _ADD_DAILY,
            [
                {
                    "org_id": org,
                    "project_id": project,
                    "model": model,
                    "day": day,
                    "tokens": d[0],
                    "requests": d[1],
                    "inputs": d[2],
                }
                for (org, project, model, day), d in sorted(daily.items())
            ],
        )

    # ---- reads ---------------------------------------------------------------------------

    def billing_status(self, session: Session, org: Org) -> BillingStatus:
        if not org.stripe_customer_id:
            return BillingStatus(
                False,
                STATE_NO_PAYMENT_METHOD,
                f"org {org.id} has no payment method: attach a Stripe customer with "
                f"`python -m metering admin attach-stripe --org {org.id} --customer cus_...`",
            )
        tokens = self._total_tokens(session, org.id)
        paid = self._charged_cents(session, org.id, CHARGE_SUCCEEDED) // 100
        unpaid = owed_dollars(tokens) - paid
        over = unpaid > self.max_unpaid_usd
        if org.billing_state == STATE_PAST_DUE:
            message = (
                f"org {org.id} is past due: the last charge to Stripe customer "
                f"{org.stripe_customer_id} failed; update its card (unpaid ${unpaid}, "
                f"limit ${self.max_unpaid_usd})"
            )
            return BillingStatus(not over, STATE_PAST_DUE, message)
        if over:
            return BillingStatus(
                False,
                STATE_OK,
                f"org {org.id} has ${unpaid} unpaid, over the ${self.max_unpaid_usd} limit: "
                "wait for pending charges to be paid or check the org's Stripe customer",
            )
        return BillingStatus(True, STATE_OK, "")

    @staticmethod
    def _total_tokens(session: Session, org_id: str) -> int:
        total = session.get(UsageTotal, org_id)
        return total.tokens if total else 0

    @staticmethod
    def _charged_cents(session: Session, org_id: str, state: str) -> int:
        value = session.exec(
            select(func.coalesce(func.sum(Charge.amount_cents), 0)).where(
                Charge.org_id == org_id, Charge.state == state
            )
        ).one()
        return int(value)

    def authenticate(self, api_key: str) -> AuthInfo:
        key_id = apikeys.key_id_of(api_key)
        with Session(self.engine) as session:
            row = session.get(ApiKey, key_id) if key_id else None
            # Hash even when the id is unknown, so timing does not tell ids apart.
            stored = row.key_hash if row is not None else "0" * 64
            if not apikeys.key_matches(api_key, stored) or row is None:
                raise Unauthenticated("invalid API key")
            if row.revoked_at is not None:
                raise Unauthenticated(f"API key {row.id} has been revoked")
            org = session.get(Org, row.org_id)
            if org is None:  # foreign key makes this impossible; stay safe anyway
                raise Unauthenticated("invalid API key")
            projects = session.exec(
                select(Project.id).where(Project.org_id == org.id).order_by(col(Project.created_at))
            ).all()
            return AuthInfo(
                org_id=org.id,
                org_name=org.name,
                key_id=row.id,
                project_ids=list(projects),
                billing=self.billing_status(session, org),
            )

    def usage(
        self, org_id: str, project_id: str = "", since: dt.datetime | None = None
    ) -> UsageReport:
        with Session(self.engine) as session:
            org = session.get(Org, org_id)
            if org is None:
                raise NotFound(f"org {org_id!r} does not exist")
            if project_id:
                project = session.get(Project, project_id)
                if project is None or project.org_id != org_id:
                    raise NotFound(f"project {project_id!r} is not a project of org {org_id}")
            total = session.get(UsageTotal, org_id)
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
            buckets = [
                Bucket(day=d, project_id=p, tokens=int(t), requests=int(r))
                for d, p, t, r in session.exec(query).all()
            ]
            tokens = total.tokens if total else 0
            return UsageReport(
                org_id=org.id,
                org_name=org.name,
                total_tokens=tokens,
                total_requests=total.requests if total else 0,
                owed_dollars=owed_dollars(tokens),
                charged_dollars=self._charged_cents(session, org_id, CHARGE_SUCCEEDED) // 100,
                pending_dollars=self._charged_cents(session, org_id, CHARGE_PENDING) // 100,
                billing=self.billing_status(session, org),
                buckets=buckets,
            )

    # ---- admin ---------------------------------------------------------------------------

    def create_org(self, name: str, stripe_customer_id: str | None = None) -> Org:
        if not name.strip():
            raise LedgerError("org name is empty: pass --name")
        with Session(self.engine) as session:
            org = Org(
                id=_new_id("org_"), name=name.strip(), stripe_customer_id=stripe_customer_id or None
            )
            session.add(org)
            session.commit()
            session.refresh(org)
            return org

    def _org(self, session: Session, org_id: str) -> Org:
        org = session.get(Org, org_id)
        if org is None:
            raise NotFound(f"org {org_id!r} does not exist (list orgs with `admin orgs`)")
        return org

    def attach_stripe(self, org_id: str, customer_id: str) -> Org:
        if not customer_id.startswith("cus_"):
            raise LedgerError(f"{customer_id!r} is not a Stripe customer id (cus_...)")
        with Session(self.engine) as session:
            org = self._org(session, org_id)
            org.stripe_customer_id = customer_id
            # A new payment method: give billing a fresh chance right away.
            org.billing_state = STATE_OK
            org.billing_retry_at = None
            org.billing_failures = 0
            session.add(org)
            session.commit()
            session.refresh(org)
            return org

    def list_orgs(self) -> list[Org]:
        with Session(self.engine) as session:
            return list(session.exec(select(Org).order_by(col(Org.created_at))).all())

    def create_project(self, org_id: str, name: str) -> Project:
        if not name.strip():
            raise LedgerError("project name is empty: pass --name")
        with Session(self.engine) as session:
            self._org(session, org_id)
            project = Project(id=_new_id("proj_"), org_id=org_id, name=name.strip())
            session.add(project)
            session.commit()
            session.refresh(project)
            return project

    def list_projects(self, org_id: str) -> list[Project]:
        with Session(self.engine) as session:
            self._org(session, org_id)
            return list(
                session.exec(
                    select(Project)
                    .where(Project.org_id == org_id)
                    .order_by(col(Project.created_at))
                ).all()
            )

    def create_key(self, org_id: str, name: str = "") -> tuple[ApiKey, str]:
        """A new key for `org_id`: (its row, the plaintext key, shown once)."""
        key_id, plaintext = apikeys.new_key()
        with Session(self.engine) as session:
            self._org(session, org_id)
            row = ApiKey(id=key_id, org_id=org_id, name=name, key_hash=apikeys.hash_key(plaintext))
            session.add(row)
            session.commit()
            session.refresh(row)
            return row, plaintext

    def revoke_key(self, key_id: str) -> ApiKey:
        with Session(self.engine) as session:
            row = session.get(ApiKey, key_id)
            if row is None:
                raise NotFound(f"API key {key_id!r} does not exist (see `admin list-keys`)")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                session.add(row)
                session.commit()
                session.refresh(row)
            return row

    def list_keys(self, org_id: str) -> list[ApiKey]:
        with Session(self.engine) as session:
            self._org(session, org_id)
            return list(
                session.exec(
                    select(ApiKey).where(ApiKey.org_id == org_id).order_by(col(ApiKey.created_at))
                ).all()
            )

    def list_charges(self, org_id: str) -> list[Charge]:
        with Session(self.engine) as session:
            self._org(session, org_id)
            return list(
                session.exec(
                    select(Charge).where(Charge.org_id == org_id).order_by(col(Charge.seq))
                ).all()
            )

    def ensure_demo(self, key_file: Path | None) -> dict[str, str]:
        """Creates or reuses the demo org (fake Stripe customer), its project and a key.

        Keys are stored hashed, so the plaintext demo key lives only in `key_file` (mode 600),
        written once and reused while it still authenticates for the demo org.
        """
        with Session(self.engine) as session:
            org = session.exec(
                select(Org).where(Org.name == DEMO_ORG_NAME).order_by(col(Org.created_at))
            ).first()
        if org is None:
            org = self.create_org(DEMO_ORG_NAME, DEMO_CUSTOMER_ID)
        projects = [p for p in self.list_projects(org.id) if p.name == DEMO_PROJECT_NAME]
        project = projects[0] if projects else self.create_project(org.id, DEMO_PROJECT_NAME)
        key = ""
        if key_file is not None and key_file.exists():
            candidate = key_file.read_text().strip()
            try:
                if self.authenticate(candidate).org_id == org.id:
                    key = candidate
            except Unauthenticated:
                log.info("event=demo_key_stale action=new_key")
        if not key:
            _, key = self.create_key(org.id, "demo")
            if key_file is not None:
                key_file.parent.mkdir(parents=True, exist_ok=True)
                key_file.touch(mode=0o600)
                key_file.write_text(key + "\n")
        key_id = apikeys.key_id_of(key) or ""
        return {
            "org_id": org.id,
            "project_id": project.id,
            "api_key": key,
            "key_id": key_id,
            "stripe_customer_id": org.stripe_customer_id or "",
        }


def org_as_dict(org: Org) -> dict[str, Any]:
    return {
        "org_id": org.id,
        "name": org.name,
        "stripe_customer_id": org.stripe_customer_id or "",
        "billing_state": org.billing_state if org.stripe_customer_id else STATE_NO_PAYMENT_METHOD,
        "created_at": org.created_at.isoformat(),
    }


def charge_as_dict(charge: Charge) -> dict[str, Any]:
    return {
        "seq": charge.seq,
        "org_id": charge.org_id,
        "amount_cents": charge.amount_cents,
        "currency": charge.currency,
        "state": charge.state,
        "idempotency_key": charge.idempotency_key,
        "tokens_from": charge.tokens_from,
        "tokens_to": charge.tokens_to,
        "stripe_payment_intent_id": charge.stripe_payment_intent_id or "",
        "stripe_status": charge.stripe_status or "",
        "error": charge.error or "",
        "attempts": charge.attempts,
        "created_at": charge.created_at.isoformat(),
        "metadata": json.loads(charge.metadata_json),
    }


__all__ = ["STATE_OK", "Ledger"]
