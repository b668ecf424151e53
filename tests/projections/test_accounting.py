"""The Accounting section of the design, one hand-computed example per formula.

Every expected figure here is worked out by hand from the design's formulas;
amounts that terminate are compared exactly, the square-root ratios (Sharpe,
Sortino, SQN) to 25 significant digits against a Decimal computation in the
test.
"""

from __future__ import annotations

import datetime as dt
import decimal
from decimal import Decimal
from typing import Any

import pytest

from ledger import Event, Ledger, open_ledger
from ledger.events import TradeEvent
from ledger.trade import RATIO
from projections import (
    ClosedTrade,
    Figures,
    OpenPositions,
    Parameters,
    Performance,
    Pnl,
    Signals,
    TradeHistory,
    standard,
)
from projections.grouping import GROUPS
from tests.projections.books import (
    EVERYTHING,
    D,
    closed,
    day,
    fee_charged,
    fold,
    funding,
    increased,
    opened,
    parameter,
    record_all,
    reduced,
    run,
    signal,
    simple_trade,
    stop_moved,
    views,
)

# helpers


def history(url: str, events: list[Any], **settings: Any) -> dict[str, ClosedTrade]:
    """Every closed trade's TradeHistory row after recording ``events``."""

    async def go() -> dict[str, ClosedTrade]:
        async with open_ledger(url, standard(**settings)) as book:
            await record_all(book, events)
            page = await book.view(TradeHistory).trades(limit=EVERYTHING)
            return {trade.trade_id: trade for trade in page.trades}

    return run(go())


def figures(
    url: str, events: list[Any], group_by: str | None = None, **settings: Any
) -> list[Figures]:
    """Performance.figures(group_by) after recording ``events``."""

    async def go() -> list[Figures]:
        async with open_ledger(url, standard(**settings)) as book:
            await record_all(book, events)
            return await book.view(Performance).figures(group_by)

    return run(go())


def close_to(actual: Decimal | float | None, expected: Decimal) -> bool:
    """Equal to 25 significant digits (the square-root ratios may be floats)."""
    assert actual is not None
    with decimal.localcontext(decimal.Context(prec=60)):
        return abs(Decimal(actual) - expected) <= abs(expected) * Decimal("1e-25")


def sharpe_sortino(series: list[Decimal], days: int = 365) -> tuple[Decimal, Decimal]:
    """Sharpe and Sortino of a zero-filled daily series, by the design's formulas."""
    with decimal.localcontext(decimal.Context(prec=60)):
        n = len(series)
        mean = sum(series, Decimal(0)) / n
        stdev = (sum(((x - mean) ** 2 for x in series), Decimal(0)) / (n - 1)).sqrt()
        downside = (sum((min(x, Decimal(0)) ** 2 for x in series), Decimal(0)) / n).sqrt()
        scale = Decimal(days).sqrt()
        return mean / stdev * scale, mean / downside * scale


# per trade: gross by weighted average cost


def test_a_long_trade_books_quantity_times_the_rise_and_every_per_trade_figure(
    sqlite_url: str,
) -> None:
    """A long 2@100 closed at 110 has gross 20, invested 200, return and ROE 0.1 and holds 3 hours."""
    trade = history(sqlite_url, [opened("t", 2, 100), closed("t", 110)])["t"]
    assert (trade.gross, trade.fees, trade.funding, trade.net) == (D(20), D(0), D(0), D(20))
    assert (trade.quantity, trade.average_entry, trade.average_exit) == (D(2), D(100), D(110))
    assert (trade.invested, trade.return_fraction, trade.roe) == (D(200), D("0.1"), D("0.1"))
    assert trade.outcome == "win"
    assert trade.holding_seconds == D(3 * 3600)
    assert trade.closed_at == day(0, 15)
    assert trade.opened_at == day(0)
    assert trade.close_reason == "manual"


def test_a_short_trade_books_the_fall_as_profit_and_the_rise_as_loss(sqlite_url: str) -> None:
    """A short 2@100 gains 20 closed at 90 and loses 10 closed at 105."""
    trades = history(
        sqlite_url,
        [
            opened("up", 2, 100, side="short"),
            closed("up", 90),
            opened("down", 2, 100, side="short"),
            closed("down", 105),
        ],
    )
    assert (trades["up"].gross, trades["up"].net, trades["up"].outcome) == (D(20), D(20), "win")
    assert (trades["down"].gross, trades["down"].net) == (D(-10), D(-10))
    assert trades["down"].outcome == "loss"
    assert trades["down"].return_fraction == D("-0.05")


def test_a_scale_in_moves_the_average_entry_to_the_weighted_average_cost(sqlite_url: str) -> None:
    """Long 1@100 then 3@104 is 4 open at cost 412 (average 103), and closing at 110 grosses 28."""
    events = [opened("t", 1, 100), increased("t", 3, 104)]

    async def go() -> None:
        async with open_ledger(sqlite_url, standard()) as book:
            await record_all(book, events)
            position = book.view(OpenPositions).get("t")
            assert position is not None
            assert (position.quantity, position.cost, position.average_entry) == (
                D(4),
                D(412),
                D(103),
            )
            await book.record(closed("t", 110))
            trade = await book.view(TradeHistory).get("t")
            assert trade is not None
            assert (trade.gross, trade.quantity, trade.average_entry, trade.invested) == (
                D(28),
                D(4),
                D(103),
                D(412),
            )

    run(go())


def test_a_short_scale_in_averages_down_and_books_the_fall_from_the_average(
    sqlite_url: str,
) -> None:
    """Short 1@100 then 1@90 averages 95, and closing both at 80 grosses 30."""
    trade = history(
        sqlite_url,
        [opened("t", 1, 100, side="short"), increased("t", 1, 90), closed("t", 80)],
    )["t"]
    assert (trade.average_entry, trade.gross) == (D(95), D(30))


def test_partial_exits_release_cost_at_the_average_and_never_move_it() -> None:
    """Long 4@100 reduced 1@110 and 1@90 then closed at 120 grosses 10, -10 and 40 with average 100 throughout."""
    events: list[TradeEvent] = [opened("t", 4, 100)]
    steps: list[tuple[TradeEvent, Decimal, Decimal, Decimal]] = [
        (reduced("t", 1, 110), D(10), D(3), D(300)),
        (reduced("t", 1, 90, occurred_at=day(0, 14, 30)), D(0), D(2), D(200)),
        (closed("t", 120), D(40), D(0), D(0)),
    ]
    for event, gross, quantity, cost in steps:
        events.append(event)
        state = fold(events)
        assert (state.gross, state.quantity, state.cost) == (gross, quantity, cost)
        assert state.average_entry == D(100)
    assert state.average_exit == D(110)
    assert state.closed


def test_partial_exits_through_the_ledger_give_the_trade_its_whole_gross(sqlite_url: str) -> None:
    """The same partial exits recorded in a ledger give gross 40 and average exit 110 in the history."""
    trade = history(
        sqlite_url,
        [
            opened("t", 4, 100),
            reduced("t", 1, 110),
            reduced("t", 1, 90, occurred_at=day(0, 14, 30)),
            closed("t", 120),
        ],
    )["t"]
    assert (trade.gross, trade.average_entry, trade.average_exit, trade.quantity) == (
        D(40),
        D(100),
        D(110),
        D(4),
    )


