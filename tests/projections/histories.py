"""Hypothesis strategies for whole multi-trade histories, and their mirror images.

A history is a list of events a ledger accepts in that order: signals first,
then the lifecycles of several trades (long and short, one or two
currencies, several symbols, strategies, sessions and accounts) interleaved
with parameter changes. Each trade scales in, reduces (never by more than is
open), moves its stop, pays fees and rebates, receives or pays funding and
maybe closes. Prices are ticks of 0.01 in 75..125 and quantities lots of
0.01, so averages often do not terminate, and every price p reflects around
any entry e to 2e - p > 0. Each trade's clock runs forward over several days,
but trades interleave, so close times are not in log order.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import msgspec
from hypothesis import strategies as st

from ledger import (
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
from ledger.events import TradeEvent
from tests.projections.books import EPOCH

TICK = Decimal("0.01")
LOT = Decimal("0.01")

prices = st.integers(min_value=7_500, max_value=12_500).map(lambda n: n * TICK)
lots = st.integers(min_value=1, max_value=900)
fees = st.integers(min_value=-30, max_value=200).map(lambda n: n * TICK / 10)
fundings = st.integers(min_value=-300, max_value=300).map(lambda n: n * TICK)
gaps = st.one_of(
    st.integers(min_value=1, max_value=3_600),
    st.integers(min_value=3_600, max_value=2 * 86_400),
).map(lambda s: dt.timedelta(seconds=s))
labels = st.sampled_from([None, "alpha", "beta"])


@st.composite
def lifecycle(
    draw: st.DrawFn, trade_id: str, signal_ids: list[str], *, may_stay_open: bool = True
) -> list[TradeEvent]:
    """One trade's valid events: an open, up to 7 changes, and usually a close."""
    moment = EPOCH + dt.timedelta(seconds=draw(st.integers(min_value=0, max_value=6 * 86_400)))

    def tick() -> dt.datetime:
        nonlocal moment
        moment += draw(gaps)
        return moment

    open_lots = draw(lots)
    events: list[TradeEvent] = [
        TradeOpened(
            trade_id=trade_id,
            symbol=draw(st.sampled_from(["BTCUSDT", "ETHUSDT", "SOLUSDT"])),
            side=draw(st.sampled_from(["long", "short"])),
            quantity=open_lots * LOT,
            price=draw(prices),
            currency=draw(st.sampled_from(["USDT", "USDT", "USD"])),
            multiplier=draw(st.sampled_from([Decimal(1), Decimal(1), Decimal("0.1"), Decimal(50)])),
            leverage=draw(st.sampled_from([Decimal(1), Decimal(3), Decimal("12.5")])),
            margin=draw(st.sampled_from([None, None, Decimal("250.5")])),
            stop_price=draw(st.one_of(st.none(), prices)),
            target_price=draw(st.one_of(st.none(), prices)),
            fee=draw(fees),
            signal_id=draw(st.sampled_from([None, *signal_ids])),
            account=draw(labels),
            strategy=draw(labels),
            session=draw(labels),
            pattern=draw(labels),
            occurred_at=tick(),
        )
    ]
    for kind in draw(
        st.lists(
            st.sampled_from(["inc", "red", "red", "stop", "target", "fee", "funding"]), max_size=7
        )
    ):
        if kind == "red" and open_lots > 1:
            take = draw(st.integers(min_value=1, max_value=open_lots - 1))
            open_lots -= take
            events.append(
                TradeReduced(
                    trade_id=trade_id,
                    quantity=take * LOT,
                    price=draw(prices),
                    fee=draw(fees),
                    reason=draw(st.sampled_from([None, "scale_out", "take_profit"])),
                    occurred_at=tick(),
                )
            )
        elif kind in ("inc", "red"):
            add = draw(lots)
            open_lots += add
            events.append(
                TradeIncreased(
                    trade_id=trade_id,
                    quantity=add * LOT,
                    price=draw(prices),
                    fee=draw(fees),
                    occurred_at=tick(),
                )
            )
        elif kind == "stop":
            events.append(StopMoved(trade_id=trade_id, stop_price=draw(prices), occurred_at=tick()))
        elif kind == "target":
            events.append(
                TargetMoved(trade_id=trade_id, target_price=draw(prices), occurred_at=tick())
            )
        elif kind == "fee":
            events.append(
                FeeCharged(
                    trade_id=trade_id,
                    amount=draw(fees),
                    kind=draw(st.sampled_from(["commission", "borrow", "liquidation", "other"])),
                    occurred_at=tick(),
                )
            )
        else:
            events.append(
                FundingApplied(trade_id=trade_id, amount=draw(fundings), occurred_at=tick())
            )
    ending = draw(
        st.sampled_from(["close", "reduce", "open"] if may_stay_open else ["close", "reduce"])
    )
    if ending == "close":
        events.append(
            TradeClosed(
                trade_id=trade_id,
                price=draw(prices),
                fee=draw(fees),
                reason=draw(st.sampled_from(["take_profit", "stop_loss", "manual", "liquidation"])),
                occurred_at=tick(),
            )
        )
    elif ending == "reduce":
        events.append(
            TradeReduced(
                trade_id=trade_id,
                quantity=open_lots * LOT,
                price=draw(prices),
                fee=draw(fees),
                reason=draw(st.sampled_from([None, "stop_loss", "scale_out"])),
                occurred_at=tick(),
            )
        )
    return events


