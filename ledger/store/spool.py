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
Processes that share a spool path (a bot and the CLI with its URL) forward
what waits there one at a time (a lock on the file ``PATH-drain-LEDGERID``);
whether anything waits is read from the file, so once any of them has drained
it, appends go straight to Redis again. Each row names its ledger, and a
ledger forwards only its own rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Sequence
from typing import Any, TypeVar

import msgspec

from ledger.chain import timestamp
from ledger.codec import decode_event
from ledger.errors import (
    ConcurrencyError,
    IdempotencyConflict,
    IncompatibleStore,
    IntegrityError,
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


# Schema 1. A seq is never handed out twice (AUTOINCREMENT): a drainer deletes the row it
# forwarded by its seq, and a quarantined batch keeps its seq. Each row names the ledger
# (its id) it was spooled for (NULL: spooled by schema 0, claimed by the next ledger to
# open it); a ledger forwards only its own rows. ``ledgers`` names each id, so a ledger
# that Redis lost and made again (same name, new id) is told from another ledger.
_SCHEMA_VERSION = 1
_TABLES = (
    "CREATE TABLE spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, ledger TEXT, "
    "batch BLOB NOT NULL, spooled_at TEXT NOT NULL)",
    "CREATE TABLE quarantine (seq INTEGER PRIMARY KEY, ledger TEXT, batch BLOB NOT NULL, "
    "spooled_at TEXT NOT NULL, reason TEXT NOT NULL, quarantined_at TEXT NOT NULL)",
    "CREATE TABLE ledgers (id TEXT PRIMARY KEY, name TEXT NOT NULL)",
)


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction on the spool: committed, or rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring a spool file to schema 1; refuse a newer one."""
    if conn.execute("PRAGMA user_version").fetchone()[0] == _SCHEMA_VERSION:
        return
    with _immediate(conn):
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > _SCHEMA_VERSION:
            raise IncompatibleStore(
                f"the spool {path} has schema {version}; this tradeledger knows up to "
                f"{_SCHEMA_VERSION}: upgrade it"
            )
        if version == 0:
            _from_schema_0(conn)
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")


def _from_schema_0(conn: sqlite3.Connection) -> None:
    """Schema 0 reused the seq of a drained row, which a later row could then share with a
    quarantined batch (and never be quarantined) or lose to a late drainer's delete: its
    rows are renumbered, in order, above every seq it ever used."""
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    for old in tables & {"spool", "quarantine"}:
        conn.execute(f"ALTER TABLE {old} RENAME TO {old}_0")
    for statement in _TABLES:
        conn.execute(statement)
    used = 0
    if "quarantine" in tables:
        conn.execute(
            "INSERT INTO quarantine (seq, batch, spooled_at, reason, quarantined_at) "
            "SELECT seq, batch, spooled_at, reason, quarantined_at FROM quarantine_0"
        )
        conn.execute("DROP TABLE quarantine_0")
        used = conn.execute("SELECT coalesce(max(seq), 0) FROM quarantine").fetchone()[0]
    if "spool" in tables:
        used = max(used, conn.execute("SELECT coalesce(max(seq), 0) FROM spool_0").fetchone()[0])
    conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('spool', ?)", (used,))
    if "spool" in tables:
        conn.execute(
            "INSERT INTO spool (batch, spooled_at) SELECT batch, spooled_at FROM spool_0 "
            "ORDER BY seq"
        )
        conn.execute("DROP TABLE spool_0")


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
    """A spooled batch; ``IntegrityError`` if it cannot be read (damaged, or spooled by a
    newer tradeledger with event types or versions this one does not know)."""
    proposals = []
    try:
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
    except (msgspec.MsgspecError, ValueError, LedgerError) as e:
        raise IntegrityError(f"the spooled batch cannot be read: {e}") from e
    return proposals


def _readable(blob: bytes) -> list[Proposal]:
    try:
        return _decode(blob)
    except IntegrityError:
        return []


T = TypeVar("T")


def _holds_any(conn: sqlite3.Connection, ledger: str) -> bool:
    """Whether anything of ``ledger`` waits in the spool, whichever process spooled it."""
    found = conn.execute("SELECT EXISTS (SELECT 1 FROM spool WHERE ledger = ?)", (ledger,))
    return bool(found.fetchone()[0])


def _oldest(conn: sqlite3.Connection, ledger: str) -> tuple[int, bytes, str] | None:
    """The first batch of ``ledger`` in line: (seq, batch, spooled_at)."""
    row: tuple[int, bytes, str] | None = conn.execute(
        "SELECT seq, batch, spooled_at FROM spool WHERE ledger = ? ORDER BY seq LIMIT 1",
        (ledger,),
    ).fetchone()
    return row


def _bind(conn: sqlite3.Connection, ledger: str, name: str) -> tuple[str, int] | None:
    """Enter ``ledger`` (an id) as ``name``'s, and give it the rows spooled before rows named
    their ledger. Returns (old id, batches) when batches wait for an earlier ledger of the
    same name: Redis lost that ledger and made it again, and they can go nowhere."""
    with _immediate(conn):
        for table in ("spool", "quarantine"):
            conn.execute(f"UPDATE {table} SET ledger = ? WHERE ledger IS NULL", (ledger,))
        conn.execute("INSERT OR IGNORE INTO ledgers (id, name) VALUES (?, ?)", (ledger, name))
        stranded: tuple[str, int] | None = conn.execute(
            "SELECT spool.ledger, count(*) FROM spool JOIN ledgers ON ledgers.id = spool.ledger "
            "WHERE ledgers.name = ? AND ledgers.id != ? GROUP BY spool.ledger LIMIT 1",
            (name, ledger),
        ).fetchone()
    return stranded


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
        self._ledger = ""  # the Redis ledger's id: the spool rows that are this ledger's
        # one forwarder at a time per ledger and spool file, across processes: a lock on a
        # file beside it, which the kernel drops with the process (and keeps while it is
        # stopped: a stopped process's ledger waits, other ledgers on the spool do not)
        self._drain_fd: int | None = None
        self._closing = False
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
        conn = self._conn = await asyncio.to_thread(self._connect)
        try:
            try:
                await self.inner.open()
            except StoreUnavailable:
                (spooled,) = conn.execute("SELECT count(*) FROM spool").fetchone()
                self._log.error("redis_unreachable_at_open", address=self.url, spooled=spooled)
                raise
            self._ledger = await self.inner.ledger_id()
            name = self.inner.options.name
            stranded = await self._sql(_bind, conn, self._ledger, name)
            if stranded is not None:
                old, batches = stranded
                raise IncompatibleStore(
                    f"the spool {self.path} holds {batches} batch(es) acknowledged as Pending for "
                    f"ledger {name!r} when its id was {old}; Redis now holds {name!r} as a new "
                    f"ledger ({self._ledger}): it lost the old one. Move the spool file aside "
                    "(it keeps them) and open with a fresh one"
                )
            self._drain_fd = await asyncio.to_thread(
                os.open, f"{self.path}-drain-{self._ledger}", os.O_RDWR | os.O_CREAT, 0o600
            )
        except BaseException:
            await self.inner.aclose()
            self._close_files()
            raise
        self._spooled = _holds_any(conn, self._ledger)

    def _connect(self) -> sqlite3.Connection:
        try:
            if not os.path.exists(self.path):
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as e:
            raise StoreUnavailable(f"cannot open the spool {self.path}: {e.strerror}") from e
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.inner.timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise StoreUnavailable(f"cannot open the spool {self.path}: {e}") from e
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            _migrate(conn, self.path)
        except sqlite3.Error as e:
            conn.close()
            raise StoreUnavailable(f"cannot open the spool {self.path}: {e}") from e
        except BaseException:  # IncompatibleStore from a newer schema, or an interrupt
            conn.close()
            raise
        return conn

    def _close_files(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._drain_fd is not None:
            os.close(self._drain_fd)
            self._drain_fd = None

    def _start_forwarding(self) -> None:
        if (
            (self._forwarder is None or self._forwarder.done())
            and self._conn is not None
            and not self._closing
        ):
            self._forwarder = asyncio.get_running_loop().create_task(self._forward())

    async def aclose(self) -> None:
        # an append in flight may still spool meanwhile: it must not start a new forwarder
        self._closing = True
        if self._forwarder is not None:
            self._forwarder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._forwarder
        await self.inner.aclose()
        async with self._draining, self._lock:  # a drain() called by hand ends first
            self._close_files()

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerClosed("the store is not open")
        return self._conn

    def counts(self) -> tuple[int, int]:
        """(pending, quarantined) in the spool, of this ledger."""
        conn, mine = self._live(), (self._ledger,)
        (pending,) = conn.execute("SELECT count(*) FROM spool WHERE ledger = ?", mine).fetchone()
        (quarantined,) = conn.execute(
            "SELECT count(*) FROM quarantine WHERE ledger = ?", mine
        ).fetchone()
        return int(pending), int(quarantined)

    def quarantined(self) -> list[Quarantined]:
        """Every batch Redis refused, oldest first, exactly as it was spooled (a batch
        that could not be read has an empty ``batch``; its bytes stay in the file)."""
        rows = self._live().execute(
            "SELECT seq, spooled_at, quarantined_at, reason, batch FROM quarantine "
            "WHERE ledger = ? ORDER BY seq",
            (self._ledger,),
        )
        return [
            Quarantined(
                seq,
                dt.datetime.fromisoformat(spooled_at),
                dt.datetime.fromisoformat(quarantined_at),
                reason,
                _readable(blob),
            )
            for seq, spooled_at, quarantined_at, reason, blob in rows
        ]

    async def append(self, batch: Sequence[Proposal]) -> list[Record | Pending]:
        unknown: OutcomeUnknown | None = None
        if self._spooled:  # unless someone has drained it meanwhile
            async with self._lock:
                self._spooled = await self._sql(
                    _holds_any, self._live(), self._ledger, failing=f"the spool {self.path}"
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
                "INSERT INTO spool (ledger, batch, spooled_at) VALUES (?, ?, ?)",
                (self._ledger, blob, timestamp(now)),
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
        cannot reach Redis stays first in line and the error is raised. While
        another process forwards this ledger's batches, ``StoreUnavailable`` says
        so: two forwarders could each send a batch the other has quarantined.
        """
        async with self._draining:
            conn, lock = self._live(), self._drain_fd  # after the wait: aclose may have run
            assert lock is not None  # open with the connection
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreUnavailable(
                    f"another process is forwarding the spool {self.path}"
                ) from None
            try:
                return await self._drain(conn)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    async def _drain(self, conn: sqlite3.Connection) -> int:
        sent = 0
        while True:
            async with self._lock:
                row = await self._sql(_oldest, conn, self._ledger)
                if row is None:
                    self._spooled = False
            if row is None:
                return sent
            seq, blob, _ = row
            self.inner.failpoints.hit("spool_drain")
            try:
                batch = _decode(blob)
            except IntegrityError as unreadable:  # kept aside, not stalled on for good
                await self._set_aside(conn, row, [], unreadable)
                continue
            try:
                records = await self.inner.append(batch)
            except (InvalidEvent, ConcurrencyError, IdempotencyConflict) as refused:
                await self._set_aside(conn, row, batch, refused)
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

    async def _set_aside(
        self,
        conn: sqlite3.Connection,
        row: tuple[int, bytes, str],
        batch: list[Proposal],
        refused: LedgerError,
    ) -> None:
        """Move a spooled batch to the quarantine, as it was, and say so in the log."""
        async with self._lock:
            await self._sql(self._quarantine, conn, row, refused)
        self._log.error(
            "spool_quarantined",
            address=self.url,
            seq=row[0],
            event_ids=[p.event_id for p in batch],
            error=type(refused).__name__,
            reason=str(refused),
        )

    def _quarantine(
        self, conn: sqlite3.Connection, row: tuple[int, bytes, str], refused: LedgerError
    ) -> None:
        seq, blob, spooled_at = row
        reason = f"{type(refused).__name__}: {refused}"
        with _immediate(conn):
            conn.execute(
                "INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?)",
                (seq, self._ledger, blob, spooled_at, reason, timestamp(self.inner.clock())),
            )
            conn.execute("DELETE FROM spool WHERE seq = ?", (seq,))

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