@pytest.mark.parametrize(
    ("side", "entries", "exits", "expected"),
    [
        # 2@100 + 1@101: cost 301 over 3, an average that does not terminate.
        ("long", [(2, "100"), (1, "101")], [(1, "110"), (2, "110")], D(29)),
        # Three exits of 1 from cost 100 over 3.
        ("long", [(1, "34"), (2, "33")], [(1, "40"), (1, "40"), (1, "40")], D(20)),
        # Cost 1000001 over 3000 and a small first exit: 999000 - 1000001.
        ("long", [(2999, "333"), (1, "1334")], [(1, "333"), (2999, "333")], D(-1001)),
        ("short", [(2999, "333"), (1, "1334")], [(1, "333"), (2999, "333")], D(1001)),
        # Cost 110.417 over 0.9: 98.994 - 110.417.
        (
            "long",
            [("0.7", "123.45"), ("0.2", "120.01")],
            [("0.3", "130"), ("0.6", "99.99")],
            D("-11.423"),
        ),
    ],
)
def test_a_whole_trade_grosses_exactly_direction_times_exit_proceeds_minus_entry_cost(
    side: str, entries: list[tuple[Any, str]], exits: list[tuple[Any, str]], expected: Decimal
) -> None:
    """Over a whole trade the gross is exactly d*(exit proceeds - entry cost), even when C/Q does not terminate."""
    events: list[TradeEvent] = [opened("t", entries[0][0], entries[0][1], side=side)]
    for quantity, price in entries[1:]:
        events.append(increased("t", quantity, price))
    for quantity, price in exits[:-1]:
        events.append(reduced("t", quantity, price))
    events.append(closed("t", exits[-1][1]))
    state = fold(events)
    proceeds = sum((D(q) * D(p) for q, p in exits), Decimal(0))
    cost = sum((D(q) * D(p) for q, p in entries), Decimal(0))
    assert (proceeds - cost) * state.direction == expected
    assert state.gross == expected
    assert state.net == expected


def test_a_scale_in_after_a_partial_exit_averages_the_remaining_cost_with_the_new_fill(
    sqlite_url: str,
) -> None:
    """Long 2@100, reduce 1@110, add 1@130 (average 115), close at 120: gross 10 + 10 = 20."""
    events = [
        opened("t", 2, 100),
        reduced("t", 1, 110),
        increased("t", 1, 130, occurred_at=day(0, 14, 30)),
    ]
    state = fold(events)
    assert (state.quantity, state.cost, state.average_entry, state.gross) == (
        D(2),
        D(230),
        D(115),
        D(10),
    )
    trade = history(sqlite_url, [*events, closed("t", 120)])["t"]
    assert trade.gross == D(20)
    # entry fills 2@100 and 1@130, exit fills 1@110 and 2@120
    assert trade.invested == D(330)
    assert trade.quantity == D(3)
    assert abs(trade.average_exit * 3 - D(350)) < D("1e-30")  # type: ignore[operator]


def test_a_short_scale_in_after_a_partial_exit_books_the_same_as_its_whole_trade_formula() -> None:
    """Short 2@100, reduce 1@90, add 1@70 (average 85), close at 80: gross 10 + 10 = -(250 - 270)."""
    state = fold(
        [
            opened("t", 2, 100, side="short"),
            reduced("t", 1, 90),
            increased("t", 1, 70, occurred_at=day(0, 14, 30)),
        ]
    )
    assert (state.average_entry, state.gross) == (D(85), D(10))
    state = fold(
        [
            opened("t", 2, 100, side="short"),
            reduced("t", 1, 90),
            increased("t", 1, 70, occurred_at=day(0, 14, 30)),
            closed("t", 80),
        ]
    )
    assert state.gross == D(20)


@pytest.mark.parametrize(
    ("reason", "close_reason"),
    [
        ("take_profit", "take_profit"),
        ("stop_loss", "stop_loss"),
        ("scale_out", "other"),
        (None, "other"),
    ],
)
def test_a_reduce_of_exactly_the_open_quantity_closes_the_trade_with_its_reason_or_other(
    sqlite_url: str, reason: str | None, close_reason: str
) -> None:
    """A TradeReduced of all that is open closes the trade, its reason kept when it is a close reason."""
    events = [
        opened("t", 3, 100),
        reduced("t", 1, 101),
        reduced("t", 2, 102, reason=reason, occurred_at=day(0, 16)),
    ]
    trade = history(sqlite_url, events)["t"]
    assert trade.close_reason == close_reason
    assert trade.closed_at == day(0, 16)
    assert trade.gross == D(1 + 4)


def test_trade_closed_exits_all_the_remaining_quantity_with_its_reason(sqlite_url: str) -> None:
    """A TradeClosed after a partial exit exits the remaining 3 and keeps its reason."""
    trade = history(
        sqlite_url,
        [opened("t", 5, 10), reduced("t", 2, 11), closed("t", 12, reason="take_profit")],
    )["t"]
    assert (trade.gross, trade.quantity, trade.close_reason) == (D(2 + 6), D(5), "take_profit")
    assert trade.average_exit == D("11.6")


# fees, rebates and funding


def test_fees_are_every_fill_fee_and_fee_charge_with_negative_ones_as_rebates(
    sqlite_url: str,
) -> None:
    """Fees 1 + 0.5 + 2 - 0.75 - 0.25 + 0.3 = 2.8 are taken from gross 15: net 12.2."""
    events = [
        opened("t", 1, 100, fee="1"),
        increased("t", 1, 100, fee="0.5"),
        fee_charged("t", "2", kind="borrow"),
        fee_charged("t", "-0.75", kind="other"),
        reduced("t", 1, 105, fee="-0.25"),
        closed("t", 110, fee="0.3"),
    ]
    trade = history(sqlite_url, events)["t"]
    assert (trade.gross, trade.fees, trade.funding, trade.net) == (D(15), D("2.8"), D(0), D("12.2"))
    assert trade.return_fraction == D("12.2") / D(200)


def test_funding_received_raises_and_funding_paid_lowers_the_net(sqlite_url: str) -> None:
    """Funding +3 and -1.25 sum to 1.75 added to gross 10 less fees 0.5: net 11.25."""
    events = [
        opened("t", 1, 100, fee="0.5"),
        funding("t", "3"),
        funding("t", "-1.25", occurred_at=day(0, 14, 45)),
        closed("t", 110),
    ]
    trade = history(sqlite_url, events)["t"]
    assert (trade.gross, trade.fees, trade.funding, trade.net) == (
        D(10),
        D("0.5"),
        D("1.75"),
        D("11.25"),
    )


def test_a_loss_made_only_of_fees_and_paid_funding_is_a_loss(sqlite_url: str) -> None:
    """A trade closed at its entry with fee 0.1 and funding -0.2 nets -0.3, a loss."""
    trade = history(
        sqlite_url,
        [opened("t", 1, 100, fee="0.1"), funding("t", "-0.2"), closed("t", 100)],
    )["t"]
    assert (trade.gross, trade.net, trade.outcome) == (D(0), D("-0.3"), "loss")


