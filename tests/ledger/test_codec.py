"""The codec: events to canonical JSON and back, and older schemas upcast on read."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import Event, InvalidEvent, StopMoved, open_ledger
from ledger.chain import GENESIS, check_link, record_hash
from ledger.codec import decode_event, decode_metadata, encode_data, encode_metadata
from ledger.events import validate
from ledger.trade import TradeState, fold
from tests.lifecycles import EVENT_CLASSES, closed, event_strategy, opened, stop_moved

V1_STOP_MOVED = (
    '{"occurred_at":"2026-01-02T03:04:05Z","stop":"101.5","trade_id":"t1","type":"StopMoved"}'
)


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda cls: cls.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_event_type_round_trips_through_encode_data_and_decode_event(
    cls: type[Event], data: st.DataObject
) -> None:
    """Any valid event decodes from its canonical JSON and metadata to an equal event that re-encodes identically."""
    canonical = validate(data.draw(event_strategy(cls)))
    encoded = encode_data(canonical)
    metadata = encode_metadata(canonical.metadata)
    decoded = decode_event(cls.__name__, cls.schema_version, encoded, metadata)
    assert type(decoded) is cls
    assert decoded == canonical
    assert encode_data(decoded) == encoded
    assert encode_metadata(decoded.metadata) == metadata


def test_event_data_is_sorted_json_without_metadata_or_unset_optionals() -> None:
    """encode_data writes sorted keys, the type tag, decimals as strings, and leaves metadata and None fields out."""
    event = validate(stop_moved("t1", stop_price=Decimal("95.50"), metadata={"actor": "bot"}))
    assert encode_data(event) == (
        '{"occurred_at":"2026-01-05T09:30:30Z","stop_price":"95.5","trade_id":"t1","type":"StopMoved"}'
    )


def test_metadata_numbers_stay_exact_both_ways() -> None:
    """Metadata numbers are written as JSON numbers and read back as exact Decimals or ints."""
    text = encode_metadata({"z": Decimal("0.10"), "a": 3, "m": [True, None, "x"]})
    assert text == '{"a":3,"m":[true,null,"x"],"z":0.10}'
    assert decode_metadata(text) == {"a": 3, "m": [True, None, "x"], "z": Decimal("0.10")}
    assert encode_metadata({}) == "{}"
    assert decode_metadata("{}") == {}


def test_decode_event_refuses_an_unknown_type() -> None:
    """An unknown type tag raises InvalidEvent naming the type field."""
    with pytest.raises(InvalidEvent) as caught:
        decode_event("TradeTeleported", 1, '{"type":"TradeTeleported"}')
    assert (caught.value.field, caught.value.rule) == ("type", "unknown_type")


def test_decode_event_refuses_a_schema_newer_than_the_code() -> None:
    """A record written by a newer schema raises InvalidEvent naming schema_version."""
    data = encode_data(validate(stop_moved()))
    with pytest.raises(InvalidEvent) as caught:
        decode_event("StopMoved", StopMoved.schema_version + 1, data)
    assert caught.value.field == "schema_version"


@pytest.mark.parametrize(
    "data",
    [
        "not json",
        '{"type":"StopMoved","trade_id":"t1"}',
        '{"type":"StopMoved","trade_id":"t1","occurred_at":"2026-01-02T03:04:05Z","stop_price":"x"}',
        '{"type":"StopMoved","trade_id":"t1","occurred_at":"2026-01-02T03:04:05Z","stop_price":"1","extra":1}',
    ],
    ids=["garbage", "missing-field", "bad-decimal", "unknown-field"],
)
def test_decode_event_refuses_malformed_data(data: str) -> None:
    """Data that is not a valid event of its type raises InvalidEvent, not a msgspec error."""
    with pytest.raises(InvalidEvent) as caught:
        decode_event("StopMoved", StopMoved.schema_version, data)
    assert caught.value.rule == "decode"


def test_decode_event_refuses_data_of_another_type_than_the_record_says() -> None:
    """A record whose type column disagrees with its data's tag raises InvalidEvent."""
    data = encode_data(validate(opened()))
    with pytest.raises(InvalidEvent) as caught:
        decode_event("StopMoved", StopMoved.schema_version, data)
    assert caught.value.rule == "decode"


