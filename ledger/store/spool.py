"""A Redis ledger that keeps accepting appends while Redis is down.

``redis://host:port/db?ledger=NAME&spool=/path/spool.db``: an append that
cannot reach Redis (or whose outcome is unknown) goes to a durable local
SQLite spool, and ``record`` returns a :class:`Pending` - not a record: it has
no position yet and the views do not include it. Once anything is spooled,
later appends queue behind it, so the log keeps the order they were made in.
A forwarder drains the spool into Redis in order, with the same event ids (a
spooled event that did land is recognised, not duplicated); drained events
become records and reach the views. A spooled event that Redis refuses (a
version conflict with another host, say) goes to the quarantine table and is
logged as an error: never dropped, never changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import msgspec
import structlog

from ledger.chain import timestamp
from ledger.codec import decode_event
from ledger.errors import (
    ConcurrencyError,
    IdempotencyConflict,
    InvalidEvent,
    LedgerClosed,
    OutcomeUnknown,
    StoreUnavailable,
)
from ledger.readmodel import LocalReadModel
from ledger.record import Pending, Record
from ledger.store.protocol import Checkpoint, Head, Proposal
from ledger.store.redis import RedisStore

__all__ = ["SpoolStore"]


class _Line(msgspec.Struct, array_like=True):
    stream_id: str
    event_id: str
    expected_version: int | None
    type: str
    schema_version: int
    occurred_at: str
    data: str
    metadata: str


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY, batch BLOB NOT NULL, spooled_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS quarantine (seq INTEGER PRIMARY KEY, batch BLOB NOT NULL, "
    "spooled_at TEXT NOT NULL, reason TEXT NOT NULL, quarantined_at TEXT NOT NULL)",
)


def _encode(batch: Sequence[Proposal]) -> bytes:
    return msgspec.json.encode(
        [
            _Line(
                p.stream_id,
                p.event_id,
                p.expected_version,
                p.type,
                p.schema_version,
                timestamp(p.occurred_at),
                p.data,
                p.metadata,
            )
            for p in batch
        ]
    )


def _decode(blob: bytes) -> list[Proposal]:
    proposals = []
    for line in msgspec.json.decode(blob, type=list[_Line]):
        event = decode_event(line.type, line.schema_version, line.data, line.metadata)
        proposals.append(
            Proposal(
                event=event,
                stream_id=line.stream_id,
                event_id=line.event_id,
                expected_version=line.expected_version,
                type=line.type,
                schema_version=line.schema_version,
                occurred_at=dt.datetime.fromisoformat(line.occurred_at),
                data=line.data,
                metadata=line.metadata,
            )
        )
    return proposals


class SpoolStore:
    """A :class:`RedisStore` with a local spool in front of its appends."""

    def __init__(self, inner: RedisStore, path: str, *, retry_every: float = 0.5) -> None:
        self.inner = inner
        self.path = path
        self.url = inner.url
        self.retry_every = retry_every
        self.drained: Callable[[list[Record]], Awaitable[None]] | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self._forwarder: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._log = structlog.get_logger("tradeledger")

    @property
    def durability(self) -> str:
        return self.inner.durability + "; spooled locally (fsync) while Redis is unreachable"

    async def open(self) -> None:
        if not os.path.exists(self.path):
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        for statement in _SCHEMA:
            conn.execute(statement)
        self._conn = conn
        try:
            await self.inner.open()
        except StoreUnavailable:
            # the spool is there for exactly this: views wait, appends spool
            self._log.error("redis_unreachable_at_open", address=self.url)
            raise
        self._forwarder = asyncio.create_task(self._forward())

    async def aclose(self) -> None:
        if self._forwarder is not None:
            self._forwarder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._forwarder
        await self.inner.aclose()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerClosed("the store is not open")
        return self._conn

    def counts(self) -> tuple[int, int]:
        """(pending, quarantined) in the spool."""
        conn = self._live()
        (pending,) = conn.execute("SELECT count(*) FROM spool").fetchone()
        (quarantined,) = conn.execute("SELECT count(*) FROM quarantine").fetchone()
        return int(pending), int(quarantined)

    async def append(self, batch: Sequence[Proposal]) -> list[Record | Pending]:
        async with self._lock:
            if self.counts()[0] == 0:
                try:
                    return list(await self.inner.append(batch))
                except (StoreUnavailable, OutcomeUnknown) as e:
                    self._log.error("spooling", address=self.url, reason=str(e), events=len(batch))
            return await self._spool(batch)

    async def _spool(self, batch: Sequence[Proposal]) -> list[Record | Pending]:
        conn = self._live()
        now = self.inner.clock()
        blob = _encode(batch)

        def write() -> int:
            cursor = conn.execute(
                "INSERT INTO spool (batch, spooled_at) VALUES (?, ?)", (blob, timestamp(now))
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

        seq = await asyncio.to_thread(write)
        self._wake.set()
        return [Pending(p.event_id, p.stream_id, seq, now) for p in batch]

    async def drain(self) -> int:
        """Forward what the spool holds, oldest first; returns how many batches went."""
        sent = 0
        conn = self._live()
        while True:
            async with self._lock:
                row = conn.execute(
                    "SELECT seq, batch, spooled_at FROM spool ORDER BY seq LIMIT 1"
                ).fetchone()
                if row is None:
                    return sent
                seq, blob, spooled_at = row
                self.inner.failpoints.hit("spool_drain")
                try:
                    records = await self.inner.append(_decode(blob))
                except (InvalidEvent, ConcurrencyError, IdempotencyConflict) as refused:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute(
                        "INSERT INTO quarantine VALUES (?, ?, ?, ?, ?)",
                        (
                            seq,
                            blob,
                            spooled_at,
                            f"{type(refused).__name__}: {refused}",
                            timestamp(self.inner.clock()),
                        ),
                    )
                    conn.execute("DELETE FROM spool WHERE seq = ?", (seq,))
                    conn.execute("COMMIT")
                    self._log.error("spool_quarantined", seq=seq, reason=str(refused))
                    continue
                conn.execute("DELETE FROM spool WHERE seq = ?", (seq,))
            sent += 1
            if self.drained is not None:
                await self.drained(records)

    async def _forward(self) -> None:
        while True:
            try:
                await self.drain()
            except (StoreUnavailable, OutcomeUnknown) as e:
                self._log.info("spool_waiting", address=self.url, reason=str(e))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.retry_every)
            self._wake.clear()

    # everything else is the Redis store's

    def read(self, start: int = 1, stop: int | None = None) -> AsyncIterator[Record]:
        return self.inner.read(start, stop)

    def subscribe(self, start: int = 1) -> AsyncIterator[Record]:
        return self.inner.subscribe(start)

    async def read_stream(self, stream_id: str) -> list[Record]:
        return await self.inner.read_stream(stream_id)

    async def find(self, event_id: str) -> Record | None:
        return await self.inner.find(event_id)

    async def record_at(self, position: int) -> Record | None:
        return await self.inner.record_at(position)

    async def head(self) -> Head:
        return await self.inner.head()

    async def position_at(self, recorded_at: dt.datetime) -> int:
        return await self.inner.position_at(recorded_at)

    async def count_by_type(self) -> dict[str, int]:
        return await self.inner.count_by_type()

    async def save_checkpoints(self, checkpoints: Sequence[Checkpoint]) -> None:
        await self.inner.save_checkpoints(checkpoints)

    async def load_checkpoints(self) -> dict[str, Checkpoint]:
        return await self.inner.load_checkpoints()

    async def ledger_id(self) -> str:
        return await self.inner.ledger_id()

    def read_model(self) -> LocalReadModel:
        return self.inner.read_model()

    async def describe(self) -> dict[str, Any]:
        pending, quarantined = self.counts()
        facts = await self.inner.describe()
        return {
            **facts,
            "spool": self.path,
            "spool_pending": pending,
            "spool_quarantined": quarantined,
        }
