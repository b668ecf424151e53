"""The narrow interface every store implements, and what crosses it."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from typing import Any, Protocol

import msgspec

from ledger.events import Event
from ledger.projection import ReadModel
from ledger.record import Pending, Record
from ledger.trade import StreamState

Clock = Callable[[], dt.datetime]
Rules = Callable[[StreamState, Event], StreamState]


class Proposal(msgspec.Struct, frozen=True):
    """One validated event on its way into the log, with everything the store needs."""

    event: Event
    stream_id: str
    event_id: str
    expected_version: int | None
    type: str
    schema_version: int
    occurred_at: dt.datetime
    data: str
    metadata: str


class Head(msgspec.Struct, frozen=True):
    """The end of the log: its last position and hash (0 and the genesis hash when empty)."""

    position: int
    hash: str
    recorded_at: dt.datetime | None


class Checkpoint(msgspec.Struct, frozen=True):
    """A state projection's saved state at a position of the log."""

    name: str
    identity: str
    position: int
    hash: str
    state: bytes
    digest: str
    saved_at: dt.datetime


class EventStore(Protocol):
    """Append, read, subscribe and checkpoints: all a ledger needs from a backend.

    ``append`` applies the idempotency check, then the expected version, then
    ``rules`` to each proposal under the store's write serialization, and
    writes the batch atomically or not at all.
    """

    url: str

    @property
    def durability(self) -> str:
        """What an acknowledgement promises on this store, in words."""
        ...

    async def open(self) -> None: ...

    async def aclose(self) -> None: ...

    async def append(self, batch: Sequence[Proposal]) -> Sequence[Record | Pending]: ...

    def read(
        self, start: int = 1, stop: int | None = None, *, kinds: Collection[str] | None = None
    ) -> AsyncIterator[Record]:
        """Records from ``start`` to ``stop`` (inclusive) in log order; with ``kinds``,
        only the records of those event types."""
        ...

    async def read_stream(self, stream_id: str) -> list[Record]: ...

    async def find(self, event_id: str) -> Record | None: ...

    def subscribe(self, start: int = 1) -> AsyncIterator[Record]: ...

    async def head(self) -> Head: ...

    async def position_at(self, recorded_at: dt.datetime) -> int: ...

    async def count_by_type(self) -> dict[str, int]: ...

    async def record_at(self, position: int) -> Record | None: ...

    async def save_checkpoints(self, checkpoints: Sequence[Checkpoint]) -> None: ...

    async def load_checkpoints(self) -> dict[str, Checkpoint]: ...

    async def ledger_id(self) -> str: ...

    async def describe(self) -> dict[str, Any]:
        """Backend facts for ``info`` (sizes, settings), never secrets."""
        ...

    def read_model(self) -> ReadModel:
        """Where table projections keep their rows for this store."""
        ...
