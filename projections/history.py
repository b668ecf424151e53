"""Trade history: every closed trade with its figures, queried as indexed SQL."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Literal

import msgspec

from ledger.chain import timestamp
from ledger.events import TradeClosed, TradeReduced, canonical_text
from ledger.projection import Step, TableProjection, insert_rows
from ledger.trade import TradeState

SortBy = Literal["closed_at", "opened_at", "net", "r"]

_FILTERS = ("symbol", "side", "strategy", "session", "pattern", "account", "outcome", "currency")
_SORTS = {
    "closed_at": "closed_at",
    "opened_at": "opened_at",
    "net": "CAST(net AS REAL)",
    "r": "CAST(r AS REAL)",
}


class ClosedTrade(msgspec.Struct, frozen=True, kw_only=True):
    """A closed trade and every per-trade figure (amounts in its currency)."""

    trade_id: str
    position: int
    symbol: str
    side: str
    currency: str
    account: str | None
    strategy: str | None
    session: str | None
    pattern: str | None
    model: str | None
    regime: str | None
    signal_id: str | None
    opened_at: dt.datetime
    closed_at: dt.datetime
    quantity: Decimal
    average_entry: Decimal
    average_exit: Decimal | None
    multiplier: Decimal
    leverage: Decimal
    gross: Decimal
    fees: Decimal
    funding: Decimal
    net: Decimal
    invested: Decimal
    return_fraction: Decimal
    roe: Decimal
    initial_risk: Decimal | None
    r: Decimal | None
    outcome: str
    holding_seconds: Decimal
    close_reason: str


# The table's columns are the struct's fields, in order.
_COLUMNS = tuple(f.name for f in msgspec.structs.fields(ClosedTrade))


class TradePage(msgspec.Struct, frozen=True):
    """One page of closed trades and the total that matched."""

    trades: list[ClosedTrade]
    total: int


def _text(value: Decimal | None) -> str | None:
    return None if value is None else canonical_text(value)


def _row(trade: TradeState, position: int) -> tuple[Any, ...]:
    assert trade.closed_at is not None
    text = canonical_text  # one call per figure: this runs for every close of a rebuild
    return (
        trade.trade_id,
        position,
        trade.symbol,
        trade.side,
        trade.currency,
        trade.account,
        trade.strategy,
        trade.session,
        trade.pattern,
        trade.model,
        trade.regime,
        trade.signal_id,
        timestamp(trade.opened_at),
        timestamp(trade.closed_at),
        text(trade.entry_quantity),
        text(trade.average_entry),
        _text(trade.average_exit),
        text(trade.multiplier),
        text(trade.leverage),
        text(trade.gross),
        text(trade.fees),
        text(trade.funding),
        text(trade.net),
        text(trade.invested),
        text(trade.return_fraction),
        text(trade.roe),
        _text(trade.initial_risk),
        _text(trade.r_multiple),
        trade.outcome,
        _text(trade.holding_seconds),
        trade.close_reason,
    )


def _closed_trade(row: tuple[Any, ...]) -> ClosedTrade:
    # msgspec turns the stored text back into Decimals and datetimes
    return msgspec.convert(dict(zip(_COLUMNS, row, strict=True)), ClosedTrade)


class TradeHistory(TableProjection):
    """Closed trades with gross, fees, funding, net, return, ROE, R, outcome and more.

    page = await book.view(TradeHistory).trades(symbol="ETHUSDT", sort_by="net", limit=20)
    print(page.total, [t.net for t in page.trades])
    """

    name = "trade_history"
    version = 1
    reads = frozenset({TradeReduced, TradeClosed})  # the events that can close a trade
    tables = ("trade_history",)
    indexes = tuple(
        (f"trade_history_by_{name}", f"trade_history ({columns})")
        for name, columns in (
            ("closed_at", "closed_at, position"),
            ("opened_at", "opened_at, position"),
            ("symbol", "symbol, closed_at"),
            ("strategy", "strategy, closed_at"),
            ("session", "session, closed_at"),
            ("account", "account, closed_at"),
            ("outcome", "outcome, closed_at"),
            ("net", "CAST(net AS REAL)"),
            ("r", "CAST(r AS REAL)"),
        )
    )

    def __init__(self) -> None:
        self._rows: list[tuple[Any, ...]] = []

    def setup(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS trade_history ({', '.join(_COLUMNS)}, PRIMARY KEY (trade_id))"
        )

    def apply(self, step: Step) -> None:
        trade = step.after
        if trade is None or trade.closed_at is None:
            return
        if step.before is not None and step.before.closed_at is not None:
            return
        self._rows.append(_row(trade, step.record.position))

    def take(self) -> Callable[[sqlite3.Connection], None]:
        rows, self._rows = self._rows, []

        def write(conn: sqlite3.Connection) -> None:
            insert_rows(conn, "trade_history", _COLUMNS, rows)

        return write

    async def trades(
        self,
        *,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        by: Literal["closed", "opened"] = "closed",
        symbol: str | None = None,
        side: str | None = None,
        strategy: str | None = None,
        session: str | None = None,
        pattern: str | None = None,
        account: str | None = None,
        outcome: str | None = None,
        currency: str | None = None,
        sort_by: SortBy = "closed_at",
        descending: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> TradePage:
        """Closed trades matching every given filter, one page, and how many matched.

        ``start``/``end`` bound the close time (or the open time with
        ``by="opened"``): ``start <= t < end``.
        """
        self.ready()
        if sort_by not in _SORTS:
            raise ValueError(f"sort_by must be one of {', '.join(_SORTS)}")
        if by not in ("closed", "opened"):
            raise ValueError("by must be 'closed' or 'opened'")
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be >= 0")
        where: list[str] = []
        params: list[Any] = []
        column = f"{by}_at"
        if start is not None:
            where.append(f"{column} >= ?")
            params.append(timestamp(start))
        if end is not None:
            where.append(f"{column} < ?")
            params.append(timestamp(end))
        given = {
            "symbol": symbol,
            "side": side,
            "strategy": strategy,
            "session": session,
            "pattern": pattern,
            "account": account,
            "outcome": outcome,
            "currency": currency,
        }
        for name in _FILTERS:
            if given[name] is not None:
                where.append(f"{name} = ?")
                params.append(given[name])
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        ((total,),) = await self.db.query(f"SELECT count(*) FROM trade_history{clause}", params)
        direction = "DESC" if descending else "ASC"
        order = f"{_SORTS[sort_by]} {direction}, position {direction}"
        if sort_by == "r":
            order = f"r IS NULL, {order}"
        rows = await self.db.query(
            f"SELECT {', '.join(_COLUMNS)} FROM trade_history{clause} ORDER BY {order} LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return TradePage([_closed_trade(tuple(row)) for row in rows], total)

    async def get(self, trade_id: str) -> ClosedTrade | None:
        """The closed trade ``trade_id``, or None if it is not closed."""
        self.ready()
        rows = await self.db.query(
            f"SELECT {', '.join(_COLUMNS)} FROM trade_history WHERE trade_id = ?", (trade_id,)
        )
        return _closed_trade(tuple(rows[0])) if rows else None
