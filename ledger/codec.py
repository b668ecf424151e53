"""The one place where bytes become events and events become bytes.

Event data is canonical JSON: keys sorted, decimals as strings in their
canonical form, times in UTC, defaults omitted, metadata kept apart. Records
of an older ``schema_version`` are upcast on read, one version at a time, by
the functions in ``UPCASTERS``; the rules for evolving a schema are in the
README.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec

from ledger.errors import InvalidEvent
from ledger.events import EVENT_TYPES, AnyEvent, Event, canonical_numbers

__all__ = [
    "UPCASTERS",
    "decode_event",
    "decode_metadata",
    "encode_data",
    "encode_metadata",
]

_data_encoder = msgspec.json.Encoder(order="sorted")
# Metadata is free JSON: numbers stay exact numbers both ways.
_meta_encoder = msgspec.json.Encoder(order="sorted", decimal_format="number")
_meta_decoder = msgspec.json.Decoder(dict[str, Any], float_hook=Decimal)
_event_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(AnyEvent)
_dict_decoder = msgspec.json.Decoder(dict[str, Any])

_NO_METADATA = "{}"


def _stop_moved_v1(payload: dict[str, Any]) -> dict[str, Any]:
    """StopMoved v1 named its price ``stop`` and had no ``reason``."""
    payload = dict(payload)
    payload["stop_price"] = payload.pop("stop")
    return payload


UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {
    ("StopMoved", 1): _stop_moved_v1,
}


def encode_data(event: Event) -> str:
    """The canonical JSON of an event, without its metadata."""
    if event.metadata:
        event = msgspec.structs.replace(event, metadata={})
    return _data_encoder.encode(event).decode()


def encode_metadata(metadata: dict[str, Any]) -> str:
    """The canonical JSON of a metadata object."""
    if not metadata:
        return _NO_METADATA
    return _meta_encoder.encode(metadata).decode()


def decode_metadata(text: str) -> dict[str, Any]:
    """Metadata JSON back into a dict (numbers as Decimal)."""
    if text == _NO_METADATA:
        return {}
    return _meta_decoder.decode(text)


def decode_event(kind: str, schema_version: int, data: str, metadata: str = _NO_METADATA) -> Event:
    """An event from its stored form (``kind`` is its type tag), upcast to the current schema."""
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        raise InvalidEvent(f"unknown event type {kind!r}", field="type", rule="unknown_type")
    try:
        if schema_version == cls.schema_version:
            event = _event_decoder.decode(data)
        elif schema_version < cls.schema_version:
            payload = _dict_decoder.decode(data)
            for version in range(schema_version, cls.schema_version):
                payload = UPCASTERS[(kind, version)](payload)
            event = canonical_numbers(msgspec.convert(payload, type=cls))
        else:
            raise InvalidEvent(
                f"{kind} schema {schema_version} is newer than this code ({cls.schema_version})",
                field="schema_version",
                rule="schema",
            )
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError) as e:
        raise InvalidEvent(f"cannot decode {kind} v{schema_version}: {e}", rule="decode") from e
    if event.__class__ is not cls:
        raise InvalidEvent(
            f"data holds a {event.__class__.__name__}, the record says {kind}", rule="decode"
        )
    if metadata != _NO_METADATA:
        event = msgspec.structs.replace(event, metadata=decode_metadata(metadata))
    return event
