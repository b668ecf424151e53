"""Event validation: every bad field is refused by name; good ones are stored canonically."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import Event, InvalidEvent, TradeOpened, open_ledger
from ledger.codec import encode_data
from ledger.events import MAX_CLOCK_SKEW, stream_of, validate
from tests.lifecycles import (
    T0,
    any_event_strategy,
    closed,
    decimal_spellings,
    fee_charged,
    funding,
    increased,
    opened,
    parameter,
    reduced,
    signal,
    stop_moved,
    target_moved,
)

NOW = T0 + dt.timedelta(hours=1)


def nested(depth: int) -> dict[str, Any]:
    """A metadata object nesting ``depth`` objects deep."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"inner": value}
    return value


INVALID: list[tuple[str, Event, str]] = [
    ("nan", opened(price=Decimal("NaN")), "price"),
    ("snan", opened(quantity=Decimal("sNaN")), "quantity"),
    ("infinity", opened(price=Decimal("Infinity")), "price"),
    ("minus-infinity", fee_charged(amount=Decimal("-Infinity")), "amount"),
    ("zero-price", opened(price=Decimal("0")), "price"),
    ("negative-price", stop_moved(stop_price=Decimal("-95")), "stop_price"),
    ("zero-quantity", reduced(quantity=Decimal("0.000")), "quantity"),
    ("negative-quantity", increased(quantity=Decimal("-1")), "quantity"),
    ("zero-multiplier", opened(multiplier=Decimal("0")), "multiplier"),
    ("40-digits", opened(price=Decimal("1234567890123456789012345678901234567890")), "price"),
    ("40-decimals", funding(amount=Decimal("0." + "1" * 40)), "amount"),
    ("1e400", opened(quantity=Decimal("1e400")), "quantity"),
    ("1e-400", opened(price=Decimal("1e-400")), "price"),
    ("float", opened(price=100.5), "price"),  # type: ignore[arg-type]
    ("int", opened(quantity=2), "quantity"),  # type: ignore[arg-type]
    ("float-fee", closed(fee=0.1), "fee"),  # type: ignore[arg-type]
    ("confidence-above-1", signal(confidence=Decimal("1.01")), "confidence"),
    ("naive-datetime", opened(occurred_at=dt.datetime(2026, 1, 5, 9, 30)), "occurred_at"),
    (
        "pre-1970",
        opened(occurred_at=dt.datetime(1969, 12, 31, 23, 59, tzinfo=dt.UTC)),
        "occurred_at",
    ),
    (
        "far-future",
        opened(occurred_at=NOW + MAX_CLOCK_SKEW + dt.timedelta(seconds=1)),
        "occurred_at",
    ),
    (
        "past-the-last-instant",  # 9999-12-31 22:00 at UTC-5 is beyond datetime.max in UTC
        opened(
            occurred_at=dt.datetime(9999, 12, 31, 22, tzinfo=dt.timezone(-dt.timedelta(hours=5)))
        ),
        "occurred_at",
    ),
    ("not-a-datetime", opened(occurred_at="2026-01-05T09:30:00Z"), "occurred_at"),  # type: ignore[arg-type]
    ("id-129-chars", opened("t" * 129), "trade_id"),
    ("empty-id", opened(""), "trade_id"),
    ("fill-id-too-long", increased(fill_id="f" * 129), "fill_id"),
    ("newline-in-id", opened("t\n1"), "trade_id"),
    ("nul-in-symbol", opened(symbol="BTC\x00"), "symbol"),
    ("escape-in-reason", stop_moved(reason="trail\x1b[31m"), "reason"),
    ("bidi-in-signal-id", signal("s\u202e1"), "signal_id"),
    ("lowercase-currency", opened(currency="usdt"), "currency"),
    ("currency-trailing-newline", opened(currency="USD\n"), "currency"),
    ("oversized-metadata", opened(metadata={"blob": "x" * 20_000}), "metadata"),
    ("deep-metadata", opened(metadata=nested(9)), "metadata"),
    ("metadata-int-key", opened(metadata={1: "one"}), "metadata"),
    ("metadata-not-json", opened(metadata={"when": object()}), "metadata"),
    ("metadata-nan", opened(metadata={"score": float("nan")}), "metadata"),
    ("metadata-infinity", opened(metadata={"limit": float("inf")}), "metadata"),
    ("side-up", opened(side="up"), "side"),  # type: ignore[arg-type]
    ("close-reason", closed(reason="bored"), "reason"),  # type: ignore[arg-type]
    ("fee-kind", fee_charged(kind="tax"), "kind"),  # type: ignore[arg-type]
    ("changed-by", parameter(changed_by="robot"), "changed_by"),  # type: ignore[arg-type]
    ("parameter-value-type", parameter(new_value=1.5), "new_value"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("event", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_an_invalid_field_is_refused_with_invalid_event_naming_that_field(
    event: Event, field: str
) -> None:
    """validate() raises InvalidEvent whose .field is the offending field."""
    with pytest.raises(InvalidEvent) as caught:
        validate(event, now=NOW)
    assert caught.value.field == field
    assert caught.value.rule


def test_a_non_event_is_refused_as_an_unknown_type() -> None:
    """validate() refuses anything that is not one of the event classes, naming the type field."""
    with pytest.raises(InvalidEvent) as caught:
        validate({"type": "TradeOpened"}, now=NOW)
    assert (caught.value.field, caught.value.rule) == ("type", "unknown_type")


def test_the_biggest_and_smallest_allowed_decimals_are_accepted() -> None:
    """32 significant digits and exponents within 32 places are accepted unchanged."""
    big = Decimal("9" * 32)
    small = Decimal("0." + "0" * 30 + "1")
    event = validate(opened(quantity=big, price=small), now=NOW)
    assert isinstance(event, TradeOpened)
    assert (event.quantity, event.price) == (big, small)


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("64000." + "0" * 30, "64000"),
        ("0E+40", "0"),
        ("0E-40", "0"),
        ("1" + "0" * 40 + "E-40", "1"),
    ],
)
def test_the_digit_limit_counts_the_value_not_its_trailing_zeros(written: str, stored: str) -> None:
    """Equal values are accepted alike: trailing zeros and a zero's exponent carry no digits."""
    event = validate(fee_charged(amount=Decimal(written)), now=NOW)
    assert msgspec.json.decode(encode_data(event))["amount"] == stored


def test_a_day_of_clock_skew_is_allowed_and_more_is_refused() -> None:
    """occurred_at up to exactly one day after now is accepted; a microsecond more is refused."""
    edge = NOW + MAX_CLOCK_SKEW
    assert validate(opened(occurred_at=edge), now=NOW).occurred_at == edge
    with pytest.raises(InvalidEvent) as caught:
        validate(opened(occurred_at=edge + dt.timedelta(microseconds=1)), now=NOW)
    assert caught.value.field == "occurred_at"


def test_the_ledger_refuses_an_event_from_more_than_a_day_ahead_of_its_clock(
    sqlite_url: str,
) -> None:
    """record() checks occurred_at against the ledger's clock and names the field."""

    async def body() -> None:
        async with open_ledger(sqlite_url, clock=lambda: NOW) as book:
            with pytest.raises(InvalidEvent) as caught:
                await book.record(opened(occurred_at=NOW + dt.timedelta(days=2)))
            assert caught.value.field == "occurred_at"
            assert [r async for r in book.store.read()] == []
            accepted = await book.record(opened(occurred_at=NOW + dt.timedelta(hours=23)))
        assert accepted.position == 1

    asyncio.run(body())


def test_the_ledger_names_the_field_of_a_bad_expected_version_or_event_id(
    sqlite_url: str,
) -> None:
    """record() refuses a negative expected_version and an overlong event_id by field name."""

    async def body() -> None:
        async with open_ledger(sqlite_url) as book:
            with pytest.raises(InvalidEvent) as version:
                await book.record(opened(), expected_version=-1)
            with pytest.raises(InvalidEvent) as event_id:
                await book.record(opened(), event_id="e" * 129)
            with pytest.raises(InvalidEvent) as control:
                await book.record(opened(), event_id="e\t1")
        assert version.value.field == "expected_version"
        assert event_id.value.field == "event_id"
        assert control.value.field == "event_id"

    asyncio.run(body())


# Canonical form


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("1.500", "1.5"),
        ("1E+2", "100"),
        ("100.00", "100"),
        ("0.10", "0.1"),
        ("1.5E-3", "0.0015"),
        ("007", "7"),
    ],
)
def test_decimals_are_stored_without_exponent_or_trailing_zeros(
    sqlite_url: str, written: str, stored: str
) -> None:
    """A Decimal is stored in record.data in its one canonical form."""

    async def body() -> Any:
        async with open_ledger(sqlite_url) as book:
            return await book.record(opened(price=Decimal(written)))

    record = asyncio.run(body())
    assert msgspec.json.decode(record.data)["price"] == stored
    assert record.event.price == Decimal(written)


