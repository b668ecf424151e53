"""Signals: every signal emitted, and the trade that followed it, if any."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec

from ledger.chain import timestamp
from ledger.events import SignalEmitted, TradeOpened
from ledger.projection import Step, TableProjection, insert_rows


class Signal(msgspec.Struct, frozen=True, kw_only=True):
    """A recorded signal; ``trade_id`` names the trade opened from it, if any."""

    signal_id: str
    position: int
    occurred_at: dt.datetime
    symbol: str
    side: str
    timeframe: str | None
    confidence: Decimal | None
    entry_price: Decimal | None
    stop_price: Decimal | None
    target_price: Decimal | None
    strategy: str | None
    model: str | None
    session: str | None
    pattern: str | None
    trade_id: str | None


# The table's columns are the struct's fields, in order.
_COLUMNS = tuple(f.name for f in msgspec.structs.fields(Signal))


class SignalPage(msgspec.Struct, frozen=True):
    signals: list[Signal]
    total: int


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


class Signals(TableProjection):
    """Every signal, filterable, with the trade it led to.

    page = await book.view(Signals).signals(followed=False)
    """

    name = "signals"
    version = 2  # 2: a trade recorded before its signal links to it too (signal_links)
    reads = frozenset({SignalEmitted, TradeOpened})
    tables = ("signals", "signal_links")
    indexes = (
        ("signals_by_time", "signals (occurred_at, position)"),
        ("signals_by_symbol", "signals (symbol, occurred_at)"),
    )

    def __init__(self) -> None:
        self._rows: dict[str, list[Any]] = {}  # by signal id, until the next flush
        self._links: list[tuple[str, str]] = []

    def setup(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS signals ({', '.join(_COLUMNS)}, PRIMARY KEY (signal_id))"
        )
        # the first trade opened with a signal id not recorded yet: a signal recorded
        # after its trade (two parts of a bot recording side by side) finds it here
        conn.execute(
            "CREATE TABLE IF NOT EXISTS signal_links "
            "(signal_id TEXT PRIMARY KEY, trade_id TEXT NOT NULL)"
        )

    def apply(self, step: Step) -> None:
        event = step.event
        if isinstance(event, SignalEmitted):
            self._rows[event.signal_id] = [
                event.signal_id,
                step.record.position,
                timestamp(event.occurred_at),
                event.symbol,
                event.side,
                event.timeframe,
                _text(event.confidence),
                _text(event.entry_price),
                _text(event.stop_price),
                _text(event.target_price),
                event.strategy,
                event.model,
                event.session,
                event.pattern,
                None,
            ]
        elif isinstance(event, TradeOpened) and event.signal_id is not None:
            self._links.append((event.trade_id, event.signal_id))

    def take(self) -> Callable[[sqlite3.Connection], None]:
        links: dict[str, str] = {}
        for trade_id, signal_id in self._links:
            links.setdefault(signal_id, trade_id)  # the first trade from a signal is its link
        self._links = []
        rows = list(self._rows.values())
        self._rows = {}
        for row in rows:
            row[-1] = links.get(row[0])
        # JSON as text: SQLite from 3.45 may take a BLOB for its binary JSON
        links_json = msgspec.json.encode(links).decode() if links else None
        ids_json = msgspec.json.encode([row[0] for row in rows]).decode() if rows else None

        def write(conn: sqlite3.Connection) -> None:
            # a signal's row never changes but for its link: a process that follows the
            # same file and writes it again must not undo another's link
            insert_rows(
                conn,
                "signals",
                _COLUMNS,
                rows,
                verb="INSERT",
                conflict="ON CONFLICT (signal_id) DO UPDATE "
                "SET trade_id = coalesce(signals.trade_id, excluded.trade_id)",
            )
            (pending,) = conn.execute("SELECT EXISTS (SELECT 1 FROM signal_links)").fetchone()
            if pending and ids_json is not None:
                # a new signal whose trade was recorded before it, by an earlier write:
                # that trade came first
                conn.execute(
                    "UPDATE signals SET trade_id = link.trade_id FROM signal_links AS link "
                    "WHERE signals.signal_id = link.signal_id "
                    "AND link.signal_id IN (SELECT value FROM json_each(?))",
                    (ids_json,),
                )
                conn.execute(
                    "DELETE FROM signal_links WHERE signal_id IN (SELECT value FROM json_each(?))",
                    (ids_json,),
                )
            if links_json is not None:
                # signals stored by an earlier write, then those not recorded yet
                conn.execute(
                    "UPDATE signals SET trade_id = link.value FROM json_each(?) AS link "
                    "WHERE signals.signal_id = link.key AND signals.trade_id IS NULL",
                    (links_json,),
                )
                conn.execute(
                    "INSERT OR IGNORE INTO signal_links (signal_id, trade_id) "
                    "SELECT link.key, link.value FROM json_each(?) AS link "
                    "WHERE link.key NOT IN (SELECT signal_id FROM signals)",
                    (links_json,),
                )

        return write

    async def signals(
        self,
        *,
        symbol: str | None = None,
        strategy: str | None = None,
        session: str | None = None,
        followed: bool | None = None,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> SignalPage:
        """Signals in log order matching every given filter; ``followed`` picks those
        that did (True) or did not (False) lead to a trade."""
        self.ready()
        where: list[str] = []
        params: list[Any] = []
        for name, value in (("symbol", symbol), ("strategy", strategy), ("session", session)):
            if value is not None:
                where.append(f"{name} = ?")
                params.append(value)
        if followed is not None:
            where.append("trade_id IS NOT NULL" if followed else "trade_id IS NULL")
        if start is not None:
            where.append("occurred_at >= ?")
            params.append(timestamp(start))
        if end is not None:
            where.append("occurred_at < ?")
            params.append(timestamp(end))
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        ((total,),) = await self.db.query(f"SELECT count(*) FROM signals{clause}", params)
        rows = await self.db.query(
            f"SELECT {', '.join(_COLUMNS)} FROM signals{clause} ORDER BY position LIMIT ? OFFSET ?",
            [*params, max(limit, 0), max(offset, 0)],
        )
        return SignalPage([_signal(tuple(row)) for row in rows], total)


def _signal(row: tuple[Any, ...]) -> Signal:
    # msgspec turns the stored text back into Decimals and datetimes
    return msgspec.convert(dict(zip(_COLUMNS, row, strict=True)), Signal)