def test_an_open_trade_realizes_its_exits_every_fee_in_full_and_its_funding(
    sqlite_url: str,
) -> None:
    """Open 2@100 fee 1, reduce 1@110 fee 0.5, funding -0.25: realized net 10 - 1.5 - 0.25 = 8.25."""
    events = [
        opened("t", 2, 100, fee="1"),
        reduced("t", 1, 110, fee="0.5"),
        funding("t", "-0.25", occurred_at=day(0, 14, 30)),
    ]

    async def go() -> None:
        async with open_ledger(sqlite_url, standard()) as book:
            await record_all(book, events)
            position = book.view(OpenPositions).get("t")
            assert position is not None
            assert (position.gross, position.fees, position.funding, position.net) == (
                D(10),
                D("1.5"),
                D("-0.25"),
                D("8.25"),
            )
            assert (position.quantity, position.average_entry) == (D(1), D(100))
            (row,) = book.view(Pnl).totals()
            assert (row.currency, row.gross, row.fees, row.funding, row.net) == (
                "USDT",
                D(10),
                D("1.5"),
                D("-0.25"),
                D("8.25"),
            )
            assert row.closed_trades == 0
            assert await book.view(Performance).figures() == []
            assert (await book.view(TradeHistory).trades()).total == 0

    run(go())


# multiplier, leverage and margin


def test_the_multiplier_scales_gross_invested_and_risk(sqlite_url: str) -> None:
    """Long 2@100 x50 closed at 101 grosses 100 on 10000 invested; risk 2*50*|100-99| = 100."""
    trade = history(
        sqlite_url,
        [opened("t", 2, 100, multiplier=50, stop_price=99), closed("t", 101)],
    )["t"]
    assert (trade.multiplier, trade.gross, trade.invested) == (D(50), D(100), D(10000))
    assert (trade.return_fraction, trade.initial_risk, trade.r) == (D("0.01"), D(100), D(1))


def test_a_fractional_multiplier_scales_a_short_trade(sqlite_url: str) -> None:
    """Short 10@2000 x0.1 closed at 1990 grosses 0.1*10*10 = 10 on 2000 invested."""
    trade = history(
        sqlite_url,
        [opened("t", 10, 2000, side="short", multiplier="0.1"), closed("t", 1990)],
    )["t"]
    assert (trade.gross, trade.invested, trade.return_fraction) == (D(10), D(2000), D("0.005"))


def test_roe_without_margin_is_net_over_invested_divided_by_leverage(sqlite_url: str) -> None:
    """Long 2@100 at 5x closed at 110: margin 200/5 = 40, ROE 20/40 = 0.5, return still 0.1."""
    trade = history(sqlite_url, [opened("t", 2, 100, leverage=5), closed("t", 110)])["t"]
    assert (trade.leverage, trade.gross, trade.return_fraction, trade.roe) == (
        D(5),
        D(20),
        D("0.1"),
        D("0.5"),
    )


def test_roe_with_margin_given_is_net_over_that_margin_whatever_the_leverage(
    sqlite_url: str,
) -> None:
    """Long 2@100 at 5x with margin 50 closed at 110: ROE 20/50 = 0.4."""
    trade = history(sqlite_url, [opened("t", 2, 100, leverage=5, margin=50), closed("t", 110)])["t"]
    assert (trade.roe, trade.return_fraction) == (D("0.4"), D("0.1"))


def test_margin_is_from_the_open_and_leverage_applies_to_all_entry_fills() -> None:
    """With a scale-in the margin without one given is invested/leverage over both fills."""
    state = fold([opened("t", 1, 100, leverage=4), increased("t", 1, 120), closed("t", 121)])
    assert (state.invested, state.margin_used, state.net) == (D(220), D(55), D(22))
    assert state.roe == D("0.4")


# initial risk and R


def test_r_is_net_over_the_initial_risk_from_the_open_only(sqlite_url: str) -> None:
    """Long 2@100 stop 95 (risk 10), stop moved to 99 and a 2@102 scale-in, closed at 105: R = 16/10."""
    events = [
        opened("t", 2, 100, stop_price=95),
        stop_moved("t", 99),
        increased("t", 2, 102),
        closed("t", 105),
    ]
    trade = history(sqlite_url, events)["t"]
    assert (trade.gross, trade.initial_risk, trade.r) == (D(16), D(10), D("1.6"))
    assert fold(events).stop_price == D(99)


def test_a_short_trade_risks_the_distance_up_to_its_stop_times_the_multiplier(
    sqlite_url: str,
) -> None:
    """Short 3@50 x10 stop 52 risks 60; closed at 44 it grosses 180: R 3."""
    trade = history(
        sqlite_url,
        [opened("t", 3, 50, side="short", multiplier=10, stop_price=52), closed("t", 44)],
    )["t"]
    assert (trade.initial_risk, trade.gross, trade.r) == (D(60), D(180), D(3))


def test_r_counts_fees_and_funding_through_the_net(sqlite_url: str) -> None:
    """Long 1@100 stop 90 closed at 120 with fee 2 and funding -3: R = 15/10."""
    trade = history(
        sqlite_url,
        [opened("t", 1, 100, stop_price=90, fee=2), funding("t", "-3"), closed("t", 120)],
    )["t"]
    assert trade.r == D("1.5")


def test_without_an_initial_stop_there_is_no_r_even_after_a_stop_move(sqlite_url: str) -> None:
    """A trade opened without a stop has no initial risk and no R, whatever StopMoved says later."""
    trade = history(sqlite_url, [opened("t", 1, 100), stop_moved("t", 95), closed("t", 110)])["t"]
    assert trade.initial_risk is None
    assert trade.r is None


def test_a_stop_at_the_entry_price_is_zero_risk_and_no_r(sqlite_url: str) -> None:
    """A stop at the open price gives risk 0 and R None."""
    trade = history(sqlite_url, [opened("t", 1, 100, stop_price=100), closed("t", 110)])["t"]
    assert not trade.initial_risk
    assert trade.r is None


# outcome


def test_an_exact_breakeven_over_a_non_terminating_average_is_exactly_zero(
    sqlite_url: str,
) -> None:
    """Entries 1@100, 1@100, 1@101 and exits 1@100, 1@100, 1@101 without fees net exactly 0: breakeven."""
    events = [
        opened("t", 1, 100),
        increased("t", 1, 100),
        increased("t", 1, 101, occurred_at=day(0, 13, 10)),
        reduced("t", 1, 100),
        reduced("t", 1, 100, occurred_at=day(0, 14, 10)),
        closed("t", 101),
    ]
    state = fold(events)
    assert state.net == 0
    assert state.outcome == "breakeven"
    trade = history(sqlite_url, events)["t"]
    assert (trade.gross, trade.net, trade.outcome) == (D(0), D(0), "breakeven")
    assert trade.return_fraction == 0


def test_the_outcome_is_win_loss_or_breakeven_by_the_sign_of_the_net(sqlite_url: str) -> None:
    """Nets 0.01, -0.01 and 0 are a win, a loss and a breakeven."""
    trades = history(
        sqlite_url,
        [
            *simple_trade("w", "0.01", closed_at=day(0, 15)),
            *simple_trade("l", "-0.01", closed_at=day(0, 16)),
            *simple_trade("b", "0", closed_at=day(0, 17)),
        ],
    )
    assert [trades[t].outcome for t in "wlb"] == ["win", "loss", "breakeven"]


