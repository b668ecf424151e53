"""Read models over the log: positions, PnL, performance, history, signals, parameters.

from projections import standard
async with open_ledger(url, projections=standard()) as book:
    book.view(OpenPositions).positions()
"""

from __future__ import annotations

from decimal import Decimal

from ledger.projection import StateProjection, TableProjection
from projections.history import ClosedTrade, TradeHistory, TradePage
from projections.parameters import Change, Parameters
from projections.performance import Day, Figures, Performance
from projections.pnl import Pnl, PnlRow
from projections.positions import OpenPositions
from projections.signals import Signal, SignalPage, Signals

__all__ = [
    "Change",
    "ClosedTrade",
    "Day",
    "Figures",
    "OpenPositions",
    "Parameters",
    "Performance",
    "Pnl",
    "PnlRow",
    "Signal",
    "SignalPage",
    "Signals",
    "TradeHistory",
    "TradePage",
    "standard",
]


def standard(
    *, starting_equity: Decimal = Decimal(0), annualization_days: int = 365
) -> list[StateProjection | TableProjection]:
    """Fresh instances of every standard projection, for ``open_ledger(projections=...)``."""
    return [
        OpenPositions(),
        Pnl(),
        Performance(starting_equity=starting_equity, annualization_days=annualization_days),
        Signals(),
        TradeHistory(),
        Parameters(),
    ]
