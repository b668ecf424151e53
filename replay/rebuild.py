"""rebuild: every projection from position 1."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ledger import open_ledger
from ledger.projection import StateProjection, TableProjection
from ledger.runner import Runner

__all__ = ["rebuild"]


async def rebuild(
    url: str,
    projections: Sequence[StateProjection | TableProjection],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Fold the whole log into fresh ``projections``, store them, and return the head position.

    ``progress(done, total)`` is called along the way.
    """
    async with open_ledger(url, create=False) as book:
        store = book.store
        runner = Runner(store, store.read_model(), projections, clock=book.clock)
        await runner.rebuild(progress, url=url)
        return runner.position