# currencies


def mixed_currencies() -> list[Any]:
    return [
        *simple_trade("u1", "10", closed_at=day(0, 15)),
        *simple_trade("d1", "-5", closed_at=day(0, 16), currency="USD"),
        *simple_trade("u2", "2", closed_at=day(1, 15)),
        *simple_trade("d2", "7", closed_at=day(2, 15), currency="USD"),
    ]


def test_pnl_never_adds_amounts_of_different_currencies(sqlite_url: str) -> None:
    """USDT nets 10 + 2 and USD nets -5 + 7 give one row each, for every grouping."""

    async def go() -> None:
        async with open_ledger(sqlite_url, standard()) as book:
            await record_all(book, mixed_currencies())
            pnl = book.view(Pnl)
            rows = pnl.totals()
            assert [(r.currency, r.net, r.closed_trades) for r in rows] == [
                ("USD", D(2), 2),
                ("USDT", D(12), 2),
            ]
            assert [(r.currency, r.group, r.net) for r in pnl.totals("symbol")] == [
                ("USD", "BTCUSDT", D(2)),
                ("USDT", "BTCUSDT", D(12)),
            ]
            assert [r.net for r in pnl.totals(currency="USD")] == [D(2)]

    run(go())


def test_performance_gives_one_row_per_currency_and_never_sums_across(sqlite_url: str) -> None:
    """Figures are per currency: USD trades 2 net 2, USDT trades 2 net 12."""
    rows = figures(sqlite_url, mixed_currencies())
    assert [(f.currency, f.trades, f.net, f.wins, f.losses) for f in rows] == [
        ("USD", 2, D(2), 1, 1),
        ("USDT", 2, D(12), 2, 0),
    ]
    usd = rows[0]
    assert usd.max_drawdown == D(5)
    assert usd.days == 3  # day 0 to day 2, the USD close days
    assert rows[1].days == 2


# performance statistics

# Eight long trades of 1 at 100, in close-time order A B C E F G D H:
#   net     +10  -5  -10   0   -4  -6  +20  +15   (sum 20)
#   R        2   -1   -2   0    -   -   4    3    (stop 95 = risk 5; F, G have no stop)
#   day      0    1    1   2    4   4   5    5
#   holding 1h   2h  30m  1h   3h  1h  1d   1h   (sum 120600 s)
# Daily nets, day 3 zero-filled: 10, -15, 0, 0, -10, 35.
EIGHT: dict[str, dict[str, Any]] = {
    "A": {"net": "10", "closed_at": day(0, 12), "hold": 3600, "stop": 95},
    "B": {"net": "-5", "closed_at": day(1, 10), "hold": 7200, "stop": 95},
    "C": {"net": "-10", "closed_at": day(1, 12), "hold": 1800, "stop": 95},
    "D": {"net": "20", "closed_at": day(5, 10), "hold": 86400, "stop": 95},
    "E": {"net": "0", "closed_at": day(2, 12), "hold": 3600, "stop": 95},
    "F": {"net": "-4", "closed_at": day(4, 9), "hold": 10800, "stop": None},
    "G": {"net": "-6", "closed_at": day(4, 18), "hold": 3600, "stop": None},
    "H": {"net": "15", "closed_at": day(5, 20), "hold": 3600, "stop": 95},
}
GROUPING: dict[str, dict[str, str]] = {
    "A": {"symbol": "BTCUSDT", "strategy": "trend", "session": "asia", "account": "main"},
    "B": {"symbol": "BTCUSDT", "strategy": "trend", "session": "europe", "account": "main"},
    "C": {"symbol": "ETHUSDT", "strategy": "trend", "session": "asia", "account": "alt"},
    "D": {"symbol": "BTCUSDT", "strategy": "trend", "session": "europe", "account": "main"},
    "E": {"symbol": "ETHUSDT", "strategy": "revert", "session": "asia", "account": "alt"},
    "F": {"symbol": "ETHUSDT", "strategy": "revert", "session": "europe", "account": "main"},
    "G": {"symbol": "ETHUSDT", "strategy": "revert", "session": "asia", "account": "alt"},
    "H": {"symbol": "ETHUSDT", "strategy": "revert", "session": "europe", "account": "alt"},
}


def eight_trades(order: str = "ABCDEFGH") -> list[Event]:
    """The eight trades above, each recorded whole, in ``order`` (not close-time order)."""
    events: list[Event] = []
    for name in order:
        spec = EIGHT[name]
        events += simple_trade(
            name,
            spec["net"],
            closed_at=spec["closed_at"],
            opened_at=spec["closed_at"] - dt.timedelta(seconds=spec["hold"]),
            stop=spec["stop"],
            **GROUPING[name],
        )
    return events


@pytest.mark.parametrize("order", ["ABCDEFGH", "ABCEFGDH", "HGFEDCBA"])
def test_performance_figures_of_eight_trades_match_the_hand_computation(
    sqlite_url: str, order: str
) -> None:
    """Counts, win rate, profit factor, expectancy, R, SQN, drawdown, streak, holding and ratios all match, whatever the log order."""
    (f,) = figures(sqlite_url, eight_trades(order))
    assert (f.currency, f.group_by, f.group) == ("USDT", None, None)
    assert (f.trades, f.wins, f.losses, f.breakevens) == (8, 3, 4, 1)
    assert f.win_rate == D("0.375")
    assert (f.net, f.gross_profit, f.gross_loss) == (D(20), D(45), D(-25))
    assert f.profit_factor == D("1.8")
    assert f.expectancy == D("2.5")
    assert (f.average_win, f.average_loss) == (D(15), D("-6.25"))
    assert (f.largest_win, f.largest_loss) == (D(20), D(-10))
    assert f.average_r == D(1)
    # R of A B C E D H: 2 -1 -2 0 4 3, mean 1, squared deviations 28, sample variance 28/5
    with decimal.localcontext(decimal.Context(prec=60)):
        sqn = Decimal(6).sqrt() * 1 / (Decimal(28) / 5).sqrt()
    assert close_to(f.sqn, sqn)
    # equity 10 5 -5 -5 -9 -15 5 20 against a peak of 10: the worst is 25
    assert (f.starting_equity, f.ending_equity, f.max_drawdown) == (D(0), D(20), D(25))
    assert f.max_drawdown_pct is None
    # B C lose, E breaks even (ending the streak), F G lose
    assert f.longest_losing_streak == 2
    assert f.average_holding_seconds == D(120600) / 8
    assert f.days == 6
    assert f.annualization_days == 365
    sharpe, sortino = sharpe_sortino([D(10), D(-15), D(0), D(0), D(-10), D(35)])
    assert close_to(f.sharpe, sharpe)
    assert close_to(f.sortino, sortino)


@pytest.mark.parametrize(
    "equity", [Decimal("-5"), Decimal("NaN"), Decimal("Infinity"), 100.0], ids=str
)
def test_a_starting_equity_below_zero_or_not_a_finite_decimal_is_refused(equity: Any) -> None:
    """Performance refuses a starting equity that is negative, not finite, or a float."""
    with pytest.raises(ValueError, match="starting_equity"):
        Performance(starting_equity=equity)


