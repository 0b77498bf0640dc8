"""The demo account `make run` prints an example for: an org with a fake Stripe customer, its
project and an API key, created on the first run and reused on later ones.

Keys are stored hashed, so the plaintext demo key lives only in a key file (mode 600), written
once and reused while it still authenticates for the demo org. ``python -m devstack.demo
--key-file FILE`` prints the account as JSON for the ledger at ``METERING_DATABASE_URL``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sqlalchemy.engine import Engine

from metering import accounts, apikeys
from metering.database import make_engine
from metering.errors import Unauthenticated
from metering.settings import Settings

log = logging.getLogger("devstack.demo")

DEMO_ORG_NAME = "demo"
DEMO_PROJECT_NAME = "default"
DEMO_CUSTOMER_ID = "cus_demo_local"


def _reusable_key(engine: Engine, key_file: Path | None, org_id: str) -> str:
    if key_file is None or not key_file.exists():
        return ""
    candidate = key_file.read_text().strip()
    try:
        if accounts.authenticate(engine, candidate, max_unpaid_usd=0).org_id == org_id:
            return candidate
    except Unauthenticated:
        log.info("event=demo_key_stale action=new_key")
    return ""


def ensure_demo(engine: Engine, key_file: Path | None) -> dict[str, str]:
    """Creates or reuses the demo org, its project and a key; what `make run` prints."""
    org = accounts.find_org(engine, DEMO_ORG_NAME)
    if org is None:
        org = accounts.create_org(engine, DEMO_ORG_NAME, DEMO_CUSTOMER_ID)
    projects = [p for p in accounts.list_projects(engine, org.id) if p.name == DEMO_PROJECT_NAME]
    if projects:
        project = projects[0]
    else:
        project = accounts.create_project(engine, org.id, DEMO_PROJECT_NAME)
    key = _reusable_key(engine, key_file, org.id)
    if not key:
        _, key = accounts.create_key(engine, org.id, "demo")
        if key_file is not None:
            key_file.parent.mkdir(parents=True, exist_ok=True)
            key_file.touch(mode=0o600)
            key_file.write_text(key + "\n")
    return {
        "org_id": org.id,
        "project_id": project.id,
        "api_key": key,
        "key_id": apikeys.key_id_of(key) or "",
        "stripe_customer_id": org.stripe_customer_id or "",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.demo",
        description="Create or reuse the demo org, project and API key in the ledger at "
        "METERING_DATABASE_URL (migrated already) and print them as JSON.",
    )
    parser.add_argument(
        "--key-file", type=Path, default=None, help="where the plaintext key is kept between runs"
    )
    args = parser.parse_args(argv)
    engine = make_engine(Settings().database_url, pool_size=1)
    try:
        print(json.dumps(ensure_demo(engine, args.key_file), indent=2, sort_keys=True))
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
