"""A request limit above what metering bills would leave requests served and never billed:
the embed service refuses to start with one."""

from __future__ import annotations

import pydantic
import pytest

from embed_service.settings import Settings
from intent_embed.usage_events import MAX_EVENT_INPUTS, MAX_EVENT_TOKENS


def test_request_limits_default_to_what_metering_accepts() -> None:
    settings = Settings(**{})
    assert (settings.max_request_tokens, settings.max_inputs) == (
        MAX_EVENT_TOKENS, MAX_EVENT_INPUTS,
    )  # fmt: skip


@pytest.mark.parametrize(
    "limit", [{"max_request_tokens": MAX_EVENT_TOKENS + 1}, {"max_inputs": MAX_EVENT_INPUTS + 1}]
)
def test_a_limit_above_what_metering_accepts_is_refused(limit: dict[str, int]) -> None:
    with pytest.raises(pydantic.ValidationError):
        Settings(**limit)  # type: ignore[arg-type]