def test_every_ratio_is_published_to_34_significant_digits(sqlite_url: str) -> None:
    """Quotients that do not terminate (2/3 wins, 4/3 expectancy) come out rounded to RATIO's 34 digits, as are SQN, Sharpe and Sortino."""
    events = [
        *simple_trade("a", "5", closed_at=day(0), stop=95),
        *simple_trade("b", "-3", closed_at=day(1), stop=95),
        *simple_trade("c", "2", closed_at=day(3), stop=95),
    ]
    (f,) = figures(sqlite_url, events)
    assert f.win_rate == RATIO.divide(2, 3) == Decimal("0.6666666666666666666666666666666667")
    assert f.expectancy == RATIO.divide(4, 3)
    assert f.profit_factor == RATIO.divide(7, 3)
    ratios = {
        name: getattr(f, name)
        for name in (
            "win_rate", "profit_factor", "expectancy", "average_win", "average_loss",
            "average_r", "sqn", "sharpe", "sortino", "average_holding_seconds",
        )
    }  # fmt: skip
    assert None not in ratios.values()
    assert {n: v for n, v in ratios.items() if len(v.as_tuple().digits) > 34} == {}


def test_drawdown_with_starting_equity_is_also_a_fraction_of_the_peak(sqlite_url: str) -> None:
    """From starting equity 90 the equity peaks at 100 and falls to 75: drawdown 25, 0.25 of the peak."""
    (f,) = figures(sqlite_url, eight_trades(), starting_equity=D(90))
    assert (f.starting_equity, f.ending_equity) == (D(90), D(110))
    assert (f.max_drawdown, f.max_drawdown_pct) == (D(25), D("0.25"))


def test_the_peak_is_seeded_at_the_starting_equity_so_a_first_loss_is_a_drawdown(
    sqlite_url: str,
) -> None:
    """A first trade losing 5 is a drawdown of 5 from 0, and of 5/50 = 0.1 from starting equity 50."""
    events = [*simple_trade("a", "-5", closed_at=day(0)), *simple_trade("b", "3", closed_at=day(1))]
    (f,) = figures(sqlite_url, events)
    assert (f.max_drawdown, f.max_drawdown_pct, f.longest_losing_streak) == (D(5), None, 1)
    (g,) = figures(sqlite_url.replace("ledger.db", "other.db"), events, starting_equity=D(50))
    assert (g.max_drawdown, g.max_drawdown_pct) == (D(5), D("0.1"))


def test_a_book_that_only_wins_has_no_drawdown_and_no_profit_factor(sqlite_url: str) -> None:
    """Wins only: profit factor None, drawdown 0, no losing streak, no average or largest loss."""
    events = [*simple_trade("a", "5", closed_at=day(0)), *simple_trade("b", "3", closed_at=day(1))]
    (f,) = figures(sqlite_url, events)
    assert f.profit_factor is None
    assert (f.max_drawdown, f.longest_losing_streak) == (D(0), 0)
    assert (f.average_loss, f.largest_loss) == (None, None)
    assert (f.win_rate, f.gross_loss) == (D(1), D(0))


def test_average_r_skips_trades_without_r_and_is_none_when_no_trade_has_one(
    sqlite_url: str,
) -> None:
    """Without any initial stop, average R and SQN are None."""
    events = [*simple_trade("a", "5", closed_at=day(0)), *simple_trade("b", "-3", closed_at=day(1))]
    (f,) = figures(sqlite_url, events)
    assert (f.average_r, f.sqn) == (None, None)


def test_sqn_is_none_with_a_single_r_or_with_identical_rs(sqlite_url: str) -> None:
    """One trade with R gives no SQN; two trades with the same R (zero stdev) give none either."""
    one = [
        *simple_trade("a", "5", closed_at=day(0), stop=95),
        *simple_trade("b", "3", closed_at=day(1)),
    ]
    (f,) = figures(sqlite_url, one)
    assert (f.average_r, f.sqn) == (D(1), None)
    same = [
        *simple_trade("a", "5", closed_at=day(0), stop=95),
        *simple_trade("b", "10", closed_at=day(1), stop=90),
    ]
    (g,) = figures(sqlite_url.replace("ledger.db", "other.db"), same)
    assert (g.average_r, g.sqn) == (D(1), None)


def test_sqn_caps_n_at_100(sqlite_url: str) -> None:
    """With 102 trades with R (alternating 2 and -1), SQN uses sqrt(100), not sqrt(102)."""
    events: list[Event] = []
    for i in range(102):
        events += simple_trade(
            f"t{i}", "10" if i % 2 == 0 else "-5", closed_at=day(0, 0, 0, i), stop=95
        )
    (f,) = figures(sqlite_url, events)
    with decimal.localcontext(decimal.Context(prec=60)):
        mean = Decimal("0.5")
        variance = (51 * (Decimal("1.5") ** 2) * 2) / 101
        expected = Decimal(10) * mean / variance.sqrt()
    assert f.average_r == mean
    assert close_to(f.sqn, expected)


def test_sharpe_and_sortino_use_a_zero_filled_daily_series(sqlite_url: str) -> None:
    """Closes +10 on day 1 and -5 on day 3 make the series 10, 0, -5, whose ratios match by hand."""
    events = [
        *simple_trade("a", "10", closed_at=day(1)),
        *simple_trade("b", "-5", closed_at=day(3)),
    ]
    (f,) = figures(sqlite_url, events)
    assert f.days == 3
    with decimal.localcontext(decimal.Context(prec=60)):
        mean = Decimal(5) / 3
        stdev = (((10 - mean) ** 2 + mean**2 + (-5 - mean) ** 2) / 2).sqrt()
        downside = (Decimal(25) / 3).sqrt()
        sharpe = mean / stdev * Decimal(365).sqrt()
        sortino = mean / downside * Decimal(365).sqrt()
    assert close_to(f.sharpe, sharpe)
    assert close_to(f.sortino, sortino)


def test_annualization_days_only_scale_the_ratios_and_are_reported(sqlite_url: str) -> None:
    """With 252 days Sharpe and Sortino are the 365-day ones times sqrt(252/365)."""
    events = [
        *simple_trade("a", "10", closed_at=day(1)),
        *simple_trade("b", "-5", closed_at=day(3)),
    ]
    (f,) = figures(sqlite_url, events, annualization_days=252)
    assert f.annualization_days == 252
    sharpe, sortino = sharpe_sortino([D(10), D(0), D(-5)], days=252)
    assert close_to(f.sharpe, sharpe)
    assert close_to(f.sortino, sortino)
    assert (f.net, f.trades, f.max_drawdown) == (D(5), 2, D(5))


def test_sharpe_and_sortino_are_none_with_fewer_than_two_days(sqlite_url: str) -> None:
    """Two trades closed the same day are one day: no Sharpe, no Sortino."""
    events = [
        *simple_trade("a", "10", closed_at=day(1, 9)),
        *simple_trade("b", "-5", closed_at=day(1, 18)),
    ]
    (f,) = figures(sqlite_url, events)
    assert (f.days, f.sharpe, f.sortino) == (1, None, None)


