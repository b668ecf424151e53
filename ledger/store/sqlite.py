"""The embedded store: one SQLite file in WAL mode, ``synchronous=FULL``.

Writes go through one writer thread that owns a plain ``sqlite3`` connection:
appends that arrive while a transaction is in flight are grouped into the next
one (one ``BEGIN IMMEDIATE``, one COMMIT, one fsync). Each caller's batch is
staged on its own in memory, where every rule is checked before a row is
written, so one caller's refusal never fails its neighbours (it plays the part
of a savepoint per caller, without two statements each); the group's rows then
go in with one INSERT per 500. The whole group costs one thread hop; through
aiosqlite it would cost one per statement (see ``scripts/bench_append.py``).
Reads go through aiosqlite.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from typing import Any

import aiosqlite

from ledger.chain import GENESIS, parse_timestamp, timestamp
from ledger.codec import decode_event
from ledger.errors import (
    IncompatibleStore,
    IntegrityError,
    LedgerClosed,
    LedgerError,
    OutcomeUnknown,
    StoreUnavailable,
)
from ledger.failpoints import FailPoints
from ledger.logs import get_logger
from ledger.projection import insert_rows
from ledger.record import Record
from ledger.store.protocol import Checkpoint, Clock, Head, Proposal, Rules
from ledger.store.staging import Row, Stage, stage_each
from ledger.trade import StreamState

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SqliteStore"]

APPLICATION_ID = 0x54524C47  # "TRLG": marks a file as a tradeledger
MIN_SQLITE = (3, 38, 0)  # the ->> operator; UPDATE ... FROM (3.33) too

MIGRATIONS: tuple[str, ...] = (
    # 1: the log, checkpoints, the ledger's identity
    """
    CREATE TABLE records (
        position INTEGER PRIMARY KEY,
        stream_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        event_id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        occurred_at TEXT NOT NULL,
        recorded_at TEXT NOT NULL,
        data TEXT NOT NULL,
        metadata TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        UNIQUE (stream_id, version)
    );
    CREATE TRIGGER records_no_update BEFORE UPDATE ON records
    BEGIN SELECT RAISE(ABORT, 'records are append-only'); END;
    CREATE TRIGGER records_no_delete BEFORE DELETE ON records
    BEGIN SELECT RAISE(ABORT, 'records are append-only'); END;
    CREATE TABLE checkpoints (
        name TEXT PRIMARY KEY,
        identity TEXT NOT NULL,
        position INTEGER NOT NULL,
        hash TEXT NOT NULL,
        state BLOB NOT NULL,
        digest TEXT NOT NULL,
        saved_at TEXT NOT NULL
    );
    CREATE TABLE ledger (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 2: known-at cuts find a position by recorded time
    """
    CREATE INDEX records_by_recorded_at ON records (recorded_at);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_NAMES = Record.__struct_fields__  # the stored columns are the record's fields
_COLUMNS = ", ".join(_NAMES)
_HOLD_MAX_EVENTS = 1000  # a bigger next group stages too long to hold answers over it
_SELECT = f"SELECT {_COLUMNS} FROM records"
_INSERT_ONE = f"INSERT INTO records ({_COLUMNS}) VALUES ({', '.join('?' * len(_NAMES))})"

# SQLite result codes after which a failed COMMIT certainly wrote nothing.
# Not SQLITE_NOMEM: it can strike after the commit frame is written and synced.
_NOTHING_WRITTEN = frozenset({"SQLITE_FULL", "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_READONLY"})

_QUEUED, _RUNNING, _CANCELLED, _ANSWERED = range(4)
_MAX_GROUP_EVENTS = 4096
_STREAM_CACHE = 20_000
_UNSURE_IDS = 10_000  # event ids of appends whose callers could not be told how they ended
_PAGE = 1000

_parse_time = dt.datetime.fromisoformat


def _record(row: Sequence[Any]) -> Record:
    try:
        return _unchecked_record(row)
    except (TypeError, ValueError) as e:
        raise IntegrityError(f"the record at position {row[0]} is malformed: {e}") from e


def _unchecked_record(row: Sequence[Any]) -> Record:
    return Record(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        parse_timestamp(row[6]),
        parse_timestamp(row[7]),
        row[8],
        row[9],
        row[10],
        row[11],
    )


def _is_ledger_file(path: str) -> bool:
    """Whether ``path`` starts like a tradeledger file: SQLite's header with our application id."""
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError:
        return False
    return (
        len(header) == 100
        and header.startswith(b"SQLite format 3\x00")
        and int.from_bytes(header[68:72], "big") == APPLICATION_ID
    )


def _path_from_url(url: str) -> str:
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL (sqlite:///relative or sqlite:////absolute): {url!r}")
    path, _, query = url[len("sqlite:///") :].partition("?")
    if not path:
        raise ValueError("the sqlite URL names no file")
    if query:  # a misspelt option silently ignored would be worse than none
        raise ValueError(f"the sqlite URL takes no options, not {query!r}")
    return path


class _Request:
    """One caller's atomic batch, or one piece of maintenance work, for the writer."""

    __slots__ = ("batch", "durable", "future", "loop", "outcome", "state", "work")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: Sequence[Proposal] = (),
        work: Callable[[sqlite3.Connection], Any] | None = None,
        durable: bool = True,
    ) -> None:
        self.batch = batch
        self.work = work
        self.durable = durable
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.state = _QUEUED
        self.outcome: Any = None  # set with state _ANSWERED once the group is committed


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _settle_group(outcomes: list[tuple[asyncio.Future[Any], Any]], appended: asyncio.Event) -> None:
    """Answer a whole group (or one caller) in one wake-up of the event loop."""
    for future, outcome in outcomes:
        _settle(future, outcome)
    appended.set()


class _Answers:
    """Every answer of the writer thread, handed to the event loop in the order sent.

    The writer queues a group's outcomes and counts up an eventfd that the loop
    watches; one read on the loop settles every group queued. Through
    ``call_soon_threadsafe`` each answer cost a handle and two reads of the
    loop's self-pipe, the second one failing: a tenth of a single producer's
    append (scripts/bench_append.py). A loop that cannot watch a file
    descriptor, or a system without eventfd, gets ``call_soon_threadsafe``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, appended: asyncio.Event) -> None:
        self.loop = loop
        self.appended = appended
        self.queued: collections.deque[list[tuple[asyncio.Future[Any], Any]]] = collections.deque()
        self.fd: int | None = None
        # The descriptor is closed by whichever comes last: the loop's close, or the end of
        # the writer (still committing when a close stopped waiting for it). Closed under a
        # writer still sending, its number could name another file by then.
        self.lock = threading.Lock()
        self.closed = False  # nobody watches any more: what is sent now is dropped
        self.sender_done = False
        if not hasattr(os, "eventfd"):
            return
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            loop.add_reader(fd, self.settle)
        except NotImplementedError:
            os.close(fd)
            return
        self.fd = fd

    def send(self, outcomes: list[tuple[asyncio.Future[Any], Any]]) -> None:
        """Queue a group's answers and wake the loop (on the writer thread)."""
        with self.lock:
            if self.closed:
                return
            if self.fd is None:
                self.loop.call_soon_threadsafe(_settle_group, outcomes, self.appended)
                return
            self.queued.append(outcomes)
            os.eventfd_write(self.fd, 1)

    def settle(self) -> None:
        """Settle every group queued (on the loop's thread)."""
        if self.fd is not None:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self.fd)
        queued = self.queued
        try:
            while queued:
                _settle_group(queued.popleft(), self.appended)
        finally:
            if queued and self.fd is not None:  # one raised: the rest on the loop's next turn
                os.eventfd_write(self.fd, 1)

    def close(self) -> None:
        """Settle what is left and stop watching (on the loop's thread)."""
        self.settle()
        with self.lock:
            self.closed = True
            if self.fd is not None:
                self.loop.remove_reader(self.fd)
            self._release()

    def sender_stopped(self) -> None:
        """The writer sends no more (on its thread, as it ends)."""
        with self.lock:
            self.sender_done = True
            self._release()

    def _release(self) -> None:
        if self.closed and self.sender_done and self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Duplicate(Exception):
    """An event id taken for new is in the log already: redo the group, looking ids up."""


