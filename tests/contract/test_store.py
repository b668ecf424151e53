"""The store contract: every backend appends, reads, refuses and retries the same way.

Every test runs once per backend in ``URL_FACTORIES``. Adding a backend is one
entry there (a function from the test's tmp_path to a fresh ledger URL) plus,
for the few tests that look beneath the public API, one entry in ``RAW``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
import subprocess
import sys
import textwrap
import urllib.parse
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

from ledger import (
    Append,
    ConcurrencyError,
    IdempotencyConflict,
    InvalidEvent,
    Ledger,
    Record,
    open_ledger,
)
from ledger.chain import GENESIS, check_link
from tests.lifecycles import (
    T0,
    at,
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
from tests.servers import ledger_keys

URL_FACTORIES: dict[str, Callable[[pytest.FixtureRequest, Path], str]] = {
    "sqlite": lambda request, tmp_path: f"sqlite:///{tmp_path / 'contract.db'}",
    "redis": lambda request, tmp_path: request.getfixturevalue("redis_server").url(tmp_path),
}


@pytest.fixture(params=list(URL_FACTORIES))
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty ledger URL on each backend."""
    return URL_FACTORIES[request.param](request, tmp_path)


class SqliteRaw:
    """Access to a SQLite ledger beneath the public API."""

    @staticmethod
    def _connect(url: str) -> contextlib.closing[sqlite3.Connection]:
        return contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"), timeout=5))

    @classmethod
    def rows(cls, url: str) -> list[tuple[Any, ...]]:
        """Every stored row of the log, exactly as the file holds it."""
        with cls._connect(url) as conn:
            return conn.execute("SELECT * FROM records ORDER BY position").fetchall()

    @classmethod
    def update_record(cls, url: str) -> None:
        """Try to rewrite a stored record in place."""
        with cls._connect(url) as conn:
            conn.execute("UPDATE records SET data = '{}' WHERE position = 1")
            conn.commit()

    @classmethod
    def delete_record(cls, url: str) -> None:
        """Try to remove a stored record."""
        with cls._connect(url) as conn:
            conn.execute("DELETE FROM records WHERE position = 1")
            conn.commit()


class RedisRaw:
    """Access to a Redis ledger beneath the public API."""

    @staticmethod
    def rows(url: str) -> list[tuple[Any, ...]]:
        """Every key of the ledger and what it holds, exactly as Redis has it."""
        parts = urllib.parse.urlsplit(url)
        name = urllib.parse.parse_qs(parts.query)["ledger"][0]
        client = redis.Redis(host=parts.hostname or "127.0.0.1", port=parts.port or 6379)
        try:
            return ledger_keys(client, name)
        finally:
            client.close()


RAW: dict[str, type[SqliteRaw] | type[RedisRaw]] = {"sqlite": SqliteRaw, "redis": RedisRaw}


def raw(url: str) -> type[SqliteRaw] | type[RedisRaw]:
    return RAW[url.split(":", 1)[0]]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def all_records(book: Ledger) -> list[Record]:
    return [record async for record in book.store.read()]


def fields(record: Record) -> tuple[Any, ...]:
    """Every stored field of a record, for byte-for-byte comparisons."""
    return msgspec.structs.astuple(record)


async def snapshot(book: Ledger) -> list[tuple[Any, ...]]:
    return [fields(r) for r in await all_records(book)]


# Order and numbering