def test_sortino_is_none_when_no_day_lost_even_if_a_trade_did(sqlite_url: str) -> None:
    """Days +5 and 0 (a win and a loss of 10 each) lose no day: Sortino None, Sharpe defined."""
    events = [
        *simple_trade("a", "5", closed_at=day(1)),
        *simple_trade("b", "10", closed_at=day(2, 9)),
        *simple_trade("c", "-10", closed_at=day(2, 18)),
    ]
    (f,) = figures(sqlite_url, events)
    assert f.sortino is None
    with decimal.localcontext(decimal.Context(prec=60)):
        mean = Decimal("2.5")
        sharpe = mean / (((Decimal("2.5") ** 2) * 2).sqrt()) * Decimal(365).sqrt()
    assert close_to(f.sharpe, sharpe)


def test_sharpe_is_none_when_every_day_nets_the_same(sqlite_url: str) -> None:
    """Days +10 and +10 have zero stdev: Sharpe None, and no losing day: Sortino None."""
    events = [
        *simple_trade("a", "10", closed_at=day(1)),
        *simple_trade("b", "10", closed_at=day(2)),
    ]
    (f,) = figures(sqlite_url, events)
    assert (f.days, f.sharpe, f.sortino) == (2, None, None)


def test_a_close_day_is_the_utc_day_of_the_closing_event(sqlite_url: str) -> None:
    """A close at 23:30 at UTC-05:00 lands on the next UTC day."""
    late = dt.datetime(2026, 3, 2, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    events = [
        *simple_trade("a", "10", closed_at=day(0, 9)),
        *simple_trade("b", "-4", closed_at=late),
    ]

    async def go() -> None:
        async with open_ledger(sqlite_url, standard()) as book:
            await record_all(book, events)
            days = await book.view(Performance).daily()
            assert [(d.day, d.net) for d in days] == [
                (dt.date(2026, 3, 2), D(10)),
                (dt.date(2026, 3, 3), D(-4)),
            ]

    run(go())


def test_daily_rows_are_every_calendar_day_zero_filled(sqlite_url: str) -> None:
    """The eight trades give six days, day 3 with no trades and net 0."""

    async def go() -> None:
        async with open_ledger(sqlite_url, standard()) as book:
            await record_all(book, eight_trades())
            days = await book.view(Performance).daily()
            assert [(d.day, d.trades, d.wins, d.losses, d.net) for d in days] == [
                (day(0).date(), 1, 1, 0, D(10)),
                (day(1).date(), 2, 0, 2, D(-15)),
                (day(2).date(), 1, 0, 0, D(0)),
                (day(3).date(), 0, 0, 0, D(0)),
                (day(4).date(), 2, 0, 2, D(-10)),
                (day(5).date(), 2, 2, 0, D(35)),
            ]
            assert {d.currency for d in days} == {"USDT"}
            revert = await book.view(Performance).daily(group_by="strategy", group="revert")
            assert [(d.day, d.net) for d in revert] == [
                (day(2).date(), D(0)),
                (day(3).date(), D(0)),
                (day(4).date(), D(-10)),
                (day(5).date(), D(15)),
            ]

    run(go())


def test_grouped_figures_split_every_statistic_by_the_group(sqlite_url: str) -> None:
    """By strategy: trend A B C D nets 15 over days 0..5, revert E F G H nets 5 over days 2..5."""

    async def go() -> None:
        async with open_ledger(sqlite_url, standard()) as book:
            await record_all(book, eight_trades())
            performance = book.view(Performance)
            revert, trend = await performance.figures("strategy")
            assert (trend.group_by, trend.group, revert.group) == ("strategy", "trend", "revert")
            assert (trend.trades, trend.wins, trend.losses, trend.net) == (4, 2, 2, D(15))
            assert (trend.win_rate, trend.profit_factor, trend.expectancy) == (
                D("0.5"),
                D(2),
                D("3.75"),
            )
            # trend equity 10 5 -5 15: drawdown 15; revert equity 0 -4 -10 5: drawdown 10
            assert (trend.max_drawdown, revert.max_drawdown) == (D(15), D(10))
            assert (trend.longest_losing_streak, revert.longest_losing_streak) == (2, 2)
            assert (trend.days, revert.days) == (6, 4)
            assert (revert.breakevens, revert.average_r, trend.average_r) == (
                1,
                D("1.5"),
                D("0.75"),
            )
            sharpe, sortino = sharpe_sortino([D(0), D(0), D(-10), D(15)])
            assert close_to(revert.sharpe, sharpe)
            assert close_to(revert.sortino, sortino)
            for group_by in GROUPS:
                rows = await performance.figures(group_by)
                assert sum(r.trades for r in rows) == 8, group_by
                assert sum((r.net for r in rows), Decimal(0)) == D(20), group_by
                assert all(r.group_by == group_by for r in rows)
            (long_,) = await performance.figures("side")
            assert (long_.group, long_.trades) == ("long", 8)
            assert [(r.group, r.net) for r in await performance.figures("symbol")] == [
                ("BTCUSDT", D(25)),
                ("ETHUSDT", D(-5)),
            ]
            assert [(r.group, r.trades) for r in await performance.figures("account")] == [
                ("alt", 4),
                ("main", 4),
            ]
            assert [(r.group, r.net) for r in await performance.figures("session")] == [
                ("asia", D(-6)),
                ("europe", D(26)),
            ]
            assert [(r.group, r.net) for r in book.view(Pnl).totals("session")] == [
                ("asia", D(-6)),
                ("europe", D(26)),
            ]

    run(go())


def test_figures_group_by_side_separates_long_and_short(sqlite_url: str) -> None:
    """A long win of 10 and a short loss of 4 give one row per side."""
    events = [
        opened("l", 1, 100),
        closed("l", 110),
        opened("s", 2, 50, side="short", occurred_at=day(0, 12, 30)),
        closed("s", 52, occurred_at=day(0, 16)),
    ]
    rows = figures(sqlite_url, events, "side")
    assert [(r.group, r.trades, r.net) for r in rows] == [("long", 1, D(10)), ("short", 1, D(-4))]


def test_largest_and_average_amounts_count_losses_as_negative(sqlite_url: str) -> None:
    """Wins 3 and 7, losses -2 and -6: largest win 7, largest loss -6, averages 5 and -4."""
    events = [
        *simple_trade("a", "3", closed_at=day(0, 1)),
        *simple_trade("b", "-2", closed_at=day(0, 2)),
        *simple_trade("c", "7", closed_at=day(0, 3)),
        *simple_trade("d", "-6", closed_at=day(0, 4)),
    ]
    (f,) = figures(sqlite_url, events)
    assert (f.largest_win, f.largest_loss, f.average_win, f.average_loss) == (
        D(7),
        D(-6),
        D(5),
        D(-4),
    )
    assert f.profit_factor == D("1.25")


def test_a_losing_streak_counts_consecutive_losses_by_close_time(sqlite_url: str) -> None:
    """Losses at 1, 2, 3 o'clock recorded in reverse still make a streak of 3, ended by a later win."""
    events = [
        *simple_trade("w", "1", closed_at=day(0, 4)),
        *simple_trade("c", "-1", closed_at=day(0, 3)),
        *simple_trade("b", "-1", closed_at=day(0, 2)),
        *simple_trade("a", "-1", closed_at=day(0, 1)),
        *simple_trade("z", "-1", closed_at=day(0, 5)),
    ]
    (f,) = figures(sqlite_url, events)
    assert f.longest_losing_streak == 3
    assert f.max_drawdown == D(3)


def test_a_callers_low_decimal_precision_changes_no_figure(tmp_path: Any) -> None:
    """A caller with decimal precision 6 gets exactly the views a caller with the default gets."""
    events: list[Event] = [
        opened("t", "1.23456789", "98765.4321", fee="0.123456789", stop_price="97000.12345"),
        increased("t", "0.98765432", "98770.1234567", fee="0.0987654321"),
        funding("t", "-1.23456789"),
        reduced("t", "0.7777777", "98801.9876543"),
        closed("t", "98799.0000001", fee="0.111111111"),
        opened("u", "3", "7", stop_price="6"),
        reduced("u", "1", "8"),
        closed("u", "9"),
        *eight_trades(),
    ]

    async def go(name: str) -> dict[str, Any]:
        async with open_ledger(f"sqlite:///{tmp_path / name}", standard()) as book:
            await record_all(book, events)
            return await views(book)

    expected = run(go("default.db"))
    context = decimal.getcontext()
    saved = context.prec, context.rounding
    try:
        context.prec = 6
        context.rounding = decimal.ROUND_DOWN
        found = run(go("prec6.db"))
    finally:
        context.prec, context.rounding = saved
    assert found == expected
    t = next(t for t in expected["history"].trades if t.trade_id == "t")
    assert len(t.net.as_tuple().digits) > 6


# trade history queries


def six_trades() -> list[Event]:
    """t1..t6 with distinct symbols, sides, strategies, sessions, patterns, accounts and outcomes."""
    return [
        *simple_trade(
            "t1",
            "10",
            opened_at=day(0, 10),
            closed_at=day(0, 12),
            stop=95,
            symbol="BTCUSDT",
            strategy="trend",
            session="asia",
            pattern="flag",
            account="main",
        ),
        opened(
            "t2",
            1,
            100,
            side="short",
            stop_price=105,
            occurred_at=day(0, 11),
            symbol="ETHUSDT",
            strategy="revert",
            session="europe",
            pattern="wedge",
            account="alt",
        ),
        closed("t2", 105, occurred_at=day(1, 12)),
        opened(
            "t3",
            1,
            100,
            side="short",
            occurred_at=day(1, 9),
            symbol="BTCUSDT",
            strategy="trend",
            session="europe",
            pattern="flag",
            account="main",
        ),
        closed("t3", 100, occurred_at=day(2, 12)),
        *simple_trade(
            "t4",
            "20",
            opened_at=day(2, 8),
            closed_at=day(3, 12),
            stop=96,
            symbol="ETHUSDT",
            strategy="revert",
            session="asia",
            pattern="wedge",
            account="alt",
        ),
        *simple_trade(
            "t5",
            "-8",
            opened_at=day(3, 10),
            closed_at=day(4, 12),
            stop=98,
            symbol="SOLUSDT",
            strategy="trend",
            session="asia",
            account="main",
        ),
        *simple_trade(
            "t6",
            "3",
            opened_at=day(4, 10),
            closed_at=day(5, 12),
            symbol="BTCUSD",
            currency="USD",
        ),
    ]


@pytest.fixture
def six(sqlite_url: str) -> str:
    """A ledger file holding the six trades."""

    async def go() -> None:
        async with open_ledger(sqlite_url, standard()) as book:
            await record_all(book, six_trades())

    run(go())
    return sqlite_url


def query(url: str, **filters: Any) -> tuple[list[str], int]:
    """The trade ids of one TradeHistory.trades page and its total."""

    async def go() -> tuple[list[str], int]:
        async with open_ledger(url, standard()) as book:
            page = await book.view(TradeHistory).trades(**filters)
            return [t.trade_id for t in page.trades], page.total

    return run(go())


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ["t1", "t2", "t3", "t4", "t5", "t6"]),
        ({"symbol": "BTCUSDT"}, ["t1", "t3"]),
        ({"side": "short"}, ["t2", "t3"]),
        ({"strategy": "trend"}, ["t1", "t3", "t5"]),
        ({"session": "asia"}, ["t1", "t4", "t5"]),
        ({"pattern": "flag"}, ["t1", "t3"]),
        ({"account": "alt"}, ["t2", "t4"]),
        ({"outcome": "win"}, ["t1", "t4", "t6"]),
        ({"outcome": "loss"}, ["t2", "t5"]),
        ({"outcome": "breakeven"}, ["t3"]),
        ({"currency": "USD"}, ["t6"]),
        ({"symbol": "BTCUSDT", "outcome": "breakeven"}, ["t3"]),
        ({"strategy": "trend", "session": "asia"}, ["t1", "t5"]),
        ({"symbol": "DOGEUSDT"}, []),
        ({"start": day(1, 0), "end": day(3, 12)}, ["t2", "t3"]),
        ({"start": day(1, 12)}, ["t2", "t3", "t4", "t5", "t6"]),
        ({"end": day(1, 12)}, ["t1"]),
        ({"start": day(0, 11), "end": day(2, 8), "by": "opened"}, ["t2", "t3"]),
        ({"start": day(3, 10), "by": "opened"}, ["t5", "t6"]),
    ],
)
def test_trade_history_filters_select_exactly_the_matching_closed_trades(
    six: str, filters: dict[str, Any], expected: list[str]
) -> None:
    """Each filter (and each start <= t < end window, by close or open time) selects exactly its trades."""
    assert query(six, **filters) == (expected, len(expected))