@st.composite
def histories(draw: st.DrawFn, *, max_trades: int = 6, may_stay_open: bool = True) -> list[Event]:
    """A valid multi-trade history with signals and parameter changes, interleaved."""
    signal_ids = [f"s{i}" for i in range(draw(st.integers(min_value=0, max_value=3)))]
    signals: list[Event] = [
        SignalEmitted(
            signal_id=signal_id,
            symbol=draw(st.sampled_from(["BTCUSDT", "ETHUSDT"])),
            side=draw(st.sampled_from(["long", "short"])),
            strategy=draw(labels),
            occurred_at=EPOCH,
        )
        for signal_id in signal_ids
    ]
    trades = draw(st.integers(min_value=1, max_value=max_trades))
    queues: list[list[Event]] = [
        list(draw(lifecycle(f"t{i}", signal_ids, may_stay_open=may_stay_open)))
        for i in range(trades)
    ]
    queues.append(
        [
            ParameterChanged(
                name=draw(st.sampled_from(["risk_pct", "max_positions"])),
                new_value=draw(
                    st.one_of(st.integers(0, 9), st.sampled_from(["0.5", "1"]), st.booleans())
                ),
                changed_by=draw(st.sampled_from(["manual", "system_auto", "learning_agent"])),
                occurred_at=EPOCH,
            )
            for _ in range(draw(st.integers(min_value=0, max_value=3)))
        ]
    )
    merged: list[Event] = list(signals)
    while any(queues):
        choices = [i for i, queue in enumerate(queues) if queue]
        merged.append(queues[draw(st.sampled_from(choices))].pop(0))
    return merged


def _reflect(price: Decimal | None, around: Decimal) -> Decimal | None:
    if price is None:
        return None
    mirrored = 2 * around - price
    assert mirrored > 0, "the strategies keep every price within twice any entry"
    return mirrored


def mirror(events: list[Event]) -> list[Event]:
    """The same history with every trade's side flipped and every price p of it
    (fills, stops, targets) reflected around its first entry price e to 2e - p."""
    entry: dict[str, Decimal] = {}
    side = {"long": "short", "short": "long"}
    mirrored: list[Event] = []
    for event in events:
        if not isinstance(event, TradeEvent):
            mirrored.append(event)
            continue
        if isinstance(event, TradeOpened):
            entry[event.trade_id] = event.price
        e = entry[event.trade_id]
        changes: dict[str, Any] = {}
        if isinstance(event, TradeOpened):
            changes = {
                "side": side[event.side],
                "price": _reflect(event.price, e),
                "stop_price": _reflect(event.stop_price, e),
                "target_price": _reflect(event.target_price, e),
            }
        elif isinstance(event, TradeIncreased | TradeReduced | TradeClosed):
            changes = {"price": _reflect(event.price, e)}
        elif isinstance(event, StopMoved):
            changes = {"stop_price": _reflect(event.stop_price, e)}
        elif isinstance(event, TargetMoved):
            changes = {"target_price": _reflect(event.target_price, e)}
        mirrored.append(msgspec.structs.replace(event, **changes))
    return mirrored


