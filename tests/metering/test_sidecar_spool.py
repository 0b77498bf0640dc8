"""The sidecar's SQLite spool: durable, ordered, bounded, counts retries as duplicates, and a
spool that cannot be written refuses instead of acknowledging."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from intent_embed.v1 import metering_pb2, metering_pb2_grpc
from metering.sidecar.app import shutdown, start_sidecar
from metering.sidecar.metrics import SidecarMetrics
from metering.sidecar.settings import SidecarSettings
from metering.sidecar.spool import AppendResult, Spool, SpoolFullError

REQUEUE_SQL = """
INSERT INTO events (event_id, payload, spooled_at)
    SELECT event_id, payload, spooled_at FROM dead_letters;
DELETE FROM dead_letters;
"""


def events(*ids: str) -> list[tuple[str, bytes]]:
    return [(i, f"payload-{i}".encode()) for i in ids]


def test_appended_events_survive_reopening_in_arrival_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_events=10)
    spool.append(events("a", "b"))
    spool.append(events("c"))
    spool.close()

    reopened = Spool(tmp_path / "spool.db", max_events=10)
    assert reopened.depth == 3
    assert [(e.event_id, e.payload) for e in reopened.peek(10)] == [
        ("a", b"payload-a"), ("b", b"payload-b"), ("c", b"payload-c"),
    ]
    assert reopened.oldest_spooled_at is not None


def test_a_retried_event_counts_as_duplicate_before_and_after_forwarding(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_events=10)
    first = spool.append(events("a", "b", "a"))
    assert (first.recorded, first.duplicates) == (2, 1)
    again = spool.append(events("a"))
    assert (again.recorded, again.duplicates) == (0, 1)

    assert spool.ack(["a"]) == 1
    after = spool.append(events("a", "c"))
    assert (after.recorded, after.duplicates) == (1, 1)
    assert [e.event_id for e in spool.peek(10)] == ["b", "c"]


def test_forwarded_ids_are_forgotten_after_the_dedup_window(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_events=10, dedup_window_s=1e-9)
    spool.append(events("a"))
    spool.ack(["a"])
    spool.ack([])  # prunes the window
    assert spool.append(events("a")).recorded == 1


def test_a_call_that_does_not_fit_writes_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_events=3)
    spool.append(events("a", "b"))
    with pytest.raises(SpoolFullError):
        spool.append(events("c", "d"))
    assert spool.depth == 2
    assert [e.event_id for e in spool.peek(10)] == ["a", "b"]
    # Duplicates need no room, and one more fresh event still fits.
    assert spool.append(events("a", "c")).recorded == 1
    assert spool.depth == 3


def test_dead_lettered_events_leave_the_forward_path_but_are_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_events=10)
    spool.append(events("good", "bad"))
    bad = spool.peek(10)[1]
    spool.dead_letter(bad, "FAILED_PRECONDITION", "unknown org")
    assert [e.event_id for e in spool.peek(10)] == ["good"]
    assert spool.depth == 1 and spool.dead_letter_count == 1
    spool.close()
    reopened = Spool(tmp_path / "spool.db", max_events=10)
    assert reopened.dead_letters() == [("bad", "FAILED_PRECONDITION", "unknown org")]
    # A retry of a dead-lettered event is a duplicate: it would only be rejected again.
    retried = reopened.append(events("bad"))
    assert (retried.recorded, retried.duplicates) == (0, 1)


def test_acking_everything_empties_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_events=10, synchronous="normal")
    spool.append(events("a", "b"))
    assert spool.ack(["a", "b", "unknown"]) == 2
    assert spool.depth == 0 and spool.oldest_spooled_at is None and spool.peek(10) == []


def test_dead_letters_requeued_by_hand_are_forwarded_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_events=10)
    spool.append(events("a", "bad"))
    spool.dead_letter(spool.peek(10)[1], "FAILED_PRECONDITION", "unknown org")
    # What docs/operations.md tells an operator to run once the cause is fixed, while the
    # sidecar keeps running (its own connection stays open).
    operator = sqlite3.connect(tmp_path / "spool.db")
    with operator:
        operator.executescript(REQUEUE_SQL)
    operator.close()
    assert [e.event_id for e in spool.peek(10)] == ["a", "bad"]
    assert spool.ack(["a", "bad"]) == 2
    assert (spool.depth, spool.dead_letter_count) == (0, 0)


def test_a_group_commit_keeps_each_call_all_or_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_events=3)
    results = spool.append_many([events("a", "b"), events("b", "c", "d"), events("e"), []])
    first, too_big, last, empty = results
    assert isinstance(first, AppendResult) and (first.recorded, first.duplicates) == (2, 0)
    # The second call would take the spool to 4 events: refused whole, "c" is not half-written.
    assert isinstance(too_big, SpoolFullError)
    assert isinstance(last, AppendResult) and last.recorded == 1
    assert isinstance(empty, AppendResult) and empty.recorded == 0
    assert [e.event_id for e in spool.peek(10)] == ["a", "b", "e"]
    # A duplicate of an event stored earlier in the same group counts as a duplicate.
    spool.ack(["a", "b", "e"])
    once, again = spool.append_many([events("f"), events("f")])
    assert isinstance(once, AppendResult) and once.recorded == 1
    assert isinstance(again, AppendResult) and (again.recorded, again.duplicates) == (0, 1)


class BrokenDisk(Spool):
    def append_many(
        self, calls: Sequence[Sequence[tuple[str, bytes]]]
    ) -> list[AppendResult | SpoolFullError]:
        raise sqlite3.OperationalError("database or disk is full")


async def test_a_spool_write_error_is_unavailable_and_nothing_is_acked(tmp_path: Path) -> None:
    settings = SidecarSettings.model_validate({
        "host": "127.0.0.1", "port": 0, "central_addr": "127.0.0.1:1",
        "spool_path": str(tmp_path / "s.db"), "insecure_no_auth": True,
    })
    spool = BrokenDisk(settings.spool_path, max_events=10)
    sidecar = await start_sidecar(settings, SidecarMetrics(spool), spool)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
            stub = metering_pb2_grpc.MeteringServiceStub(channel)
            request = metering_pb2.RecordUsageRequest(
                events=[metering_pb2.UsageEvent(event_id="a", org_id="o", tokens=1)]
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.RecordUsage(request, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "disk is full" in (refused.value.details() or "")
    finally:
        await shutdown(sidecar, grace_s=0)
        spool.close()
