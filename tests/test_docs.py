"""The docs name only settings the code reads, and the quickstart is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic_settings import BaseSettings

import embed_service.settings
import gateway.settings
import metering.settings
import metering.sidecar.settings

ROOT = Path(__file__).resolve().parent.parent
SETTINGS: list[type[BaseSettings]] = [
    embed_service.settings.Settings,
    gateway.settings.Settings,
    metering.settings.Settings,
    metering.sidecar.settings.SidecarSettings,
]
# Read by the test suite, not by a service.
NOT_SETTINGS = {"METERING_TEST_DATABASE_URL", "GATEWAY_TEST_REDIS_URL"}
ENV_NAME = re.compile(r"\b(?:EMBED|METERING|GATEWAY)_[A-Z0-9_]*[A-Z0-9]\b")


def env_names() -> set[str]:
    names = set()
    for cls in SETTINGS:
        prefix = str(cls.model_config.get("env_prefix", ""))
        names |= {f"{prefix}{field}".upper() for field in cls.model_fields}
    return names


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_setting_the_docs_name_exists() -> None:
    known = env_names() | NOT_SETTINGS
    named = {(path, name) for path in doc_files() for name in ENV_NAME.findall(path.read_text())}
    assert len(named) >= 10, "the README's settings table should name the main settings"
    unknown = {f"{path.relative_to(ROOT)}: {name}" for path, name in named if name not in known}
    assert not unknown, f"docs name settings no Settings class reads: {sorted(unknown)}"


def test_readme_quickstart_is_make_run_and_make_test_and_ci_runs_make_test() -> None:
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quickstart.strip().splitlines()]
    assert commands == ["make run", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