# The upcaster


def test_a_v1_stop_moved_decodes_to_the_current_stop_moved() -> None:
    """StopMoved v1 ({"stop": ...}, no reason) upcasts to stop_price with reason None."""
    event = decode_event("StopMoved", 1, V1_STOP_MOVED)
    assert event == StopMoved(
        trade_id="t1",
        stop_price=Decimal("101.5"),
        occurred_at=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    )
    assert isinstance(event, StopMoved)
    assert event.reason is None
    assert StopMoved.schema_version == 2


def test_an_upcast_event_carries_its_decimals_in_canonical_form() -> None:
    """A v1 stop stored as "101.50" upcasts to 101.5, so re-encoding it gives the canonical bytes."""
    old = V1_STOP_MOVED.replace('"101.5"', '"101.50"')
    event = decode_event("StopMoved", 1, old)
    assert str(event.stop_price) == "101.5"
    assert '"stop_price":"101.5"' in encode_data(event)


def test_a_v1_stop_moved_keeps_its_metadata() -> None:
    """Upcasting leaves the record's metadata attached to the event."""
    event = decode_event("StopMoved", 1, V1_STOP_MOVED, '{"actor":"old-bot"}')
    assert event.metadata == {"actor": "old-bot"}


def test_a_v1_stop_moved_without_its_stop_is_refused_as_undecodable() -> None:
    """A v1 payload missing the field its upcaster renames raises InvalidEvent, not KeyError."""
    with pytest.raises(InvalidEvent):
        decode_event(
            "StopMoved",
            1,
            '{"occurred_at":"2026-01-02T03:04:05Z","trade_id":"t1","type":"StopMoved"}',
        )


