"""Open positions: every open trade as the trade fold sees it."""

from __future__ import annotations

import msgspec

from ledger.projection import StateProjection, Step
from ledger.trade import TradeState


class OpenPositions(StateProjection):
    """Every open trade: open quantity, average entry, stop, target, realized net so far.

    for trade in book.view(OpenPositions).positions(symbol="BTCUSDT"):
        print(trade.trade_id, trade.quantity, trade.average_entry, trade.stop_price)
    """

    name = "open_positions"
    version = 1

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
