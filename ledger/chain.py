"""The tamper-evident hash chain over records.

Each record's hash is SHA-256 of the previous record's hash (32 zero bytes
before position 1) followed by a canonical JSON array of every other field of
the record. Every store computes it with this one function, so the same
records give the same chain byte for byte on every backend.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import msgspec

GENESIS = "00" * 32

_encode = msgspec.json.Encoder().encode


def timestamp(moment: dt.datetime) -> str:
    """The one text form of an instant: UTC, microseconds, ``Z``."""
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    body = _encode(
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
        ]
    )
    return hashlib.sha256(bytes.fromhex(prev_hash) + body).hexdigest()