def _insert_v1_stop_moved(path: str, event_id: str) -> None:
    """Append a StopMoved v1 record to a ledger file as an old tradeledger would have written it."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        position, prev_hash, version = conn.execute(
            "SELECT position, hash, version FROM records ORDER BY position DESC LIMIT 1"
        ).fetchone()
        occurred_at = dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.UTC)
        recorded_at = dt.datetime(2026, 1, 5, 10, 0, 1, tzinfo=dt.UTC)
        data = '{"occurred_at":"2026-01-05T10:00:00Z","stop":"101.5","trade_id":"t1","type":"StopMoved"}'
        row = (
            position + 1,
            "trade-t1",
            version + 1,
            event_id,
            "StopMoved",
            1,
            occurred_at,
            recorded_at,
            data,
            "{}",
        )
        digest = record_hash(prev_hash, *row)
        conn.execute(
            "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                *row[:6],
                "2026-01-05T10:00:00.000000Z",
                "2026-01-05T10:00:01.000000Z",
                data,
                "{}",
                prev_hash,
                digest,
            ),
        )
        conn.commit()


def test_a_stored_v1_stop_moved_reads_back_upcast_and_the_trade_still_closes(
    sqlite_url: str,
) -> None:
    """A v1 StopMoved record in a ledger file decodes through record.event, and the trade rules accept a close after it."""
    path = sqlite_url.removeprefix("sqlite:///")

    async def first() -> None:
        async with open_ledger(sqlite_url) as book:
            await book.record(opened("t1"))

    async def second() -> tuple[list[Any], Any]:
        async with open_ledger(sqlite_url) as book:
            close = await book.record(closed("t1", price=Decimal("102")))
            return [r async for r in book.store.read()], close

    asyncio.run(first())
    _insert_v1_stop_moved(path, "legacy-stop")
    records, close = asyncio.run(second())

    legacy = records[1]
    assert (legacy.type, legacy.schema_version) == ("StopMoved", 1)
    assert legacy.event == StopMoved(
        trade_id="t1",
        stop_price=Decimal("101.5"),
        occurred_at=dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.UTC),
    )
    assert (close.position, close.version) == (3, 3)
    previous = (0, GENESIS)
    for record in records:
        assert check_link(record, *previous) is None
        previous = (record.position, record.hash)
    state: Any = None
    for record in records:
        state = fold(state, record.event)
    assert isinstance(state, TradeState)
    assert state.stop_price == Decimal("101.5")
    assert state.close_reason == "manual"
    assert state.gross == Decimal("2")


def test_a_current_stop_moved_retrying_a_v1_record_by_value_returns_that_record(
    sqlite_url: str,
) -> None:
    """Idempotency compares by value across schemas: a v2 retry of a v1 record returns the v1 record."""
    path = sqlite_url.removeprefix("sqlite:///")

    async def first() -> None:
        async with open_ledger(sqlite_url) as book:
            await book.record(opened("t1"))

    async def retry() -> tuple[Any, int]:
        async with open_ledger(sqlite_url) as book:
            again = await book.record(
                stop_moved(
                    "t1",
                    stop_price=Decimal("101.50"),
                    occurred_at=dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.UTC),
                ),
                event_id="legacy-stop",
            )
            return again, len([r async for r in book.store.read()])

    asyncio.run(first())
    _insert_v1_stop_moved(path, "legacy-stop")
    again, count = asyncio.run(retry())
    assert (again.position, again.schema_version) == (2, 1)
    assert count == 2


@given(
    st.datetimes(timezones=st.timezones()).filter(lambda m: m.utcoffset() is not None),
)
@settings(max_examples=500)
def test_timestamp_is_utc_with_six_fraction_digits_and_z(moment: dt.datetime) -> None:
    """The one text form of an instant, whatever its zone or its microseconds."""
    from ledger.chain import timestamp

    try:
        utc = moment.astimezone(dt.UTC)
    except OverflowError:
        return  # outside the years a datetime holds once moved to UTC
    text = timestamp(moment)
    assert text == utc.isoformat(timespec="microseconds").removesuffix("+00:00") + "Z"
    assert dt.datetime.fromisoformat(text) == utc


@given(st.datetimes(timezones=st.just(dt.UTC)))
def test_a_stored_time_reads_back_to_its_instant(moment: dt.datetime) -> None:
    """parse_timestamp takes back every text timestamp writes."""
    from ledger.chain import parse_timestamp, timestamp

    assert parse_timestamp(timestamp(moment)) == moment


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-05T12:00:00.000000+00:00",
        "2026-01-05T13:00:00.000000+01:00",
        "2026-01-05T12:00:00+00:00",
        "2026-01-05T12:00:00.000000",
        "2026-01-05 12:00:00.000000Z",
        "2026-01-05T12:00:00,000000Z",
        "2026-01-05T12:00:00.000000z",
        "2026-W02-1T12:00:00.000000Z",
        "2026-01-05T12:00:00.00000Z",
    ],
)
def test_the_same_instant_in_other_text_is_not_a_stored_time(text: str) -> None:
    """The chain hashes the stored text: any other spelling of a time is refused on read."""
    from ledger.chain import parse_timestamp

    with pytest.raises(ValueError, match="stored form"):
        parse_timestamp(text)


def test_timestamp_takes_a_datetime_subclass() -> None:
    """pandas and freezegun hand out datetime subclasses, which msgspec does not encode."""
    from ledger.chain import timestamp

    class Moment(dt.datetime):
        pass

    moment = Moment(2025, 1, 2, 3, 4, 5, 60, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert timestamp(moment) == "2025-01-02T02:04:05.000060Z"
    assert timestamp(moment.replace(microsecond=0)) == "2025-01-02T02:04:05.000000Z"
