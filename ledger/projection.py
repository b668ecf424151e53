"""What a projection is: a reducer over records, fed in log order by the runner.

Two kinds:

- :class:`StateProjection` keeps small, bounded state in memory and
  snapshots it to bytes for checkpoints (``snapshot``/``restore``).
- :class:`TableProjection` keeps history-shaped views in SQLite tables of the
  read model. ``apply`` only buffers; the runner calls ``flush`` inside the
  transaction that also stores the projection's position, so rows and
  position never disagree. Its queries are indexed SQL through ``self.db``.

Every projection receives a :class:`Step` per record: the record, its decoded
event, and for trade events the trade's state before and after it, from the
one fold in ``ledger.trade`` (computed once per record by the runner).
"""

from __future__ import annotations

import abc
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

import msgspec

from ledger.errors import ProjectionFaulted
from ledger.events import Event
from ledger.record import Record
from ledger.trade import TradeState

__all__ = ["ReadModel", "StateProjection", "Step", "TableProjection", "insert_rows"]


class Step(msgspec.Struct, frozen=True):
    """One record as projections see it."""

    record: Record
    event: Event
    before: TradeState | None = None
    after: TradeState | None = None


class ReadModel(Protocol):
    """Where table projections live: the ledger's own SQLite file, or a local file."""

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...

    async def transact(
        self, work: Callable[[sqlite3.Connection], Any], *, durable: bool = True
    ) -> Any: ...


class _Projection(abc.ABC):
    name: ClassVar[str]
    version: ClassVar[int] = 1
    # The event types whose steps ``apply`` needs, or None for every record: the
    # runner calls ``apply`` with these only. The trade states in a step are
    # whole whatever the views read: the fold sees every trade event.
    reads: ClassVar[frozenset[type[Event]] | None] = None

    _fault: str | None = None

    def settings(self) -> dict[str, Any]:
        """The settings that shape this view; part of its checkpoint identity."""
        return {}

    def identity(self) -> str:
        """Name, version and settings: a checkpoint is used only if this matches."""
        settings = msgspec.json.encode(self.settings(), order="sorted").decode()
        return f"{self.name}/v{self.version}/{settings}"

    @abc.abstractmethod
    def apply(self, step: Step) -> None:
        """Fold one record into the view."""

    @property
    def faulted(self) -> str | None:
        """Why the view is faulted, or None when it is sound."""
        return self._fault

    def fault(self, reason: str) -> None:
        self._fault = reason

    def clear_fault(self) -> None:
        self._fault = None

    def ready(self) -> None:
        """Raise :class:`ProjectionFaulted` if the view cannot be trusted."""
        if self._fault is not None:
            raise ProjectionFaulted(f"{self.name} is faulted ({self._fault}); rebuild it")


class StateProjection(_Projection):
    """A view whose whole state is small enough to hold and snapshot."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget everything, ready to fold from position 1."""

    @abc.abstractmethod
    def snapshot(self) -> bytes:
        """The whole state as bytes."""

    @abc.abstractmethod
    def restore(self, data: bytes) -> None:
        """Take the state back from ``snapshot()``'s bytes."""


class TableProjection(_Projection):
    """A view stored as rows in the read model, queried with SQL."""

    tables: ClassVar[tuple[str, ...]] = ()
    # (index name, "table (columns)") pairs. The runner creates them after ``setup``;
    # a rebuild drops them and creates them before its last records (Runner._fill).
    indexes: ClassVar[tuple[tuple[str, str], ...]] = ()
    # A view that costs much per record can be folded by a second process during a
    # large rebuild (see Runner.rebuild); it must pickle and import there.
    apart: ClassVar[bool] = False
    db: ReadModel
    # Why the rows ``setup`` loads cannot be read (damaged, or written by another
    # format), or None; the runner then rebuilds the view instead of failing to open.
    unreadable: str | None = None
    # The position ``take`` hands rows over for (set by the runner just before it).
    taken_at: int = 0

    @abc.abstractmethod
    def setup(self, conn: sqlite3.Connection) -> None:
        """Create the tables (not ``indexes``) if missing and load whatever small
        state ``apply`` needs; rows that do not load set ``unreadable``."""

    def reset(self, conn: sqlite3.Connection) -> None:
        """Delete every row, ready to fold from position 1."""
        for table in self.tables:
            conn.execute(f"DELETE FROM {table}")
        self.setup(conn)

    @abc.abstractmethod
    def take(self) -> Callable[[sqlite3.Connection], None]:
        """Hand over what ``apply`` buffered, as a function that writes it.

        The runner calls it inside the transaction that stores the view's
        position - maybe later, on the writer's thread, while ``apply`` goes
        on: it must not touch state that ``apply`` still changes (see
        ``settled``).
        """

    @property
    def settled(self) -> bool:
        """False while the next write must finish before ``apply`` may go on."""
        return True

    def __getstate__(self) -> dict[str, Any]:
        # a view travels to another process (a parallel rebuild) without its read model
        state = dict(self.__dict__)
        state.pop("db", None)
        return state

    def flush(self, conn: sqlite3.Connection) -> None:
        """Write what ``apply`` buffered, now."""
        self.take()(conn)

    def discard(self) -> None:
        """Drop what ``apply`` buffered (its transaction failed)."""
        self.take()


def insert_rows(
    conn: sqlite3.Connection,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    verb: str = "INSERT OR REPLACE",
    conflict: str = "",
) -> None:
    """Write ``rows`` into ``table`` with one multi-row statement per 500 rows.

    ``executemany`` steps SQLite once per row and hands the GIL away and back
    at every step; while the event loop's thread is folding records, each
    hand-back waits its turn, which made the writes of a rebuild three times
    slower than the writes alone. ``conflict`` is an upsert clause, if any.
    """
    marks = f"({', '.join('?' * len(columns))})"
    # 500 rows, or fewer where SQLite was built to bind fewer parameters (999 before 3.32)
    per_statement = max(
        1, min(500, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(columns))
    )
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        conn.execute(
            f"{verb} INTO {table} ({', '.join(columns)}) "
            f"VALUES {', '.join([marks] * len(chunk))} {conflict}",
            [value for row in chunk for value in row],
        )
