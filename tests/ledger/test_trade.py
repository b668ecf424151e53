"""The trade fold: exact weighted-average-cost accounting and the rules a trade obeys."""

from __future__ import annotations

import datetime as dt
import decimal
import random
from collections.abc import Iterable
from decimal import Decimal
from fractions import Fraction
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import InvalidEvent, TradeState
from ledger.events import TradeEvent, validate
from ledger.trade import RATIO, evolve, fold
from tests.lifecycles import (
    T0,
    at,
    closed,
    fee_charged,
    funding,
    increased,
    opened,
    random_lifecycle,
    reduced,
    signal,
    stop_moved,
    target_moved,
)

D = Decimal


def div(a: Decimal | int, b: Decimal | int) -> Decimal:
    """a / b in the library's own context for ratios."""
    return RATIO.divide(D(a), D(b))


def run(events: Iterable[TradeEvent]) -> TradeState:
    state: TradeState | None = None
    for event in events:
        state = evolve(state, event)
    assert state is not None
    return state


def steps(events: Iterable[TradeEvent]) -> list[TradeState]:
    """The state after each event."""
    states: list[TradeState] = []
    state: TradeState | None = None
    for event in events:
        state = evolve(state, event)
        states.append(state)
    return states


def book(state: TradeState) -> tuple[Decimal, Decimal, Decimal | None, Decimal]:
    """(Q, C, average entry, gross)."""
    return state.quantity, state.cost, state.average_entry, state.gross


# A long trade with a scale-in, a partial exit, a scale-in after it, a second
# partial exit and a close; fees, rebates and funding of both signs along the way.
LIFECYCLE: list[TradeEvent] = [
    opened(quantity=D(2), price=D(100), fee=D("1.5"), stop_price=D(95)),
    increased(quantity=D(2), price=D(110), fee=D("0.5"), occurred_at=at(60)),
    reduced(quantity=D(1), price=D(120), fee=D("-0.2"), occurred_at=at(120)),
    increased(quantity=D(1), price=D(101), occurred_at=at(180)),
    reduced(quantity=D(2), price=D(100), occurred_at=at(240)),
    fee_charged(amount=D(2), kind="borrow", occurred_at=at(250)),
    fee_charged(amount=D(-1), kind="other", occurred_at=at(260)),
    funding(amount=D(3), occurred_at=at(270)),
    funding(amount=D("-1.25"), occurred_at=at(280)),
    closed(price=D(110), fee=D(1), reason="take_profit", occurred_at=at(300)),
]


def with_side(events: list[TradeEvent], side: str) -> list[TradeEvent]:
    return [msgspec.structs.replace(events[0], side=side), *events[1:]]  # type: ignore[call-arg]


def test_a_long_trade_books_weighted_average_cost_step_by_step() -> None:
    """Long: entries add q*p to C, exits release C*q/Q and book q*p - released, hand-computed."""
    assert [book(s) for s in steps(LIFECYCLE)] == [
        (D(2), D(200), D(100), D(0)),
        (D(4), D(420), D(105), D(0)),
        (D(3), D(315), D(105), D(15)),  # exit 1@120 releases 105
        (D(4), D(416), D(104), D(15)),  # scale-in after a partial exit
        (D(2), D(208), D(104), D(7)),  # exit 2@100 releases 208
        (D(2), D(208), D(104), D(7)),
        (D(2), D(208), D(104), D(7)),
        (D(2), D(208), D(104), D(7)),
        (D(2), D(208), D(104), D(7)),
        (D(0), D(0), D("104.2"), D(19)),  # closed: average over all entries, 521/5
    ]


def test_a_long_trade_totals_fees_funding_and_net() -> None:
    """Fees are every fill fee plus every FeeCharged (rebates negative); funding adds; net = gross - fees + funding."""
    state = run(LIFECYCLE)
    assert state.gross == D(19)
    assert state.fees == D("3.8")  # 1.5 + 0.5 - 0.2 + 2 - 1 + 1
    assert state.funding == D("1.75")  # 3 - 1.25
    assert state.net == D("16.95")
    assert state.outcome == "win"
    assert (state.entry_quantity, state.entry_cost) == (D(5), D(521))
    assert (state.exit_quantity, state.exit_value) == (D(5), D(540))
    assert state.average_exit == D(108)
    assert state.invested == D(521)
    assert state.margin_used == D(521)
    assert state.return_fraction == div(D("16.95"), 521)
    assert state.initial_risk == D(10)  # 2 * 1 * |100 - 95|
    assert state.r_multiple == D("1.695")
    assert (state.closed, state.close_reason, state.closed_at) == (True, "take_profit", at(300))
    assert state.holding_seconds == D(300)
    assert state.events == len(LIFECYCLE)


