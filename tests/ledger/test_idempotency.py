"""Idempotency: natural event ids, the order record() checks things in, and retries after a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from ledger import (
    ConcurrencyError,
    Event,
    IdempotencyConflict,
    InvalidEvent,
    OutcomeUnknown,
    StoreUnavailable,
    open_ledger,
)
from ledger.events import natural_event_id
from ledger.failpoints import ENV
from projections import standard
from tests.lifecycles import (
    closed,
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


def path_of(url: str) -> str:
    return url.removeprefix("sqlite:///")


def count_rows(url: str) -> int:
    with contextlib.closing(sqlite3.connect(path_of(url))) as conn:
        (count,) = conn.execute("SELECT count(*) FROM records").fetchone()
        return int(count)


# Natural event ids, per the design table


@pytest.mark.parametrize(
    ("first", "retry"),
    [
        (signal("s1", strategy="a"), signal("s1", strategy="b")),
        (opened("t1"), opened("t1", price=Decimal("101"))),
        (increased("t1", fill_id="f1"), increased("t1", fill_id="f1", quantity=Decimal("2"))),
        (reduced("t1", fill_id="f1"), reduced("t1", fill_id="f1", price=Decimal("1"))),
        (closed("t1", fill_id="f9"), closed("t1", fill_id="f9", price=Decimal("1"))),
        (closed("t1"), closed("t1", price=Decimal("1"), reason="stop_loss")),
        (funding("t1"), funding("t1", amount=Decimal("-3"))),
    ],
    ids=["signal", "open", "increase-fill", "reduce-fill", "close-fill", "close", "funding"],
)
def test_events_with_a_natural_key_get_the_same_id_whatever_their_other_fields(
    first: Event, retry: Event
) -> None:
    """Two events with equal natural keys share an event_id, so a retry is recognized as one."""
    assert natural_event_id(first) is not None
    assert natural_event_id(first) == natural_event_id(retry)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (signal("s1"), signal("s2")),
        (opened("t1"), opened("t2")),
        (increased("t1", fill_id="f1"), increased("t1", fill_id="f2")),
        (increased("t1", fill_id="f1"), increased("t2", fill_id="f1")),
        (increased("ab", fill_id="c"), increased("a", fill_id="bc")),
        (closed("t1"), closed("t2")),
        (closed("t1", fill_id="f1"), closed("t1")),
        (funding("t1"), funding("t1", occurred_at=funding().occurred_at + dt.timedelta(hours=8))),
        (funding("t1"), funding("t2")),
        (opened("t1"), signal("t1")),
    ],
    ids=[
        "signal-id",
        "trade-id",
        "fill-id",
        "fill-on-another-trade",
        "no-ambiguous-joins",
        "close-of-another-trade",
        "close-with-and-without-fill",
        "funding-time",
        "funding-trade",
        "open-vs-signal",
    ],
)
def test_events_with_different_natural_keys_get_different_ids(one: Event, other: Event) -> None:
    """Natural ids differ whenever the natural keys differ."""
    assert natural_event_id(one) != natural_event_id(other)


def test_a_fill_with_a_fill_id_keys_on_trade_and_fill_only() -> None:
    """TradeIncreased, TradeReduced and TradeClosed with the same trade_id and fill_id share one id."""
    ids = {
        natural_event_id(increased("t1", fill_id="f1")),
        natural_event_id(reduced("t1", fill_id="f1")),
        natural_event_id(closed("t1", fill_id="f1")),
    }
    assert len(ids) == 1


def test_funding_keys_on_the_instant_not_its_timezone() -> None:
    """FundingApplied at the same instant written in two timezones has one natural id."""
    utc = dt.datetime(2026, 1, 5, 8, 0, tzinfo=dt.UTC)
    tokyo = utc.astimezone(dt.timezone(dt.timedelta(hours=9)))
    assert natural_event_id(funding(occurred_at=utc)) == natural_event_id(
        funding(occurred_at=tokyo)
    )


@pytest.mark.parametrize(
    "event",
    [
        increased("t1"),
        reduced("t1"),
        stop_moved("t1"),
        target_moved("t1"),
        fee_charged("t1"),
        parameter("p"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_events_without_a_natural_key_have_no_natural_id(event: Event) -> None:
    """Fills without fill_id, stop and target moves, fees and parameter changes have no natural id."""
    assert natural_event_id(event) is None


def test_natural_ids_are_stable_across_releases() -> None:
    """The derived ids are pinned: a retry after an upgrade must carry the same id as before."""
    assert natural_event_id(opened("t1")) == "e56296c3-0659-5bff-ad52-edee56ba606d"
    assert natural_event_id(increased("t1", fill_id="f1")) == "79e07a27-368e-5188-9c42-3e48cb8f52d9"


def test_events_without_a_natural_key_get_a_fresh_id_each_time(sqlite_url: str) -> None:
    """The same StopMoved recorded twice without an event_id appends two records with distinct ids."""

    async def body() -> tuple[Any, Any]:
        async with open_ledger(sqlite_url) as book:
            await book.record(opened())
            return await book.record(stop_moved()), await book.record(stop_moved())

    first, second = asyncio.run(body())
    assert first.event_id != second.event_id
    assert (first.position, second.position) == (2, 3)


def test_record_uses_the_natural_id_unless_an_event_id_is_given(sqlite_url: str) -> None:
    """A record's event_id is the caller's event_id if given, else the event's natural id."""

    async def body() -> tuple[Any, Any]:
        async with open_ledger(sqlite_url) as book:
            return await book.record(opened("t1")), await book.record(opened("t2"), event_id="mine")

    natural, explicit = asyncio.run(body())
    assert natural.event_id == natural_event_id(opened("t1"))
    assert explicit.event_id == "mine"


