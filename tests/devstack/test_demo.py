"""The demo account `make run` prints: created once, reused while its key works, replaced when
the key was revoked (`python -m devstack.demo` as a real process, as the stack runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text

from metering.database import make_engine, migrate
from metering.ledger import Ledger

ROOT = Path(__file__).resolve().parents[2]


def demo_process(url: str, key_file: Path) -> dict[str, str]:
    env = {**os.environ, "METERING_DATABASE_URL": url}
    proc = subprocess.run(
        [sys.executable, "-m", "devstack.demo", "--key-file", str(key_file)],
        env=env, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    reply: dict[str, str] = json.loads(proc.stdout)
    return reply


def api_keys(url: str) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        count = int(conn.execute(text("SELECT count(*) FROM api_keys")).scalar_one())
    engine.dispose()
    return count


def test_ensure_demo_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate(url)
    key_file = tmp_path / "demo" / "key"
    first = demo_process(url, key_file)
    second = demo_process(url, key_file)
    assert first == second
    assert key_file.read_text().strip() == first["api_key"]
    assert key_file.stat().st_mode & 0o077 == 0
    assert first["stripe_customer_id"].startswith("cus_")
    assert api_keys(url) == 1
    # A revoked demo key is replaced by a new one rather than handed out.
    engine = make_engine(url)
    Ledger(engine).revoke_key(first["key_id"])
    engine.dispose()
    third = demo_process(url, key_file)
    assert third["api_key"] != first["api_key"] and third["org_id"] == first["org_id"]
