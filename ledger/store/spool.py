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
logged as an error: never dropped, never changed (``quarantined()`` lists
them; ``describe()`` counts what is pending and what was quarantined). The
spool opens with the ledger, which needs Redis reachable at that moment.
Processes that share a spool path (a bot and the CLI with its URL) each
forward what waits there; whether anything waits is read from the file, so
once any of them has drained it, appends go straight to Redis again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar

import msgspec

from ledger.chain import timestamp
from ledger.codec import decode_event
from ledger.errors import (
    ConcurrencyError,
    IdempotencyConflict,
    InvalidEvent,
    LedgerClosed,
    LedgerError,
    OutcomeUnknown,
    StoreUnavailable,
)
from ledger.logs import get_logger
from ledger.readmodel import LocalReadModel
from ledger.record import Pending, Record
from ledger.store.protocol import Checkpoint, Head, Proposal
from ledger.store.redis import RedisStore

__all__ = ["Quarantined", "SpoolStore"]


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


T = TypeVar("T")


def _holds_any(conn: sqlite3.Connection) -> bool:
    """Whether anything waits in the spool, whoever spooled it."""
    return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM spool)").fetchone()[0])


def _oldest(conn: sqlite3.Connection) -> tuple[int, bytes, str] | None:
    """The first batch in line: (seq, batch, spooled_at)."""
    row: tuple[int, bytes, str] | None = conn.execute(
        "SELECT seq, batch, spooled_at FROM spool ORDER BY seq LIMIT 1"
    ).fetchone()
    return row


class Quarantined(msgspec.Struct, frozen=True):
    """A spooled batch Redis refused, kept as it was spooled, with the reason."""

    seq: int
    spooled_at: dt.datetime
    quarantined_at: dt.datetime
    reason: str
    batch: list[Proposal]