def test_a_negative_zero_fee_is_stored_as_zero() -> None:
    """Decimal("-0.00") canonicalizes to "0", so it encodes like any other zero."""
    event = validate(fee_charged(amount=Decimal("-0.00")), now=NOW)
    assert msgspec.json.decode(encode_data(event))["amount"] == "0"


def test_occurred_at_in_another_timezone_is_stored_in_utc(sqlite_url: str) -> None:
    """An aware occurred_at at +05:30 is stored as the same instant in UTC."""
    india = dt.timezone(dt.timedelta(hours=5, minutes=30))
    local = dt.datetime(2026, 1, 5, 15, 0, 0, 250_000, tzinfo=india)

    async def body() -> Any:
        async with open_ledger(sqlite_url) as book:
            await book.record(opened(occurred_at=local))
            return await book.store.record_at(1)

    record = asyncio.run(body())
    assert msgspec.json.decode(record.data)["occurred_at"] == "2026-01-05T09:30:00.250000Z"
    assert record.occurred_at == local
    assert record.occurred_at.utcoffset() == dt.timedelta(0)
    assert record.event.occurred_at.utcoffset() == dt.timedelta(0)


def test_a_field_set_to_its_default_value_encodes_like_the_omitted_field() -> None:
    """TradeOpened(fee=Decimal("0"), multiplier=Decimal("1.0")) equals the event without them and encodes identically."""
    explicit = opened(fee=Decimal("0"), multiplier=Decimal("1.0"), leverage=Decimal("1"))
    implicit = opened()
    assert explicit == implicit
    assert encode_data(validate(explicit, now=NOW)) == encode_data(validate(implicit, now=NOW))


