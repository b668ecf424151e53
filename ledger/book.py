"""The ledger: validate an event, give it its idempotency key, append it durably.

async with open_ledger("sqlite:///bot.db") as book:
    record = await book.record(TradeOpened(...))
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import uuid
from collections.abc import Generator, Sequence
from functools import reduce
from typing import Any, TypeVar

import msgspec

from ledger.codec import encode_data, encode_metadata
from ledger.errors import (
    ConcurrencyError,
    IdempotencyConflict,
    InvalidEvent,
    LedgerClosed,
    LedgerError,
    OutcomeUnknown,
)
from ledger.events import Event, natural_event_id, stream_of, validate
from ledger.failpoints import FailPoints
from ledger.logs import get_logger
from ledger.projection import StateProjection, TableProjection
from ledger.record import Pending, Record
from ledger.runner import Runner
from ledger.store import Clock, EventStore, Proposal, open_store, safe_url
from ledger.store.staging import Stage, stage_each
from ledger.trade import StreamState, fold

__all__ = ["Append", "Ledger", "open_ledger"]

P = TypeVar("P")


def utc_now() -> dt.datetime:
    """The wall clock, in UTC."""
    return dt.datetime.now(dt.UTC)


class Append(msgspec.Struct, frozen=True):
    """One event of a :meth:`Ledger.record_batch`, with the options ``record`` takes."""

    event: Event
    expected_version: int | None = None
    event_id: str | None = None
    metadata: dict[str, Any] | None = None


class Ledger:
    """An open ledger: the log, its rules and its live views.

    Open it with ``async with open_ledger(url) as book`` (or ``book = await
    open_ledger(url)`` and ``await book.aclose()``); a closed ledger refuses
    reuse.
    """

    def __init__(
        self,
        url: str,
        projections: Sequence[StateProjection | TableProjection] = (),
        *,
        timeout: float = 5.0,
        clock: Clock | None = None,
        checkpoint_every: int = 1000,
        follow: bool = False,
        create: bool = True,
    ) -> None:
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout < math.inf
        ):
            # every wait is bounded: an endless one would hang a caller on a stalled store
            raise ValueError(
                f"timeout must be a positive, finite number of seconds, not {timeout!r}"
            )
        self._url = url
        self.url = safe_url(url)  # for people and logs: never the password
        self.create = create
        self.timeout = timeout
        self.clock: Clock = clock or utc_now
        self.checkpoint_every = checkpoint_every
        self._projections = list(projections)
        self._follow = follow
        self._follower: asyncio.Task[None] | None = None
        self._store: EventStore | None = None
        self._runner: Runner | None = None
        self._state = "new"

    @property
    def store(self) -> EventStore:
        """The open store under this ledger."""
        if self._state != "open" or self._store is None:
            raise LedgerClosed(f"the ledger is {self._state}, not open")
        return self._store

    async def open(self) -> Ledger:
        """Open the store; a ledger opens once."""
        if self._state != "new":
            raise LedgerClosed(f"the ledger is {self._state}; open a new one")
        self._state = "opening"
        store = open_store(
            self._url,
            rules=fold,
            clock=self.clock,
            timeout=self.timeout,
            failpoints=FailPoints.from_env(),
            create=self.create,
        )
        runner = Runner(
            store,
            store.read_model(),
            self._projections,
            clock=self.clock,
            checkpoint_every=self.checkpoint_every,
        )
        try:
            await store.open()
            await runner.open()
        except BaseException:
            self._state = "closed"
            await store.aclose()
            raise
        self._store = store
        self._runner = runner
        if hasattr(store, "drained"):
            store.drained = runner.offer  # records drained from a spool reach the views
        self._state = "open"
        if self._follow and runner.active:
            self._follower = asyncio.create_task(runner.follow())
        return self

    async def aclose(self) -> None:
        """Checkpoint the views and close the store; safe to call twice. A close cut
        short by a cancel goes on without its caller; calling again waits for it."""
        if self._state == "closed":
            if self._store is not None:
                await self._store.aclose()
            return
        self._state = "closing"
        try:
            if self._follower is not None:
                self._follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._follower
            if self._runner is not None:
                await self._runner.aclose()
        finally:
            self._state = "closed"
            if self._store is not None:
                await self._store.aclose()

    @property
    def runner(self) -> Runner:
        """The runner that keeps this ledger's views."""
        self.store  # noqa: B018 - raises unless open
        assert self._runner is not None
        return self._runner

    def view(self, cls: type[P]) -> P:
        """The live projection of class ``cls`` registered with this ledger."""
        return self.runner.view(cls)

    async def refresh(self) -> None:
        """Bring the views up to date with records appended by other processes."""
        await self.runner.refresh()

    async def checkpoint(self) -> None:
        """Save the state views' checkpoints now (they are also saved every
        ``checkpoint_every`` records and on close)."""
        await self.runner.checkpoint()

    async def __aenter__(self) -> Ledger:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __await__(self) -> Generator[Any, None, Ledger]:
        return self.open().__await__()

    async def record(
        self,
        event: Event,
        *,
        expected_version: int | None = None,
        event_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Record | Pending:
        """Append ``event`` and return its record once it is durable.

        A retry (same ``event_id``, or the same natural key) with an equal
        payload returns the first record. Raises ``InvalidEvent``,
        ``ConcurrencyError``, ``IdempotencyConflict``, ``StoreUnavailable`` or
        ``OutcomeUnknown``; on any of them but the last, nothing was written.
        With a spool (Redis), an event kept locally while Redis is unreachable
        comes back as a :class:`Pending` instead.
        """
        # record_batch's one-event case, spelled out: this is the hot call, and the
        # batch's lists and extra coroutine cost about a microsecond per event
        store, runner = self.store, self._runner
        try:
            proposal = self._propose(
                Append(event, expected_version, event_id, metadata), self.clock()
            )
            (record,) = await store.append([proposal])
        except (InvalidEvent, ConcurrencyError, IdempotencyConflict) as refused:
            _log_refusal(refused)
            raise
        except OutcomeUnknown as unknown:
            unknown.event_ids = (proposal.event_id,)
            raise
        # closing meanwhile (a shutdown with appends in flight) takes nothing back: the
        # record is durable and is returned; the views pick it up on the next open
        if isinstance(record, Record) and runner is not None and self._state == "open":
            await runner.offer([record])
        return record

    async def record_batch(self, items: Sequence[Event | Append]) -> list[Record | Pending]:
        """Append every item atomically: all are durable, or none is written."""
        store, runner = self.store, self._runner
        now = self.clock()
        proposals: list[Proposal] = []
        try:
            try:
                items = list(items)
            except TypeError:
                raise InvalidEvent("record_batch takes a list of events", rule="schema") from None
            proposals = [
                self._propose(item if isinstance(item, Append) else Append(item), now)
                for item in items
            ]
            if not proposals:
                raise InvalidEvent("the batch is empty", rule="empty_batch")
            records = list(await store.append(proposals))
        except (InvalidEvent, ConcurrencyError, IdempotencyConflict) as refused:
            _log_refusal(refused)
            raise
        except OutcomeUnknown as unknown:
            unknown.event_ids = tuple(p.event_id for p in proposals)
            raise
        if runner is not None and self._state == "open":
            await runner.offer([r for r in records if isinstance(r, Record)])
        return records

    async def check_batch(self, items: Sequence[Event | Append]) -> list[LedgerError | None]:
        """What :meth:`record_batch` would refuse, item by item, against the log as it
        stands and the items before it; writes nothing. Each item's refusal, or None.

        The rules are the stores' own (``stage_each``: idempotency, expected version,
        the trade rules); recording the batch checks it again under the write lock.
        """
        store, now = self.store, self.clock()
        answers: list[LedgerError | None] = []
        proposed: list[tuple[int, Proposal]] = []  # (its item's index, what it proposes)
        found: dict[str, Record | None] = {}
        streams: dict[str, tuple[int, StreamState]] = {}
        for item in items:
            try:
                proposal = self._propose(item if isinstance(item, Append) else Append(item), now)
            except LedgerError as refused:
                answers.append(refused)
                continue
            proposed.append((len(answers), proposal))
            answers.append(None)
            if proposal.event_id not in found:
                found[proposal.event_id] = await store.find(proposal.event_id)
            if proposal.stream_id not in streams:
                records = await store.read_stream(proposal.stream_id)
                state = reduce(fold, (r.event for r in records), None)
                streams[proposal.stream_id] = (len(records), state)
        outcomes = stage_each(
            [[proposal] for _, proposal in proposed],
            Stage(await store.head()),
            find=found.__getitem__,
            stream=streams.__getitem__,
            rules=fold,
            now=now,
        )
        for (index, _), outcome in zip(proposed, outcomes, strict=True):
            if isinstance(outcome, LedgerError):
                answers[index] = outcome
        return answers

    def _propose(self, item: Append, now: dt.datetime) -> Proposal:
        event = item.event
        if item.metadata:
            if not isinstance(item.metadata, dict):
                raise InvalidEvent("metadata must be a JSON object", field="metadata", rule="json")
            if isinstance(event, Event) and isinstance(event.metadata, dict):
                event = msgspec.structs.replace(event, metadata={**event.metadata, **item.metadata})
        event = validate(event, now=now)
        expected = item.expected_version
        if expected is not None and (
            isinstance(expected, bool) or not isinstance(expected, int) or expected < 0
        ):
            raise InvalidEvent(
                "expected_version must be None, 0 or a positive int",
                field="expected_version",
                rule="schema",
            )
        event_id = item.event_id
        if event_id is None:
            event_id = natural_event_id(event) or str(uuid.uuid4())
        if (
            not isinstance(event_id, str)
            or not 1 <= len(event_id) <= 128
            or not event_id.isprintable()
        ):
            raise InvalidEvent(
                "event_id must be 1..128 printable characters", field="event_id", rule="schema"
            )
        return Proposal(
            event=event,
            stream_id=stream_of(event),
            event_id=event_id,
            expected_version=expected,
            type=type(event).__name__,
            schema_version=type(event).schema_version,
            occurred_at=event.occurred_at,
            data=encode_data(event),
            metadata=encode_metadata(event.metadata),
        )


def _log_refusal(refused: LedgerError) -> None:
    get_logger("tradeledger").info("refused", error=type(refused).__name__, reason=str(refused))


def open_ledger(
    url: str,
    projections: Sequence[StateProjection | TableProjection] = (),
    *,
    timeout: float = 5.0,
    clock: Clock | None = None,
    checkpoint_every: int = 1000,
    follow: bool = False,
    create: bool = True,
) -> Ledger:
    """A ledger on ``url`` with its views, opened by ``async with`` or ``await``.

    ``timeout`` bounds every store operation; views are checkpointed every
    ``checkpoint_every`` records and on close; ``follow`` keeps them current
    with other processes' appends in the background (else call ``refresh``);
    ``create=False`` refuses to create a new ledger where there is none.

        async with open_ledger("sqlite:///bot.db", projections.standard()) as book:
            await book.record(event)
            book.view(OpenPositions).positions()
    """
    return Ledger(
        url,
        projections,
        timeout=timeout,
        clock=clock,
        checkpoint_every=checkpoint_every,
        follow=follow,
        create=create,
    )
