"""The self-service stack, started once for the package (each test makes its own orgs)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.selfservice.harness import Stack, running_stack


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("selfservice")) as running:
        yield running
