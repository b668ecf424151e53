"""The audit trail as files: export records (JSON Lines or CSV), read them back,
and parse event JSON Lines for recording.

An export in JSON Lines opens with a header line (ledger id, export time,
filters) and ends with a trailer (record count, first and last position, last
hash); every line between is one record with every field, hashes included, so
``verify --file`` can re-hash it offline. ``data`` and ``metadata`` are kept
as the exact canonical JSON text that was hashed.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
from collections.abc import AsyncGenerator, Iterator
from decimal import Decimal
from typing import IO, Any, cast

import msgspec

from ledger.book import Append
from ledger.chain import check_link, timestamp
from ledger.codec import decode_event
from ledger.errors import InvalidEvent, LedgerError
from ledger.events import AnyEvent, Event, field_from
from ledger.record import Record
from ledger.store import EventStore

__all__ = [
    "COLUMNS",
    "ExportFilter",
    "Trailer",
    "export",
    "parse_line",
    "read_export",
]

COLUMNS = Record.__struct_fields__  # an export's columns: every field of the record
_MAX_LINE = 1 << 20


class ExportFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which records an export (or ``events``) includes; None means no limit."""

    start: int | None = None
    stop: int | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    stream_id: str | None = None
    type: str | None = None
    correlation_id: str | None = None

    def admits(self, record: Record) -> bool:
        if self.stream_id is not None and record.stream_id != self.stream_id:
            return False
        if self.type is not None and record.type != self.type:
            return False
        if self.since is not None and record.occurred_at < self.since:
            return False
        if self.until is not None and record.occurred_at > self.until:
            return False
        return (
            self.correlation_id is None or record.meta.get("correlation_id") == self.correlation_id
        )


class Trailer(msgspec.Struct, frozen=True, kw_only=True):
    """The last line of a JSON Lines export."""

    records: int
    first_position: int | None
    last_position: int | None
    last_hash: str | None


def record_row(record: Record) -> dict[str, Any]:
    """A record as a flat dict of text and numbers, times in the hashed form."""
    return {
        "position": record.position,
        "stream_id": record.stream_id,
        "version": record.version,
        "event_id": record.event_id,
        "type": record.type,
        "schema_version": record.schema_version,
        "occurred_at": timestamp(record.occurred_at),
        "recorded_at": timestamp(record.recorded_at),
        "data": record.data,
        "metadata": record.metadata,
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    }


async def select(store: EventStore, where: ExportFilter) -> AsyncGenerator[Record, None]:
    """The records ``where`` admits, in log order, read a page at a time."""
    # stores' reads are async generators; closing one stops its read-ahead
    reading = cast(AsyncGenerator[Record, None], store.read(where.start or 1, where.stop))
    async with contextlib.aclosing(reading) as records:
        async for record in records:
            if where.admits(record):
                yield record


async def export(
    store: EventStore,
    out: IO[str],
    *,
    where: ExportFilter | None = None,
    format: str = "jsonl",
    exported_at: dt.datetime,
) -> Trailer:
    """Stream the records ``where`` admits to ``out``; constant memory."""
    where = where or ExportFilter()
    count, first, last, last_hash = 0, None, None, None
    writer = None
    if format == "jsonl":
        header = {
            "tradeledger_export": 1,
            "ledger_id": await store.ledger_id(),
            "exported_at": timestamp(exported_at),
            "filters": msgspec.to_builtins(where),
        }
        out.write(json.dumps(header, sort_keys=True) + "\n")
    elif format == "csv":
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
    else:
        raise ValueError(f"unknown export format {format!r}: jsonl or csv")
    async for record in select(store, where):
        row = record_row(record)
        if writer is not None:
            writer.writerow(row)
        else:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        count += 1
        first = record.position if first is None else first
        last, last_hash = record.position, record.hash
    trailer = Trailer(records=count, first_position=first, last_position=last, last_hash=last_hash)
    if writer is None:
        out.write(json.dumps({"trailer": msgspec.to_builtins(trailer)}) + "\n")
    return trailer


def _record_from_row(row: dict[str, Any], number: int | None = None) -> Record:
    """The record in an export's row; ``number`` is its line, for the error."""
    where = "" if number is None else f"line {number}: "
    missing = [name for name in COLUMNS if row.get(name) is None]
    if missing:
        raise InvalidEvent(f"{where}not a record line: no {', '.join(missing)}", rule="record_line")
    try:
        return Record(
            int(row["position"]),
            str(row["stream_id"]),
            int(row["version"]),
            str(row["event_id"]),
            str(row["type"]),
            int(row["schema_version"]),
            dt.datetime.fromisoformat(row["occurred_at"]),
            dt.datetime.fromisoformat(row["recorded_at"]),
            str(row["data"]),
            str(row["metadata"]),
            str(row["prev_hash"]),
            str(row["hash"]),
        )
    except (TypeError, ValueError) as e:
        raise InvalidEvent(f"{where}not a record line: {e}", rule="record_line") from e


