"""Validate appends against the log as it stands, before anything is written.

Both stores stage a group of callers' batches in memory: each batch checks,
in order, idempotency (its event id already recorded, with an equal payload,
returns that record), the expected version, then the stream's rules, and is
chained onto the head. A refused batch leaves the stage as it was, so one
caller's refusal never touches its neighbours; the store then writes what was
staged in one transaction (SQLite) or one script (Redis), from the stage's
``rows``: the new records' stored columns, hashed from the very text stored.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from ledger.chain import stored_hash, timestamp
from ledger.codec import decode_event
from ledger.errors import ConcurrencyError, IdempotencyConflict, LedgerError
from ledger.record import Record
from ledger.store.protocol import Head, Proposal, Rules
from ledger.trade import StreamState

__all__ = ["Row", "Stage", "make_record", "same_payload", "stage_batch", "stage_each"]

Row = tuple[Any, ...]
"""A record's twelve stored columns, in the order of the record's fields, times as text."""


class Stage:
    """What a transaction has written so far, layered over what is committed."""

    def __init__(self, head: Head, parent: Stage | None = None) -> None:
        self.head = head
        self.parent = parent
        self.by_event_id: dict[str, Record] = {}
        self.streams: dict[str, tuple[int, StreamState]] = {}
        self.rows: list[Row] = []  # what this stage appends, in position order
        # the last recorded_at and its text: one time serves a whole group
        self.stamp: tuple[dt.datetime, str] | None = None if parent is None else parent.stamp

    def find(self, event_id: str) -> Record | None:
        stage: Stage | None = self
        while stage is not None:
            found = stage.by_event_id.get(event_id)
            if found is not None:
                return found
            stage = stage.parent
        return None

    def stream(self, stream_id: str) -> tuple[int, StreamState] | None:
        stage: Stage | None = self
        while stage is not None:
            found = stage.streams.get(stream_id)
            if found is not None:
                return found
            stage = stage.parent
        return None

    def merge_into_parent(self) -> None:
        assert self.parent is not None
        self.parent.head = self.head
        self.parent.by_event_id.update(self.by_event_id)
        self.parent.streams.update(self.streams)
        self.parent.rows += self.rows
        self.parent.stamp = self.stamp


def stage_batch(
    batch: Sequence[Proposal],
    stage: Stage,
    *,
    find: Callable[[str], Record | None],
    stream: Callable[[str], tuple[int, StreamState]],
    rules: Rules,
    now: dt.datetime,
) -> list[Record]:
    """Stage one atomic batch on ``stage`` and return its records (existing ones for retries).

    ``find`` looks an event id up in the committed log; ``stream`` gives a
    stream's committed (version, state). Raises the refusal, leaving ``stage``
    to be discarded by the caller.
    """
    records: list[Record] = []
    for proposal in batch:
        existing = stage.find(proposal.event_id) or find(proposal.event_id)
        if existing is not None:
            if not same_payload(existing, proposal):
                raise IdempotencyConflict(proposal.event_id, existing.position)
            records.append(existing)
            continue
        version, state = stage.stream(proposal.stream_id) or stream(proposal.stream_id)
        expected = proposal.expected_version
        if expected is not None and expected != version:
            raise ConcurrencyError(proposal.stream_id, expected, version)
        new_state = rules(state, proposal.event)
        head = stage.head
        recorded_at = (
            now if head.recorded_at is None or now > head.recorded_at else head.recorded_at
        )
        if stage.stamp is None or stage.stamp[0] != recorded_at:
            stage.stamp = (recorded_at, timestamp(recorded_at))
        record, row = make_record(head, proposal, version + 1, recorded_at, stage.stamp[1])
        stage.head = Head(record.position, record.hash, recorded_at)
        stage.by_event_id[record.event_id] = record
        stage.streams[record.stream_id] = (record.version, new_state)
        stage.rows.append(row)
        records.append(record)
    return records


def stage_each(
    batches: Sequence[Sequence[Proposal]],
    stage: Stage,
    *,
    find: Callable[[str], Record | None],
    stream: Callable[[str], tuple[int, StreamState]],
    rules: Rules,
    now: dt.datetime,
) -> list[list[Record] | LedgerError]:
    """Stage each batch on its own child of ``stage``: its records, or its refusal, which
    leaves ``stage`` as it was (one batch's refusal never touches the others)."""
    outcomes: list[list[Record] | LedgerError] = []
    for batch in batches:
        child = Stage(stage.head, stage)
        try:
            records = stage_batch(batch, child, find=find, stream=stream, rules=rules, now=now)
        except LedgerError as refused:
            outcomes.append(refused)
            continue
        child.merge_into_parent()
        outcomes.append(records)
    return outcomes


def make_record(
    head: Head,
    proposal: Proposal,
    version: int,
    recorded_at: dt.datetime,
    recorded_text: str | None = None,
) -> tuple[Record, Row]:
    """The record that appends ``proposal`` after ``head``, hashed into the chain, and its row.

    ``recorded_text`` is ``timestamp(recorded_at)``, when the caller has it already.
    """
    if recorded_text is None:
        recorded_text = timestamp(recorded_at)
    position = head.position + 1
    columns = [
        position,
        proposal.stream_id,
        version,
        proposal.event_id,
        proposal.type,
        proposal.schema_version,
        timestamp(proposal.occurred_at),
        recorded_text,
        proposal.data,
        proposal.metadata,
    ]
    digest = stored_hash(head.hash, columns)
    record = Record(
        position,
        proposal.stream_id,
        version,
        proposal.event_id,
        proposal.type,
        proposal.schema_version,
        proposal.occurred_at,
        recorded_at,
        proposal.data,
        proposal.metadata,
        head.hash,
        digest,
    )
    return record, (*columns, head.hash, digest)


def same_payload(record: Record, proposal: Proposal) -> bool:
    """Whether a recorded event equals a proposed one by value (metadata aside)."""
    if record.type != proposal.type:
        return False
    if record.schema_version == proposal.schema_version and record.data == proposal.data:
        return True
    stored = decode_event(record.type, record.schema_version, record.data)
    return bool(stored == decode_event(proposal.type, proposal.schema_version, proposal.data))