def test_positions_are_dense_from_one_in_append_order(ledger_url: str) -> None:
    """Positions count 1, 2, 3, ... across all streams in the order records were appended."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            events = [
                signal("s1"),
                opened("t1"),
                opened("t2"),
                stop_moved("t1"),
                parameter("risk"),
                increased("t2"),
                closed("t1"),
            ]
            returned = [await book.record(e) for e in events]
            stored = await all_records(book)
        assert [r.position for r in returned] == list(range(1, len(events) + 1))
        assert stored == returned
        assert [r.type for r in stored] == [type(e).__name__ for e in events]

    run(body())


def test_stream_versions_count_from_one_in_each_stream(ledger_url: str) -> None:
    """Each stream numbers its own records 1, 2, 3, ... whatever else is interleaved."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            for e in [
                opened("a"),
                opened("b"),
                stop_moved("a"),
                target_moved("b"),
                fee_charged("a"),
                parameter("x"),
                parameter("y"),
                signal("s"),
            ]:
                await book.record(e)
            versions = {
                stream: [r.version for r in await book.store.read_stream(stream)]
                for stream in ("trade-a", "trade-b", "parameters", "signal-s", "trade-none")
            }
        assert versions == {
            "trade-a": [1, 2, 3],
            "trade-b": [1, 2],
            "parameters": [1, 2],
            "signal-s": [1],
            "trade-none": [],
        }

    run(body())


def test_records_chain_from_the_genesis_hash_and_each_link_checks(ledger_url: str) -> None:
    """Position 1 chains from 32 zero bytes and every record re-hashes to its stored hash."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            assert (await book.store.head()).position == 0
            assert (await book.store.head()).hash == GENESIS
            for e in [opened("t1"), increased("t1"), reduced("t1"), closed("t1")]:
                await book.record(e)
            records = await all_records(book)
            head = await book.store.head()
        assert records[0].prev_hash == GENESIS
        previous = (0, GENESIS)
        for record in records:
            assert check_link(record, *previous) is None
            previous = (record.position, record.hash)
        assert (head.position, head.hash) == previous
        assert head.recorded_at == records[-1].recorded_at

    run(body())


def test_read_find_and_read_stream_return_exactly_the_records_appended(ledger_url: str) -> None:
    """read(start, stop) is an inclusive window, find() looks up by event_id, both agree with record()."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            returned = [
                await book.record(e)
                for e in [opened("t1"), opened("t2"), stop_moved("t1"), closed("t2")]
            ]
            window = [r async for r in book.store.read(2, 3)]
            tail = [r async for r in book.store.read(3)]
            found = [await book.store.find(r.event_id) for r in returned]
            missing = await book.store.find("no-such-event")
            at_3 = await book.store.record_at(3)
            stream = await book.store.read_stream("trade-t1")
        assert window == returned[1:3]
        assert tail == returned[2:]
        assert found == returned
        assert missing is None
        assert at_3 == returned[2]
        assert stream == [returned[0], returned[2]]

    run(body())


def test_a_record_holds_the_canonical_event_it_was_given(ledger_url: str) -> None:
    """A record decodes back to the recorded event, with its metadata and a UTC occurred_at."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            event = opened("t1", quantity=Decimal("0.50"), metadata={"actor": "bot-1"})
            record = await book.record(event, metadata={"correlation_id": "c-1"})
            (stored,) = await all_records(book)
        assert stored.event == opened(
            "t1", quantity=Decimal("0.5"), metadata={"actor": "bot-1", "correlation_id": "c-1"}
        )
        assert stored.meta == {"actor": "bot-1", "correlation_id": "c-1"}
        assert stored.occurred_at == T0
        assert stored.stream_id == record.stream_id == "trade-t1"

    run(body())


# Expected version


def test_expected_version_none_appends_whatever_the_stream_version(ledger_url: str) -> None:
    """expected_version=None appends to a new or an existing stream."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            first = await book.record(opened("t1"), expected_version=None)
            second = await book.record(stop_moved("t1"), expected_version=None)
        assert (first.version, second.version) == (1, 2)

    run(body())