def test_a_short_trade_books_the_mirror_gross() -> None:
    """Short: the same fills book the negated gross; cost and quantity move as for a long."""
    states = steps(with_side(LIFECYCLE, "short"))
    assert [s.gross for s in states] == [D(0), D(0), D(-15), D(-15), D(-7), *[D(-7)] * 4, D(-19)]
    assert [s.cost for s in states] == [s.cost for s in steps(LIFECYCLE)]
    final = states[-1]
    assert final.net == D("-21.05")  # -19 - 3.8 + 1.75
    assert final.outcome == "loss"
    assert final.direction == -1


def test_a_short_exit_at_its_entry_price_books_a_zero_gross_not_minus_zero() -> None:
    """d * 0 is -0 for a short; the fold books plain 0, which prints and compares as 0."""
    state = run(
        [opened(side="short", quantity=D(2), price=D(100)), reduced(quantity=D(1), price=D(100))]
    )
    assert str(state.gross) == "0"
    assert str(state.net) == "0"


def test_the_multiplier_scales_gross_invested_and_risk() -> None:
    """With multiplier m, gross is m*d*(q*p - released), invested is entry cost * m, margin invested/leverage."""
    states = steps(
        [
            opened(
                side="short",
                quantity=D(3),
                price=D(10),
                multiplier=D(50),
                leverage=D(5),
                stop_price=D(11),
            ),
            reduced(quantity=D(1), price=D(12)),
            closed(price=D(8), reason="stop_loss"),
        ]
    )
    assert [s.gross for s in states] == [D(0), D(-100), D(100)]
    final = states[-1]
    assert final.invested == D(1500)
    assert final.margin_used == D(300)
    assert final.roe == div(100, 300)
    assert final.initial_risk == D(150)
    assert final.r_multiple == div(100, 150)
    assert final.average_entry == D(10)
    assert final.average_exit == div(28, 3)


def test_a_margin_given_at_the_open_is_the_roe_denominator() -> None:
    """margin_used is the margin from TradeOpened when given, not invested / leverage."""
    state = run([opened(margin=D(40), leverage=D(10)), closed(price=D(104))])
    assert state.margin_used == D(40)
    assert state.roe == D("0.1")


@pytest.mark.parametrize("amount", [D(5), D(-5)], ids=["received", "paid"])
def test_funding_of_either_sign_moves_net_by_its_amount(amount: Decimal) -> None:
    """A positive funding amount raises net, a negative one lowers it, by exactly that amount."""
    base = run([opened(), closed(price=D(101))])
    with_funding = run([opened(), funding(amount=amount), closed(price=D(101))])
    assert with_funding.net - base.net == amount
    assert with_funding.funding == amount
    assert with_funding.gross == base.gross == D(1)


def test_a_rebate_raises_net() -> None:
    """A negative fill fee or FeeCharged is a rebate: fees go down and net goes up."""
    state = run(
        [opened(fee=D("-0.25")), fee_charged(amount=D("-0.75")), closed(price=D(100), fee=D(0))]
    )
    assert state.fees == D(-1)
    assert state.net == D(1)


def test_entries_then_exits_at_the_same_prices_break_exactly_even() -> None:
    """Entries 1@100, 1@100, 1@101 and exits 1@100, 1@100, 1@101 give gross exactly 0 despite 301/3."""
    events: list[TradeEvent] = [
        opened(quantity=D(1), price=D(100)),
        increased(quantity=D(1), price=D(100)),
        increased(quantity=D(1), price=D(101)),
        reduced(quantity=D(1), price=D(100)),
        reduced(quantity=D(1), price=D(100)),
        reduced(quantity=D(1), price=D(101)),
    ]
    state = run(events)
    assert state.gross == 0
    assert state.net == 0
    assert state.outcome == "breakeven"
    assert (state.quantity, state.cost) == (0, 0)
    closed_by_close = run([*events[:5], closed(price=D(101))])
    assert closed_by_close.gross == 0


def test_a_breakeven_trade_with_a_small_first_exit_is_exactly_even() -> None:
    """Entries 1@100, 1@100, 1@101 and exits 0.1@101, 1@100, 1@100, 0.9@101 (proceeds 301 = cost) give gross exactly 0."""
    events: list[TradeEvent] = [
        opened(quantity=D(1), price=D(100)),
        increased(quantity=D(1), price=D(100)),
        increased(quantity=D(1), price=D(101)),
        reduced(quantity=D("0.1"), price=D(101)),
        reduced(quantity=D(1), price=D(100)),
        reduced(quantity=D(1), price=D(100)),
        reduced(quantity=D("0.9"), price=D(101)),
    ]
    state = run(events)
    assert state.closed
    assert state.gross == 0
    assert state.outcome == "breakeven"