def _assume_new(event_id: str) -> None:
    """The optimistic lookup: no event id is in the log (see ``_Writer.stage``)."""
    return None


class _Expired(Exception):
    """The caller's wait ran out (set on its future by a timer)."""


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(_Expired())


class _Deadlines:
    """Every caller's bounded wait, on one timer of the event loop.

    A ``call_later`` per append (and its cancel) cost more than the rest of
    the submission. Answered waits are dropped from the front as new ones
    come; the timer runs at the earliest deadline. Used on the loop's thread.
    """

    def __init__(self) -> None:
        self.waiting: collections.deque[tuple[float, asyncio.Future[Any]]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None

    def add(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], timeout: float
    ) -> None:
        waiting = self.waiting
        while waiting and waiting[0][1].done():  # answered already: forget them
            waiting.popleft()
        deadline = loop.time() + timeout
        waiting.append((deadline, future))
        if self.timer is None or deadline < self.timer.when():
            if self.timer is not None:
                self.timer.cancel()
            self.timer = loop.call_at(deadline, self.expire, loop)

    def expire(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for deadline, future in self.waiting:
            if deadline <= now:
                _expire(future)
        self.waiting = collections.deque(item for item in self.waiting if not item[1].done())
        self.timer = None
        if self.waiting:
            self.timer = loop.call_at(min(d for d, _ in self.waiting), self.expire, loop)


class _Writer:
    """The thread that owns the write connection and commits groups of appends."""

    def __init__(self, store: SqliteStore, conn: sqlite3.Connection) -> None:
        self.store = store
        self.conn = conn
        # Callers hand requests over through a SimpleQueue, whose blocking get wakes the
        # writer in C with the request in hand (a Condition wakes it in Python, takes
        # its lock again, then looks); None tells the writer to stop.
        self.inbox: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self.carried: collections.deque[_Request] = collections.deque()  # writer thread only
        self.lock = threading.Lock()  # request states, set by the writer and by cancelling callers
        self.stopping = False
        self.head = Head(0, GENESIS, None)
        self.streams: collections.OrderedDict[str, tuple[int, StreamState]] = (
            collections.OrderedDict()
        )
        self.verified: set[str] = set()
        self.data_version = -1
        # A committed group's requests, their answers held while the next group is
        # staged: sent just before that group's COMMIT, they wake the callers' event
        # loop while its fsync runs, not while the writer needs the GIL (see commit_group).
        self.held: list[_Request] = []
        self.deadlines = _Deadlines()  # the callers' side: touched on the event loop only
        self.log = get_logger("tradeledger").bind(store="sqlite")
        self.thread = threading.Thread(
            target=self.run, name="tradeledger-sqlite-writer", daemon=True
        )

    def submit(self, request: _Request) -> None:
        if self.stopping:
            raise LedgerClosed("the ledger is closed")
        self.inbox.put(request)

    def cancel(self, request: _Request) -> bool:
        """Withdraw a request the writer has not started; False once it has."""
        with self.lock:
            if request.state == _QUEUED:
                request.state = _CANCELLED
                return True
            return request.state == _CANCELLED

    def stop(self) -> None:
        """Commit what was submitted before, then end (submit and stop run on the loop's thread)."""
        self.stopping = True
        self.inbox.put(None)

    def waiting(self) -> bool:
        return bool(self.carried) or not self.inbox.empty()

    def release(self) -> None:
        """Send the held answers of the last committed group."""
        if self.held:
            held, self.held = self.held, []
            self.store.answer([(request.future, request.outcome) for request in held])

    def run(self) -> None:
        stopped = False
        while not stopped:
            if not self.waiting():
                self.release()  # nothing to stage: answer now
            group, stopped = self.take()
            if not group:  # every caller taken gave up before its turn
                continue
            try:
                if group[0].work is not None:
                    self.release()
                    self.run_work(group[0])
                else:
                    self.commit_group(group)
            except Exception as e:  # never let the writer die with callers waiting
                self.unexpected(group, e)
        self.release()
        self.conn.close()
        self.store.writer_stopped()

    def take(self) -> tuple[list[_Request], bool]:
        """Wait for the next request and take the appends behind it, up to a group's worth,
        or one piece of work alone; and whether the writer was told to stop."""
        group: list[_Request] = []
        events = 0
        request = self.carried.popleft() if self.carried else self.inbox.get()
        while request is not None:
            if request.state != _CANCELLED:  # begin() looks again, under the lock
                if request.work is not None or events >= _MAX_GROUP_EVENTS:
                    if group:
                        self.carried.append(request)  # it starts the next group
                        return group, False
                    return [request], False
                group.append(request)
                events += len(request.batch)
            if self.inbox.empty():  # only this thread takes from the inbox
                return group, False
            request = self.inbox.get_nowait()
        return group, True

    def unexpected(self, group: list[_Request], cause: Exception) -> None:
        """Answer a group that failed in a way the writer did not foresee, and carry on;
        a caller answered already (the group committed, the failure came after) keeps
        its answer."""
        self.release()
        with self.lock:
            group = [request for request in group if request.state != _ANSWERED]
        open_transaction = self.conn.in_transaction
        self.rollback()
        self.head = Head(-1, GENESIS, None)  # unknown: reload before the next write
        self.data_version = -1
        error: LedgerError
        if open_transaction:
            error = StoreUnavailable(
                f"write to {self.store.path} failed and was rolled back: {cause}"
            )
        else:
            error = OutcomeUnknown(
                f"write to {self.store.path} failed after its commit ({cause}); "
                "retry with the same event_id"
            )
        self.fail(group, error, cause)

    def begin(self, group: list[_Request]) -> list[_Request] | None:
        try:
            if self.held:
                self.begin_holding()
            else:
                self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            self.fail(group, StoreUnavailable(f"cannot start a write on {self.store.path}: {e}"), e)
            return None
        with self.lock:
            live = [r for r in group if r.state != _CANCELLED]
            for request in live:
                request.state = _RUNNING
        return live

    def begin_holding(self) -> None:
        """BEGIN IMMEDIATE without waiting for the write lock while answers are held: if
        another process holds it, the held answers go out first, then the wait."""
        self.conn.execute("PRAGMA busy_timeout = 0")
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as e:
            if not getattr(e, "sqlite_errorname", "").startswith("SQLITE_BUSY"):
                raise
        finally:
            self.conn.execute(f"PRAGMA busy_timeout = {round(self.store.timeout * 1000)}")
        self.release()
        self.conn.execute("BEGIN IMMEDIATE")

    def run_work(self, request: _Request) -> None:
        work = request.work
        assert work is not None
        if not request.durable:
            # Read models are rebuildable from the log: their commits skip the fsync;
            # the next durable commit flushes the WAL they sit in.
            self.conn.execute("PRAGMA synchronous = NORMAL")
        try:
            live = self.begin([request])
            if live is None:
                return
            if not live:
                self.rollback()
                return
            try:
                result = work(self.conn)
                self.conn.execute("COMMIT")
            except (sqlite3.Error, OSError) as e:
                self.rollback()
                self.fail([request], StoreUnavailable(f"write to {self.store.path} failed: {e}"), e)
                return
            except BaseException as e:
                self.rollback()
                self.store.answer([(request.future, e)])
                return
            self.store.answer([(request.future, result)])
        finally:
            if not request.durable:
                self.rollback()  # SQLite refuses the pragma inside a transaction
                self.conn.execute("PRAGMA synchronous = FULL")

    def commit_group(self, group: list[_Request], *, look_up: bool = False) -> None:
        """Commit one group; ``look_up`` checks every event id against the log up front
        (see :meth:`stage`)."""
        started = time.perf_counter()
        if sum(len(r.batch) for r in group) > _HOLD_MAX_EVENTS:
            self.release()  # the held answers would wait for all of its staging
        live = self.begin(group)
        if live is None:
            return
        if not live:
            self.rollback()
            return
        failpoints = self.store.failpoints
        try:
            failpoints.hit("after_begin")
            self.sync()
            stage, outcomes = self.stage([request.batch for request in live], look_up=look_up)
            self.insert(stage.rows, look_up=look_up)
            failpoints.hit("before_commit")
        except _Duplicate:
            self.rollback()
            self.commit_group(live, look_up=True)
            return
        except (sqlite3.Error, OSError) as e:
            self.rollback()
            self.fail(live, StoreUnavailable(f"append to {self.store.path} failed: {e}"), e)
            return
        self.release()  # the last group's callers wake during this fsync
        try:
            self.conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as e:
            self.rollback()
            self.head = Head(-1, GENESIS, None)  # unknown: reload before the next write
            self.data_version = -1
            name = getattr(e, "sqlite_errorname", "")
            if name in _NOTHING_WRITTEN:
                error: LedgerError = StoreUnavailable(f"commit to {self.store.path} failed: {e}")
            else:
                error = OutcomeUnknown(
                    f"commit to {self.store.path} failed ({e}); retry with the same event_id"
                )
            self.fail(live, error, e)
            return
        self.head = stage.head
        failpoints.hit("after_commit")
        # With more appends waiting, the answers wait for the next group's COMMIT:
        # sent now, they would wake the event loop to validate more appends, and the
        # writer, staging the next group meanwhile, would wait for the GIL at every
        # statement; that cost 15% of the throughput of 16 producers. They go out
        # sooner when the next group is big or cannot take the write lock at once,
        # and a caller whose wait runs out meanwhile takes its outcome from its
        # request (_ANSWERED): a committed append is never reported unknown.
        with self.lock:
            for request, outcome in zip(live, outcomes, strict=True):
                request.outcome, request.state = outcome, _ANSWERED
        self.held = live
        if not self.waiting():
            self.release()
        failpoints.hit("after_answer")
        for stream_id, entry in stage.streams.items():
            self.remember(stream_id, entry)
        self.log.debug(
            "append_group",
            requests=len(live),
            head=self.head.position,
            ms=round((time.perf_counter() - started) * 1000, 3),
        )

    def fail(self, requests: list[_Request], error: LedgerError, cause: BaseException) -> None:
        self.release()
        error.__cause__ = cause
        get_logger("tradeledger").error(
            "store_fault",
            store="sqlite",
            path=self.store.path,
            error=str(cause),
            requests=len(requests),
        )
        self.store.answer([(request.future, error) for request in requests])

    def rollback(self) -> None:
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self.verified.clear()

    def sync(self) -> None:
        """Trust the caches only while no other connection has committed."""
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self.data_version and self.head.position >= 0:
            return
        self.data_version = version
        self.verified.clear()
        row = self.conn.execute(
            "SELECT position, hash, recorded_at FROM records ORDER BY position DESC LIMIT 1"
        ).fetchone()
        self.head = (
            Head(0, GENESIS, None) if row is None else Head(row[0], row[1], _parse_time(row[2]))
        )

    def remember(self, stream_id: str, entry: tuple[int, StreamState]) -> None:
        self.streams[stream_id] = entry
        self.streams.move_to_end(stream_id)
        self.verified.add(stream_id)
        if len(self.streams) > _STREAM_CACHE:
            old, _ = self.streams.popitem(last=False)
            self.verified.discard(old)

    def stream(self, stream_id: str) -> tuple[int, StreamState]:
        cached = self.streams.get(stream_id)
        if cached is not None and stream_id in self.verified:
            self.streams.move_to_end(stream_id)
            return cached
        if cached is not None:
            (version,) = self.conn.execute(
                "SELECT coalesce(max(version), 0) FROM records WHERE stream_id = ?", (stream_id,)
            ).fetchone()
            if version == cached[0]:
                self.remember(stream_id, cached)
                return cached
        rows = self.conn.execute(
            "SELECT type, schema_version, data FROM records WHERE stream_id = ? ORDER BY version",
            (stream_id,),
        ).fetchall()
        state: StreamState = None
        for kind, schema_version, data in rows:
            state = self.store.rules(state, decode_event(kind, schema_version, data))
        entry = (len(rows), state)
        self.remember(stream_id, entry)
        return entry

    def find(self, event_id: str) -> Record | None:
        row = self.conn.execute(f"{_SELECT} WHERE event_id = ?", (event_id,)).fetchone()
        return None if row is None else _record(row)

    def stage(
        self, batches: list[Sequence[Proposal]], *, look_up: bool
    ) -> tuple[Stage, list[list[Record] | LedgerError]]:
        """Stage each caller's batch on its own child stage (``stage_each``): the rules are
        checked in memory, so a refusal discards only its batch, and the group's rows go
        in with one statement per 500 (each statement hands the GIL away and back).

        Unless ``look_up``, every event id is first taken for new, which spares a
        query per event: a refusal is believed only once the group is staged again
        with every id looked up (so a retry is still recognized before any other
        rule), and an id the log already holds fails the INSERT on its UNIQUE
        constraint, which redoes the group with lookups (:class:`_Duplicate`).
        """
        now, rules = self.store.clock(), self.store.rules
        stage = Stage(self.head)
        find = self.find if look_up else _assume_new
        outcomes = stage_each(batches, stage, find=find, stream=self.stream, rules=rules, now=now)
        if not look_up and any(isinstance(outcome, LedgerError) for outcome in outcomes):
            stage = Stage(self.head)
            outcomes = stage_each(
                batches, stage, find=self.find, stream=self.stream, rules=rules, now=now
            )
        return stage, outcomes

    def insert(self, rows: Sequence[Row], *, look_up: bool) -> None:
        """Insert a group's staged rows; an event id taken for new that the log holds
        fails on its UNIQUE constraint, which redoes the group with lookups (see stage)."""
        try:
            if len(rows) == 1:  # a lone append (one producer): no statement text to build
                self.conn.execute(_INSERT_ONE, rows[0])
            else:
                insert_rows(self.conn, "records", _NAMES, rows, verb="INSERT")
        except sqlite3.IntegrityError as e:
            if look_up:
                raise
            raise _Duplicate from e
        self.store.failpoints.hit("after_insert")


class SqliteStore:
    """The log in one SQLite file; see the module docstring for how it writes."""

    durability = "durable: WAL with synchronous=FULL, fsync before every acknowledgement"

    def __init__(
        self,
        url: str,
        *,
        rules: Rules,
        clock: Clock,
        timeout: float = 5.0,
        failpoints: FailPoints | None = None,
        poll_interval: float = 0.05,
        create: bool = True,
    ) -> None:
        self.url = url
        self.create = create
        self.path = _path_from_url(url)
        self.rules = rules
        self.clock = clock
        self.timeout = timeout
        self.failpoints = failpoints or FailPoints()
        self.poll_interval = poll_interval
        self._writer: _Writer | None = None
        self._reader: aiosqlite.Connection | None = None
        self._pages: sqlite3.Connection | None = None
        self._appended: asyncio.Event | None = None
        self._answers: _Answers | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._closing: asyncio.Future[None] | None = None
        # the event ids of appends that may have landed without their caller knowing (it
        # heard OutcomeUnknown, or was cancelled once the write had started): a retry of
        # one withdrawn before it starts must not be told that nothing was written
        self._unsure: collections.OrderedDict[str, None] = collections.OrderedDict()

    # lifecycle

    async def open(self) -> None:
        if self._writer is not None or self._closed:
            raise LedgerClosed("a store opens once")
        self._loop = asyncio.get_running_loop()
        self._appended = asyncio.Event()
        conn = await asyncio.wait_for(asyncio.to_thread(self._connect), self.timeout + 1)
        self._answers = _Answers(self._loop, self._appended)
        self._writer = _Writer(self, conn)
        self._writer.thread.start()
        try:
            self._reader = await aiosqlite.connect(self.path, timeout=self.timeout)
            await self._reader.execute("PRAGMA query_only = 1")
            self._pages = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            self._pages.execute("PRAGMA query_only = 1")
        except sqlite3.Error as e:
            await self.aclose()
            raise StoreUnavailable(f"cannot read {self.path}: {e}") from e

    def _connect(self) -> sqlite3.Connection:
        """Open the write connection and bring the schema up to date."""
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise IncompatibleStore(
                f"tradeledger needs SQLite {'.'.join(map(str, MIN_SQLITE))} or newer (JSON "
                f"operators in its views); this Python's sqlite3 has {sqlite3.sqlite_version}"
            )
        if not os.path.exists(self.path):
            if not self.create:
                raise IncompatibleStore(f"there is no ledger at {self.path}")
            try:
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                pass
            except OSError as e:
                raise StoreUnavailable(f"cannot create {self.path}: {e.strerror}") from e
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise StoreUnavailable(f"cannot open {self.path}: {e}") from e
        try:
            migrate(conn, self.path, self.clock, create=self.create)
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.DatabaseError as e:
            conn.close()
            name = getattr(e, "sqlite_errorname", "")
            if name == "SQLITE_CORRUPT" and _is_ledger_file(self.path):
                raise IntegrityError(
                    f"{self.path} is a tradeledger file but it is damaged ({e}); "
                    "restore it from a backup or an export"
                ) from e
            if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
                raise IncompatibleStore(f"{self.path} is not a tradeledger file: {e}") from e
            raise StoreUnavailable(f"cannot open {self.path}: {e}") from e
        except LedgerError:
            conn.close()
            raise
        return conn

    async def aclose(self) -> None:
        """Let the writer commit what was submitted, then close; safe to call twice.
        Cancelling a caller of ``aclose`` does not stop the closing."""
        if self._closing is None:
            self._closed = True
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        writer = self._writer
        try:
            if writer is not None:
                writer.stop()
                # bounded like every wait: a writer stuck on a stalled disk is left to end
                # on its own (the callers of what it holds have had their answers by now)
                await asyncio.to_thread(writer.thread.join, self.timeout + 1)
                if writer.thread.is_alive():
                    get_logger("tradeledger").error(
                        "writer_stuck", store="sqlite", path=self.path, seconds=self.timeout + 1
                    )
        finally:
            if self._answers is not None:
                if writer is None or not writer.thread.is_alive():  # ended, or never began
                    self._answers.sender_stopped()
                self._answers.close()  # the writer, if it still runs, closes it as it ends
            if self._reader is not None:
                await self._reader.close()
            if self._pages is not None:
                self._pages.close()
            if self._appended is not None:
                self._appended.set()

    def writer_stopped(self) -> None:
        if self._answers is not None:
            self._answers.sender_stopped()

    def answer(self, outcomes: list[tuple[asyncio.Future[Any], Any]]) -> None:
        """Settle callers, in the order the writer served them, and wake subscribers (from
        the writer thread): a group's records or refusals, a failure, a piece of work's result."""
        if self._answers is not None:
            self._answers.send(outcomes)

    def _live(self) -> tuple[_Writer, aiosqlite.Connection]:
        if self._closed or self._writer is None or self._reader is None:
            raise LedgerClosed("the store is not open")
        return self._writer, self._reader

    # writes

    async def append(self, batch: Sequence[Proposal]) -> list[Record]:
        writer, _ = self._live()
        request = _Request(asyncio.get_running_loop(), batch=batch)
        result: list[Record] = await self._submit(writer, request)
        return result

    async def _submit(self, writer: _Writer, request: _Request) -> Any:
        if request.loop is not self._loop:  # the answers and the timer live on that loop
            raise LedgerClosed(
                "this ledger was opened in another event loop; open it in the loop that uses it"
            )
        writer.submit(request)
        writer.deadlines.add(request.loop, request.future, self.timeout)
        try:
            return await request.future
        except asyncio.CancelledError:
            # a cancelled caller's append that has not started is withdrawn and never
            # written; one already started may still land, which the caller cannot be
            # told: as after OutcomeUnknown, a retry with the same event id is safe.
            # Work (a view's table flush) always runs to the end, the runner counts on it.
            if request.work is None and not writer.cancel(request):
                self._unsure_of(request)
            raise
        except _Expired:
            if writer.cancel(request):
                if any(p.event_id in self._unsure for p in request.batch):
                    # this call wrote nothing, but an earlier one of the same event may have
                    # (its caller, whose wait ran out first, was told so just before)
                    raise OutcomeUnknown(
                        f"{self.path}: no answer within {self.timeout}s, and an earlier append "
                        "of the same event may have landed; retry with the same event_id"
                    ) from None
                raise StoreUnavailable(
                    f"{self.path}: the write did not start within {self.timeout}s; nothing was written"
                ) from None
            if request.state == _ANSWERED:  # committed, its answer not delivered yet
                if isinstance(request.outcome, BaseException):
                    raise request.outcome from None
                return request.outcome
            self._unsure_of(request)
            raise OutcomeUnknown(
                f"{self.path}: no answer within {self.timeout}s after the write started; "
                "retry with the same event_id"
            ) from None

    def _unsure_of(self, request: _Request) -> None:
        for proposal in request.batch:
            self._unsure[proposal.event_id] = None
            self._unsure.move_to_end(proposal.event_id)
        while len(self._unsure) > _UNSURE_IDS:
            self._unsure.popitem(last=False)

    async def save_checkpoints(self, checkpoints: Sequence[Checkpoint]) -> None:
        writer, _ = self._live()

        def work(conn: sqlite3.Connection) -> None:
            self.failpoints.hit("checkpoint_write")
            conn.executemany(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        c.name,
                        c.identity,
                        c.position,
                        c.hash,
                        c.state,
                        c.digest,
                        timestamp(c.saved_at),
                    )
                    for c in checkpoints
                ],
            )

        await self._submit(writer, _Request(asyncio.get_running_loop(), work=work))

    async def transact(
        self, work: Callable[[sqlite3.Connection], Any], *, durable: bool = True
    ) -> Any:
        """Run ``work`` on the write connection in a transaction of its own.

        ``durable=False`` skips the fsync at commit: for read models, which the
        log can always rebuild.
        """
        writer, _ = self._live()
        request = _Request(asyncio.get_running_loop(), work=work, durable=durable)
        return await self._submit(writer, request)

    async def describe(self) -> dict[str, Any]:
        """Facts for ``info``: file sizes and the schema version."""
        sizes = {}
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                sizes["wal_bytes" if suffix else "file_bytes"] = os.path.getsize(self.path + suffix)
        return {"path": self.path, "schema_version": SCHEMA_VERSION, **sizes}

    def read_model(self) -> SqliteStore:
        """Table projections live in the ledger's own file."""
        return self

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of a read-only query on the ledger file."""
        return await self._fetch(sql, params)

    # reads

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        _, reader = self._live()
        try:
            async with asyncio.timeout(self.timeout):
                async with reader.execute(sql, params) as cursor:
                    return list(await cursor.fetchall())
        except TimeoutError as e:
            raise StoreUnavailable(f"{self.path}: read timed out after {self.timeout}s") from e
        except sqlite3.Error as e:
            raise self._read_failed(e) from e

    async def read(
        self, start: int = 1, stop: int | None = None, *, kinds: Collection[str] | None = None
    ) -> AsyncIterator[Record]:
        """Every record from ``start`` (to ``stop``, inclusive), a page at a time;
        with ``kinds``, only those of these event types (the others never leave SQLite).

        Pages are read on the caller's thread, yielding to the event loop
        between them: a page of 1,000 records takes about a millisecond, and
        a WAL reader never waits for the writer. Through aiosqlite's thread
        every row would hand the GIL back and forth with the code folding the
        records, which made a rebuild wait about 4 us per record.
        """
        position = max(start, 1)
        last = stop if stop is not None else 2**62
        where, types = "position >= ? AND position <= ?", sorted(kinds or ())
        if kinds is not None:
            where += f" AND type IN ({', '.join('?' * len(types))})"
        sql = f"{_SELECT} WHERE {where} ORDER BY position LIMIT ?"
        while position <= last:
            rows = self._page(sql, (position, last, *types, _PAGE))
            for row in rows:
                yield _record(row)
            if len(rows) < _PAGE:
                return
            position = rows[-1][0] + 1
            await asyncio.sleep(0)

    def _page(self, sql: str, params: Sequence[Any]) -> list[Any]:
        if self._closed or self._pages is None:
            raise LedgerClosed("the store is not open")
        try:
            return self._pages.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise self._read_failed(e) from e

    def _read_failed(self, error: sqlite3.Error) -> LedgerError:
        if getattr(error, "sqlite_errorname", "") == "SQLITE_CORRUPT":
            # retrying cannot help: the file itself is damaged
            return IntegrityError(f"{self.path} is damaged: {error}")
        return StoreUnavailable(f"{self.path}: read failed: {error}")

    async def read_stream(self, stream_id: str) -> list[Record]:
        rows = await self._fetch(f"{_SELECT} WHERE stream_id = ? ORDER BY version", (stream_id,))
        return [_record(row) for row in rows]

    async def find(self, event_id: str) -> Record | None:
        rows = await self._fetch(f"{_SELECT} WHERE event_id = ?", (event_id,))
        return _record(rows[0]) if rows else None

    async def record_at(self, position: int) -> Record | None:
        rows = await self._fetch(f"{_SELECT} WHERE position = ?", (position,))
        return _record(rows[0]) if rows else None

    async def position_at(self, recorded_at: dt.datetime) -> int:
        """The last position recorded at or before ``recorded_at`` (0 if none)."""
        rows = await self._fetch(
            "SELECT coalesce(max(position), 0) FROM records WHERE recorded_at <= ?",
            (timestamp(recorded_at),),
        )
        return int(rows[0][0])

    async def count_by_type(self) -> dict[str, int]:
        """How many records of each event type the log holds."""
        rows = await self._fetch("SELECT type, count(*) FROM records GROUP BY type ORDER BY type")
        return {kind: int(count) for kind, count in rows}

    async def head(self) -> Head:
        rows = await self._fetch(
            "SELECT position, hash, recorded_at FROM records ORDER BY position DESC LIMIT 1"
        )
        if not rows:
            return Head(0, GENESIS, None)
        position, digest, recorded_at = rows[0]
        return Head(position, digest, _parse_time(recorded_at))

    async def subscribe(self, start: int = 1) -> AsyncIterator[Record]:
        """Records from ``start`` on, forever: those written later too, by any process."""
        position = max(start, 1)
        while not self._closed:
            assert self._appended is not None
            self._appended.clear()
            async for record in self.read(position):
                yield record
                position = record.position + 1
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._appended.wait()

    async def load_checkpoints(self) -> dict[str, Checkpoint]:
        # Read as bytes: a damaged row must cost its checkpoint (rebuilt from the log),
        # never the opening of the ledger.
        rows = await self._fetch(
            "SELECT CAST(name AS BLOB), CAST(identity AS BLOB), position, CAST(hash AS BLOB), "
            "CAST(state AS BLOB), CAST(digest AS BLOB), CAST(saved_at AS BLOB) FROM checkpoints"
        )
        found = {}
        for row in rows:
            try:
                name, identity, digest_hash, digest, saved_at = (
                    bytes(row[i]).decode() for i in (0, 1, 3, 5, 6)
                )
                if not isinstance(row[2], int):
                    raise ValueError(f"position {row[2]!r} is not a number")
                found[name] = Checkpoint(
                    name,
                    identity,
                    row[2],
                    digest_hash,
                    bytes(row[4]),
                    digest,
                    _parse_time(saved_at),
                )
            except (TypeError, ValueError) as e:
                get_logger("tradeledger").warning(
                    "checkpoint_unreadable", store="sqlite", path=self.path, error=str(e)
                )
        return found

    async def ledger_id(self) -> str:
        rows = await self._fetch("SELECT value FROM ledger WHERE key = 'ledger_id'")
        return str(rows[0][0])


def migrate(conn: sqlite3.Connection, path: str, clock: Clock, *, create: bool = True) -> None:
    """Bring a file's schema to ``SCHEMA_VERSION``; refuse foreign and newer files, and
    (``create=False``) an empty one. A file already current is not locked or written."""

    def foreign() -> bool:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        (application,) = conn.execute("PRAGMA application_id").fetchone()
        (tables,) = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return bool((version == 0 and tables) or (version != 0 and application != APPLICATION_ID))

    # look before touching: a foreign file must be left exactly as it was
    if foreign():
        raise IncompatibleStore(f"{path} is a SQLite file but not a tradeledger")
    (current,) = conn.execute("PRAGMA user_version").fetchone()
    if current == 0 and not create:
        raise IncompatibleStore(f"there is no ledger at {path}: the file is empty")
    (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    if current == SCHEMA_VERSION and mode == "wal":
        return  # readers (verify, export) must not need the write lock
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if foreign():
            raise IncompatibleStore(f"{path} is a SQLite file but not a tradeledger")
        if version > SCHEMA_VERSION:
            raise IncompatibleStore(
                f"{path} has schema {version}; this tradeledger knows up to {SCHEMA_VERSION}: upgrade it"
            )
        for number in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[number].split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            if number == 0:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.executemany(
                    "INSERT INTO ledger (key, value) VALUES (?, ?)",
                    [("ledger_id", str(uuid.uuid4())), ("created_at", timestamp(clock()))],
                )
        if version != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
