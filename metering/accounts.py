"""Accounts: orgs, their projects and API keys, and which org a presented API key belongs to.

Keys are stored hashed (:mod:`metering.apikeys`); `authenticate` answers with the org, its
projects and its billing standing (:mod:`metering.standing`), what the gateway caches.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from metering import apikeys
from metering.errors import LedgerError, NotFound, Unauthenticated
from metering.models import STATE_OK, ApiKey, Org, Project, utcnow
from metering.standing import BillingStatus, billing_status

RowT = TypeVar("RowT", Project, ApiKey)


@dataclass(frozen=True)
class AuthInfo:
    org_id: str
    org_name: str
    key_id: str
    project_ids: list[str]
    billing: BillingStatus
    rate_limit_rpm: int | None = None  # None: the gateway's default
    rate_limit_tpm: int | None = None


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


def _org(session: Session, org_id: str) -> Org:
    org = session.get(Org, org_id)
    if org is None:
        raise NotFound(f"org {org_id!r} does not exist (list orgs with `admin orgs`)")
    return org


def authenticate(engine: Engine, api_key: str, max_unpaid_usd: int) -> AuthInfo:
    """The org a key belongs to; Unauthenticated for an unknown, malformed or revoked key."""
    key_id = apikeys.key_id_of(api_key)
    with Session(engine) as session:
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
            billing=billing_status(session, org, max_unpaid_usd),
            rate_limit_rpm=org.rate_limit_rpm,
            rate_limit_tpm=org.rate_limit_tpm,
        )


def create_org(engine: Engine, name: str, stripe_customer_id: str | None = None) -> Org:
    if not name.strip():
        raise LedgerError("org name is empty: pass --name")
    with Session(engine) as session:
        org = Org(
            id=_new_id("org_"), name=name.strip(), stripe_customer_id=stripe_customer_id or None
        )
        session.add(org)
        session.commit()
        session.refresh(org)
        return org


def find_org(engine: Engine, name: str) -> Org | None:
    """The oldest org with this name, if any."""
    with Session(engine) as session:
        return session.exec(
            select(Org).where(Org.name == name).order_by(col(Org.created_at))
        ).first()


def attach_stripe(engine: Engine, org_id: str, customer_id: str) -> Org:
    if not customer_id.startswith("cus_"):
        raise LedgerError(f"{customer_id!r} is not a Stripe customer id (cus_...)")
    with Session(engine) as session:
        org = _org(session, org_id)
        if org.stripe_customer_id != customer_id:
            # The old customer's payment method cannot pay for the new customer: charges use
            # the new customer's default until a webhook records one of its own.
            org.payment_method_id = None
        org.stripe_customer_id = customer_id
        # A new payment method: give billing a fresh chance right away.
        org.billing_hold = None
        org.billing_state = STATE_OK
        org.billing_retry_at = None
        org.billing_failures = 0
        session.add(org)
        session.commit()
        session.refresh(org)
        return org


def set_rate_limits(
    engine: Engine, org_id: str, rpm: int | None, tpm: int | None, *, clear: bool = False
) -> Org:
    """Sets the org's requests and tokens per minute; a limit passed as None stays as it is,
    0 (or `clear`, both) goes back to the gateway's default. The gateway applies the change
    once its cached Authenticate answer for a key expires (`GATEWAY_AUTH_CACHE_S`)."""
    for flag, value in (("--rpm", rpm), ("--tpm", tpm)):
        if value is not None and value < 0:
            raise LedgerError(f"{flag} must be 0 (the default) or more, got {value}")
    if rpm is None and tpm is None and not clear:
        raise LedgerError("nothing to set: pass --rpm, --tpm or --clear")
    with Session(engine) as session:
        org = _org(session, org_id)
        if clear:
            org.rate_limit_rpm = org.rate_limit_tpm = None
        if rpm is not None:
            org.rate_limit_rpm = rpm or None
        if tpm is not None:
            org.rate_limit_tpm = tpm or None
        session.add(org)
        session.commit()
        session.refresh(org)
        return org


def list_orgs(engine: Engine) -> list[Org]:
    with Session(engine) as session:
        return list(session.exec(select(Org).order_by(col(Org.created_at))).all())


def create_project(engine: Engine, org_id: str, name: str) -> Project:
    if not name.strip():
        raise LedgerError("project name is empty: pass --name")
    with Session(engine) as session:
        _org(session, org_id)
        project = Project(id=_new_id("proj_"), org_id=org_id, name=name.strip())
        session.add(project)
        session.commit()
        session.refresh(project)
        return project


def list_projects(engine: Engine, org_id: str) -> list[Project]:
    return _of_org(engine, Project, org_id)


def create_key(engine: Engine, org_id: str, name: str = "") -> tuple[ApiKey, str]:
    """A new key for `org_id`: (its row, the plaintext key, shown once)."""
    key_id, plaintext = apikeys.new_key()
    with Session(engine) as session:
        _org(session, org_id)
        row = ApiKey(id=key_id, org_id=org_id, name=name, key_hash=apikeys.hash_key(plaintext))
        session.add(row)
        session.commit()
        session.refresh(row)
        return row, plaintext


def revoke_key(engine: Engine, key_id: str) -> ApiKey:
    with Session(engine) as session:
        row = session.get(ApiKey, key_id)
        if row is None:
            raise NotFound(f"API key {key_id!r} does not exist (see `admin list-keys`)")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            session.add(row)
            session.commit()
            session.refresh(row)
        return row


def list_keys(engine: Engine, org_id: str) -> list[ApiKey]:
    return _of_org(engine, ApiKey, org_id)


def _of_org(engine: Engine, table: type[RowT], org_id: str) -> list[RowT]:
    """The org's rows of `table` (projects or keys), oldest first; NotFound for no such org."""
    with Session(engine) as session:
        _org(session, org_id)
        query = select(table).where(col(table.org_id) == org_id)
        return list(session.exec(query.order_by(col(table.created_at))).all())
