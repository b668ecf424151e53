"""Several processes that keep views in one ledger file never count anything twice."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import sys
import textwrap
from pathlib import Path

import pytest

import projections
from ledger import open_ledger
from ledger.errors import ProjectionFaulted
from ledger.runner import Runner
from projections import OpenPositions, TradeHistory
from replay.rebuild import rebuild
from tests.projections.books import assert_same_views, closed, day, opened, run, views

WRITER = textwrap.dedent(
    """
    import asyncio, logging, random, sys
    import structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    import projections
    from ledger import open_ledger
    from tests.projections.histories import random_history

    async def main(url, seed):
        async with open_ledger(url, projections.standard(), checkpoint_every=25) as book:
            for event in random_history(random.Random(seed), 120):
                await book.record(event)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def test_a_follower_and_a_writer_sharing_a_file_leave_views_equal_to_a_rebuild(
    tmp_path: Path,
) -> None:
    """Two processes folding the same records into the file's views store each close once."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)

    async def follow_while_writing() -> None:
        async with open_ledger(url, projections.standard(), follow=True) as follower:
            writer = await asyncio.create_subprocess_exec(
                sys.executable,
                str(script),
                url,
                str(random.randrange(1000)),
                env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
            )
            assert await writer.wait() == 0
            await follower.refresh()

    run(follow_while_writing())

    async def stored() -> dict[str, object]:
        async with open_ledger(url, projections.standard()) as book:
            return await views(book)

    found = run(stored())
    copy = tmp_path / "rebuilt.db"
    with sqlite3.connect(tmp_path / "shared.db") as source, sqlite3.connect(copy) as target:
        source.backup(target)
    run(rebuild(f"sqlite:///{copy}", projections.standard()))

    async def rebuilt() -> dict[str, object]:
        async with open_ledger(f"sqlite:///{copy}", projections.standard()) as book:
            return await views(book)

    assert_same_views(found, run(rebuilt()), "views kept by two processes vs a rebuild")


async def _rebuilt_views(tmp_path: Path) -> dict[str, object]:
    """The views of a copy of the shared file, rebuilt from its log."""
    copy = tmp_path / "rebuilt.db"
    with sqlite3.connect(tmp_path / "shared.db") as source, sqlite3.connect(copy) as target:
        source.backup(target)
    await rebuild(f"sqlite:///{copy}", projections.standard())
    async with open_ledger(f"sqlite:///{copy}", projections.standard()) as book:
        return await views(book)


def test_a_lagging_process_never_moves_a_shared_view_back(tmp_path: Path) -> None:
    """A follower two records behind the bot flushes; the bot restarts: it must not count again the closes the follower's stale position would replay."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    events = [
        opened("e1", symbol="ETHUSDT"),
        closed("e1", 110),
        opened("b1", symbol="BTCUSDT"),
        closed("b1", 90),
    ]

    async def go() -> tuple[dict[str, object], dict[str, object]]:
        follower = await open_ledger(url, projections.standard())
        bot = await open_ledger(url, projections.standard())
        records = [await bot.record(event) for event in events]
        for record in records[:2]:  # what follow() does, one poll behind
            await follower.runner.offer([record])
        await bot.aclose()
        async with open_ledger(url, projections.standard()) as again:
            restarted = await views(again)
        await follower.aclose()
        return restarted, await _rebuilt_views(tmp_path)

    restarted, expected = run(go())
    assert_same_views(restarted, expected, "the bot after a restart vs a rebuild")


def test_a_lagging_follower_recomputes_a_reordered_path_at_its_own_position(
    tmp_path: Path,
) -> None:
    """A close recorded out of time order makes the equity path be recomputed: a follower behind the bot reads only the closes it has reached, and ends with the bot's figures."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    events = [
        opened("c1"),
        closed("c1", 110, occurred_at=day(0, 17)),
        opened("c2"),
        closed("c2", 95, occurred_at=day(0, 15)),  # closes before c1 did
        opened("c3"),
        closed("c3", 90, occurred_at=day(0, 18)),
    ]

    async def go() -> tuple[dict[str, object], dict[str, object]]:
        follower = await open_ledger(url, projections.standard())
        async with open_ledger(url, projections.standard()) as bot:
            records = [await bot.record(event) for event in events]
            for record in records:  # the follower catches up after the bot wrote it all
                await follower.runner.offer([record])
            seen = await views(follower)
        await follower.aclose()
        return seen, await _rebuilt_views(tmp_path)

    seen, expected = run(go())
    assert_same_views(seen, expected, "a lagging follower vs a rebuild")


def test_a_rebuild_while_another_process_keeps_the_views_faults_that_process_not_the_file(
    tmp_path: Path,
) -> None:
    """An operator rebuilds while the bot records: the bot's table views say they were rebuilt elsewhere (queries fail loudly) instead of mixing its rows into the rebuild's, and the file ends equal to a clean rebuild."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    trades = 600  # all closing on one UTC day: one daily row both processes would touch

    async def go() -> tuple[dict[str, object], dict[str, object]]:
        async with open_ledger(url) as writer:
            await writer.record_batch(
                [e for n in range(trades) for e in (opened(f"t{n}"), closed(f"t{n}", 101))]
            )
        async with open_ledger(url, projections.standard()) as bot:
            started = asyncio.Event()

            async def operator() -> None:
                async with open_ledger(url, create=False) as book:
                    runner = Runner(
                        book.store,
                        book.store.read_model(),
                        projections.standard(),
                        clock=book.clock,
                    )
                    runner.flush_every = 100
                    await runner.rebuild(lambda done, total: started.set())

            async def trading() -> None:
                await started.wait()  # the rebuild is under way
                await bot.record(opened("late"))
                await bot.record(closed("late", 101, occurred_at=day(0, 16)))

            await asyncio.gather(operator(), trading())
            with pytest.raises(ProjectionFaulted, match="reopen"):
                await bot.view(TradeHistory).trades()
            assert [p.trade_id for p in bot.view(OpenPositions).positions()] == []
        async with open_ledger(url, projections.standard()) as again:
            reopened = await views(again)
        return reopened, await _rebuilt_views(tmp_path)

    reopened, expected = run(go())
    assert_same_views(reopened, expected, "the file after a concurrent rebuild vs a clean one")