def test_exits_never_move_the_average_entry() -> None:
    """After a partial exit, C/Q is the average entry it was before."""
    states = steps(
        [
            opened(quantity=D(3), price=D(100)),
            increased(quantity=D(3), price=D("100.01")),
            reduced(quantity=D(1), price=D(200)),
            reduced(quantity=D(4), price=D(50)),
        ]
    )
    assert states[1].average_entry == states[2].average_entry == states[3].average_entry


@pytest.mark.parametrize(
    ("reason", "close_reason"),
    [
        ("take_profit", "take_profit"),
        ("stop_loss", "stop_loss"),
        ("scale_out", "other"),
        (None, "other"),
    ],
)
def test_a_reduce_of_exactly_the_open_quantity_closes_the_trade(
    reason: str | None, close_reason: str
) -> None:
    """A reduce of all that is open closes the trade with its reason if it is a close reason, else "other"."""
    state = run(
        [
            opened(quantity=D("1.5")),
            increased(quantity=D("0.5")),
            reduced(quantity=D("0.50")),
            reduced(quantity=D("1.5"), price=D(90), reason=reason, occurred_at=at(900)),
        ]
    )
    assert state.closed
    assert (state.close_reason, state.closed_at) == (close_reason, at(900))
    assert (state.quantity, state.cost) == (0, 0)
    assert state.gross == D(-15)


def test_a_reduce_of_more_than_is_open_is_refused() -> None:
    """Reducing by more than the open quantity raises InvalidEvent rule over_reduce on quantity."""
    state = run([opened(quantity=D(2)), reduced(quantity=D(1))])
    with pytest.raises(InvalidEvent) as caught:
        evolve(state, reduced(quantity=D("1.000001")))
    assert (caught.value.rule, caught.value.field) == ("over_reduce", "quantity")


AFTER_CLOSE: list[TradeEvent] = [
    increased(occurred_at=at(1000)),
    reduced(occurred_at=at(1000)),
    closed(occurred_at=at(1000)),
    stop_moved(occurred_at=at(1000)),
    target_moved(occurred_at=at(1000)),
    fee_charged(occurred_at=at(1000)),
    funding(occurred_at=at(1000)),
]