# The order of the checks: idempotency, then expected version, then rules


def test_a_retried_close_with_a_stale_expected_version_returns_the_first_record(
    sqlite_url: str,
) -> None:
    """A close retried with the expected_version it was first sent with returns its record, not ConcurrencyError."""

    async def body() -> tuple[Any, Any, int]:
        async with open_ledger(sqlite_url) as book:
            await book.record(opened())
            first = await book.record(closed(), expected_version=1)
            again = await book.record(closed(), expected_version=1)
            return first, again, len([r async for r in book.store.read()])

    first, again, count = asyncio.run(body())
    assert again == first
    assert count == 2


def test_a_retried_open_with_expected_version_zero_returns_the_first_record(
    sqlite_url: str,
) -> None:
    """An open retried with expected_version=0 after the stream exists returns its record."""

    async def body() -> tuple[Any, Any]:
        async with open_ledger(sqlite_url) as book:
            first = await book.record(opened(), expected_version=0)
            await book.record(stop_moved())
            return first, await book.record(opened(), expected_version=0)

    first, again = asyncio.run(body())
    assert again == first


def test_a_conflicting_event_id_is_reported_before_a_version_mismatch(sqlite_url: str) -> None:
    """Same event_id, different payload and a wrong expected_version raise IdempotencyConflict."""

    async def body() -> None:
        async with open_ledger(sqlite_url) as book:
            await book.record(opened())
            await book.record(stop_moved(), event_id="m")
            with pytest.raises(IdempotencyConflict):
                await book.record(
                    stop_moved(stop_price=Decimal(1)), event_id="m", expected_version=9
                )

    asyncio.run(body())


def test_a_version_mismatch_is_reported_before_a_rule_violation(sqlite_url: str) -> None:
    """An over-reduce sent with a wrong expected_version raises ConcurrencyError, not InvalidEvent."""

    async def body() -> None:
        async with open_ledger(sqlite_url) as book:
            await book.record(opened())
            with pytest.raises(ConcurrencyError):
                await book.record(reduced(quantity=Decimal(5)), expected_version=4)
            with pytest.raises(InvalidEvent) as caught:
                await book.record(reduced(quantity=Decimal(5)), expected_version=1)
            assert caught.value.rule == "over_reduce"

    asyncio.run(body())


def test_a_retry_with_other_metadata_still_returns_the_first_record(sqlite_url: str) -> None:
    """Metadata is not part of the payload: a retry carrying another correlation id returns the first record."""

    async def body() -> tuple[Any, Any]:
        async with open_ledger(sqlite_url) as book:
            first = await book.record(opened(), metadata={"attempt": 1})
            return first, await book.record(opened(), metadata={"attempt": 2})

    first, again = asyncio.run(body())
    assert again == first
    assert again.meta == {"attempt": 1}


# Timeouts


def test_a_write_that_outlives_the_timeout_raises_outcome_unknown_and_a_retry_returns_it(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit stalled past the timeout raises OutcomeUnknown; after reopening, the same event returns the one record."""
    event = opened("t1", fill_id="fill-1")

    async def stalled() -> None:
        async with open_ledger(sqlite_url, timeout=0.3) as book:
            with pytest.raises(OutcomeUnknown):
                await book.record(event)

    monkeypatch.setenv(ENV, "before_commit=sleep:1.0")
    asyncio.run(stalled())
    monkeypatch.delenv(ENV)

    async def retried() -> tuple[Any, list[Any]]:
        async with open_ledger(sqlite_url) as book:
            record = await book.record(event)
            return record, [r async for r in book.store.read()]

    record, records = asyncio.run(retried())
    assert records == [record]
    assert record.event_id == natural_event_id(event)


_HOLD_LOCK = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("ROLLBACK")
    """
)