def test_trade_history_pages_with_limit_and_offset_and_counts_every_match(six: str) -> None:
    """limit 2 offset 1 gives t2 t3 of 6; an offset past the end gives nothing of 6."""
    assert query(six, limit=2, offset=1) == (["t2", "t3"], 6)
    assert query(six, limit=2, offset=4) == (["t5", "t6"], 6)
    assert query(six, limit=5, offset=6) == ([], 6)
    assert query(six, limit=0) == ([], 6)
    assert query(six, strategy="trend", limit=1, offset=1) == (["t3"], 3)


@pytest.mark.parametrize(
    ("sort_by", "descending", "expected"),
    [
        ("closed_at", False, ["t1", "t2", "t3", "t4", "t5", "t6"]),
        ("closed_at", True, ["t6", "t5", "t4", "t3", "t2", "t1"]),
        ("opened_at", False, ["t1", "t2", "t3", "t4", "t5", "t6"]),
        ("net", False, ["t5", "t2", "t3", "t6", "t1", "t4"]),
        ("net", True, ["t4", "t1", "t6", "t3", "t2", "t5"]),
    ],
)
def test_trade_history_sorts_by_close_time_or_net_in_both_directions(
    six: str, sort_by: str, descending: bool, expected: list[str]
) -> None:
    """sort_by orders the whole result (not just the page), ascending or descending."""
    assert query(six, sort_by=sort_by, descending=descending) == (expected, 6)
    assert query(six, sort_by=sort_by, descending=descending, limit=2, offset=2) == (
        expected[2:4],
        6,
    )


