"""Properties of the views over random valid multi-trade histories.

Each example records a history from ``tests.projections.histories`` into real
SQLite ledgers and compares every standard view's whole answer.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ledger import Event, open_ledger
from projections import Performance, Pnl, TradeHistory, standard
from projections.grouping import GROUPS
from tests.projections.books import (
    EVERYTHING,
    assert_same_views,
    closed,
    day,
    increased,
    opened,
    record_all,
    reduced,
    run,
    total,
    views,
)
from tests.projections.histories import breakeven_trades, histories, mirror

PROPERTY = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DISCARDS = ("checkpoint_discarded", "view_rebuilt")


def url(directory: str, name: str) -> str:
    return f"sqlite:///{Path(directory) / name}.db"


async def record_once(target: str, history: Sequence[Event]) -> dict[str, Any]:
    """Record the whole history into a fresh ledger and return its views."""
    async with open_ledger(target, standard()) as book:
        await record_all(book, history)
        return await views(book)


# Partial exits realizing amounts whose digits do not all fit beside 1000,
# settled into the totals (by a checkpoint) before the trade closes at a
# gross of exactly -0.02.
SETTLED_BEFORE_CLOSE: list[Event] = [
    opened("x", 1, 10000),
    closed("x", 11000),
    opened("y", 1, 1, occurred_at=day(1)),
    increased("y", 2, "1.01", occurred_at=day(1, 13)),
    reduced("y", 1, 1, occurred_at=day(1, 14)),
    reduced("y", 1, 1, occurred_at=day(1, 14, 30)),
    closed("y", 1, occurred_at=day(1, 15)),
]


@settings(PROPERTY, max_examples=40)
@given(history=histories())
@example(history=SETTLED_BEFORE_CLOSE)
def test_a_rebuild_from_zero_equals_the_incremental_views(history: list[Event]) -> None:
    """Views kept up record by record equal a rebuild from position 1, a reopen and a ledger fed in batches."""
    with tempfile.TemporaryDirectory() as tmp:

        async def go() -> None:
            async with open_ledger(url(tmp, "a"), standard(), checkpoint_every=1) as book:
                await record_all(book, history)
                incremental = await views(book)
                await book.runner.rebuild()
                assert_same_views(await views(book), incremental)
            async with open_ledger(url(tmp, "a"), standard()) as reopened:
                assert_same_views(await views(reopened), incremental)
            async with open_ledger(url(tmp, "b"), standard(), checkpoint_every=3) as batched:
                for start in range(0, len(history), 4):
                    await batched.record_batch(history[start : start + 4])
                assert_same_views(await views(batched), incremental)

        run(go())


@settings(PROPERTY, max_examples=40)
@given(history=histories(), permille=st.integers(min_value=0, max_value=1000))
@example(history=SETTLED_BEFORE_CLOSE, permille=858)  # k = 6, after both partial exits
def test_restoring_checkpoints_taken_at_any_position_and_catching_up_equals_a_rebuild(
    history: list[Event], permille: int
) -> None:
    """Checkpoints taken after k records, then the rest caught up from the log or recorded live, give the views of one go."""
    k = len(history) * permille // 1000
    with tempfile.TemporaryDirectory() as tmp:

        async def go() -> None:
            expected = await record_once(url(tmp, "whole"), history)
            for name in ("caught_up", "live"):
                async with open_ledger(url(tmp, name), standard(), checkpoint_every=1) as book:
                    await record_all(book, history[:k])
            if k:
                with contextlib.closing(sqlite3.connect(Path(tmp) / "caught_up.db")) as conn:
                    positions = {p for (p,) in conn.execute("SELECT position FROM checkpoints")}
                assert positions == {k}
            # the rest written without views: the next open restores at k and reads the log
            async with open_ledger(url(tmp, "caught_up")) as bare:
                await record_all(bare, history[k:])
            with structlog.testing.capture_logs() as logs:
                async with open_ledger(url(tmp, "caught_up"), standard()) as book:
                    assert_same_views(await views(book), expected)
                async with open_ledger(url(tmp, "live"), standard(), checkpoint_every=1) as book:
                    await record_all(book, history[k:])
                    assert_same_views(await views(book), expected)
            assert not [log for log in logs if log["event"] in DISCARDS]

        run(go())


# Two open trades whose partial exits realize amounts that do not terminate,
# 999.666...7 and -0.00333...3, in two sessions: their exact sum has more
# digits than the library's context holds.
UNEVEN_PARTIAL_EXITS: list[Event] = [
    opened("a", 2, 10000, session="alpha"),
    increased("a", 1, 10001),
    reduced("a", 1, 11000),
    opened("b", 2, 1, session="beta"),
    increased("b", 1, "1.01"),
    reduced("b", 1, 1),
]


@PROPERTY
@given(history=histories())
@example(history=UNEVEN_PARTIAL_EXITS)
def test_group_nets_add_up_to_the_currency_total_in_pnl_and_performance(
    history: list[Event],
) -> None:
    """For every grouping, the groups' gross, fees, funding, net and trade counts sum to their currency's row."""
    with tempfile.TemporaryDirectory() as tmp:

        async def go() -> None:
            async with open_ledger(url(tmp, "a"), standard()) as book:
                await record_all(book, history)
                pnl = book.view(Pnl)
                performance = book.view(Performance)
                totals = {row.currency: row for row in pnl.totals()}
                figures = {f.currency: f for f in await performance.figures()}
                page = await book.view(TradeHistory).trades(limit=EVERYTHING)
                for group_by in GROUPS:
                    for currency, row in totals.items():
                        rows = [r for r in pnl.totals(group_by) if r.currency == currency]
                        for field in ("gross", "fees", "funding", "net"):
                            found = total(getattr(r, field) for r in rows)
                            assert found == getattr(row, field), (group_by, currency, field)
                        assert sum(r.closed_trades for r in rows) == row.closed_trades
                    grouped = await performance.figures(group_by)
                    for currency, whole in figures.items():
                        rows = [f for f in grouped if f.currency == currency]
                        assert total(f.net for f in rows) == whole.net, group_by
                        assert sum(f.trades for f in rows) == whole.trades
                        assert sum(f.wins for f in rows) == whole.wins
                        assert sum(f.losses for f in rows) == whole.losses
                for currency, whole in figures.items():
                    closed = [t for t in page.trades if t.currency == currency]
                    assert whole.net == total(t.net for t in closed)
                    assert whole.trades == len(closed) == totals[currency].closed_trades
                assert set(figures) <= set(totals)

        run(go())


@PROPERTY
@given(history=histories(may_stay_open=False))
def test_without_open_trades_pnl_equals_the_sum_of_closed_trades(history: list[Event]) -> None:
    """When every trade is closed, each currency's realized PnL is the sum of its closed trades' figures."""
    with tempfile.TemporaryDirectory() as tmp:

        async def go() -> None:
            async with open_ledger(url(tmp, "a"), standard()) as book:
                await record_all(book, history)
                page = await book.view(TradeHistory).trades(limit=EVERYTHING)
                for row in book.view(Pnl).totals():
                    closed = [t for t in page.trades if t.currency == row.currency]
                    for field in ("gross", "fees", "funding", "net"):
                        assert getattr(row, field) == total(getattr(t, field) for t in closed), (
                            field
                        )
                    assert row.closed_trades == len(closed)

        run(go())


@PROPERTY
@given(history=histories())
def test_a_mirrored_history_nets_the_same_per_trade(history: list[Event]) -> None:
    """Flipping every trade's side and reflecting its prices around its first entry keeps every closed trade's net, R and the figures."""
    with tempfile.TemporaryDirectory() as tmp:

        async def go() -> None:
            original = await record_once(url(tmp, "original"), history)
            mirrored = await record_once(url(tmp, "mirrored"), mirror(history))

            def per_trade(found: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
                return {
                    t.trade_id: (t.gross, t.fees, t.funding, t.net, t.outcome, t.initial_risk, t.r)
                    for t in found["history"].trades
                }

            assert per_trade(mirrored) == per_trade(original)
            for group_by in (None, "symbol", "strategy"):
                assert mirrored[f"performance/{group_by}"] == original[f"performance/{group_by}"]

        run(go())


@PROPERTY
@given(trades=st.lists(st.sampled_from("abc"), min_size=1, max_size=3, unique=True), data=st.data())
def test_a_trade_exited_only_at_its_average_entry_without_fees_nets_exactly_zero(
    trades: list[str], data: st.DataObject
) -> None:
    """Scale-ins in pairs around A and every exit at A, without fees or funding, net exactly 0: a breakeven."""
    history: list[Event] = []
    for trade_id in trades:
        history += data.draw(breakeven_trades(trade_id), label=trade_id)
    with tempfile.TemporaryDirectory() as tmp:

        async def go() -> None:
            found = await record_once(url(tmp, "a"), history)
            closed = found["history"].trades
            assert len(closed) == len(trades)
            for trade in closed:
                assert (trade.gross, trade.net, trade.outcome) == (0, 0, "breakeven"), trade
            (figures,) = found["performance/None"]
            assert (figures.breakevens, figures.net, figures.max_drawdown) == (len(trades), 0, 0)
            (row,) = found["pnl/None"]
            assert row.net == 0

        run(go())