@pytest.mark.parametrize("late", AFTER_CLOSE, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize(
    "closing", [closed(), reduced(quantity=D(1))], ids=["TradeClosed", "full-reduce"]
)
def test_any_event_after_the_close_is_refused(closing: TradeEvent, late: TradeEvent) -> None:
    """Once closed (by TradeClosed or a full reduce), every further event raises rule trade_closed."""
    state = run([opened(quantity=D(1)), closing])
    with pytest.raises(InvalidEvent) as caught:
        evolve(state, late)
    assert caught.value.rule == "trade_closed"


def test_opening_an_existing_trade_is_refused() -> None:
    """A TradeOpened for a trade that exists raises rule trade_exists."""
    with pytest.raises(InvalidEvent) as caught:
        evolve(run([opened()]), opened())
    assert caught.value.rule == "trade_exists"


@pytest.mark.parametrize("event", AFTER_CLOSE, ids=lambda e: type(e).__name__)
def test_any_event_for_a_trade_that_does_not_exist_is_refused(event: TradeEvent) -> None:
    """Anything but TradeOpened on an empty stream raises rule unknown_trade."""
    with pytest.raises(InvalidEvent) as caught:
        evolve(None, event)
    assert caught.value.rule == "unknown_trade"


def test_stop_and_target_moves_update_the_levels_but_not_the_initial_risk() -> None:
    """StopMoved and TargetMoved change the current stop and target; initial risk stays from the open."""
    state = run(
        [
            opened(quantity=D(2), stop_price=D(90), target_price=D(120)),
            stop_moved(stop_price=D(99)),
            target_moved(target_price=D(130)),
            increased(quantity=D(2), price=D(105)),
        ]
    )
    assert (state.stop_price, state.target_price) == (D(99), D(130))
    assert (state.initial_stop, state.initial_risk) == (D(90), D(20))


def test_r_multiple_is_none_without_an_initial_stop_or_with_zero_risk() -> None:
    """No stop at the open, or a stop at the entry price, leaves R undefined."""
    assert run([opened(), closed(price=D(110))]).r_multiple is None
    assert run([opened(stop_price=D(100)), closed(price=D(110))]).r_multiple is None


def test_fold_keeps_a_signal_and_refuses_a_second_one() -> None:
    """fold() holds a signal stream's one signal and refuses another with rule signal_exists."""
    state = fold(None, signal("s1"))
    assert state == signal("s1")
    with pytest.raises(InvalidEvent) as caught:
        fold(state, signal("s1"))
    assert caught.value.rule == "signal_exists"


def test_fold_refuses_a_trade_event_on_a_stream_that_is_not_a_trade() -> None:
    """A trade event folded onto a signal's state raises rule stream_kind."""
    with pytest.raises(InvalidEvent) as caught:
        fold(signal("s1"), stop_moved())
    assert caught.value.rule == "stream_kind"


# The caller's decimal context must not matter.

PRECISE: list[TradeEvent] = [
    opened(
        quantity=D("0.12345678"),
        price=D("64123.456789"),
        fee=D("0.0000123"),
        stop_price=D("63000.1234567"),
        leverage=D(3),
    ),
    increased(quantity=D("0.87654321"), price=D("64555.000001"), fee=D("0.0123456789")),
    reduced(quantity=D("0.333333333"), price=D("65001.999999")),
    funding(amount=D("-0.000012345678"), occurred_at=at(5000)),
    closed(
        price=D("64999.123456789"),
        reason="signal",
        occurred_at=T0 + dt.timedelta(days=1, seconds=7, microseconds=123_456),
    ),
]


def everything(states: list[TradeState]) -> list[dict[str, Any]]:
    names = [
        "average_entry",
        "average_exit",
        "net",
        "invested",
        "margin_used",
        "return_fraction",
        "roe",
        "initial_risk",
        "r_multiple",
        "outcome",
        "holding_seconds",
    ]
    return [
        {**msgspec.structs.asdict(s), **{name: getattr(s, name) for name in names}} for s in states
    ]


def test_a_caller_context_of_six_digits_changes_nothing() -> None:
    """With decimal.getcontext().prec = 6 the fold and every derived figure are identical to the default."""
    expected = everything(steps(PRECISE))
    context = decimal.getcontext()
    saved = context.prec
    context.prec = 6
    try:
        got = everything(steps(PRECISE))
    finally:
        context.prec = saved
    assert got == expected
    assert expected[-1]["holding_seconds"] == D("86407.123456")


def test_a_caller_context_that_rounds_down_and_traps_inexact_changes_nothing() -> None:
    """A caller context with ROUND_DOWN and Inexact trapped neither changes results nor raises."""
    expected = everything(steps(PRECISE))
    with decimal.localcontext() as context:
        context.prec = 8
        context.rounding = decimal.ROUND_DOWN
        context.traps[decimal.Inexact] = True
        got = everything(steps(PRECISE))
    assert got == expected


# Whole-trade exactness against an exact rational model.


def model(events: list[TradeEvent]) -> dict[str, Fraction]:
    """Gross, fees and funding of a closed trade from its fills alone, in exact rationals."""
    first = events[0]
    m = Fraction(first.multiplier)  # type: ignore[attr-defined]
    d = 1 if first.side == "long" else -1  # type: ignore[attr-defined]
    entry = exit_value = fees = paid = Fraction(0)
    quantity = Fraction(0)
    for event in events:
        kind = type(event).__name__
        if kind in ("TradeOpened", "TradeIncreased"):
            entry += Fraction(event.quantity) * Fraction(event.price)  # type: ignore[attr-defined]
            quantity += Fraction(event.quantity)  # type: ignore[attr-defined]
            fees += Fraction(event.fee)  # type: ignore[attr-defined]
        elif kind == "TradeReduced":
            exit_value += Fraction(event.quantity) * Fraction(event.price)  # type: ignore[attr-defined]
            quantity -= Fraction(event.quantity)  # type: ignore[attr-defined]
            fees += Fraction(event.fee)  # type: ignore[attr-defined]
        elif kind == "TradeClosed":
            exit_value += quantity * Fraction(event.price)  # type: ignore[attr-defined]
            quantity = Fraction(0)
            fees += Fraction(event.fee)  # type: ignore[attr-defined]
        elif kind == "FeeCharged":
            fees += Fraction(event.amount)  # type: ignore[attr-defined]
        elif kind == "FundingApplied":
            paid += Fraction(event.amount)  # type: ignore[attr-defined]
    gross = m * d * (exit_value - entry)
    return {"gross": gross, "fees": fees, "funding": paid, "net": gross - fees + paid}


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), steps_=st.integers(0, 12))
def test_over_a_whole_trade_gross_is_exactly_m_d_exit_proceeds_minus_entry_cost(
    seed: int, steps_: int
) -> None:
    """For any closed lifecycle, gross, fees, funding and net equal the exact rational totals."""
    events = random_lifecycle(random.Random(seed), "t1", steps=steps_)
    state = run(validate(e) for e in events)  # type: ignore[misc]
    expected = model(events)
    assert state.closed
    assert (state.quantity, state.cost) == (0, 0)
    assert {
        "gross": Fraction(state.gross),
        "fees": Fraction(state.fees),
        "funding": Fraction(state.funding),
        "net": Fraction(state.net),
    } == expected
