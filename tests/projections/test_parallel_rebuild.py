"""A large rebuild folds the costliest table views in a second process.

Whatever that process does, the views after the rebuild equal the views kept
record by record: a view it finished is taken as it left it, one it did not
is caught up from its stored position by the runner itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from ledger import Event, open_ledger
from ledger.projection import Step
from ledger.runner import Runner
from projections import TradeHistory, standard
from tests.projections.books import (
    assert_same_views,
    closed,
    day,
    funding,
    opened,
    parameter,
    record_all,
    reduced,
    run,
    signal,
    stop_moved,
    views,
)


def history(trades: int) -> list[Event]:
    events: list[Event] = [parameter("risk", "0.01")]
    for n in range(trades):
        tid, at = f"t{n}", day(n // 24, n % 24)
        side = "long" if n % 3 else "short"
        events += [
            signal(f"s{n}", occurred_at=at),
            opened(tid, 2, 100 + n % 7, side=side, signal_id=f"s{n}", stop_price=None,
                   symbol=("BTCUSDT", "ETHUSDT")[n % 2], strategy=("a", "b", "c")[n % 3],
                   occurred_at=at),
            stop_moved(tid, 95 + n % 7 if side == "long" else 105 + n % 7,
                       occurred_at=at.replace(minute=10)),
            reduced(tid, 1, 101 + n % 5, fee="0.1", occurred_at=at.replace(minute=20)),
            funding(tid, f"{(n % 5) - 2}.25", occurred_at=at.replace(minute=30)),
            closed(tid, 99 + n % 9, fee="0.2", occurred_at=at.replace(minute=40)),
        ]  # fmt: skip
    return events


class OnlyHere(TradeHistory):
    """Trade history that fails in any process but the one that made it."""

    name = "trade_history_here"
    apart = True

    def __init__(self) -> None:
        super().__init__()
        self.home = os.getpid()

    def apply(self, step: Step) -> None:
        if os.getpid() != self.home:
            raise RuntimeError("not in this process")
        super().apply(step)


class DiesThere(OnlyHere):
    """Trade history that ends any other process that takes it in."""

    name = "trade_history_dies"

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state["home"] != os.getpid():
            os._exit(3)
        self.__dict__.update(state)


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """The log lines from info up (the suite keeps only warnings)."""
    kept = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        with capture_logs() as captured:
            yield captured
    finally:
        structlog.configure(**kept)


def indexes(url: str) -> list[str]:
    with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name")
        return [name for (name,) in rows]


async def rebuilt(
    url: str, projections: list[Any], parallel_from: int
) -> tuple[dict[str, Any], int]:
    """The views after a rebuild, and how many records the runner folded again after
    taking the tables back (0 when the second process finished every view)."""
    async with open_ledger(url, projections) as book:
        store = book.store
        runner = Runner(store, store.read_model(), projections, clock=book.clock)
        runner.parallel_from = parallel_from
        await runner.rebuild(url=url)
        return await views(book), runner.replayed  # the book's views are these, rebuilt


async def recorded(url: str, events: list[Event]) -> dict[str, Any]:
    """The standard views after recording ``events`` one by one."""
    async with open_ledger(url, standard()) as book:
        await record_all(book, events)
        return await views(book)


def with_history(view: TradeHistory) -> list[Any]:
    """The standard projections, with ``view`` in trade history's place."""
    return [view if isinstance(p, TradeHistory) else p for p in standard()]


def test_a_rebuild_in_two_processes_equals_the_views_kept_record_by_record(
    sqlite_url: str, logs: list[MutableMapping[str, Any]]
) -> None:
    """With the threshold at 0, Performance is folded by ledger.worker."""

    async def go() -> None:
        async with open_ledger(sqlite_url, standard(), checkpoint_every=7) as book:
            await record_all(book, history(40))
            expected = await views(book)
        built = indexes(sqlite_url)
        assert "trade_history_by_net" in built
        found, again = await rebuilt(sqlite_url, standard(), parallel_from=0)
        assert_same_views(found, expected, "after a rebuild in two processes")
        assert again == 0
        assert indexes(sqlite_url) == built
        (started,) = [log for log in logs if log["event"] == "rebuild_apart"]
        assert started["views"] == ["performance"]
        assert started["code"] == 0
        found, _ = await rebuilt(sqlite_url, standard(), 10**9)
        assert_same_views(found, expected, "in one process")
        assert indexes(sqlite_url) == built
        assert [log for log in logs if log["event"] == "rebuild_apart"] == [started]

    run(go())


def test_a_view_the_second_process_did_not_finish_is_caught_up_by_the_runner(
    sqlite_url: str, logs: list[MutableMapping[str, Any]]
) -> None:
    """The view faults in the worker, which stores nothing for it; the runner folds it."""

    async def go() -> None:
        events = history(12)
        expected = (await recorded(sqlite_url, events))["history"]
        here = OnlyHere()
        found, again = await rebuilt(sqlite_url, with_history(here), parallel_from=0)
        assert found["history"] == expected
        assert again == len(events)  # folded here from position 1
        assert len(expected.trades) == 12
        assert here.faulted is None
        assert [log["views"] for log in logs if log["event"] == "rebuild_apart"] == [
            ["performance", "trade_history_here"]
        ]

    run(go())


def test_a_second_process_that_dies_leaves_its_views_to_the_runner(
    sqlite_url: str, logs: list[MutableMapping[str, Any]]
) -> None:
    """The process ends as it takes the views in; the runner folds them all itself."""

    async def go() -> None:
        events = history(12)
        expected = await recorded(sqlite_url, events)
        found, again = await rebuilt(sqlite_url, with_history(DiesThere()), parallel_from=0)
        assert_same_views(found, expected, "after the second process died")
        assert again == len(events)  # nothing was stored there: folded here from position 1
        (failed,) = [log for log in logs if log["event"] == "rebuild_process_failed"]
        assert failed["code"] == 3

    run(go())
