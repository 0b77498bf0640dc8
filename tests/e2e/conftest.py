"""The stack started as three real processes (metering, embed service, gateway) on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.stack import Ports, Stack


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        data_dir=Path(tmp_path_factory.mktemp("stack")),
        ports=Ports.free(),
        # 64 clients of one org for seconds on end: load, not a tenant to hold to a limit.
        extra_env={"GATEWAY_RATE_LIMIT_RPM": "0", "GATEWAY_RATE_LIMIT_TPM": "0"},
    )
    stack.ensure_demo()
    stack.start(timeout=240)
    yield stack
    codes = stack.stop()
    assert all(code == 0 for code in codes.values()), f"unclean exits: {codes}"


@pytest.fixture(scope="package")
def demo(stack: Stack) -> dict[str, object]:
    # ensure-demo is idempotent: the second call returns the same org, project and key.
    return stack.ensure_demo()