@settings(max_examples=200, deadline=None)
@given(event=any_event_strategy(), seed=st.integers(0, 2**32))
def test_equal_decimals_written_differently_encode_identically(event: Event, seed: int) -> None:
    """However each decimal is written (1.5, 1.500, 15E-1), the validated event encodes to the same data."""
    respelled = decimal_spellings(event, random.Random(seed))
    assert respelled == event
    assert encode_data(validate(respelled)) == encode_data(validate(event))


@settings(max_examples=25, deadline=None)
@given(event=any_event_strategy(), seed=st.integers(0, 2**32))
def test_equal_decimals_written_differently_are_one_idempotent_event(
    tmp_path_factory: pytest.TempPathFactory, event: Event, seed: int
) -> None:
    """Recording an event, then the same event with its decimals respelled, appends one record."""
    respelled = decimal_spellings(event, random.Random(seed))
    url = f"sqlite:///{tmp_path_factory.mktemp('idem') / 'ledger.db'}"
    # Every event stands alone: trade events need their trade opened first.
    setup = (
        [opened(event.trade_id, quantity=Decimal("1E+25"))]
        if hasattr(event, "trade_id") and not isinstance(event, TradeOpened)
        else []
    )

    async def body() -> tuple[Any, Any, int]:
        async with open_ledger(url, clock=lambda: dt.datetime(2100, 1, 1, tzinfo=dt.UTC)) as book:
            for e in setup:
                await book.record(e)
            first = await book.record(event, event_id="the-event")
            again = await book.record(respelled, event_id="the-event")
            count = len([r async for r in book.store.read()])
        return first, again, count

    first, again, count = asyncio.run(body())
    assert again == first
    assert count == len(setup) + 1


def test_every_event_type_names_its_stream() -> None:
    """Trade events go to trade-<id>, signals to signal-<id>, parameter changes to parameters."""
    assert {
        type(e).__name__: stream_of(e)
        for e in [
            opened("a"),
            increased("a"),
            reduced("a"),
            closed("a"),
            stop_moved("a"),
            target_moved("a"),
            fee_charged("a"),
            funding("a"),
            signal("s"),
            parameter("p"),
        ]
    } == {
        "TradeOpened": "trade-a",
        "TradeIncreased": "trade-a",
        "TradeReduced": "trade-a",
        "TradeClosed": "trade-a",
        "StopMoved": "trade-a",
        "TargetMoved": "trade-a",
        "FeeCharged": "trade-a",
        "FundingApplied": "trade-a",
        "SignalEmitted": "signal-s",
        "ParameterChanged": "parameters",
    }


def test_events_are_frozen() -> None:
    """An event cannot be changed after it is built."""
    event = opened()
    with pytest.raises(AttributeError):
        event.price = Decimal("1")  # type: ignore[misc]
