"""Several processes that keep views in one ledger file never count anything twice."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import sys
import textwrap
from pathlib import Path

import projections
from ledger import open_ledger
from replay.rebuild import rebuild
from tests.projections.books import assert_same_views, run, views

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