def test_expected_version_zero_appends_only_to_a_stream_that_does_not_exist(
    ledger_url: str,
) -> None:
    """expected_version=0 opens a new stream and raises ConcurrencyError on an existing one."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            first = await book.record(opened("t1"), expected_version=0)
            before = await snapshot(book)
            with pytest.raises(ConcurrencyError) as caught:
                await book.record(stop_moved("t1"), expected_version=0)
            after = await snapshot(book)
        assert first.version == 1
        assert (caught.value.stream_id, caught.value.expected, caught.value.actual) == (
            "trade-t1",
            0,
            1,
        )
        assert after == before

    run(body())


def test_expected_version_n_appends_only_when_the_stream_is_at_n(ledger_url: str) -> None:
    """expected_version=n appends at n+1; a stale or future n raises ConcurrencyError and writes nothing."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            await book.record(opened("t1"))
            await book.record(stop_moved("t1", stop_price=Decimal("96")), expected_version=1)
            before = await snapshot(book)
            for wrong in (1, 3, 7):
                with pytest.raises(ConcurrencyError) as caught:
                    await book.record(
                        stop_moved("t1", stop_price=Decimal("97")), expected_version=wrong
                    )
                assert (caught.value.expected, caught.value.actual) == (wrong, 2)
            after = await snapshot(book)
            third = await book.record(
                stop_moved("t1", stop_price=Decimal("97")), expected_version=2
            )
        assert after == before
        assert third.version == 3

    run(body())


def test_expected_version_on_a_missing_stream_must_be_zero_or_none(ledger_url: str) -> None:
    """expected_version=1 on a stream that does not exist raises ConcurrencyError, not a rule error."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            with pytest.raises(ConcurrencyError) as caught:
                await book.record(opened("t1"), expected_version=1)
            assert await all_records(book) == []
        assert caught.value.actual == 0

    run(body())


# Idempotency


def test_a_retry_with_the_same_event_id_and_payload_returns_the_first_record(
    ledger_url: str,
) -> None:
    """Recording an equal event under the same event_id again returns the first record and appends nothing."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            await book.record(opened("t1"))
            first = await book.record(stop_moved("t1"), event_id="move-1")
            await book.record(target_moved("t1"))
            again = await book.record(stop_moved("t1"), event_id="move-1")
            records = await all_records(book)
        assert again == first
        assert len(records) == 3

    run(body())


def test_decimals_written_differently_are_the_same_payload_for_a_retry(ledger_url: str) -> None:
    """Decimal("1.0") and Decimal("1.00") (and 1E+2 and 100) are one payload: the retry returns the first record."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            await book.record(opened("t1"))
            first = await book.record(
                stop_moved("t1", stop_price=Decimal("1.0")), event_id="move-1"
            )
            again = await book.record(
                stop_moved("t1", stop_price=Decimal("1.00")), event_id="move-1"
            )
            fee = await book.record(fee_charged("t1", amount=Decimal("1E+2")), event_id="fee-1")
            fee_again = await book.record(
                fee_charged("t1", amount=Decimal("100.000")), event_id="fee-1"
            )
            count = len(await all_records(book))
        assert again == first
        assert fee_again == fee
        assert count == 3

    run(body())


def test_a_retried_open_returns_the_first_record_even_after_the_trade_moved_on(
    ledger_url: str,
) -> None:
    """A TradeOpened retried (same trade_id, equal payload) returns its first record, not trade_exists."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            first = await book.record(opened("t1", quantity=Decimal("2.0")))
            await book.record(increased("t1"))
            again = await book.record(opened("t1", quantity=Decimal("2")))
            count = len(await all_records(book))
        assert again == first
        assert count == 2

    run(body())


