"""Time travel: the book as the log stood at a position, as the ledger knew it at
an instant, or as events had occurred by an instant.

    async with travel(url, standard(), as_of=datetime(2026, 3, 1, tzinfo=UTC)) as cut:
        cut.view(OpenPositions).positions()
        cut.inconsistent   # trades whose events cannot be folded at that cut
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

from ledger import open_ledger
from ledger.book import Ledger
from ledger.projection import StateProjection, TableProjection
from ledger.readmodel import LocalReadModel
from ledger.record import Record
from ledger.runner import Runner
from ledger.store import EventStore

__all__ = ["Cut", "travel"]

P = TypeVar("P")


class Cut:
    """Views folded from one cut of the log, held in memory."""

    def __init__(
        self,
        url: str,
        projections: Sequence[StateProjection | TableProjection],
        *,
        at_position: int | None = None,
        known_at: dt.datetime | None = None,
        as_of: dt.datetime | None = None,
        timeout: float = 5.0,
    ) -> None:
        given = [c for c in (at_position, known_at, as_of) if c is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of at_position, known_at, as_of")
        for moment in (known_at, as_of):
            if moment is not None and moment.utcoffset() is None:
                raise ValueError("known_at and as_of must be timezone-aware")
        if at_position is not None and at_position < 0:
            raise ValueError("at_position must be >= 0")
        self.at_position = at_position
        self.known_at = known_at
        self.as_of = as_of
        self.position = 0
        self.inconsistent: dict[str, str] = {}
        self._book: Ledger = open_ledger(url, timeout=timeout, create=False)
        self._model = LocalReadModel()
        self._projections = list(projections)
        self._runner: Runner | None = None

    async def __aenter__(self) -> Cut:
        await self._book.open()
        try:
            await self._model.open()
            store = self._book.store
            self._runner = Runner(store, self._model, self._projections, clock=self._book.clock)
            self.inconsistent = await self._runner.replay(self._records(store))
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._model.aclose()
        await self._book.aclose()

    async def _records(self, store: EventStore) -> AsyncIterator[Record]:
        if self.as_of is not None:
            async for record in store.read(1):
                if record.occurred_at <= self.as_of:
                    self.position = record.position
                    yield record
            return
        if self.known_at is not None:
            stop = await store.position_at(self.known_at)
        else:
            assert self.at_position is not None
            stop = self.at_position
        if stop > 0:
            async for record in store.read(1, stop):
                self.position = record.position
                yield record

    def view(self, cls: type[P]) -> P:
        """The projection of class ``cls`` folded from this cut."""
        assert self._runner is not None, "enter the cut with `async with` first"
        return self._runner.view(cls)


def travel(
    url: str,
    projections: Sequence[StateProjection | TableProjection],
    *,
    at_position: int | None = None,
    known_at: dt.datetime | None = None,
    as_of: dt.datetime | None = None,
) -> Cut:
    """Views of the log cut at a position, a recorded time or an event time."""
    return Cut(url, projections, at_position=at_position, known_at=known_at, as_of=as_of)
