"""Open positions: every open trade as the trade fold sees it."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import msgspec

from ledger.events import TRADE_EVENTS
from ledger.projection import StateProjection, Step
from ledger.trade import TradeState


class Position(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An open trade as the CLI's ``positions --json`` and the HTTP API show it."""

    trade_id: str
    symbol: str
    side: str
    currency: str
    quantity: Decimal
    average_entry: Decimal
    stop_price: Decimal | None
    target_price: Decimal | None
    trailing_pct: Decimal | None
    realized_net: Decimal
    gross: Decimal
    fees: Decimal
    funding: Decimal
    multiplier: Decimal
    leverage: Decimal
    opened_at: dt.datetime
    updated_at: dt.datetime
    strategy: str | None
    account: str | None
    session: str | None
    signal_id: str | None

    @classmethod
    def of(cls, trade: TradeState) -> Position:
        return cls(
            trade_id=trade.trade_id,
            symbol=trade.symbol,
            side=trade.side,
            currency=trade.currency,
            quantity=trade.quantity,
            average_entry=trade.average_entry,
            stop_price=trade.stop_price,
            target_price=trade.target_price,
            trailing_pct=trade.trailing_pct,
            realized_net=trade.net,
            gross=trade.gross,
            fees=trade.fees,
            funding=trade.funding,
            multiplier=trade.multiplier,
            leverage=trade.leverage,
            opened_at=trade.opened_at,
            updated_at=trade.updated_at,
            strategy=trade.strategy,
            account=trade.account,
            session=trade.session,
            signal_id=trade.signal_id,
        )


class OpenPositions(StateProjection):
    """Every open trade: open quantity, average entry, stop, target, realized net so far.

    for trade in book.view(OpenPositions).positions(symbol="BTCUSDT"):
        print(trade.trade_id, trade.quantity, trade.average_entry, trade.stop_price)
    """

    name = "open_positions"
    version = 1
    reads = TRADE_EVENTS

    def __init__(self) -> None:
        self._open: dict[str, TradeState] = {}

    def apply(self, step: Step) -> None:
        trade = step.after
        if trade is None:
            return
        if trade.closed_at is None:
            self._open[trade.trade_id] = trade
        else:
            self._open.pop(trade.trade_id, None)

    def reset(self) -> None:
        self._open = {}

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(sorted(self._open.values(), key=lambda t: t.trade_id))

    def restore(self, data: bytes) -> None:
        trades = msgspec.msgpack.decode(data, type=list[TradeState])
        self._open = {trade.trade_id: trade for trade in trades}

    def positions(
        self,
        *,
        symbol: str | None = None,
        account: str | None = None,
        strategy: str | None = None,
    ) -> list[TradeState]:
        """Open trades, oldest first, optionally only one symbol, account or strategy."""
        self.ready()
        return sorted(
            (
                trade
                for trade in self._open.values()
                if (symbol is None or trade.symbol == symbol)
                and (account is None or trade.account == account)
                and (strategy is None or trade.strategy == strategy)
            ),
            key=lambda t: (t.opened_at, t.trade_id),
        )

    def get(self, trade_id: str) -> TradeState | None:
        """The open trade ``trade_id``, or None if it is not open."""
        self.ready()
        return self._open.get(trade_id)

    def __len__(self) -> int:
        self.ready()
        return len(self._open)
