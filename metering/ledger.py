"""The ledger handle: one database engine and the unpaid-dollars limit, bound to the operations.

Synchronous (SQLAlchemy) by design: the gRPC server calls it from worker threads, the admin CLI
and the billing worker call it directly. It only binds; each operation lives in the module that
owns it: usage writes in :mod:`metering.usage`, orgs, projects, keys and authentication in
:mod:`metering.accounts`, usage reports and charge listings in :mod:`metering.reports`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy.engine import Engine

from metering import accounts, reports
from metering.errors import LedgerError
from metering.models import ApiKey, Charge, Org, Project
from metering.usage import Event, Recorded, UsageWriter


class Ledger:
    """All ledger reads and writes, on one engine."""

    def __init__(self, engine: Engine, *, max_unpaid_usd: int = 50) -> None:
        self.engine = engine
        self.max_unpaid_usd = max_unpaid_usd
        self._writer = UsageWriter(engine)

    def record_calls(self, calls: Sequence[Sequence[Event]]) -> list[Recorded | LedgerError]:
        return self._writer.record_calls(calls)

    def authenticate(self, api_key: str) -> accounts.AuthInfo:
        return accounts.authenticate(self.engine, api_key, self.max_unpaid_usd)

    def usage(
        self,
        org_id: str,
        project_id: str = "",
        since: dt.datetime | None = None,
        period: reports.DateRange | None = None,
    ) -> reports.UsageReport:
        return reports.usage_report(
            self.engine, org_id, self.max_unpaid_usd, project_id, since, period
        )

    def list_charges(self, org_id: str) -> list[Charge]:
        return reports.list_charges(self.engine, org_id)

    def create_org(self, name: str, stripe_customer_id: str | None = None) -> Org:
        return accounts.create_org(self.engine, name, stripe_customer_id)

    def attach_stripe(self, org_id: str, customer_id: str) -> Org:
        return accounts.attach_stripe(self.engine, org_id, customer_id)

    def set_rate_limits(
        self, org_id: str, rpm: int | None, tpm: int | None, *, clear: bool = False
    ) -> Org:
        return accounts.set_rate_limits(self.engine, org_id, rpm, tpm, clear=clear)

    def list_orgs(self) -> list[Org]:
        return accounts.list_orgs(self.engine)

    def create_project(self, org_id: str, name: str) -> Project:
        return accounts.create_project(self.engine, org_id, name)

    def list_projects(self, org_id: str) -> list[Project]:
        return accounts.list_projects(self.engine, org_id)

    def create_key(self, org_id: str, name: str = "") -> tuple[ApiKey, str]:
        return accounts.create_key(self.engine, org_id, name)

    def revoke_key(self, key_id: str) -> ApiKey:
        return accounts.revoke_key(self.engine, key_id)

    def list_keys(self, org_id: str) -> list[ApiKey]:
        return accounts.list_keys(self.engine, org_id)
