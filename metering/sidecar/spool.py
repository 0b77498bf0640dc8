"""The metering sidecar's durable local spool: usage events on their way to the central ledger.

A single SQLite file in WAL mode holds three tables: ``events`` (accepted, not yet acknowledged
by the central service, in arrival order), ``forwarded`` (event ids the central service
acknowledged recently, so a retry of the same request is still counted as a duplicate after its
event left the spool) and ``dead_letters`` (events the central service rejected as invalid; kept,
never retried, never dropped silently). An event's id here is its :func:`spool_key`, the event
id within its org. Every method is one transaction, so an append is either fully durable or not
there at all; the caller acknowledges only after :meth:`Spool.append` returned. Methods are
blocking (SQLite fsyncs); the async sidecar calls them via a worker thread, and one lock
serialises them on the single connection.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)


def spool_key(org_id: str, event_id: str) -> str:
    """The spool's id of an event: its event id within its org, as central metering dedups
    (event ids are callers' request ids, so two orgs may send the same one). Length-prefixed,
    so no org id and event id pair can spell another pair's key."""
    return f"{len(org_id)}:{org_id}:{event_id}"

Synchronous = Literal["full", "normal"]

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
        payload BLOB NOT NULL,
        spooled_at REAL NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS forwarded (
        event_id TEXT PRIMARY KEY,
        forwarded_at REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS forwarded_at_idx ON forwarded (forwarded_at)",
    """
    CREATE TABLE IF NOT EXISTS dead_letters (
        event_id TEXT PRIMARY KEY,
        payload BLOB NOT NULL,
        spooled_at REAL NOT NULL,
        dead_at REAL NOT NULL,
        code TEXT NOT NULL,
        reason TEXT NOT NULL
    )
    """,
)


class SpoolFullError(Exception):
    """Accepting the events would take the spool past its capacity; nothing was written."""


@dataclass(frozen=True)
class SpooledEvent:
    """One event as stored: the serialized ``UsageEvent`` and when the spool accepted it."""

    seq: int
    event_id: str
    payload: bytes
    spooled_at: float


@dataclass(frozen=True)
class AppendResult:
    recorded: int
    duplicates: int


class Spool:
    """Durable FIFO of serialized usage events keyed by a unique event id."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_events: int,
        synchronous: Synchronous = "full",
        dedup_window_s: float = 600.0,
    ) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self.path = Path(path)
        self.max_events = max_events
        self.dedup_window_s = dedup_window_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: transactions are opened explicitly (BEGIN IMMEDIATE), so a
        # capacity check and the inserts it guards cannot interleave with another writer.
        self._conn = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL fsyncs the WAL on every commit (an ack survives power loss); NORMAL survives a
        # killed process but may lose the last commits on an OS crash, for more throughput.
        self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        for statement in _SCHEMA:
            self._conn.execute(statement)
        self._depth = self._dead = 0
        self._oldest: float | None = None
        self._recount()
        log.info(
            "spool opened path=%s depth=%d dead_letters=%d synchronous=%s",
            self.path, self._depth, self._dead, synchronous,
        )

    # -- cheap reads for metrics (no I/O; values kept current by the writers) --

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def dead_letter_count(self) -> int:
        return self._dead

    @property
    def oldest_spooled_at(self) -> float | None:
        """UTC epoch seconds when the oldest unforwarded event was accepted, None when empty."""
        return self._oldest

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- writes --

    def append(self, events: Sequence[tuple[str, bytes]]) -> AppendResult:
        """Store ``(event_id, payload)`` pairs atomically; known ids count as duplicates.

        Raises SpoolFullError (writing nothing) when the new events do not fit.
        """
        (result,) = self.append_many([events])
        if isinstance(result, SpoolFullError):
            raise result
        return result

    def append_many(
        self, calls: Sequence[Sequence[tuple[str, bytes]]]
    ) -> list[AppendResult | SpoolFullError]:
        """Several callers' appends in one transaction and one fsync (group commit).

        Each call stays all-or-nothing: one that does not fit gets a SpoolFullError and
        writes nothing, the others are stored, in order.
        """
        now = time.time()
        results: list[AppendResult | SpoolFullError] = []
        with self._lock:
            with self._transaction():
                stored: set[str] = set()
                rows: list[tuple[str, bytes, float]] = []
                for events in calls:
                    fresh: dict[str, bytes] = {}
                    duplicates = 0
                    for event_id, payload in events:
                        if event_id in fresh or event_id in stored or self._known(event_id):
                            duplicates += 1
                        else:
                            fresh[event_id] = payload
                    if self._depth + len(rows) + len(fresh) > self.max_events:
                        results.append(SpoolFullError(
                            f"spool holds {self._depth + len(rows)} of {self.max_events} "
                            f"events; {len(fresh)} more do not fit"
                        ))
                        continue
                    stored.update(fresh)
                    rows.extend((event_id, payload, now) for event_id, payload in fresh.items())
                    results.append(AppendResult(recorded=len(fresh), duplicates=duplicates))
                self._conn.executemany(
                    "INSERT INTO events (event_id, payload, spooled_at) VALUES (?, ?, ?)", rows
                )
            self._depth += len(rows)
            if rows and self._oldest is None:
                self._oldest = now
        return results

    def peek(self, limit: int) -> list[SpooledEvent]:
        """The oldest ``limit`` events, in arrival order; they stay spooled until acked."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, event_id, payload, spooled_at FROM events ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [SpooledEvent(int(r[0]), str(r[1]), bytes(r[2]), float(r[3])) for r in rows]

    def ack(self, event_ids: Iterable[str]) -> int:
        """The central ledger committed these events: remove them from the spool."""
        ids = list(event_ids)
        now = time.time()
        with self._lock:
            with self._transaction():
                removed = self._delete(ids)
                self._conn.executemany(
                    "INSERT OR REPLACE INTO forwarded (event_id, forwarded_at) VALUES (?, ?)",
                    [(event_id, now) for event_id in ids],
                )
                # Pruning here keeps the table bounded without a separate timer.
                self._conn.execute(
                    "DELETE FROM forwarded WHERE forwarded_at < ?", (now - self.dedup_window_s,)
                )
            self._recount()
        return removed

    def dead_letter(self, event: SpooledEvent, code: str, reason: str) -> None:
        """The central ledger refused this event as invalid: park it, out of the forward path."""
        with self._lock:
            with self._transaction():
                self._conn.execute(
                    "INSERT OR REPLACE INTO dead_letters "
                    "(event_id, payload, spooled_at, dead_at, code, reason) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (event.event_id, event.payload, event.spooled_at, time.time(), code, reason),
                )
                self._delete([event.event_id])
            self._recount()

    def dead_letters(self) -> list[tuple[str, str, str]]:
        """``(event_id, code, reason)`` of every dead-lettered event, for operators and tests."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT event_id, code, reason FROM dead_letters ORDER BY dead_at"
            ).fetchall()
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    # -- internals (callers hold the lock) --

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)

    def _known(self, event_id: str) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM events WHERE event_id = ? "
            "UNION ALL SELECT 1 FROM forwarded WHERE event_id = ? "
            "UNION ALL SELECT 1 FROM dead_letters WHERE event_id = ? LIMIT 1",
            (event_id, event_id, event_id),
        ).fetchone()
        return row is not None

    def _delete(self, ids: list[str]) -> int:
        removed = 0
        for event_id in ids:
            cursor = self._conn.execute("DELETE FROM events WHERE event_id = ?", (event_id,))
            removed += cursor.rowcount
        return removed

    def _recount(self) -> None:
        # Counted from the file after every removal (once per forwarded batch, not per
        # append), so rows an operator moved by hand (a dead-letter requeue) are seen too.
        self._depth = int(self._conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        self._dead = int(self._conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0])
        row = self._conn.execute("SELECT spooled_at FROM events ORDER BY seq LIMIT 1").fetchone()
        self._oldest = None if row is None else float(row[0])


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back when the body raises."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        else:
            self._conn.execute("ROLLBACK")
