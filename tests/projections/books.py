"""Event factories and view snapshots for the projection tests.

Factories give every required field a default so a test names only what it
is about; ``views`` gathers every standard view's whole answer into one dict
that compares with ``==``, so "rebuild equals incremental" is one assertion.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
from collections.abc import Coroutine, Iterable
from decimal import Decimal
from typing import Any, TypeVar

from ledger import (
    Event,
    FeeCharged,
    FundingApplied,
    Ledger,
    ParameterChanged,
    SignalEmitted,
    StopMoved,
    TradeClosed,
    TradeIncreased,
    TradeOpened,
    TradeReduced,
)
from ledger.events import TradeEvent, validate
from ledger.trade import TradeState, evolve
from projections import (
    OpenPositions,
    Parameters,
    Performance,
    Pnl,
    Signals,
    TradeHistory,
)
from projections.grouping import GROUPS

T = TypeVar("T")

# Midnight UTC of a Monday in the past: day(0) is its noon.
EPOCH = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
EVERYTHING = 1_000_000


def D(value: str | int) -> Decimal:
    """A Decimal from its exact spelling."""
    return Decimal(str(value))


def total(values: Iterable[Decimal]) -> Decimal:
    """The exact sum (the default context's 28 digits would round the library's 80)."""
    with decimal.localcontext(decimal.Context(prec=10_000)):
        return sum(values, Decimal(0))


def day(n: int, hour: int = 12, minute: int = 0, second: int = 0) -> dt.datetime:
    """``EPOCH`` plus ``n`` days, at ``hour:minute:second`` UTC."""
    return EPOCH + dt.timedelta(days=n, hours=hour, minutes=minute, seconds=second)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine to the end on a fresh event loop."""
    return asyncio.run(coroutine)


def opened(
    trade_id: str, quantity: str | int = 1, price: str | int = 100, **fields: Any
) -> TradeOpened:
    """A ``TradeOpened``: long BTCUSDT in USDT at day(0) unless told otherwise."""
    base: dict[str, Any] = {
        "symbol": "BTCUSDT",
        "side": "long",
        "currency": "USDT",
        "occurred_at": day(0),
    }
    for name in ("fee", "stop_price", "multiplier", "leverage", "margin", "target_price"):
        if name in fields and isinstance(fields[name], str | int):
            fields[name] = D(fields[name])
    return TradeOpened(
        trade_id=trade_id, quantity=D(quantity), price=D(price), **{**base, **fields}
    )


def increased(
    trade_id: str, quantity: str | int, price: str | int, fee: str | int = 0, **fields: Any
) -> TradeIncreased:
    """A ``TradeIncreased`` (scale-in) fill at day(0) 13:00 unless told otherwise."""
    fields.setdefault("occurred_at", day(0, 13))
    return TradeIncreased(
        trade_id=trade_id, quantity=D(quantity), price=D(price), fee=D(fee), **fields
    )


def reduced(
    trade_id: str, quantity: str | int, price: str | int, fee: str | int = 0, **fields: Any
) -> TradeReduced:
    """A ``TradeReduced`` (partial exit) fill at day(0) 14:00 unless told otherwise."""
    fields.setdefault("occurred_at", day(0, 14))
    return TradeReduced(
        trade_id=trade_id, quantity=D(quantity), price=D(price), fee=D(fee), **fields
    )


def closed(trade_id: str, price: str | int, fee: str | int = 0, **fields: Any) -> TradeClosed:
    """A manual ``TradeClosed`` at day(0) 15:00 unless told otherwise."""
    fields.setdefault("occurred_at", day(0, 15))
    fields.setdefault("reason", "manual")
    return TradeClosed(trade_id=trade_id, price=D(price), fee=D(fee), **fields)


def fee_charged(
    trade_id: str, amount: str | int, kind: str = "commission", **fields: Any
) -> FeeCharged:
    """A ``FeeCharged`` at day(0) 13:30 unless told otherwise."""
    fields.setdefault("occurred_at", day(0, 13, 30))
    return FeeCharged(trade_id=trade_id, amount=D(amount), kind=kind, **fields)  # type: ignore[arg-type]


