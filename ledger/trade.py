"""The one fold of a trade's stream into its state, and the rules it enforces.

Accounting is exact ``Decimal`` in the library's own context (``CONTEXT``, 80
digits), never the caller's: sums and products stay exact while they span at
most 80 digits from their largest to their smallest, which real amounts do (a
32-digit price beside a 32-place fee is the rare input that is rounded, half-even);
quotients use ``RATIO`` (34 digits). With d = +1 for long and -1 for short, m the multiplier,
Q the open quantity and C its open cost:

- an entry fill of q at p: C += q*p, Q += q (fees are not part of C);
- an exit fill of q at p releases r = C*q/Q (r = C when q = Q), books gross
  m*d*(q*p - r), then C -= r, Q -= q; exits never move the average entry C/Q;
- fees are every fill fee plus every FeeCharged; funding every FundingApplied;
- net = gross - fees + funding.

The rules refuse what cannot happen: opening an existing trade, any event for
a trade that does not exist or after its close, reducing by more than is open.
A reduce of exactly the open quantity closes the trade.

    >>> state = None
    >>> for event in trade_events:  # doctest: +SKIP
    ...     state = evolve(state, event)
"""

from __future__ import annotations

import datetime as dt
import decimal
from decimal import Decimal
from typing import Any, Generic, TypeVar, overload

import msgspec

from ledger.errors import InvalidEvent
from ledger.events import (
    CLOSE_REASONS,
    Event,
    FeeCharged,
    FundingApplied,
    SignalEmitted,
    StopMoved,
    TargetMoved,
    TradeClosed,
    TradeEvent,
    TradeIncreased,
    TradeOpened,
    TradeReduced,
)

__all__ = ["CONTEXT", "RATIO", "StreamState", "TradeState", "evolve", "fold"]

CONTEXT = decimal.Context(
    prec=80,
    rounding=decimal.ROUND_HALF_EVEN,
    Emax=999_999,
    Emin=-999_999,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)

# Ratios (averages, return, ROE, R) are quotients: 34 significant digits, the
# precision of IEEE decimal128, is the design's floor and plenty for them.
RATIO = decimal.Context(
    prec=34,
    rounding=decimal.ROUND_HALF_EVEN,
    Emax=999_999,
    Emin=-999_999,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)

_ZERO = Decimal(0)

T = TypeVar("T")