def test_a_retried_fill_with_a_fill_id_returns_the_first_record(ledger_url: str) -> None:
    """A TradeIncreased or TradeReduced retried with the same fill_id appends once and returns the first record."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            await book.record(opened("t1", quantity=Decimal("3")))
            inc = await book.record(increased("t1", fill_id="f-2"))
            red = await book.record(reduced("t1", fill_id="f-3"))
            inc_again = await book.record(increased("t1", fill_id="f-2"))
            red_again = await book.record(reduced("t1", fill_id="f-3"))
            trade = await book.store.read_stream("trade-t1")
        assert (inc_again, red_again) == (inc, red)
        assert len(trade) == 3

    run(body())


def test_a_retried_close_returns_the_first_record_instead_of_trade_closed(ledger_url: str) -> None:
    """A TradeClosed retried after the trade closed returns the first close's record."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            await book.record(opened("t1"))
            first = await book.record(closed("t1", price=Decimal("105")))
            again = await book.record(closed("t1", price=Decimal("105.00")))
            with_fill = await book.record(opened("t2"))
            close2 = await book.record(closed("t2", fill_id="x-9"))
            close2_again = await book.record(closed("t2", fill_id="x-9"))
            count = len(await all_records(book))
        assert again == first
        assert close2_again == close2
        assert with_fill.position == 3
        assert count == 4

    run(body())


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (stop_moved("t1", stop_price=Decimal("95")), stop_moved("t1", stop_price=Decimal("96"))),
        (stop_moved("t1"), target_moved("t1")),
        (stop_moved("t1"), stop_moved("t1", occurred_at=at(31))),
        (stop_moved("t1"), stop_moved("t1", reason="manual")),
    ],
    ids=["other-value", "other-type", "other-time", "extra-field"],
)
def test_the_same_event_id_with_a_different_payload_raises_idempotency_conflict(
    ledger_url: str, first: Any, second: Any
) -> None:
    """Reusing an event_id for a different event raises IdempotencyConflict naming the first position, writing nothing."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            await book.record(opened("t1"))
            recorded = await book.record(first, event_id="same-id")
            before = await snapshot(book)
            with pytest.raises(IdempotencyConflict) as caught:
                await book.record(second, event_id="same-id")
            after = await snapshot(book)
        assert (caught.value.event_id, caught.value.position) == ("same-id", recorded.position)
        assert after == before

    run(body())


def test_a_natural_key_reused_with_a_different_payload_raises_idempotency_conflict(
    ledger_url: str,
) -> None:
    """A second TradeOpened for the same trade_id at another price is a conflict, not a retry."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            await book.record(opened("t1", price=Decimal("100")))
            before = await snapshot(book)
            with pytest.raises(IdempotencyConflict):
                await book.record(opened("t1", price=Decimal("101")))
            after = await snapshot(book)
        assert after == before

    run(body())


# Batches


def test_a_batch_appends_all_its_events_at_consecutive_positions(ledger_url: str) -> None:
    """record_batch returns one record per item, in order, at consecutive positions."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            await book.record(parameter("p"))
            records = await book.record_batch(
                [
                    opened("t1"),
                    Append(stop_moved("t1"), expected_version=1, event_id="m1"),
                    increased("t1"),
                    closed("t1"),
                ]
            )
        assert [r.position for r in records] == [2, 3, 4, 5]
        assert [r.version for r in records] == [1, 2, 3, 4]
        assert records[1].event_id == "m1"

    run(body())


@pytest.mark.parametrize(
    "bad",
    [
        Append(reduced("nope")),
        Append(reduced("t2", quantity=Decimal("5"))),
        Append(stop_moved("t2"), expected_version=7),
        Append(stop_moved("t1", stop_price=Decimal("1")), event_id="taken"),
    ],
    ids=["unknown-trade", "over-reduce", "concurrency", "idempotency-conflict"],
)
def test_a_batch_with_one_refused_event_writes_none_of_it(ledger_url: str, bad: Append) -> None:
    """One refused event anywhere in a batch leaves the whole log unchanged."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            await book.record(opened("t1"))
            await book.record(stop_moved("t1"), event_id="taken")
            before = await snapshot(book)
            with pytest.raises((InvalidEvent, ConcurrencyError, IdempotencyConflict)):
                await book.record_batch([opened("t2"), increased("t2"), bad, signal("s9")])
            after = await snapshot(book)
            streams = await book.store.read_stream("trade-t2")
            # The refused batch left no trace: its first event can be recorded now.
            record = await book.record(opened("t2"))
        assert after == before
        assert streams == []
        assert record.position == len(before) + 1

    run(body())


