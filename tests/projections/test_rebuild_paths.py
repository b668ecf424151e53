"""How a rebuild reads the log and fills the tables, and that none of it changes a view.

- A view gets only the steps of the event types it names in ``reads``.
- A runner whose views all name their types (the rebuild's second process)
  reads only those and the trade events, which the fold always sees whole.
- A rebuild fills the tables without their indexes and creates them before
  its last ``flush_every`` records; an index a rebuild did not get to is
  created on the next open.
"""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

from ledger import open_ledger
from ledger.events import ParameterChanged, SignalEmitted, StopMoved
from ledger.projection import StateProjection, Step
from ledger.runner import Runner
from projections import Performance, TradeHistory, standard
from tests.projections.books import (
    assert_same_views,
    day,
    opened,
    record_all,
    run,
    stop_moved,
    views,
)
from tests.projections.test_parallel_rebuild import history, indexes, recorded


class Seen(StateProjection):
    """The event types it was given, in order."""

    name = "seen"
    reads = frozenset({SignalEmitted, StopMoved})

    def __init__(self) -> None:
        self.types: list[str] = []

    def apply(self, step: Step) -> None:
        self.types.append(type(step.event).__name__)

    def reset(self) -> None:
        self.types = []

    def snapshot(self) -> bytes:
        return ",".join(self.types).encode()

    def restore(self, data: bytes) -> None:
        self.types = data.decode().split(",") if data else []


def test_a_view_gets_only_the_events_it_reads(sqlite_url: str) -> None:
    events = history(3)

    async def go() -> list[str]:
        async with open_ledger(sqlite_url, [Seen(), *standard()]) as book:
            await record_all(book, events)
            return book.view(Seen).types

    wanted = [type(e).__name__ for e in events if isinstance(e, SignalEmitted | StopMoved)]
    assert wanted == ["SignalEmitted", "StopMoved"] * 3
    assert run(go()) == wanted


def test_a_runner_reads_only_what_its_views_and_the_fold_need(sqlite_url: str) -> None:
    """Performance reads closes; the fold reads every trade event, so signals and
    parameter changes stay in the store. The figures equal the ones kept record
    by record, and the fold this runner checkpoints is the whole one."""
    # a trade left open with its stop moved: a fold that skipped the move differs
    events = [*history(12), opened("open", 1, 100, occurred_at=day(5)), stop_moved("open", 98)]

    async def go() -> None:
        expected = await recorded(sqlite_url, events)
        projections = standard()
        async with open_ledger(sqlite_url, projections) as book:
            store = book.store
            before = (await store.load_checkpoints())["_trades"]
            (view,) = [p for p in projections if isinstance(p, Performance)]
            runner = Runner(store, store.read_model(), [view], clock=book.clock)
            types: list[str] = []
            read = store.read

            def spy(*args: Any, **kwargs: Any) -> Any:
                async def records() -> Any:
                    async for record in read(*args, **kwargs):
                        types.append(record.type)
                        yield record

                return records()

            store.read = spy  # type: ignore[method-assign]
            await runner.rebuild()
            store.read = read  # type: ignore[method-assign]
            assert runner.position == len(events)
            trade_events = [
                e for e in events if not isinstance(e, SignalEmitted | ParameterChanged)
            ]
            assert types == [type(e).__name__ for e in trade_events]
            after = (await store.load_checkpoints())["_trades"]
            assert (after.position, after.state) == (before.position, before.state)
            found = await views(book)
        figures = [key for key in expected if key.startswith("performance/")]
        assert len(figures) == 6
        for key in [*figures, "daily"]:
            assert found[key] == expected[key], key

    run(go())


def test_a_rebuild_creates_the_indexes_before_its_last_records(sqlite_url: str) -> None:
    """With a write every 50 records, the indexes appear before the last 50: the
    first close of the rebuild sees none, the last sees them all."""
    events = history(40)  # 241 records
    seen: list[tuple[int, int]] = []  # (position, indexes of the view's table then)

    class Watching(TradeHistory):
        def apply(self, step: Step) -> None:
            built = [name for name in indexes(sqlite_url) if name.startswith("trade_history_by")]
            seen.append((step.record.position, len(built)))
            super().apply(step)

    async def go() -> None:
        expected = await recorded(sqlite_url, events)
        built = indexes(sqlite_url)
        projections = [Watching() if isinstance(p, TradeHistory) else p for p in standard()]
        async with open_ledger(sqlite_url, projections) as book:
            runner = Runner(book.store, book.store.read_model(), projections, clock=book.clock)
            runner.flush_every = 50
            await runner.rebuild()
            assert indexes(sqlite_url) == built
            assert_same_views(await views(book), expected, "after a rebuild")

    run(go())
    first_with = min(position for position, count in seen if count)
    assert all(count == 0 for position, count in seen if position < first_with)
    assert all(count == 9 for position, count in seen if position >= first_with)
    assert len(events) - 50 < first_with <= len(events) - 40  # a close ends each 6 records


def test_an_index_a_rebuild_did_not_create_is_created_on_the_next_open(sqlite_url: str) -> None:
    events = history(4)  # it starts with a parameter change

    async def go() -> None:
        async with open_ledger(sqlite_url, standard()) as book:
            await record_all(book, events)
        built = indexes(sqlite_url)
        with contextlib.closing(sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))) as conn:
            conn.execute("DROP INDEX trade_history_by_net")
            conn.execute("DROP INDEX parameter_changes_by_name")
            conn.commit()
        assert "trade_history_by_net" not in indexes(sqlite_url)
        async with open_ledger(sqlite_url, standard()):
            pass
        assert indexes(sqlite_url) == built

    run(go())
