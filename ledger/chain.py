"""The tamper-evident hash chain over records.

Each record's hash is SHA-256 of the previous record's hash (32 zero bytes
before position 1) followed by a canonical JSON array of every other field of
the record. Every store computes it with this one function, so the same
records give the same chain byte for byte on every backend.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import msgspec

GENESIS = "00" * 32

_encode = msgspec.json.Encoder().encode
_fromisoformat = dt.datetime.fromisoformat  # bound once: two reads per record pay for the lookup


def timestamp(moment: dt.datetime) -> str:
    """The one text form of an instant: UTC, microseconds, ``Z``."""
    if moment.tzinfo is not dt.UTC:
        moment = moment.astimezone(dt.UTC)
    if type(moment) is not dt.datetime:  # a subclass (pandas, freezegun), which msgspec refuses
        return moment.isoformat(timespec="microseconds")[:-6] + "Z"
    # This is on every hot path. msgspec writes a UTC time as RFC 3339 with "Z" in
    # a twentieth of isoformat's time, leaving out the fraction when it is zero.
    text = _encode(moment)
    if moment.microsecond:
        return text[1:-1].decode()
    return text[1:-2].decode() + ".000000Z"


def parse_timestamp(text: str) -> dt.datetime:
    """The instant a stored time names; ValueError unless ``text`` is exactly in
    :func:`timestamp`'s form (the chain hashes that form: other bytes for the same
    instant would pass the hash, so they are refused here)."""
    # The form is fixed: YYYY-MM-DDTHH:MM:SS.ffffffZ. With its separators in place
    # (every third character from the fifth, and the Z), fromisoformat takes ASCII
    # digits only in between, so this is the whole check; every record read pays it.
    if len(text) != 27 or text[4:20:3] != "--T::." or text[26] != "Z":
        raise ValueError(f"the time {text!r} is not in its stored form")
    return _fromisoformat(text)


def record_hash(
    prev_hash: str,
    position: int,
    stream_id: str,
    version: int,
    event_id: str,
    type: str,
    schema_version: int,
    occurred_at: dt.datetime,
    recorded_at: dt.datetime,
    data: str,
    metadata: str,
) -> str:
    """The hex SHA-256 that chains a record to ``prev_hash``."""
    return stored_hash(
        prev_hash,
        [
            position,
            stream_id,
            version,
            event_id,
            type,
            schema_version,
            timestamp(occurred_at),
            timestamp(recorded_at),
            data,
            metadata,
        ],
    )


def stored_hash(prev_hash: str, columns: list[Any]) -> str:
    """:func:`record_hash` of a record's stored columns, ``position`` to ``metadata``,
    its times already in their :func:`timestamp` text (as a store writes them)."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + _encode(columns)).hexdigest()


def digest_of(record: Any) -> str:
    """The hash a record (anything with the record's fields) must carry, given its prev_hash."""
    return record_hash(
        record.prev_hash,
        record.position,
        record.stream_id,
        record.version,
        record.event_id,
        record.type,
        record.schema_version,
        record.occurred_at,
        record.recorded_at,
        record.data,
        record.metadata,
    )


class ChainBreak(msgspec.Struct, frozen=True):
    """The first place a log stops being the chain it claims to be."""

    position: int
    reason: str


def check_link(record: Any, prev_position: int, prev_hash: str) -> ChainBreak | None:
    """Whether ``record`` follows ``(prev_position, prev_hash)`` and hashes to its ``hash``."""
    if record.position != prev_position + 1:
        return ChainBreak(
            prev_position + 1,
            f"position {prev_position + 1} is missing: the next record is at {record.position}",
        )
    if record.prev_hash != prev_hash:
        return ChainBreak(record.position, "prev_hash does not match the previous record's hash")
    try:
        expected = digest_of(record)
    except ValueError:  # a prev_hash that is not hex: altered, as surely as a wrong one
        return ChainBreak(record.position, "prev_hash is not a hex digest")
    if expected != record.hash:
        return ChainBreak(record.position, "the record's content does not match its hash")
    return None