class ExportFile(msgspec.Struct, kw_only=True):
    """What an export file says about itself, filled in while it is read."""

    header: dict[str, Any] | None = None
    trailer: Trailer | None = None


def read_export(source: IO[str], info: ExportFile) -> Iterator[Record]:
    """The records of an export file (JSON Lines or CSV), header and trailer kept in ``info``."""
    first = source.readline()
    if first.startswith("position,"):
        reader = csv.DictReader(_chain(first, source))
        for row in reader:
            yield _record_from_row(row, reader.line_num)
        return
    for number, line in enumerate(_chain(first, source), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidEvent(f"line {number}: not JSON: {e}", rule="json") from e
        if not isinstance(row, dict):
            raise InvalidEvent(
                f"line {number}: not a record line: not an object", rule="record_line"
            )
        if "tradeledger_export" in row:
            info.header = row
        elif "trailer" in row:
            try:
                info.trailer = msgspec.convert(row["trailer"], type=Trailer)
            except msgspec.ValidationError as e:
                raise InvalidEvent(f"line {number}: not a trailer: {e}", rule="record_line") from e
        else:
            yield _record_from_row(row, number)


def _chain(first: str, rest: IO[str]) -> Iterator[str]:
    yield first
    yield from rest


# Event JSON Lines, for `tradeledger record`


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise InvalidEvent(f"key {key!r} appears twice", field=key, rule="duplicate_key")
        found[key] = value
    return found


def _no_constants(name: str) -> Any:
    raise InvalidEvent(f"{name} is not a number", rule="json")


def _strict_json(text: str) -> Any:
    try:
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=Decimal,
            parse_constant=_no_constants,
        )
    except json.JSONDecodeError as e:
        raise InvalidEvent(f"not JSON: {e.msg} (column {e.colno})", rule="json") from e
    except RecursionError as e:
        raise InvalidEvent("JSON nests too deeply", rule="json") from e


def parse_line(raw: bytes) -> Append | None:
    """One line of event JSON Lines as an :class:`Append`; None for export header/trailer lines.

    A line is an event's fields with its ``type``, plus optional ``event_id``,
    ``expected_version`` and ``metadata``; a record line of an export is
    accepted too and re-recorded with its event id and metadata.
    """
    if len(raw) > _MAX_LINE:
        raise InvalidEvent(f"the line is longer than {_MAX_LINE} bytes", rule="size")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidEvent(f"not UTF-8: {e.reason} at byte {e.start}", rule="utf8") from e
    payload = _strict_json(text)
    if not isinstance(payload, dict):
        raise InvalidEvent("a line must be a JSON object", rule="json")
    if "tradeledger_export" in payload or "trailer" in payload:
        return None
    if "hash" in payload and "position" in payload:
        record = _record_from_row(payload)
        # its own hash only: the line's neighbours are verify --file's business
        broken = check_link(record, record.position - 1, record.prev_hash)
        if broken is not None:
            raise InvalidEvent(
                f"the record line for position {record.position} was altered after the "
                f"export: {broken.reason}",
                rule="hash",
            )
        recorded = decode_event(record.type, record.schema_version, record.data, record.metadata)
        return Append(recorded, None, record.event_id, None)
    event_id = payload.pop("event_id", None)
    expected = payload.pop("expected_version", None)
    metadata = payload.pop("metadata", None)
    if event_id is not None and not isinstance(event_id, str):
        raise InvalidEvent("event_id must be a string", field="event_id", rule="schema")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidEvent("metadata must be a JSON object", field="metadata", rule="json")
    if "type" not in payload:
        raise InvalidEvent("the line has no type", field="type", rule="schema")
    try:
        event: Event = msgspec.convert(payload, type=AnyEvent)
    except msgspec.ValidationError as e:
        message = str(e)
        field = field_from(message)
        if "Invalid value" in message and field == "type":
            message = f"unknown event type {payload.get('type')!r}"
        raise InvalidEvent(message, field=field, rule="schema") from e
    return Append(event, expected, event_id, metadata)


def describe(error: LedgerError) -> dict[str, Any]:
    """An error as the JSON a machine reads: its class, field, rule and reason."""
    found: dict[str, Any] = {"error": type(error).__name__, "reason": str(error)}
    for name in ("field", "rule"):
        value = getattr(error, name, None)
        if value is not None:
            found[name] = value
    return found
