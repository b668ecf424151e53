"""tradeledger: an event-sourced trade ledger for trading bots.

from ledger import open_ledger, TradeOpened

async with open_ledger("sqlite:///bot.db") as book:
    record = await book.record(TradeOpened(...))
"""

from ledger.book import Append, Ledger, open_ledger
from ledger.errors import (
    ConcurrencyError,
    IdempotencyConflict,
    IncompatibleStore,
    IntegrityError,
    InvalidEvent,
    LedgerClosed,
    LedgerError,
    OutcomeUnknown,
    ProjectionFaulted,
    StoreError,
    StoreUnavailable,
)
from ledger.events import (
    Event,
    FeeCharged,
    FundingApplied,
    ParameterChanged,
    SignalEmitted,
    StopMoved,
    TargetMoved,
    TradeClosed,
    TradeIncreased,
    TradeOpened,
    TradeReduced,
)
from ledger.record import Pending, Record
from ledger.trade import TradeState

__all__ = [
    "Append",
    "ConcurrencyError",
    "Event",
    "FeeCharged",
    "FundingApplied",
    "IdempotencyConflict",
    "IncompatibleStore",
    "IntegrityError",
    "InvalidEvent",
    "Ledger",
    "LedgerClosed",
    "LedgerError",
    "OutcomeUnknown",
    "ParameterChanged",
    "Pending",
    "ProjectionFaulted",
    "Record",
    "SignalEmitted",
    "StopMoved",
    "StoreError",
    "StoreUnavailable",
    "TargetMoved",
    "TradeClosed",
    "TradeIncreased",
    "TradeOpened",
    "TradeReduced",
    "TradeState",
    "open_ledger",
]
