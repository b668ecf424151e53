"""The record: one appended event in its envelope, as the log stores it."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from ledger.codec import decode_event, decode_metadata
from ledger.events import Event


class Record(msgspec.Struct, frozen=True, dict=True):
    """An event as the log holds it: its place, its times, its bytes and its hashes.

    ``data`` and ``metadata`` are canonical JSON text; ``event`` decodes them
    (upcasting older schemas) once, on first use.
    """

    position: int
    stream_id: str
    version: int
    event_id: str
    type: str
    schema_version: int
    occurred_at: dt.datetime
    recorded_at: dt.datetime
    data: str
    metadata: str
    prev_hash: str
    hash: str

    @property
    def event(self) -> Event:
        """The event, decoded from ``data`` with ``metadata`` attached (once)."""
        # a plain dict cache: functools.cached_property takes a lock on Python 3.11
        found: Event | None = self.__dict__.get("_event")
        if found is None:
            found = self.__dict__["_event"] = decode_event(
                self.type, self.schema_version, self.data, self.metadata
            )
        return found

    @property
    def meta(self) -> dict[str, Any]:
        """The record's metadata as a dict."""
        return decode_metadata(self.metadata)


class Pending(msgspec.Struct, frozen=True):
    """An event kept in a local spool until the store takes it: no position yet,
    and not in the views. It becomes a record when the spool drains."""

    event_id: str
    stream_id: str
    spool_seq: int
    spooled_at: dt.datetime