@pytest.mark.parametrize(
    ("descending", "with_r"), [(False, ["t5", "t2", "t1", "t4"]), (True, ["t4", "t1", "t2", "t5"])]
)
def test_trade_history_sorts_by_r_with_trades_without_r_last(
    six: str, descending: bool, with_r: list[str]
) -> None:
    """R -4, -1, 2, 5 sort either way and t3, t6 (no R) come after them."""
    ids, total = query(six, sort_by="r", descending=descending)
    assert total == 6
    assert ids[:4] == with_r
    assert sorted(ids[4:]) == ["t3", "t6"]


def test_trade_history_rows_carry_the_trades_attributes_and_r(six: str) -> None:
    """t2's row is a short ETHUSDT revert trade in europe on alt, risk 5, net -5, R -1."""

    async def go() -> None:
        async with open_ledger(six, standard()) as book:
            trade = await book.view(TradeHistory).get("t2")
            assert trade is not None
            assert (trade.symbol, trade.side, trade.strategy, trade.session) == (
                "ETHUSDT",
                "short",
                "revert",
                "europe",
            )
            assert (trade.pattern, trade.account, trade.currency) == ("wedge", "alt", "USDT")
            assert (trade.initial_risk, trade.net, trade.r, trade.outcome) == (
                D(5),
                D(-5),
                D(-1),
                "loss",
            )
            assert (trade.opened_at, trade.closed_at) == (day(0, 11), day(1, 12))
            assert trade.holding_seconds == D(25 * 3600)
            assert await book.view(TradeHistory).get("nope") is None

    run(go())


def test_trade_history_rejects_an_unknown_sort(six: str) -> None:
    """An unknown sort_by is a ValueError, not an SQL error."""
    with pytest.raises(ValueError):
        query(six, sort_by="symbol; DROP TABLE trade_history")


# signals


def test_signals_link_to_the_trade_opened_with_their_signal_id(sqlite_url: str) -> None:
    """s1 and s3 were followed (by t1 and t3), s2 was not."""
    events: list[Event] = [
        signal("s1", strategy="trend", confidence=D("0.8"), entry_price=D(100)),
        signal("s2", symbol="ETHUSDT", side="short", occurred_at=day(0, 11, 5)),
        opened("t1", 1, 100, signal_id="s1"),
        signal("s3", occurred_at=day(0, 12, 5)),
        closed("t1", 101),
        opened("t3", 1, 100, signal_id="s3", occurred_at=day(0, 16)),
        opened("t4", 1, 100, occurred_at=day(0, 17)),
    ]

    async def go() -> None:
        async with open_ledger(sqlite_url, standard()) as book:
            await record_all(book, events)
            signals = book.view(Signals)
            everything = await signals.signals()
            assert [(s.signal_id, s.trade_id) for s in everything.signals] == [
                ("s1", "t1"),
                ("s2", None),
                ("s3", "t3"),
            ]
            assert everything.total == 3
            followed = await signals.signals(followed=True)
            assert ([s.signal_id for s in followed.signals], followed.total) == (["s1", "s3"], 2)
            ignored = await signals.signals(followed=False)
            assert ([s.signal_id for s in ignored.signals], ignored.total) == (["s2"], 1)
            s1 = everything.signals[0]
            assert (s1.confidence, s1.entry_price, s1.strategy) == (D("0.8"), D(100), "trend")
            assert [s.signal_id for s in (await signals.signals(symbol="ETHUSDT")).signals] == [
                "s2"
            ]

    run(go())


def test_a_trade_recorded_before_its_signal_still_links_to_it(sqlite_url: str) -> None:
    """Two parts of a bot record side by side: t1 lands before s1, which it was opened from.

    s1 links to t1 both live (each record stored on its own) and after a rebuild (all
    in one write); t2, a later trade from s1, does not take the link; s2 is never followed.
    """
    events: list[Event] = [
        opened("t1", 1, 100, signal_id="s1", occurred_at=day(0, 10, 1)),
        signal("s2", occurred_at=day(0, 10, 2)),
        signal("s1", occurred_at=day(0, 10)),
        opened("t2", 1, 100, signal_id="s1", occurred_at=day(0, 11)),
        opened("t3", 1, 100, signal_id="s3", occurred_at=day(0, 12)),
    ]
    expected = [("s2", None), ("s1", "t1")]

    async def links(book: Ledger) -> list[tuple[str, str | None]]:
        page = await book.view(Signals).signals()
        return [(s.signal_id, s.trade_id) for s in page.signals]

    async def go() -> None:
        async with open_ledger(sqlite_url, standard()) as book:
            await record_all(book, events)
            assert await links(book) == expected
            await book.runner.rebuild()
            assert await links(book) == expected
        async with open_ledger(sqlite_url, standard()) as book:
            assert await links(book) == expected
            await book.record(signal("s3", occurred_at=day(0, 13)))  # t3 came first
            assert await links(book) == [*expected, ("s3", "t3")]

    run(go())


# parameters


def test_parameter_changes_are_in_log_order_and_filter_by_name_and_changer(
    sqlite_url: str,
) -> None:
    """Five changes come back in order; by name and by changed_by they filter; current() has the latest values."""
    events: list[Event] = [
        parameter("risk_pct", "0.5", occurred_at=day(0, 10)),
        parameter("max_positions", 3, changed_by="system_auto", occurred_at=day(0, 11)),
        parameter(
            "risk_pct", "0.25", old_value="0.5", changed_by="learning_agent", occurred_at=day(0, 12)
        ),
        parameter(
            "enabled", True, changed_by="emergency", reason="drawdown", occurred_at=day(0, 13)
        ),
        parameter(
            "max_positions", 4, old_value=3, occurred_at=day(0, 9)
        ),  # an earlier clock, later in the log
    ]

    async def go() -> None:
        async with open_ledger(sqlite_url, standard()) as book:
            await record_all(book, events)
            parameters = book.view(Parameters)
            changes = await parameters.changes()
            assert [(c.name, c.new_value, c.old_value, c.changed_by) for c in changes] == [
                ("risk_pct", "0.5", None, "manual"),
                ("max_positions", 3, None, "system_auto"),
                ("risk_pct", "0.25", "0.5", "learning_agent"),
                ("enabled", True, None, "emergency"),
                ("max_positions", 4, 3, "manual"),
            ]
            assert [c.position for c in changes] == [1, 2, 3, 4, 5]
            assert changes[3].reason == "drawdown"
            assert changes[4].occurred_at == day(0, 9)
            by_name = await parameters.changes(name="risk_pct")
            assert [c.new_value for c in by_name] == ["0.5", "0.25"]
            manual = await parameters.changes(changed_by="manual")
            assert [(c.name, c.new_value) for c in manual] == [
                ("risk_pct", "0.5"),
                ("max_positions", 4),
            ]
            assert await parameters.changes(name="max_positions", changed_by="manual") == [
                changes[4]
            ]
            assert [c.position for c in await parameters.changes(limit=2, offset=1)] == [2, 3]
            assert await parameters.current() == {
                "enabled": True,
                "max_positions": 4,
                "risk_pct": "0.25",
            }

    run(go())