class _figure(Generic[T]):
    """A figure of a trade, kept in the instance's ``__dict__``, where later reads
    find it first. The first read of any figure computes them all
    (:func:`_figures`): one function call instead of a descriptor and a method
    per figure, on the hot path of a rebuild. ``functools.cached_property``
    would also take a lock on every first use on Python 3.11."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> _figure[T]: ...

    @overload
    def __get__(self, instance: TradeState, owner: type[Any]) -> T: ...

    def __get__(self, instance: TradeState | None, owner: type[Any]) -> T | _figure[T]:
        if instance is None:
            return self
        _figures(instance)
        value: T = instance.__dict__[self.name]
        return value


class TradeState(msgspec.Struct, frozen=True, kw_only=True, dict=True):
    """Everything the log says about one trade, as of its last event.

    The figures (net, R, ...) are computed once per state and kept: a state
    never changes, and several views ask for the same figures of a close.
    """

    trade_id: str
    symbol: str
    side: str
    currency: str
    multiplier: Decimal
    leverage: Decimal
    margin: Decimal | None
    quantity: Decimal
    cost: Decimal
    gross: Decimal = _ZERO
    fees: Decimal = _ZERO
    funding: Decimal = _ZERO
    entry_quantity: Decimal
    entry_cost: Decimal
    exit_quantity: Decimal = _ZERO
    exit_value: Decimal = _ZERO
    initial_quantity: Decimal
    initial_price: Decimal
    initial_stop: Decimal | None
    stop_price: Decimal | None
    target_price: Decimal | None
    trailing_pct: Decimal | None
    opened_at: dt.datetime
    updated_at: dt.datetime
    closed_at: dt.datetime | None = None
    close_reason: str | None = None
    events: int = 1
    signal_id: str | None = None
    account: str | None = None
    strategy: str | None = None
    model: str | None = None
    confidence: Decimal | None = None
    regime: str | None = None
    session: str | None = None
    pattern: str | None = None

    @property
    def closed(self) -> bool:
        """Whether the trade has been closed."""
        return self.closed_at is not None

    @property
    def direction(self) -> int:
        """+1 for long, -1 for short."""
        return 1 if self.side == "long" else -1

    average_entry = _figure[Decimal](
        "C/Q while open; the average entry of all entry fills once closed."
    )
    average_exit = _figure[Decimal | None](
        "The quantity-weighted average exit price, None before any exit."
    )
    net = _figure[Decimal]("Realized net so far: gross - fees + funding.")
    invested = _figure[Decimal]("The sum over entry fills of q*p*m.")
    margin_used = _figure[Decimal]("The margin given at the open, else invested / leverage.")
    return_fraction = _figure[Decimal]("net / invested.")
    roe = _figure[Decimal]("net / margin.")
    initial_risk = _figure[Decimal | None](
        "q0*m*|price0 - stop0| from the open; None without an initial stop."
    )
    r_multiple = _figure[Decimal | None](
        "net / initial risk; None without an initial stop or with zero risk."
    )
    holding_seconds = _figure[Decimal | None]("Open to close in seconds; None while open.")

    @property
    def outcome(self) -> str:
        """win (net > 0), loss (net < 0) or breakeven (net exactly 0)."""
        net = self.net
        return "win" if net > 0 else "loss" if net < 0 else "breakeven"


def _figures(trade: TradeState) -> None:
    """Every figure of ``trade`` into its ``__dict__`` (see :class:`_figure`)."""
    c, q = CONTEXT, RATIO
    net = c.add(c.subtract(trade.gross, trade.fees), trade.funding)
    invested = c.multiply(trade.entry_cost, trade.multiplier)
    margin = trade.margin if trade.margin is not None else q.divide(invested, trade.leverage)
    if trade.quantity:
        average_entry = q.divide(trade.cost, trade.quantity)
    else:
        average_entry = q.divide(trade.entry_cost, trade.entry_quantity)
    risk = None
    if trade.initial_stop is not None:
        spread = c.abs(c.subtract(trade.initial_price, trade.initial_stop))
        risk = c.multiply(c.multiply(trade.initial_quantity, trade.multiplier), spread)
    holding = None
    if trade.closed_at is not None:
        delta = trade.closed_at - trade.opened_at
        whole = Decimal(delta.days * 86_400 + delta.seconds)
        holding = c.add(whole, c.scaleb(Decimal(delta.microseconds), -6))
    trade.__dict__.update(
        average_entry=average_entry,
        average_exit=(
            q.divide(trade.exit_value, trade.exit_quantity) if trade.exit_quantity else None
        ),
        net=net,
        invested=invested,
        margin_used=margin,
        return_fraction=q.divide(net, invested),
        roe=q.divide(net, margin),
        initial_risk=risk,
        r_multiple=q.divide(net, risk) if risk else None,
        holding_seconds=holding,
    )


def _refuse(message: str, rule: str, field: str | None = None) -> InvalidEvent:
    return InvalidEvent(message, field=field, rule=rule)


def _open(event: TradeOpened) -> TradeState:
    cost = CONTEXT.multiply(event.quantity, event.price)
    return TradeState(
        trade_id=event.trade_id,
        symbol=event.symbol,
        side=event.side,
        currency=event.currency,
        multiplier=event.multiplier,
        leverage=event.leverage,
        margin=event.margin,
        quantity=event.quantity,
        cost=cost,
        fees=event.fee,
        entry_quantity=event.quantity,
        entry_cost=cost,
        initial_quantity=event.quantity,
        initial_price=event.price,
        initial_stop=event.stop_price,
        stop_price=event.stop_price,
        target_price=event.target_price,
        trailing_pct=event.trailing_pct,
        opened_at=event.occurred_at,
        updated_at=event.occurred_at,
        signal_id=event.signal_id,
        account=event.account,
        strategy=event.strategy,
        model=event.model,
        confidence=event.confidence,
        regime=event.regime,
        session=event.session,
        pattern=event.pattern,
    )


def _exit(
    state: TradeState,
    quantity: Decimal,
    price: Decimal,
    fee: Decimal,
    at: dt.datetime,
    closing: str | None,
) -> TradeState:
    """An exit fill of ``quantity`` at ``price``; ``closing`` is the close reason
    when it closes the trade."""
    c = CONTEXT
    if quantity == state.quantity:
        cost = _ZERO
    else:
        cost = c.subtract(state.cost, c.divide(c.multiply(state.cost, quantity), state.quantity))
    exit_value = c.add(state.exit_value, c.multiply(quantity, price))
    # Gross from exact running totals: the cost released so far is the entry
    # cost less what is still open, so a rounded C/Q never leaks into a
    # closed trade, whose gross is exactly m*d*(exit proceeds - entry cost).
    released = c.subtract(exit_value, c.subtract(state.entry_cost, cost))
    gross = c.multiply(c.multiply(state.multiplier, state.direction), released)
    if not gross:  # a short's zero gross is -0; a zero is stored and shown as 0
        gross = _ZERO
    return msgspec.structs.replace(
        state,
        quantity=c.subtract(state.quantity, quantity),
        cost=cost,
        gross=gross,
        fees=c.add(state.fees, fee),
        exit_quantity=c.add(state.exit_quantity, quantity),
        exit_value=exit_value,
        updated_at=at,
        closed_at=state.closed_at if closing is None else at,
        close_reason=closing,
        events=state.events + 1,
    )


def evolve(state: TradeState | None, event: TradeEvent) -> TradeState:
    """The trade after ``event``; raises :class:`InvalidEvent` naming the broken rule."""
    kind = type(event)
    if kind is TradeOpened:
        if state is not None:
            raise _refuse(f"trade {event.trade_id!r} already exists", "trade_exists", "trade_id")
        assert isinstance(event, TradeOpened)
        return _open(event)
    if state is None:
        raise _refuse(f"trade {event.trade_id!r} does not exist", "unknown_trade", "trade_id")
    if state.closed_at is not None:
        raise _refuse(f"trade {event.trade_id!r} is already closed", "trade_closed", "trade_id")
    at, events, replace = event.occurred_at, state.events + 1, msgspec.structs.replace
    # dispatch on the exact class: events are final structs, and isinstance
    # chains cost more than the arithmetic on the hot path of a rebuild
    if kind is StopMoved:
        assert isinstance(event, StopMoved)
        return replace(state, stop_price=event.stop_price, updated_at=at, events=events)
    if kind is TradeReduced:
        assert isinstance(event, TradeReduced)
        if event.quantity > state.quantity:
            raise _refuse(
                f"cannot reduce {event.quantity}: only {state.quantity} is open",
                "over_reduce",
                "quantity",
            )
        closing = None
        if event.quantity == state.quantity:
            closing = event.reason if event.reason in CLOSE_REASONS else "other"
        return _exit(state, event.quantity, event.price, event.fee, at, closing)
    if kind is TradeClosed:
        assert isinstance(event, TradeClosed)
        return _exit(state, state.quantity, event.price, event.fee, at, event.reason)
    if kind is FundingApplied:
        assert isinstance(event, FundingApplied)
        funding = CONTEXT.add(state.funding, event.amount)
        return replace(state, funding=funding, updated_at=at, events=events)
    if kind is FeeCharged:
        assert isinstance(event, FeeCharged)
        fees = CONTEXT.add(state.fees, event.amount)
        return replace(state, fees=fees, updated_at=at, events=events)
    if kind is TradeIncreased:
        assert isinstance(event, TradeIncreased)
        value = CONTEXT.multiply(event.quantity, event.price)
        return replace(
            state,
            quantity=CONTEXT.add(state.quantity, event.quantity),
            cost=CONTEXT.add(state.cost, value),
            entry_quantity=CONTEXT.add(state.entry_quantity, event.quantity),
            entry_cost=CONTEXT.add(state.entry_cost, value),
            fees=CONTEXT.add(state.fees, event.fee),
            updated_at=at,
            events=events,
        )
    if kind is TargetMoved:
        assert isinstance(event, TargetMoved)
        return replace(state, target_price=event.target_price, updated_at=at, events=events)
    raise _refuse(f"unknown trade event {kind.__name__}", "unknown_type", "type")


StreamState = TradeState | SignalEmitted | None


def fold(state: StreamState, event: Event) -> StreamState:
    """The state of any stream after ``event``: the rules every store enforces.

    Trade streams fold into :class:`TradeState`; a signal stream holds its one
    signal; the parameters stream has no state.
    """
    if isinstance(event, TradeEvent):
        if state is not None and not isinstance(state, TradeState):
            raise _refuse("stream is not a trade", "stream_kind")
        return evolve(state, event)
    if isinstance(event, SignalEmitted):
        if state is not None:
            raise _refuse(
                f"signal {event.signal_id!r} was already emitted", "signal_exists", "signal_id"
            )
        return event
    return None