class SpoolStore:
    """A :class:`RedisStore` with a local spool in front of its appends.

    The forwarder starts once the ledger has wired its views (``drained``) or
    when something is first spooled; the spool is opened with the ledger, so
    Redis must be reachable at open.
    """

    def __init__(self, inner: RedisStore, path: str, *, retry_every: float = 0.5) -> None:
        self.inner = inner
        self.path = path
        self.url = inner.url
        self.retry_every = retry_every
        self._drained: Callable[[list[Record]], Awaitable[None]] | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()  # one user of the spool's connection at a time
        self._draining = asyncio.Lock()
        # Whether anything waits in the spool: later appends queue behind it. Read
        # from the file, never counted here: a spool may be drained by another
        # process on the same path (a CLI or a second bot with the same URL).
        self._spooled = False
        self._forwarder: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._log = get_logger("tradeledger")

    @property
    def durability(self) -> str:
        return self.inner.durability + "; spooled locally (fsync) while Redis is unreachable"

    @property
    def drained(self) -> Callable[[list[Record]], Awaitable[None]] | None:
        """Called with the records a drain produced, to bring them into the views."""
        return self._drained

    @drained.setter
    def drained(self, callback: Callable[[list[Record]], Awaitable[None]] | None) -> None:
        self._drained = callback
        self._start_forwarding()

    async def open(self) -> None:
        self._conn = await asyncio.to_thread(self._connect)
        pending, _ = self.counts()
        self._spooled = pending > 0
        try:
            await self.inner.open()
        except StoreUnavailable:
            self._log.error("redis_unreachable_at_open", address=self.url, spooled=pending)
            self._conn.close()
            self._conn = None
            raise

    def _connect(self) -> sqlite3.Connection:
        if not os.path.exists(self.path):
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.inner.timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            for statement in _SCHEMA:
                conn.execute(statement)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"cannot open the spool {self.path}: {e}") from e
        return conn

    def _start_forwarding(self) -> None:
        if (self._forwarder is None or self._forwarder.done()) and self._conn is not None:
            self._forwarder = asyncio.get_running_loop().create_task(self._forward())

    async def aclose(self) -> None:
        if self._forwarder is not None:
            self._forwarder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._forwarder
        await self.inner.aclose()
        if self._conn is not None:
            async with self._lock:
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

    def quarantined(self) -> list[Quarantined]:
        """Every batch Redis refused, oldest first, exactly as it was spooled."""
        rows = self._live().execute(
            "SELECT seq, spooled_at, quarantined_at, reason, batch FROM quarantine ORDER BY seq"
        )
        return [
            Quarantined(
                seq,
                dt.datetime.fromisoformat(spooled_at),
                dt.datetime.fromisoformat(quarantined_at),
                reason,
                _decode(blob),
            )
            for seq, spooled_at, quarantined_at, reason, blob in rows
        ]

    async def append(self, batch: Sequence[Proposal]) -> list[Record | Pending]:
        unknown: OutcomeUnknown | None = None
        if self._spooled:  # unless someone has drained it meanwhile
            async with self._lock:
                self._spooled = await self._sql(
                    _holds_any, self._live(), failing=f"the spool {self.path}"
                )
        if not self._spooled:
            try:
                return list(await self.inner.append(batch))
            except (StoreUnavailable, OutcomeUnknown) as e:
                self._log.error("spooling", address=self.url, reason=str(e), events=len(batch))
                unknown = e if isinstance(e, OutcomeUnknown) else None
        try:
            return await self._spool(batch)
        except StoreUnavailable as e:
            if unknown is None:
                raise
            # the append may have landed: the caller must hear so, not "nothing was written"
            raise OutcomeUnknown(f"{unknown}; and {e}") from e

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

        async with self._lock:
            seq = await self._sql(
                write, failing=f"{self.url} is unreachable and the spool {self.path}"
            )
            self._spooled = True
        self._start_forwarding()
        self._wake.set()
        return [Pending(p.event_id, p.stream_id, seq, now) for p in batch]

    async def drain(self) -> int:
        """Forward what the spool holds, oldest first; returns how many batches went.

        A batch Redis refuses is quarantined and the drain goes on; one that
        cannot reach Redis stays first in line and the error is raised.
        """
        sent = 0
        conn = self._live()
        async with self._draining:
            while True:
                async with self._lock:
                    row = await self._sql(_oldest, conn)
                    if row is None:
                        self._spooled = False
                if row is None:
                    return sent
                seq, blob, spooled_at = row
                self.inner.failpoints.hit("spool_drain")
                batch = _decode(blob)
                try:
                    records = await self.inner.append(batch)
                except (InvalidEvent, ConcurrencyError, IdempotencyConflict) as refused:
                    async with self._lock:
                        await self._sql(self._quarantine, conn, seq, blob, spooled_at, refused)
                    self._log.error(
                        "spool_quarantined",
                        address=self.url,
                        seq=seq,
                        event_ids=[p.event_id for p in batch],
                        error=type(refused).__name__,
                        reason=str(refused),
                    )
                    continue
                async with self._lock:
                    await self._sql(conn.execute, "DELETE FROM spool WHERE seq = ?", (seq,))
                sent += 1
                if self._drained is not None:
                    await self._drained(records)

    async def _sql(self, work: Callable[..., T], *args: Any, failing: str = "") -> T:
        """Run ``work(*args)`` on the spool's connection off the event loop (a locked
        file waits out sqlite's busy timeout there), its faults as ``StoreUnavailable``."""
        try:
            return await asyncio.to_thread(work, *args)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"{failing or 'the spool ' + self.path} failed: {e}") from e

    def _quarantine(
        self,
        conn: sqlite3.Connection,
        seq: int,
        blob: bytes,
        spooled_at: str,
        refused: LedgerError,
    ) -> None:
        reason = f"{type(refused).__name__}: {refused}"
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO quarantine VALUES (?, ?, ?, ?, ?)",
                (seq, blob, spooled_at, reason, timestamp(self.inner.clock())),
            )
            conn.execute("DELETE FROM spool WHERE seq = ?", (seq,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def _forward(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.drain()
            except (StoreUnavailable, OutcomeUnknown) as e:
                self._log.info("spool_waiting", address=self.url, reason=str(e))
            except Exception as e:  # never let the forwarder die: the spool is kept
                self._log.error("spool_stalled", address=self.url, error=repr(e))
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that lands as the wake-up does, and aclose() would wait forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.retry_every):
                    await self._wake.wait()

    # everything else is the Redis store's

    def read(
        self, start: int = 1, stop: int | None = None, *, kinds: Collection[str] | None = None
    ) -> AsyncIterator[Record]:
        return self.inner.read(start, stop, kinds=kinds)

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
        """The Redis store's facts, plus the spool: where it is, what waits, what was refused."""
        pending, quarantined = self.counts()
        try:
            facts = await self.inner.describe()
        except StoreUnavailable as e:  # what waits in the spool matters most right then
            facts = {"address": self.url, "redis": f"unreachable: {e}"}
        return {
            **facts,
            "spool": self.path,
            "spool_pending": pending,
            "spool_quarantined": quarantined,
        }
