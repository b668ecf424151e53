"""The second process of a large rebuild: it folds the table projections marked ``apart``.

A rebuild of a long log is bound by one core: the event loop's thread reads,
decodes and folds every record for every view. So :meth:`Runner.rebuild`
hands the costliest table projections (marked ``apart``) to this process,
which opens the same ledger and rebuilds only those views, while the parent
folds the others. Each side stores its views with their positions; the
parent then reopens its runner, which takes the tables up wherever this
process left them.

    python -m ledger.worker < pickled (url, projections, timeout)
"""

from __future__ import annotations

import asyncio
import pickle
import sys

from ledger.book import open_ledger
from ledger.projection import TableProjection
from ledger.runner import Runner


async def _run(url: str, projections: list[TableProjection], timeout: float) -> None:
    async with open_ledger(url, timeout=timeout, create=False) as book:
        store = book.store
        await Runner(store, store.read_model(), projections, clock=book.clock).rebuild()


def main() -> None:
    url, projections, timeout = pickle.loads(sys.stdin.buffer.read())
    asyncio.run(_run(url, projections, timeout))


if __name__ == "__main__":
    main()