@contextlib.contextmanager
def write_lock_held(url: str, seconds: float) -> Iterator[None]:
    """Another process holds the ledger's write lock, for ``seconds`` from entering."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, path_of(url), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.wait(30)
        holder.stdout.close()
    assert holder.returncode == 0


def test_a_wait_cut_before_the_write_started_raises_store_unavailable_and_writes_nothing(
    sqlite_url: str,
) -> None:
    """While another process holds the write lock past the timeout, record() raises StoreUnavailable; later appends work."""

    async def body() -> tuple[int, Any]:
        async with open_ledger(sqlite_url, timeout=0.3) as book:
            await book.record(opened("t0"))
            with write_lock_held(sqlite_url, 1.5):
                with pytest.raises(StoreUnavailable):
                    await book.record(opened("t1"))
                during = count_rows(sqlite_url)
            later = await book.record(opened("t1"))
            return during, later

    during, later = asyncio.run(body())
    assert during == 1
    assert later.position == 2


def test_a_caller_cut_while_queued_is_never_written_and_the_writer_keeps_serving(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record() that timed out behind a slow commit raises StoreUnavailable, never lands, and later appends still work."""
    monkeypatch.setenv(ENV, "after_begin=sleep:1.0")

    async def body() -> Any:
        async with open_ledger(sqlite_url, timeout=0.3) as book:
            slow = asyncio.ensure_future(book.record(opened("slow")))
            await asyncio.sleep(0.1)
            with pytest.raises(StoreUnavailable):
                await book.record(opened("queued"))
            with pytest.raises(OutcomeUnknown):
                await slow
            await asyncio.sleep(1.2)  # the slow commit lands; the cut request is skipped
            book.store.timeout = 2.5  # type: ignore[attr-defined]  # outlast the 1 s fail point
            return await book.record(opened("later"))

    later = asyncio.run(body())
    monkeypatch.delenv(ENV)

    async def stored() -> list[str]:
        async with open_ledger(sqlite_url) as book:
            return [r.stream_id async for r in book.store.read()]

    assert asyncio.run(stored()) == ["trade-slow", "trade-later"]
    assert later.position == 2


def test_opening_behind_another_writer_reads_at_once_and_a_write_is_bounded(
    sqlite_url: str,
) -> None:
    """A current ledger opens for reading without the write lock while another process holds it; a view's setup or an append waits at most the timeout, then StoreUnavailable, not a sqlite3 error."""

    async def create() -> None:
        async with open_ledger(sqlite_url) as book:
            await book.record(opened("t0"))

    async def read() -> int:
        async with open_ledger(sqlite_url, timeout=0.3, create=False) as book:
            head = (await book.store.head()).position
            with pytest.raises(StoreUnavailable):
                await book.record(opened("t1"))
            return head

    async def with_views() -> None:
        async with open_ledger(sqlite_url, standard(), timeout=0.3):
            pass

    asyncio.run(create())
    with write_lock_held(sqlite_url, 2.0):
        assert asyncio.run(read()) == 1
        with pytest.raises(StoreUnavailable):
            asyncio.run(with_views())
    asyncio.run(with_views())


def test_outcome_unknown_names_the_generated_event_id_and_a_retry_with_it_records_once(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fee has no natural key: OutcomeUnknown carries the id the ledger drew, and passing it back records the fee once."""
    fee = fee_charged("t1", amount=Decimal("2.5"))

    async def stalled() -> tuple[str, ...]:
        async with open_ledger(sqlite_url) as book:
            await book.record(opened("t1"))
        monkeypatch.setenv(ENV, "after_commit=sleep:1.0")
        async with open_ledger(sqlite_url, timeout=0.3) as book:
            with pytest.raises(OutcomeUnknown) as caught:
                await book.record(fee)
            return caught.value.event_ids

    ids = asyncio.run(stalled())
    monkeypatch.delenv(ENV)

    async def retried() -> tuple[Any, list[Any]]:
        async with open_ledger(sqlite_url) as book:
            record = await book.record(fee, event_id=ids[0])
            return record, [r async for r in book.store.read()]

    record, records = asyncio.run(retried())
    assert len(ids) == 1
    assert [r.type for r in records] == ["TradeOpened", "FeeCharged"]
    assert record == records[-1]
    assert record.event_id == ids[0]


def test_a_cancelled_record_whose_write_had_not_started_is_never_written(
    sqlite_url: str,
) -> None:
    """A caller that gives up (its own asyncio.timeout) while another process holds the write lock finds nothing written, so retrying is no double booking."""

    async def body() -> list[Any]:
        async with open_ledger(sqlite_url, timeout=5) as book:
            await book.record(opened("t1"))
            with write_lock_held(sqlite_url, 1.0), pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await book.record(fee_charged("t1", amount=Decimal("2.5")))
            await book.record(fee_charged("t1", amount=Decimal("2.5")))  # the caller's retry
            return [r.type async for r in book.store.read()]

    assert asyncio.run(body()) == ["TradeOpened", "FeeCharged"]