def test_a_retried_batch_returns_the_first_records_and_appends_nothing(ledger_url: str) -> None:
    """Recording the same batch twice returns the same records the second time."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            batch = [opened("t1"), Append(stop_moved("t1"), event_id="m1"), closed("t1")]
            first = await book.record_batch(batch)
            again = await book.record_batch(batch)
            assert again == first
            assert len(await all_records(book)) == 3

    run(body())


def test_a_batch_mixing_a_retry_and_new_events_appends_only_the_new_ones(ledger_url: str) -> None:
    """A batch whose first event is already recorded returns that record and appends the rest after it."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            opened_record = await book.record(opened("t1"))
            records = await book.record_batch(
                [opened("t1"), Append(stop_moved("t1"), expected_version=1)]
            )
            assert records[0] == opened_record
            assert (records[1].position, records[1].version) == (2, 2)

    run(body())


def test_a_retry_the_rules_would_accept_again_returns_the_first_record(ledger_url: str) -> None:
    """A stop move retried by its event id after the stop moved on (the rules would take it
    as new) returns its first record - alone, among concurrent callers, and in a batch."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            move = stop_moved("t1", stop_price=Decimal("95"))
            await book.record(opened("t1"))
            first = await book.record(move, event_id="m1")
            await book.record(stop_moved("t1", stop_price=Decimal("97"), occurred_at=at(40)))
            assert await book.record(move, event_id="m1") == first
            retried, *others = await asyncio.gather(
                book.record(move, event_id="m1"),
                *(book.record(opened(f"u{n}")) for n in range(5)),
            )
            assert retried == first
            batch = await book.record_batch([Append(move, event_id="m1"), opened("t2")])
            assert batch[0] == first
            records = await all_records(book)
        assert len(records) == 3 + 5 + 1
        assert [r.event_id for r in records].count("m1") == 1
        assert {r.position for r in others} | {batch[1].position} == set(range(4, 10))

    run(body())


def test_reading_a_log_longer_than_a_page_returns_every_record_once(ledger_url: str) -> None:
    """read() over 2,100 records yields each once, in order, and windows across page edges."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            await book.record_batch([parameter(f"p{n}", new_value=n) for n in range(2100)])
            positions = [r.position async for r in book.store.read()]
            window = [r.position async for r in book.store.read(998, 2003)]
            head = await book.store.head()
        assert positions == list(range(1, 2101))
        assert window == list(range(998, 2004))
        assert head.position == 2100

    run(body())


def test_reading_by_kind_returns_only_those_records_in_order_across_pages(
    ledger_url: str,
) -> None:
    """read(kinds=...) over 1,500 records of three kinds yields each record of the
    kinds asked for once, in log order, and nothing else."""

    async def body() -> None:
        events: list[Any] = []
        for n in range(500):
            tid = f"t{n}"
            events += [signal(f"s{n}"), opened(tid), stop_moved(tid)]
        async with open_ledger(ledger_url) as book:
            await book.record_batch(events)
            every = [(r.position, r.type) async for r in book.store.read()]
            found = [
                (r.position, r.type)
                async for r in book.store.read(2, 1400, kinds={"SignalEmitted", "StopMoved"})
            ]
        wanted = [(p, t) for p, t in every if 2 <= p <= 1400 and t != "TradeOpened"]
        assert len(wanted) == 932
        assert found == wanted

    run(body())


