"""What a valid usage event is: the one definition every service checks events against.

The embed service's usage sink checks a record before it sends it, the metering sidecar before
it acknowledges a call, and central metering before it writes one. They must agree: an event the
sidecar acknowledged but central refused could never be billed. A ``RecordUsage`` call is valid
when it has at least one event and every event passes :func:`first_problem`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

MAX_EVENT_ID_CHARS = 256
MAX_ID_CHARS = 40  # org and project ids
MAX_MODEL_CHARS = 200
# The most one request may carry: the embed service refuses more (its EMBED_MAX_REQUEST_TOKENS
# and EMBED_MAX_INPUTS may be set lower, never higher), and metering refuses an event claiming
# more, so a caller cannot bill an org for more than one real request could cost.
MAX_REQUEST_TOKENS = 300_000
MAX_REQUEST_INPUTS = 2048
MAX_EVENT_TOKENS = MAX_REQUEST_TOKENS
MAX_EVENT_INPUTS = MAX_REQUEST_INPUTS


class UsageEventFields(Protocol):
    """The fields checked; the proto ``UsageEvent`` and metering's ``Event`` both have them."""

    @property
    def event_id(self) -> str: ...
    @property
    def org_id(self) -> str: ...
    @property
    def project_id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def tokens(self) -> int: ...
    @property
    def inputs(self) -> int: ...


@dataclass(frozen=True)
class Problem:
    """Why a call is invalid: the offending field (``events[i].name``) and how to fix it."""

    field: str
    message: str


def first_problem(events: Sequence[UsageEventFields]) -> Problem | None:
    """The first reason the events of one call are invalid, or None when all are valid."""
    if not events:
        return Problem("events", "events is empty: send at least one usage event")
    for i, e in enumerate(events):
        problem = _event_problem(f"events[{i}]", e)
        if problem is not None:
            return problem
    return None


def _event_problem(where: str, e: UsageEventFields) -> Problem | None:
    if not e.event_id:
        return Problem(f"{where}.event_id", f"{where}.event_id is empty: set it to the request id")
    if len(e.event_id) > MAX_EVENT_ID_CHARS:
        return Problem(
            f"{where}.event_id", f"{where}.event_id is longer than {MAX_EVENT_ID_CHARS} characters"
        )
    if not e.org_id:
        return Problem(
            f"{where}.org_id", f"{where}.org_id is empty: set the org the usage belongs to"
        )
    for name, value in (("org_id", e.org_id), ("project_id", e.project_id)):
        if len(value) > MAX_ID_CHARS:
            return Problem(
                f"{where}.{name}", f"{where}.{name} is longer than {MAX_ID_CHARS} characters"
            )
    if len(e.model) > MAX_MODEL_CHARS:
        return Problem(
            f"{where}.model", f"{where}.model is longer than {MAX_MODEL_CHARS} characters"
        )
    if not 0 <= e.tokens <= MAX_EVENT_TOKENS:
        return Problem(
            f"{where}.tokens",
            f"{where}.tokens={e.tokens} is out of range: one request has 0..{MAX_EVENT_TOKENS} "
            "tokens (a huge value is usually a wrapped negative number)",
        )
    if not 0 <= e.inputs <= MAX_EVENT_INPUTS:
        return Problem(
            f"{where}.inputs", f"{where}.inputs={e.inputs} is out of range 0..{MAX_EVENT_INPUTS}"
        )
    return None
