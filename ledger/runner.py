"""The projection runner: keeps registered views current, checkpointed and honest.

Every record reaches every registered projection once, in log order, right
after it is durable. The per-trade fold runs once per record here and its
before/after states ride along in each :class:`~ledger.projection.Step`.

On open, a state projection's checkpoint is used only if its identity matches,
its digest checks and the log still holds its hash at its position; a table
projection resumes from the position stored beside its rows under the same
checks. Anything else is discarded with a log line and rebuilt from position
1. A projection that raises is marked faulted; the append that fed it stands.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import pickle
import sqlite3
import sys
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import msgspec

from ledger.chain import GENESIS
from ledger.errors import (
    IntegrityError,
    InvalidEvent,
    LedgerError,
    OutcomeUnknown,
    StoreUnavailable,
)
from ledger.events import EVENT_TYPES, TRADE_EVENTS, Event, TradeEvent
from ledger.logs import get_logger
from ledger.projection import ReadModel, StateProjection, Step, TableProjection
from ledger.record import Record
from ledger.store import Checkpoint, Clock, EventStore
from ledger.trade import TradeState, evolve

__all__ = ["Runner", "TradeFold"]

P = TypeVar("P")

_POSITIONS = """
CREATE TABLE IF NOT EXISTS projection_positions (
    name TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    position INTEGER NOT NULL,
    hash TEXT NOT NULL
)
"""


def digest(state: bytes) -> str:
    """The SHA-256 of a snapshot, stored beside it."""
    return hashlib.sha256(state).hexdigest()


class TradeFold(StateProjection):
    """The open trades, folded once per record for every projection to share."""

    name = "_trades"
    version = 1

    def __init__(self) -> None:
        self.open: dict[str, TradeState] = {}

    def apply(self, step: Step) -> None:
        """Unused: the runner calls :meth:`step_for`, which also makes the step."""

    def step_for(self, record: Record) -> Step:
        event = record.event
        if not isinstance(event, TradeEvent):
            return Step(record, event)
        before = self.open.get(event.trade_id)
        after = evolve(before, event)
        if after.closed_at is None:
            self.open[event.trade_id] = after
        else:
            self.open.pop(event.trade_id, None)
        return Step(record, event, before, after)

    def reset(self) -> None:
        self.open = {}

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(list(self.open.values()))

    def restore(self, data: bytes) -> None:
        trades = msgspec.msgpack.decode(data, type=list[TradeState])
        self.open = {trade.trade_id: trade for trade in trades}


def _refuse_a_cut_tail(
    head: int, checkpoints: Mapping[str, Checkpoint], tables: Mapping[str, tuple[str, int, str]]
) -> None:
    """IntegrityError if the log ends before a checkpoint or a table view's saved position."""
    saved = [("checkpoint", c.name, c.position) for c in checkpoints.values()]
    saved += [("view", name, position) for name, (_, position, _) in tables.items()]
    for kind, name, position in saved:
        if position > head:
            raise IntegrityError(
                f"the log ends at position {head} but {kind} {name!r} was saved at {position}: "
                "records were removed from the tail (run `tradeledger verify`)"
            )