def test_an_empty_batch_is_refused(ledger_url: str) -> None:
    """record_batch([]) raises InvalidEvent and writes nothing."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            with pytest.raises(InvalidEvent):
                await book.record_batch([])
            assert await all_records(book) == []

    run(body())


# Refusals


REFUSALS: list[tuple[str, list[Any], Any]] = [
    ("unknown_trade", [], stop_moved("ghost")),
    ("unknown_trade", [opened("t1")], funding("t2")),
    ("trade_closed", [opened("t1"), closed("t1")], stop_moved("t1", occurred_at=at(400))),
    (
        "trade_closed",
        [opened("t1"), reduced("t1", quantity=Decimal("1"))],
        increased("t1", occurred_at=at(400)),
    ),
    ("over_reduce", [opened("t1", quantity=Decimal("2"))], reduced("t1", quantity=Decimal("2.5"))),
    ("trade_exists", [opened("t1")], Append(opened("t1"), event_id="another-open")),
    ("signal_exists", [signal("s1")], Append(signal("s1"), event_id="another-signal")),
]


@pytest.mark.parametrize(
    ("rule", "history", "refused"), REFUSALS, ids=[f"{r[0]}-{i}" for i, r in enumerate(REFUSALS)]
)
def test_a_refused_event_raises_invalid_event_with_its_rule_and_leaves_the_log_unchanged(
    ledger_url: str, rule: str, history: list[Any], refused: Any
) -> None:
    """A rule refusal raises InvalidEvent naming the rule, and every stored row is byte-for-byte as before."""

    async def body() -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        async with open_ledger(ledger_url) as book:
            for event in history:
                await book.record(event)
            before = await snapshot(book)
            raw_before = raw(ledger_url).rows(ledger_url)
            with pytest.raises(InvalidEvent) as caught:
                await book.record_batch([refused])
            assert caught.value.rule == rule
            after = await snapshot(book)
            raw_after = raw(ledger_url).rows(ledger_url)
        return before, after, raw_before, raw_after

    before, after, raw_before, raw_after = run(body())
    assert after == before
    assert raw_after == raw_before


def test_an_invalid_event_leaves_the_log_unchanged(ledger_url: str) -> None:
    """An event with a bad field raises InvalidEvent naming it and writes nothing."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            await book.record(opened("t1"))
            raw_before = raw(ledger_url).rows(ledger_url)
            with pytest.raises(InvalidEvent) as caught:
                await book.record(stop_moved("t1", stop_price=Decimal("-1")))
            assert raw(ledger_url).rows(ledger_url) == raw_before
        assert caught.value.field == "stop_price"

    run(body())


# Subscriptions


async def _next(feed: AsyncIterator[Record]) -> Record:
    return await asyncio.wait_for(anext(feed), timeout=5)


def test_subscribe_yields_existing_records_then_those_appended_later(ledger_url: str) -> None:
    """subscribe() replays the log from its start position, then follows new appends in order."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            first = await book.record(opened("t1"))
            second = await book.record(opened("t2"))
            async with contextlib.aclosing(book.store.subscribe()) as feed:
                assert await _next(feed) == first
                assert await _next(feed) == second
                pending = asyncio.ensure_future(_next(feed))
                await asyncio.sleep(0.1)
                assert not pending.done()
                third = await book.record(stop_moved("t1"))
                assert await pending == third
            async with contextlib.aclosing(book.store.subscribe(start=2)) as feed:
                assert await _next(feed) == second
                assert await _next(feed) == third

    run(body())


def test_subscribe_sees_records_appended_by_another_ledger_instance(ledger_url: str) -> None:
    """A subscriber on one open ledger receives what a second instance on the same URL appends."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book, open_ledger(ledger_url) as other:
            first = await book.record(opened("t1"))
            async with contextlib.aclosing(book.store.subscribe()) as feed:
                assert await _next(feed) == first
                appended = await other.record(opened("t2"))
                assert await _next(feed) == appended
                mine = await book.record(opened("t3"))
                assert await _next(feed) == mine

    run(body())


