"""Event factories, random valid trade lifecycles and Hypothesis strategies for tests.

Factories give every required field a sensible default so a test names only
what it is about:

    >>> opened("t1", quantity=Decimal("2"), price=Decimal("100"))  # doctest: +SKIP

``random_lifecycle`` builds a trade's whole valid event sequence from a seeded
``random.Random``; the ``*_strategy`` functions build any valid event for
Hypothesis, with decimals and times that ``ledger.events.validate`` accepts.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from decimal import Decimal
from typing import Any

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
from ledger.events import CLOSE_REASONS, TradeEvent

__all__ = [
    "EVENT_CLASSES",
    "T0",
    "any_event_strategy",
    "at",
    "closed",
    "decimal_spellings",
    "event_strategy",
    "fee_charged",
    "funding",
    "increased",
    "opened",
    "parameter",
    "random_lifecycle",
    "reduced",
    "respell",
    "signal",
    "stop_moved",
    "target_moved",
]

# A fixed instant in the past: every factory's default occurred_at.
T0 = dt.datetime(2026, 1, 5, 9, 30, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    """``T0`` plus ``seconds``."""
    return T0 + dt.timedelta(seconds=seconds)


def opened(trade_id: str = "t1", **fields: Any) -> TradeOpened:
    """A ``TradeOpened``: long 1 BTCUSDT at 100 USDT unless told otherwise."""
    base: dict[str, Any] = {
        "symbol": "BTCUSDT",
        "side": "long",
        "quantity": Decimal("1"),
        "price": Decimal("100"),
        "currency": "USDT",
        "occurred_at": T0,
    }
    return TradeOpened(trade_id=trade_id, **{**base, **fields})


def increased(trade_id: str = "t1", **fields: Any) -> TradeIncreased:
    """A ``TradeIncreased`` of 1 at 100 unless told otherwise."""
    base: dict[str, Any] = {
        "quantity": Decimal("1"),
        "price": Decimal("100"),
        "occurred_at": at(60),
    }
    return TradeIncreased(trade_id=trade_id, **{**base, **fields})


def reduced(trade_id: str = "t1", **fields: Any) -> TradeReduced:
    """A ``TradeReduced`` of 1 at 100 unless told otherwise."""
    base: dict[str, Any] = {
        "quantity": Decimal("1"),
        "price": Decimal("100"),
        "occurred_at": at(120),
    }
    return TradeReduced(trade_id=trade_id, **{**base, **fields})


def closed(trade_id: str = "t1", **fields: Any) -> TradeClosed:
    """A ``TradeClosed`` at 100, reason manual, unless told otherwise."""
    base: dict[str, Any] = {"price": Decimal("100"), "reason": "manual", "occurred_at": at(300)}
    return TradeClosed(trade_id=trade_id, **{**base, **fields})


def stop_moved(trade_id: str = "t1", **fields: Any) -> StopMoved:
    """A ``StopMoved`` to 95 unless told otherwise."""
    base: dict[str, Any] = {"stop_price": Decimal("95"), "occurred_at": at(30)}
    return StopMoved(trade_id=trade_id, **{**base, **fields})


def target_moved(trade_id: str = "t1", **fields: Any) -> TargetMoved:
    """A ``TargetMoved`` to 120 unless told otherwise."""
    base: dict[str, Any] = {"target_price": Decimal("120"), "occurred_at": at(30)}
    return TargetMoved(trade_id=trade_id, **{**base, **fields})


def fee_charged(trade_id: str = "t1", **fields: Any) -> FeeCharged:
    """A ``FeeCharged`` commission of 1 unless told otherwise."""
    base: dict[str, Any] = {"amount": Decimal("1"), "kind": "commission", "occurred_at": at(90)}
    return FeeCharged(trade_id=trade_id, **{**base, **fields})


def funding(trade_id: str = "t1", **fields: Any) -> FundingApplied:
    """A ``FundingApplied`` of 1 received unless told otherwise."""
    base: dict[str, Any] = {"amount": Decimal("1"), "occurred_at": at(3600)}
    return FundingApplied(trade_id=trade_id, **{**base, **fields})


def signal(signal_id: str = "s1", **fields: Any) -> SignalEmitted:
    """A long ``SignalEmitted`` on BTCUSDT unless told otherwise."""
    base: dict[str, Any] = {"symbol": "BTCUSDT", "side": "long", "occurred_at": T0}
    return SignalEmitted(signal_id=signal_id, **{**base, **fields})


def parameter(name: str = "risk_pct", **fields: Any) -> ParameterChanged:
    """A manual ``ParameterChanged`` of ``name`` to "0.5" unless told otherwise."""
    base: dict[str, Any] = {"new_value": "0.5", "changed_by": "manual", "occurred_at": T0}
    return ParameterChanged(name=name, **{**base, **fields})


_LOT = Decimal("0.001")
_TICK = Decimal("0.01")


def random_lifecycle(
    rng: random.Random,
    trade_id: str,
    *,
    start: dt.datetime = T0,
    steps: int = 8,
    close: bool = True,
    fill_ids: bool = True,
) -> list[TradeEvent]:
    """A valid event sequence for one trade: open, ``steps`` random events, then maybe a close.

    Quantities are whole lots of 0.001 and prices whole ticks of 0.01, so no
    reduce ever exceeds what is open. With ``close`` the last event closes
    the trade (a ``TradeClosed``, or a ``TradeReduced`` of all that is open).
    """
    moment = start
    fill = 0

    def tick() -> dt.datetime:
        nonlocal moment
        moment += dt.timedelta(seconds=rng.randint(1, 600), microseconds=rng.randint(0, 999_999))
        return moment

    def fill_kw() -> dict[str, Any]:
        nonlocal fill
        fill += 1
        return {"fill_id": f"{trade_id}-f{fill}"} if fill_ids else {}

    def price() -> Decimal:
        return rng.randint(5_000, 15_000) * _TICK

    def fee() -> Decimal:
        return rng.randint(-50, 200) * _TICK / 10

    lots = rng.randint(1, 5_000)
    events: list[TradeEvent] = [
        opened(
            trade_id,
            side=rng.choice(["long", "short"]),
            quantity=lots * _LOT,
            price=price(),
            multiplier=rng.choice([Decimal(1), Decimal(1), Decimal("0.1"), Decimal(50)]),
            stop_price=rng.choice([None, price()]),
            fee=fee(),
            occurred_at=tick(),
            **fill_kw(),
        )
    ]
    for _ in range(steps):
        kind = rng.choice(["inc", "red", "stop", "target", "fee", "funding"])
        if kind == "red" and lots > 1:
            take = rng.randint(1, lots - 1)
            lots -= take
            events.append(
                reduced(
                    trade_id,
                    quantity=take * _LOT,
                    price=price(),
                    fee=fee(),
                    occurred_at=tick(),
                    **fill_kw(),
                )
            )
        elif kind in ("inc", "red"):
            add = rng.randint(1, 5_000)
            lots += add
            events.append(
                increased(
                    trade_id,
                    quantity=add * _LOT,
                    price=price(),
                    fee=fee(),
                    occurred_at=tick(),
                    **fill_kw(),
                )
            )
        elif kind == "stop":
            events.append(stop_moved(trade_id, stop_price=price(), occurred_at=tick()))
        elif kind == "target":
            events.append(target_moved(trade_id, target_price=price(), occurred_at=tick()))
        elif kind == "fee":
            events.append(
                fee_charged(
                    trade_id,
                    amount=fee(),
                    kind=rng.choice(["commission", "borrow", "other"]),
                    occurred_at=tick(),
                )
            )
        else:
            events.append(
                funding(trade_id, amount=rng.randint(-500, 500) * _TICK, occurred_at=tick())
            )
    if close:
        if rng.random() < 0.5:
            events.append(
                closed(
                    trade_id,
                    price=price(),
                    reason=rng.choice(sorted(CLOSE_REASONS)),
                    fee=fee(),
                    occurred_at=tick(),
                    **fill_kw(),
                )
            )
        else:
            events.append(
                reduced(
                    trade_id,
                    quantity=lots * _LOT,
                    price=price(),
                    fee=fee(),
                    reason=rng.choice(["take_profit", "stop_loss", "scale_out"]),
                    occurred_at=tick(),
                    **fill_kw(),
                )
            )
    return events


# Hypothesis strategies.

_OFFSETS = [dt.timedelta(hours=h, minutes=m) for h in range(-12, 15) for m in (0, 30)]


def _times() -> st.SearchStrategy[dt.datetime]:
    return st.builds(
        lambda naive, offset: naive.replace(tzinfo=dt.timezone(offset)),
        st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2099, 12, 31)),
        st.sampled_from(_OFFSETS),
    )


def _positive() -> st.SearchStrategy[Decimal]:
    return st.builds(
        lambda mantissa, exponent: Decimal(mantissa).scaleb(exponent),
        st.integers(min_value=1, max_value=10**15),
        st.integers(min_value=-12, max_value=6),
    )


def _signed() -> st.SearchStrategy[Decimal]:
    return st.builds(
        lambda mantissa, exponent: Decimal(mantissa).scaleb(exponent),
        st.integers(min_value=-(10**15), max_value=10**15),
        st.integers(min_value=-12, max_value=6),
    )


def _unit() -> st.SearchStrategy[Decimal]:
    return st.builds(lambda n: Decimal(n).scaleb(-4), st.integers(min_value=0, max_value=10_000))


# Letters, digits, punctuation, symbols and the ASCII space: what str.isprintable() accepts.
_ID_CHARS = st.characters(codec="utf-8", categories=["L", "N", "P", "S"], include_characters=" ")


def _ids() -> st.SearchStrategy[str]:
    return st.text(_ID_CHARS, min_size=1, max_size=40)


def _text() -> st.SearchStrategy[str]:
    return st.text(_ID_CHARS, min_size=1, max_size=60)


def _opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


_METADATA = st.dictionaries(
    st.text(min_size=1, max_size=10),
    st.none() | st.booleans() | st.integers(-(10**9), 10**9) | st.text(max_size=20),
    max_size=4,
)


def event_strategy(cls: type[Event]) -> st.SearchStrategy[Event]:
    """Any valid event of type ``cls`` (valid for ``validate``; not necessarily for a trade)."""
    common: dict[str, st.SearchStrategy[Any]] = {"occurred_at": _times(), "metadata": _METADATA}
    trade: dict[str, st.SearchStrategy[Any]] = {**common, "trade_id": _ids()}
    fill: dict[str, st.SearchStrategy[Any]] = {
        "fee": _signed(),
        "fill_id": _opt(_ids()),
        "order_id": _opt(_ids()),
    }
    fields: dict[type[Event], dict[str, st.SearchStrategy[Any]]] = {
        SignalEmitted: {
            **common,
            "signal_id": _ids(),
            "symbol": _ids(),
            "side": st.sampled_from(["long", "short"]),
            "timeframe": _opt(_text()),
            "confidence": _opt(_unit()),
            "entry_price": _opt(_positive()),
            "stop_price": _opt(_positive()),
            "target_price": _opt(_positive()),
            "strategy": _opt(_text()),
            "model": _opt(_text()),
            "session": _opt(_text()),
            "pattern": _opt(_text()),
        },
        TradeOpened: {
            **trade,
            **fill,
            "symbol": _ids(),
            "side": st.sampled_from(["long", "short"]),
            "quantity": _positive(),
            "price": _positive(),
            "currency": st.from_regex(r"[A-Z0-9]{1,16}", fullmatch=True),
            "multiplier": _positive(),
            "leverage": _positive(),
            "margin": _opt(_positive()),
            "stop_price": _opt(_positive()),
            "target_price": _opt(_positive()),
            "trailing_pct": _opt(_positive()),
            "signal_id": _opt(_ids()),
            "account": _opt(_text()),
            "strategy": _opt(_text()),
            "model": _opt(_text()),
            "confidence": _opt(_unit()),
            "regime": _opt(_text()),
            "session": _opt(_text()),
            "pattern": _opt(_text()),
        },
        TradeIncreased: {**trade, **fill, "quantity": _positive(), "price": _positive()},
        StopMoved: {**trade, "stop_price": _positive(), "reason": _opt(_text())},
        TargetMoved: {**trade, "target_price": _positive(), "reason": _opt(_text())},
        TradeReduced: {
            **trade,
            **fill,
            "quantity": _positive(),
            "price": _positive(),
            "reason": _opt(_text()),
        },
        FeeCharged: {
            **trade,
            "amount": _signed(),
            "kind": st.sampled_from(["commission", "borrow", "liquidation", "other"]),
        },
        FundingApplied: {**trade, "amount": _signed(), "rate": _opt(_signed())},
        TradeClosed: {
            **trade,
            **fill,
            "price": _positive(),
            "reason": st.sampled_from(sorted(CLOSE_REASONS)),
        },
        ParameterChanged: {
            **common,
            "name": _ids(),
            "new_value": st.none() | st.booleans() | st.integers(-(10**9), 10**9) | _text(),
            "old_value": st.none() | st.booleans() | st.integers(-(10**9), 10**9) | _text(),
            "reason": _opt(_text()),
            "changed_by": st.sampled_from(["system_auto", "learning_agent", "manual", "emergency"]),
            "scope": _opt(_text()),
        },
    }
    build: Callable[..., Event] = cls
    return st.builds(build, **fields[cls])


EVENT_CLASSES: tuple[type[Event], ...] = (
    SignalEmitted,
    TradeOpened,
    TradeIncreased,
    StopMoved,
    TargetMoved,
    TradeReduced,
    FeeCharged,
    FundingApplied,
    TradeClosed,
    ParameterChanged,
)


def any_event_strategy() -> st.SearchStrategy[Event]:
    """Any valid event of any type."""
    return st.one_of([event_strategy(cls) for cls in EVENT_CLASSES])


def respell(value: Decimal, extra_zeros: int) -> Decimal:
    """The same number written with ``extra_zeros`` more trailing zeros (1.5 -> 1.500)."""
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    return Decimal((sign, (*digits, *([0] * extra_zeros)), exponent - extra_zeros))


def decimal_spellings(event: Event, rng: random.Random) -> Event:
    """``event`` with every Decimal field rewritten with random trailing zeros or an exponent."""
    import msgspec

    changes: dict[str, Any] = {}
    for name in event.__struct_fields__:
        value = getattr(event, name)
        if isinstance(value, Decimal):
            if rng.random() < 0.5:
                changes[name] = respell(value, rng.randint(1, 3))
            else:
                changes[name] = value.normalize()
    return msgspec.structs.replace(event, **changes)