def funding(trade_id: str, amount: str | int, **fields: Any) -> FundingApplied:
    """A ``FundingApplied`` at day(0) 13:45 unless told otherwise."""
    fields.setdefault("occurred_at", day(0, 13, 45))
    return FundingApplied(trade_id=trade_id, amount=D(amount), **fields)


def stop_moved(trade_id: str, stop_price: str | int, **fields: Any) -> StopMoved:
    """A ``StopMoved`` at day(0) 12:30 unless told otherwise."""
    fields.setdefault("occurred_at", day(0, 12, 30))
    return StopMoved(trade_id=trade_id, stop_price=D(stop_price), **fields)


def signal(signal_id: str, **fields: Any) -> SignalEmitted:
    """A long BTCUSDT ``SignalEmitted`` at day(0) 11:00 unless told otherwise."""
    base: dict[str, Any] = {"symbol": "BTCUSDT", "side": "long", "occurred_at": day(0, 11)}
    return SignalEmitted(signal_id=signal_id, **{**base, **fields})


def parameter(name: str, new_value: Any, **fields: Any) -> ParameterChanged:
    """A manual ``ParameterChanged`` at day(0) 10:00 unless told otherwise."""
    base: dict[str, Any] = {"changed_by": "manual", "occurred_at": day(0, 10)}
    return ParameterChanged(name=name, new_value=new_value, **{**base, **fields})


def simple_trade(
    trade_id: str,
    net: str | int,
    *,
    closed_at: dt.datetime,
    opened_at: dt.datetime | None = None,
    stop: str | int | None = None,
    **fields: Any,
) -> list[TradeEvent]:
    """A long trade of 1 at 100 closed at 100 + ``net``: its net is exactly ``net``."""
    if opened_at is None:
        opened_at = closed_at - dt.timedelta(hours=1)
    open_fields = dict(fields)
    if stop is not None:
        open_fields["stop_price"] = D(stop)
    return [
        opened(trade_id, 1, 100, occurred_at=opened_at, **open_fields),
        closed(trade_id, D(100) + D(net), occurred_at=closed_at),
    ]


def fold(events: Iterable[TradeEvent]) -> TradeState:
    """The trade after ``events``, through the ledger's own validation and fold."""
    state: TradeState | None = None
    for event in events:
        checked = validate(event)
        assert isinstance(checked, TradeEvent)
        state = evolve(state, checked)
    assert state is not None
    return state


async def record_all(book: Ledger, events: Iterable[Event]) -> None:
    """Record every event, one call each, in order."""
    for event in events:
        await book.record(event)


async def views(book: Ledger) -> dict[str, Any]:
    """Every standard view's whole answer, keyed by query."""
    found: dict[str, Any] = {}
    found["positions"] = registered(book, OpenPositions).positions()
    pnl = registered(book, Pnl)
    performance = registered(book, Performance)
    for group_by in (None, *GROUPS):
        found[f"pnl/{group_by}"] = pnl.totals(group_by)
        found[f"performance/{group_by}"] = await performance.figures(group_by)
    found["daily"] = await performance.daily()
    found["history"] = await registered(book, TradeHistory).trades(limit=EVERYTHING)
    found["signals"] = await registered(book, Signals).signals(limit=EVERYTHING)
    found["parameters"] = await registered(book, Parameters).changes(limit=EVERYTHING)
    found["current"] = await registered(book, Parameters).current()
    return found


def registered(book: Ledger, cls: type[T]) -> T:
    """The projection of ``cls`` or a subclass of it registered with ``book``."""
    for projection in book.runner.projections:
        if isinstance(projection, cls):
            return projection
    raise LookupError(cls.__name__)


def assert_same_views(found: dict[str, Any], expected: dict[str, Any], note: str = "") -> None:
    """Every view's answer equal, naming the first view that differs and how."""
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        if found[key] != value:
            pairs = (
                [(f, e) for f, e in zip(found[key], value, strict=False) if f != e]
                if isinstance(value, list)
                else []
            )
            detail = pairs[0] if pairs else (found[key], value)
            raise AssertionError(
                f"view {key} differs {note}: found {detail[0]!r}, expected {detail[1]!r}"
            )