class Runner:
    """Feeds records to projections and keeps their checkpoints."""

    def __init__(
        self,
        store: EventStore,
        read_model: ReadModel,
        projections: Sequence[StateProjection | TableProjection],
        *,
        clock: Clock,
        checkpoint_every: int = 1000,
    ) -> None:
        names = [p.name for p in projections]
        if len(set(names)) != len(names):
            raise ValueError(f"projection names must be unique: {names}")
        self.store = store
        self.read_model = read_model
        self._use(projections)
        self.clock = clock
        self.checkpoint_every = checkpoint_every
        self.follow_retry = 1.0
        # each table view's position as this process last stored it (see _flush)
        self._written: dict[str, int] = {}
        # flushes the read model could not take (its write lock held past the timeout,
        # say), oldest first, each with the positions it stores: tried again with the next
        self._unwritten: list[tuple[Callable[[sqlite3.Connection], None], dict[str, int]]] = []
        self.fold = TradeFold()
        self.position = 0
        self.hash = GENESIS
        self._at: dict[str, int] = {}
        self._ahead = 0  # the furthest any view stood at open; below it, views are uneven
        self._fold_at = 0
        self._lock = asyncio.Lock()
        self._pending: dict[int, Record] = {}
        self._dirty = False
        self._checkpointed = 0
        self._saving: asyncio.Task[None] | None = None
        self._writing: asyncio.Future[None] | None = None
        self._log = get_logger("tradeledger")
        self.restored: dict[str, int] = {}
        self.replayed = 0
        self.parallel_from = 50_000  # records: below it, a second process costs more than it saves
        self.flush_every = 50_000  # records between writes of the table views in a catch-up

    def _use(self, projections: Sequence[StateProjection | TableProjection]) -> None:
        """Feed ``projections``, and work out once what feeding them takes: the
        views of each event type, and which types to read at all."""
        self.projections = list(projections)
        self.states = [p for p in projections if isinstance(p, StateProjection)]
        self.tables = [p for p in projections if isinstance(p, TableProjection)]
        self._routes: dict[type, list[StateProjection | TableProjection]] = {}
        needed: set[type[Event]] = set(TRADE_EVENTS)  # the fold sees every trade event
        for projection in projections:
            if projection.reads is None:
                needed = set(EVENT_TYPES.values())
                break
            needed |= projection.reads
        # the event types to read, or None for every record
        self._kinds: frozenset[str] | None = (
            None
            if needed >= set(EVENT_TYPES.values())
            else frozenset(kind.__name__ for kind in needed)
        )

    @property
    def active(self) -> bool:
        return bool(self.projections)

    def view(self, cls: type[P]) -> P:
        for projection in self.projections:
            if type(projection) is cls:
                return projection
        raise LedgerError(f"no {cls.__name__} projection is registered with this ledger")

    # opening

    async def open(self) -> None:
        if not self.active:
            return
        for table in self.tables:
            table.db = self.read_model
        stored = await self.read_model.transact(self._setup_tables, durable=False)
        head = await self.store.head()
        checkpoints = await self.store.load_checkpoints()
        _refuse_a_cut_tail(head.position, checkpoints, stored)
        self._fold_at = await self._restore(self.fold, checkpoints.get(self.fold.name))
        for state in self.states:
            self._at[state.name] = await self._restore(state, checkpoints.get(state.name))
        resets = []
        for table in self.tables:
            identity, position, digest_ = stored.get(table.name, (None, 0, GENESIS))
            reason = None
            if identity is not None and identity != table.identity():
                reason = "its identity changed"
            elif table.unreadable is not None:
                reason = table.unreadable
            elif position and not await self._hash_matches(position, digest_):
                reason = f"the log no longer has its hash at position {position}"
            if reason is not None:
                self._log.warning("view_rebuilt", view=table.name, reason=reason)
                resets.append(table)
                position = 0
            self._at[table.name] = self._written[table.name] = position
        if resets:
            await self.read_model.transact(lambda conn: self._reset_tables(conn, resets))
        low = min(self._at.values())
        if self._fold_at > low:
            self.fold.reset()
            self._fold_at = 0
        self.position = min(low, self._fold_at)
        if self.position:
            record = await self.store.record_at(self.position)
            self.hash = record.hash if record is not None else GENESIS
        self._checkpointed = min([self._fold_at, *(self._at[s.name] for s in self.states)])
        self.restored = {name: position for name, position in self._at.items() if position}
        self._ahead = max(self._at.values())
        self.replayed = head.position - self.position
        await self._catch_up(head.position)

    def _setup_tables(
        self, conn: sqlite3.Connection, *, indexed: bool = True
    ) -> dict[str, tuple[str, int, str]]:
        conn.execute(_POSITIONS)
        for table in self.tables:
            table.setup(conn)
            if indexed:
                for name, spec in table.indexes:
                    conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {spec}")
        rows = conn.execute("SELECT name, identity, position, hash FROM projection_positions")
        return {name: (identity, position, digest_) for name, identity, position, digest_ in rows}

    def _reset_tables(self, conn: sqlite3.Connection, tables: Sequence[TableProjection]) -> None:
        for table in tables:
            table.discard()
            table.reset(conn)
            table.clear_fault()
            conn.execute("DELETE FROM projection_positions WHERE name = ?", (table.name,))

    async def _hash_matches(self, position: int, expected: str) -> bool:
        record = await self.store.record_at(position)
        return record is not None and record.hash == expected

    async def _restore(self, projection: StateProjection, checkpoint: Checkpoint | None) -> int:
        projection.reset()
        if checkpoint is None:
            return 0
        if checkpoint.identity != projection.identity():
            reason = "its identity changed"
        elif digest(checkpoint.state) != checkpoint.digest:
            reason = "its digest does not match its state"
        elif not await self._hash_matches(checkpoint.position, checkpoint.hash):
            reason = f"the log no longer has its hash at position {checkpoint.position}"
        else:
            try:
                projection.restore(checkpoint.state)
                return checkpoint.position
            except Exception as e:  # a snapshot that does not decode is as bad as a wrong digest
                projection.reset()
                reason = f"its state does not decode: {e}"
        self._log.warning("checkpoint_discarded", view=projection.name, reason=reason)
        return 0

    # feeding

    def _apply(self, record: Record, *, sparse: bool = False) -> None:
        if record.position != self.position + 1 and not (
            sparse and record.position > self.position
        ):
            raise IntegrityError(
                f"expected position {self.position + 1} next, got {record.position}"
            )
        step: Step | None = None
        try:
            step = self.fold.step_for(record) if self._fold_at < record.position else None
        except Exception as e:
            for projection in self.projections:
                projection.fault(f"the trade fold failed at position {record.position}: {e}")
            self._log.error("fold_failed", position=record.position, error=str(e))
        if step is not None:
            self._fold_at = record.position
            self._feed(step)
        self.position = record.position
        self.hash = record.hash
        self._dirty = True

    def _route(self, kind: type) -> list[StateProjection | TableProjection]:
        """The views that read events of ``kind``, in registration order (kept per kind)."""
        found = self._routes.get(kind)
        if found is None:
            found = self._routes[kind] = [
                p for p in self.projections if p.reads is None or kind in p.reads
            ]
        return found

    def _feed(self, step: Step) -> None:
        position = step.record.position
        # After open, every view stands at the same position: skip the per-view check.
        uneven = self._ahead >= position
        views = self._routes.get(step.event.__class__)
        if views is None:
            views = self._route(step.event.__class__)
        for projection in views:
            # the attribute, not the ``faulted`` property: this runs per record per view
            if projection._fault is not None or (uneven and self._at[projection.name] >= position):
                continue
            try:
                projection.apply(step)
            except Exception as e:
                projection.fault(f"failed at position {position}: {e!r}")
                self._log.error(
                    "projection_faulted", view=projection.name, position=position, error=repr(e)
                )

    async def _catch_up(
        self,
        target: int,
        progress: Callable[[int, int], None] | None = None,
        *,
        total: int | None = None,
    ) -> None:
        """Apply the records up to ``target``, telling ``progress(done, total or target)``.

        When every view names what it reads, the records of no use to them nor
        to the trade fold (signals, say, for performance alone) stay in the
        store; the position still ends at ``target``.
        """
        applied = 0
        start = self.position + 1
        kinds = self._kinds
        records = (
            self.store.read(start, target)
            if kinds is None
            else self.store.read(start, target, kinds=kinds)
        )
        async for record in records:
            self._apply(record, sparse=kinds is not None)
            applied += 1
            if applied % self.flush_every == 0:
                await self._flush(wait=False)
                if progress is not None:
                    progress(record.position, total or target)
        if kinds is not None and self.position < target:
            last = await self.store.record_at(target)
            if last is None:
                raise IntegrityError(f"the log has no record at position {target}")
            self.position, self.hash, self._dirty = target, last.hash, True
        await self._flush()
        self._maybe_checkpoint()

    async def _flush(self, *, wait: bool = True) -> None:
        """Write the table views' buffered rows with their position, in one transaction.

        ``wait=False`` (catch-ups and rebuilds) lets ``apply`` go on with the
        next records while the writer stores these - unless a view is not
        settled; the next flush waits for this one, so writes stay in order.
        """
        if self._writing is not None:
            pending, self._writing = self._writing, None
            await pending
        if not (self._dirty or self._unwritten) or not self.tables:
            self._dirty = False
            return
        self._dirty = False
        position, digest_ = self.position, self.hash
        tables = [t for t in self.tables if not t.faulted]
        settled = all(t.settled for t in tables)
        for table in tables:
            table.taken_at = position
        writes = [(table, table.take()) for table in tables]

        written = self._written
        stored_at: dict[str, int] = {}  # into _written once the transaction commits

        def work(conn: sqlite3.Connection) -> None:
            # Several processes may keep the views of one file. Each writes only on top
            # of rows at least as far as its own last write, and never moves a view back:
            # a process behind another leaves the rows to it (they fold the same log).
            for table, write in writes:
                identity, base = table.identity(), written.get(table.name, 0)
                row = conn.execute(
                    "SELECT identity, position FROM projection_positions WHERE name = ?",
                    (table.name,),
                ).fetchone()
                stored = 0 if row is None else row[1]
                if (row is not None and row[0] != identity) or stored < base:
                    table.fault(
                        f"another process rebuilt this view or keeps it with other settings "
                        f"(stored at position {stored}; this process wrote it to {base}); "
                        "reopen the ledger to read it"
                    )
                    self._log.error("projection_faulted", view=table.name, stored=stored)
                    continue
                ahead = stored >= position
                conn.execute("SAVEPOINT view")
                try:
                    write(conn)  # behind another process, only for what it recomputes in memory
                    if ahead:
                        conn.execute("ROLLBACK TO view")
                    else:
                        conn.execute(
                            "INSERT OR REPLACE INTO projection_positions VALUES (?, ?, ?, ?)",
                            (table.name, identity, position, digest_),
                        )
                    stored_at[table.name] = position
                except Exception as e:  # the database's refusal or the view's own bug
                    conn.execute("ROLLBACK TO view")
                    table.fault(f"cannot store rows at position {position}: {e!r}")
                    self._log.error("projection_faulted", view=table.name, error=repr(e))
                conn.execute("RELEASE view")

        task = asyncio.ensure_future(self._write(work, stored_at, tables, position))
        if wait or not settled:
            await task
        else:
            self._writing = task

    async def _write(
        self,
        work: Callable[[sqlite3.Connection], None],
        stored_at: dict[str, int],
        tables: list[TableProjection],
        position: int,
    ) -> None:
        behind, self._unwritten = self._unwritten, []

        def together(conn: sqlite3.Connection) -> None:
            for earlier, _ in behind:
                earlier(conn)
            work(conn)

        try:
            await self.read_model.transact(together, durable=False)
        except (StoreUnavailable, OutcomeUnknown) as e:
            # Nothing stored, or not known: storing again is harmless, for a view is never
            # moved back (a flush that did land is found ahead and rolled back). The
            # views stay sound, their tables behind, until the next flush takes them.
            self._unwritten = [*behind, (work, stored_at)]
            self._log.warning("views_behind", position=position, error=str(e))
            return
        except LedgerError:
            for table in tables:
                table.fault(f"the read model could not be written at position {position}")
            raise
        for _, earlier_at in behind:
            self._written.update(earlier_at)
        self._written.update(stored_at)

    async def offer(self, records: Sequence[Record]) -> None:
        """Bring the views up to the last of ``records`` (just appended by this process)."""
        if not self.active or not records:
            return
        target = 0
        for record in records:
            if record.position > self.position:
                self._pending[record.position] = record
                target = max(target, record.position)
        if not target:
            return
        async with self._lock:
            try:
                if self.position >= target:
                    return  # a caller before us applied these too
                # everything that has arrived, ours and later callers', in one flush
                while self.position < target or (self.position + 1) in self._pending:
                    following = self._pending.pop(self.position + 1, None)
                    if following is None:
                        await self._catch_up(target)
                        break
                    self._apply(following)
                await self._flush()
                self._maybe_checkpoint()
            except Exception as e:
                # the record is durable: its caller gets it; the next offer catches up
                self._log.error("views_behind", position=self.position, error=repr(e))
            finally:
                for position in [p for p in self._pending if p <= self.position]:
                    del self._pending[position]

    async def refresh(self) -> None:
        """Bring in records appended by other processes."""
        if not self.active:
            return
        head = await self.store.head()
        async with self._lock:
            await self._catch_up(head.position)

    async def follow(self) -> None:
        """Apply records as the store announces them, until cancelled; a store that
        fails is tried again after ``follow_retry`` seconds, from where the views stand."""
        while True:
            try:
                async for record in self.store.subscribe(self.position + 1):
                    await self.offer([record])
            except LedgerError as e:
                self._log.error("follow_failed", position=self.position, error=str(e))
            await asyncio.sleep(self.follow_retry)

    async def _reset_all(self) -> None:
        """Every view empty at position 0, the tables without their indexes
        until :meth:`_index` (a crash before it leaves them to the next open)."""
        self.fold.reset()
        self._fold_at = 0
        for state in self.states:
            state.reset()
            state.clear_fault()
        for table in self.tables:
            table.db = self.read_model
        await self.read_model.transact(
            lambda conn: self._setup_tables(conn, indexed=False), durable=False
        )

        def reset(conn: sqlite3.Connection) -> None:
            for table in self.tables:
                for name, _ in table.indexes:
                    conn.execute(f"DROP INDEX IF EXISTS {name}")
            self._reset_tables(conn, self.tables)

        await self.read_model.transact(reset)
        self._at = {p.name: 0 for p in self.projections}
        self._written = {t.name: 0 for t in self.tables}
        self._unwritten = []  # their rows belong to the tables just emptied
        self._ahead = 0
        self.position, self.hash = 0, GENESIS

    async def rebuild(
        self,
        progress: Callable[[int, int], None] | None = None,
        *,
        url: str | None = None,
    ) -> None:
        """Every view from position 1; ``progress(done, total)`` is told along the way.

        With the ledger's ``url`` (SQLite) and a log of ``parallel_from``
        records or more, the table views marked ``apart`` are folded by a
        second process (``ledger.worker``) while this one folds the others.
        """
        if not self.active:
            return
        async with self._lock:
            # a log shorter than its views' saved positions is evidence (verify reports
            # it): refolding would overwrite the checkpoints that show it. No indexes:
            # _reset_all drops them, and building one on a full table costs seconds.
            stored = await self.read_model.transact(
                lambda conn: self._setup_tables(conn, indexed=False), durable=False
            )
            head = await self.store.head()
            _refuse_a_cut_tail(head.position, await self.store.load_checkpoints(), stored)
            await self._reset_all()
            elsewhere = None
            if (
                url is not None
                and url.startswith("sqlite:")
                and head.position >= self.parallel_from
            ):
                elsewhere = await self._start_elsewhere(url)
            if elsewhere is None:
                await self._fill(head.position, progress)
                await self.checkpoint()
                return
            process, tables = elsewhere
            everything = self.projections
            self._use([p for p in everything if p not in tables])
            try:
                await self._fill(head.position, progress)
                await self.checkpoint()
                _, errors = await process.communicate()
            except BaseException:
                with contextlib.suppress(ProcessLookupError):  # it may have ended already
                    process.kill()
                raise
            finally:
                self._use(everything)
            self._log.info("rebuild_apart", views=[t.name for t in tables], code=process.returncode)
            if process.returncode:
                self._log.error(
                    "rebuild_process_failed",
                    code=process.returncode,
                    error=errors.decode(errors="replace")[-2000:],
                )
            # Take the tables wherever the second process left them; a view it did
            # not finish is caught up here, from its stored position.
            await self.open()
            await self.checkpoint()

    async def _fill(self, target: int, progress: Callable[[int, int], None] | None = None) -> None:
        """Catch the emptied views up to ``target``, creating their tables' indexes
        before the last ``flush_every`` records. Filling an index row by row costs
        about three times as much as creating it from the rows at once, but a new
        index's pages are full: the first writes after the rebuild would split
        them all (the next open took six times as long). The last records' rows
        split them where later rows go, as row-by-row writes would have."""
        before = target - self.flush_every
        if before > self.position:
            await self._catch_up(before, progress, total=target)
        await self._index(self.tables)
        await self._catch_up(target, progress)

    async def _index(self, tables: Sequence[TableProjection]) -> None:
        """Create the indexes a rebuild dropped: one transaction each, so that
        another process's writes to the same file wait for one index at most."""

        def create(name: str, spec: str) -> Callable[[sqlite3.Connection], object]:
            return lambda conn: conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {spec}")

        for table in tables:
            for name, spec in table.indexes:
                await self.read_model.transact(create(name, spec), durable=False)

    async def _start_elsewhere(
        self, url: str
    ) -> tuple[asyncio.subprocess.Process, list[TableProjection]] | None:
        """Start ``ledger.worker`` on the views marked ``apart``, or None if there are
        none or they cannot travel."""
        tables = [t for t in self.tables if t.apart and not t.faulted]
        if not tables:
            return None
        try:
            payload = pickle.dumps((url, tables, getattr(self.store, "timeout", 5.0)))
        except Exception as e:  # a view defined where another process cannot import it
            self._log.info("rebuild_in_one_process", reason=str(e))
            return None
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ledger.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None
        process.stdin.write(payload)
        await process.stdin.drain()
        process.stdin.close()
        return process, tables

    async def replay(self, records: AsyncIterable[Record]) -> dict[str, str]:
        """Fold a cut of the log (records in log order, gaps allowed) into fresh views.

        A trade event the fold refuses in the cut (a fill whose open falls
        outside it, say) is left out with the rest of its trade and reported,
        never fixed up: the result maps each such trade id to the reason.
        """
        inconsistent: dict[str, str] = {}
        async with self._lock:
            await self._reset_all()
            applied = 0
            async for record in records:
                event = record.event
                if isinstance(event, TradeEvent) and event.trade_id in inconsistent:
                    continue
                try:
                    step = self.fold.step_for(record)
                except InvalidEvent as e:
                    assert isinstance(event, TradeEvent)
                    inconsistent[event.trade_id] = (
                        f"{record.type} at position {record.position}: {e}"
                    )
                    continue
                self._feed(step)
                self.position, self.hash, self._dirty = record.position, record.hash, True
                applied += 1
                if applied % self.flush_every == 0:
                    await self._flush(wait=False)
            await self._flush()
            await self._index(self.tables)
        return inconsistent

    # checkpoints

    def _snapshot(self) -> list[Checkpoint]:
        now = self.clock()
        checkpoints = []
        for projection in [self.fold, *self.states]:
            if projection.faulted:
                continue
            state = projection.snapshot()
            checkpoints.append(
                Checkpoint(
                    projection.name,
                    projection.identity(),
                    self.position,
                    self.hash,
                    state,
                    digest(state),
                    now,
                )
            )
        self._checkpointed = self.position
        return checkpoints

    def _maybe_checkpoint(self) -> None:
        if self.position - self._checkpointed < self.checkpoint_every:
            return
        if self._saving is not None and not self._saving.done():
            return
        checkpoints = self._snapshot()
        self._saving = asyncio.create_task(self._save(checkpoints))

    async def _save(self, checkpoints: list[Checkpoint]) -> None:
        if not checkpoints:  # every state view faulted
            return
        try:
            await self.store.save_checkpoints(checkpoints)
        except LedgerError as e:
            self._log.error("checkpoint_failed", position=checkpoints[0].position, error=str(e))

    async def checkpoint(self) -> None:
        """Save every state projection's checkpoint at the current position now."""
        if not self.active or self.position == 0:
            return
        if self._saving is not None:
            await self._saving
        await self._save(self._snapshot())

    async def aclose(self) -> None:
        if self._saving is not None:
            with contextlib.suppress(LedgerError):
                await self._saving
        if self.active and self.position > self._checkpointed:
            await self.checkpoint()

    def positions(self) -> dict[str, Any]:
        """Each view's position and fault, for ``info``."""
        return {
            p.name: {"position": max(self.position, self._at.get(p.name, 0)), "faulted": p.faulted}
            for p in self.projections
        }