@st.composite
def breakeven_trades(draw: st.DrawFn, trade_id: str) -> list[TradeEvent]:
    """A trade whose every exit is at its average entry A, without fees or funding.

    Entries come in back-to-back pairs of equal quantity at A + x and A - x,
    so the average is A after every pair; exits at A never move it.
    """
    average = draw(st.integers(min_value=5_000, max_value=15_000)) * TICK
    offsets = st.integers(min_value=0, max_value=4_999).map(lambda n: n * TICK)
    moment = EPOCH + dt.timedelta(seconds=draw(st.integers(min_value=0, max_value=86_400)))

    def tick() -> dt.datetime:
        nonlocal moment
        moment += draw(gaps)
        return moment

    quantity, offset = draw(lots), draw(offsets)
    open_lots = 2 * quantity
    events: list[TradeEvent] = [
        TradeOpened(
            trade_id=trade_id,
            symbol="BTCUSDT",
            side=draw(st.sampled_from(["long", "short"])),
            quantity=quantity * LOT,
            price=average + offset,
            currency="USDT",
            multiplier=draw(st.sampled_from([Decimal(1), Decimal("0.1"), Decimal(50)])),
            stop_price=draw(st.one_of(st.none(), st.just(average))),
            occurred_at=tick(),
        ),
        TradeIncreased(
            trade_id=trade_id, quantity=quantity * LOT, price=average - offset, occurred_at=tick()
        ),
    ]
    for kind in draw(st.lists(st.sampled_from(["pair", "reduce", "stop"]), max_size=6)):
        if kind == "pair":
            quantity, offset = draw(lots), draw(offsets)
            open_lots += 2 * quantity
            for price in (average + offset, average - offset):
                events.append(
                    TradeIncreased(
                        trade_id=trade_id, quantity=quantity * LOT, price=price, occurred_at=tick()
                    )
                )
        elif kind == "reduce" and open_lots > 1:
            take = draw(st.integers(min_value=1, max_value=open_lots - 1))
            open_lots -= take
            events.append(
                TradeReduced(
                    trade_id=trade_id, quantity=take * LOT, price=average, occurred_at=tick()
                )
            )
        else:
            events.append(StopMoved(trade_id=trade_id, stop_price=average, occurred_at=tick()))
    if draw(st.booleans()):
        events.append(
            TradeClosed(trade_id=trade_id, price=average, reason="manual", occurred_at=tick())
        )
    else:
        events.append(
            TradeReduced(
                trade_id=trade_id, quantity=open_lots * LOT, price=average, occurred_at=tick()
            )
        )
    return events


def random_history(rng: random.Random, trades: int, *, concurrent: int = 4) -> Iterator[Event]:
    """A long valid history from a seeded generator (for processes without Hypothesis).

    Up to ``concurrent`` trades are open at once; signals and parameter
    changes come along. The clock moves forward by up to an hour per event.
    """
    moment = EPOCH
    opened_trades = 0
    live: dict[str, int] = {}  # trade id -> open lots

    def tick() -> dt.datetime:
        nonlocal moment
        moment += dt.timedelta(seconds=rng.randint(1, 3_600), microseconds=rng.randint(0, 999_999))
        return moment

    def price() -> Decimal:
        return rng.randint(7_500, 12_500) * TICK

    def fee() -> Decimal:
        return rng.randint(-30, 200) * TICK / 10

    while opened_trades < trades or live:
        roll = rng.random()
        if opened_trades < trades and (not live or (len(live) < concurrent and roll < 0.25)):
            trade_id = f"t{opened_trades}"
            opened_trades += 1
            signal_id = None
            if rng.random() < 0.3:
                signal_id = f"s-{trade_id}"
                yield SignalEmitted(
                    signal_id=signal_id, symbol="BTCUSDT", side="long", occurred_at=tick()
                )
            live[trade_id] = rng.randint(1, 900)
            yield TradeOpened(
                trade_id=trade_id,
                symbol=rng.choice(["BTCUSDT", "ETHUSDT", "SOLUSDT"]),
                side=rng.choice(["long", "short"]),
                quantity=live[trade_id] * LOT,
                price=price(),
                currency=rng.choice(["USDT", "USDT", "USD"]),
                multiplier=rng.choice([Decimal(1), Decimal("0.1"), Decimal(50)]),
                stop_price=rng.choice([None, price()]),
                fee=fee(),
                signal_id=signal_id,
                strategy=rng.choice([None, "alpha", "beta"]),
                session=rng.choice([None, "asia", "europe"]),
                account=rng.choice([None, "main"]),
                occurred_at=tick(),
            )
            continue
        if roll < 0.27:
            yield ParameterChanged(
                name=rng.choice(["risk_pct", "max_positions"]),
                new_value=rng.randint(0, 9),
                changed_by="system_auto",
                occurred_at=tick(),
            )
            continue
        trade_id = rng.choice(sorted(live))
        kind = rng.choice(["inc", "red", "red", "stop", "fee", "funding", "close"])
        if kind == "inc":
            add = rng.randint(1, 900)
            live[trade_id] += add
            yield TradeIncreased(
                trade_id=trade_id, quantity=add * LOT, price=price(), fee=fee(), occurred_at=tick()
            )
        elif kind == "red" and live[trade_id] > 1:
            take = rng.randint(1, live[trade_id] - 1)
            live[trade_id] -= take
            yield TradeReduced(
                trade_id=trade_id, quantity=take * LOT, price=price(), fee=fee(), occurred_at=tick()
            )
        elif kind == "stop":
            yield StopMoved(trade_id=trade_id, stop_price=price(), occurred_at=tick())
        elif kind == "fee":
            yield FeeCharged(trade_id=trade_id, amount=fee(), kind="borrow", occurred_at=tick())
        elif kind == "funding":
            yield FundingApplied(
                trade_id=trade_id, amount=rng.randint(-300, 300) * TICK, occurred_at=tick()
            )
        else:
            del live[trade_id]
            yield TradeClosed(
                trade_id=trade_id, price=price(), fee=fee(), reason="manual", occurred_at=tick()
            )
