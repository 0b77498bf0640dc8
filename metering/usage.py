"""Usage writes: idempotent recording of usage events with per-org and per-day running totals.

Several RecordUsage calls are written in one transaction (group commit, see
:mod:`metering.group_commit`). An event id already stored is a duplicate, enforced by the
database's unique key (``ON CONFLICT DO NOTHING``), so concurrent writers and replicas can never
count an event twice. What makes an event valid is :mod:`intent_embed.usage_events`.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlmodel import col, select

from intent_embed.usage_events import first_problem
from metering.errors import InvalidUsage, LedgerError, UnknownOrg
from metering.models import Org, Project, UsageEvent, utcnow


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


def validate_events(events: Sequence[Event]) -> None:
    """Raises InvalidUsage naming the first bad event (index) and how to fix it."""
    problem = first_problem(events)
    if problem is not None:
        raise InvalidUsage(problem.message, field=problem.field)


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


def _key(e: Event) -> tuple[str, str]:
    """What makes an event a duplicate: its id within its org (ids are the callers' own)."""
    return (e.org_id, e.event_id)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class _Sums:
    """Tokens, requests and inputs newly recorded for one key (org, or org/project/model/day)."""

    tokens: int = 0
    requests: int = 0
    inputs: int = 0

    def add(self, e: Event) -> None:
        self.tokens += e.tokens
        self.requests += 1
        self.inputs += e.inputs


class UsageWriter:
    """Records usage events on one engine; the only code that writes usage rows."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Orgs and projects are never deleted and a project never changes org, so what was
        # found once stays true: existence caches, bounded by the number of orgs and projects
        # and only ever grown inside the single group-commit writer.
        self._known_orgs: set[str] = set()
        self._project_org: dict[str, str] = {}
        events = UsageEvent.__table__  # type: ignore[attr-defined]
        insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        # Built once: constructing the statement per group costs more than running it.
        self._events_insert = (
            insert(events)
            .on_conflict_do_nothing(index_elements=["org_id", "event_id"])
            .returning(events.c.org_id, events.c.event_id)
        )

    def record_calls(self, calls: Sequence[Sequence[Event]]) -> list[Recorded | LedgerError]:
        """Records several RecordUsage calls in ONE transaction (group commit).

        Each call is atomic: a call naming an unknown org or project gets UnknownOrg and
        writes nothing, without failing the other calls of the group. Returns one result per
        call, in order; the caller may acknowledge only after this returns.
        """
        results: list[Recorded | LedgerError] = [Recorded(0, 0)] * len(calls)
        with self.engine.begin() as conn:
            self._learn_orgs_and_projects(conn, calls)
            accepted: list[int] = []
            for i, call in enumerate(calls):
                error = self._unknown(call)
                if error is not None:
                    results[i] = error
                else:
                    accepted.append(i)
            # The same event twice in one group (a client retry racing its first try):
            # the first is inserted, the rest are duplicates.
            owner: dict[tuple[str, str], int] = {}
            for i in accepted:
                for e in calls[i]:
                    owner.setdefault(_key(e), i)
            inserted = self._insert_events(conn, [e for i in accepted for e in calls[i]], owner)
            for i, counted in self._count_new(calls, accepted, owner, inserted, conn).items():
                results[i] = Recorded(counted.requests, len(calls[i]) - counted.requests,
                                      counted.tokens)  # fmt: skip
        return results

    def _learn_orgs_and_projects(self, conn: Connection, calls: Sequence[Sequence[Event]]) -> None:
        org_ids = {e.org_id for call in calls for e in call}
        unseen_orgs = org_ids - self._known_orgs
        for chunk in _chunks(sorted(unseen_orgs), 500):
            self._known_orgs.update(
                conn.execute(select(Org.id).where(col(Org.id).in_(chunk))).scalars()
            )
        project_ids = {e.project_id for call in calls for e in call if e.project_id}
        for chunk in _chunks(sorted(project_ids - self._project_org.keys()), 500):
            query = select(Project.id, Project.org_id).where(col(Project.id).in_(chunk))
            rows = conn.execute(query)
            self._project_org.update({pid: oid for pid, oid in rows})

    def _unknown(self, call: Sequence[Event]) -> UnknownOrg | None:
        for i, e in enumerate(call):
            if e.org_id not in self._known_orgs:
                return UnknownOrg(
                    f"events[{i}].org_id={e.org_id!r} is not a known org: create it with "
                    "`python -m metering admin create-org` or fix the caller's org id",
                    field=f"events[{i}].org_id",
                )
            if e.project_id and self._project_org.get(e.project_id) != e.org_id:
                return UnknownOrg(
                    f"events[{i}].project_id={e.project_id!r} is not a project of org "
                    f"{e.org_id!r}: send an empty project_id or one of the org's projects",
                    field=f"events[{i}].project_id",
                )
        return None

    def _insert_events(
        self, conn: Connection, events: list[Event], owner: dict[tuple[str, str], int]
    ) -> set[tuple[str, str]]:
        """Inserts the first copy of each (org, event id); returns the keys that were new."""
        now = utcnow()
        seen: set[tuple[str, str]] = set()
        rows: list[dict[str, Any]] = []
        for e in events:
            if _key(e) in seen:
                continue
            seen.add(_key(e))
            rows.append({"event_id": e.event_id, "org_id": e.org_id, "project_id": e.project_id,
                         "model": e.model, "tokens": e.tokens, "inputs": e.inputs, "at": e.at,
                         "recorded_at": now})  # fmt: skip
        # Sorted: two replicas inserting overlapping ids wait on each other in the same order
        # instead of deadlocking (PostgreSQL).
        rows.sort(key=lambda row: (row["org_id"], row["event_id"]))
        inserted: set[tuple[str, str]] = set()
        for chunk in _chunks(rows, 1000):
            new = conn.execute(self._events_insert, list(chunk))
            inserted.update((org, event_id) for org, event_id in new)
        return inserted

    def _count_new(
        self,
        calls: Sequence[Sequence[Event]],
        accepted: list[int],
        owner: dict[tuple[str, str], int],
        inserted: set[tuple[str, str]],
        conn: Connection,
    ) -> dict[int, _Sums]:
        """Adds the newly inserted events to the running totals; returns what each call added."""
        per_call: dict[int, _Sums] = {i: _Sums() for i in accepted}
        totals: dict[str, _Sums] = defaultdict(_Sums)
        daily: dict[tuple[str, str, str, str], _Sums] = defaultdict(_Sums)
        for i in accepted:
            for e in calls[i]:
                if owner.get(_key(e)) != i or _key(e) not in inserted:
                    continue
                # Only the first occurrence in the group counts; later copies are dups.
                inserted.discard(_key(e))
                per_call[i].add(e)
                totals[e.org_id].add(e)
                day = e.at.astimezone(dt.UTC).date().isoformat()
                daily[(e.org_id, e.project_id, e.model, day)].add(e)
        # Sorted: concurrent writers (replicas on PostgreSQL) lock rows in the same order.
        if totals:
            conn.execute(_ADD_TOTALS, [
                {"org_id": org, "tokens": s.tokens, "requests": s.requests, "inputs": s.inputs}
                for org, s in sorted(totals.items())
            ])  # fmt: skip
        if daily:
            conn.execute(_ADD_DAILY, [
                {"org_id": org, "project_id": project, "model": model, "day": day,
                 "tokens": s.tokens, "requests": s.requests, "inputs": s.inputs}
                for (org, project, model, day), s in sorted(daily.items())
            ])  # fmt: skip
        return per_call