_APPEND_SCRIPT = textwrap.dedent(
    """
    import asyncio, datetime as dt, logging, sys
    from decimal import Decimal
    import structlog
    from ledger import TradeOpened, open_ledger

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    async def main() -> None:
        async with open_ledger(sys.argv[1]) as book:
            record = await book.record(TradeOpened(
                trade_id=sys.argv[2], symbol="ETHUSDT", side="short", quantity=Decimal("2"),
                price=Decimal("3000"), currency="USDT",
                occurred_at=dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)))
            print(record.position)

    asyncio.run(main())
    """
)


def test_subscribe_sees_records_appended_by_another_process(ledger_url: str) -> None:
    """A subscriber receives records that a separate OS process appends to the same ledger."""

    async def body() -> None:
        async with open_ledger(ledger_url) as book:
            first = await book.record(opened("t1"))
            async with contextlib.aclosing(book.store.subscribe()) as feed:
                assert await _next(feed) == first
                done = await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, "-c", _APPEND_SCRIPT, ledger_url, "from-child"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert done.returncode == 0, done.stderr
                assert done.stdout.strip() == "2"
                appended = await _next(feed)
        assert (appended.position, appended.stream_id) == (2, "trade-from-child")

    run(body())


# Append-only


def test_sqlite_records_cannot_be_updated_in_place(sqlite_url: str) -> None:
    """SQLite's schema refuses to rewrite a record underneath the ledger, and the record stays as it was."""

    async def body() -> list[Any]:
        async with open_ledger(sqlite_url) as book:
            await book.record(opened("t1"))
            return await snapshot(book)

    before = run(body())
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        SqliteRaw.update_record(sqlite_url)

    async def reread() -> list[Any]:
        async with open_ledger(sqlite_url) as book:
            return await snapshot(book)

    assert run(reread()) == before


def test_sqlite_records_cannot_be_deleted(sqlite_url: str) -> None:
    """SQLite's schema refuses to delete a record underneath the ledger, and the record stays."""

    async def body() -> list[Any]:
        async with open_ledger(sqlite_url) as book:
            await book.record(opened("t1"))
            await book.record(opened("t2"))
            return await snapshot(book)

    before = run(body())
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        SqliteRaw.delete_record(sqlite_url)

    async def reread() -> list[Any]:
        async with open_ledger(sqlite_url) as book:
            return await snapshot(book)

    assert run(reread()) == before


# Time


class SettableClock:
    """A clock that reads whatever instant the test last set."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def test_recorded_at_never_goes_back_when_the_clock_does(ledger_url: str) -> None:
    """recorded_at is max(previous record's, now): a clock stepping backwards does not move it back."""
    late = dt.datetime(2026, 2, 1, 12, tzinfo=dt.UTC)
    early = late - dt.timedelta(hours=3)

    async def body() -> list[Record]:
        clock = SettableClock(late)
        async with open_ledger(ledger_url, clock=clock) as book:
            await book.record(opened("t1"))
            clock.now = early
            await book.record(stop_moved("t1"))
            await book.record(target_moved("t1"))
        # A second instance whose clock is behind the log's last record.
        async with open_ledger(ledger_url, clock=SettableClock(early)) as book:
            await book.record(closed("t1"))
            return await all_records(book)

    stamps = [r.recorded_at for r in run(body())]
    assert stamps == [late, late, late, late]


def test_recorded_at_follows_the_clock_when_it_moves_forward(ledger_url: str) -> None:
    """With a clock moving forward, each record's recorded_at is the clock's reading at the append."""
    start = dt.datetime(2026, 2, 1, 12, tzinfo=dt.UTC)
    ticks = iter(start + dt.timedelta(seconds=n) for n in range(100))

    async def body() -> list[Record]:
        async with open_ledger(ledger_url, clock=lambda: next(ticks)) as book:
            for event in [opened("t1"), stop_moved("t1"), closed("t1")]:
                await book.record(event)
            return await all_records(book)

    stamps = [r.recorded_at for r in run(body())]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == 3
    assert all(start <= s < start + dt.timedelta(seconds=100) for s in stamps)
