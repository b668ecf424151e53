"""The SQLite store: group commit, concurrency across tasks and processes, integrity, schema."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ledger import (
    ConcurrencyError,
    IdempotencyConflict,
    IncompatibleStore,
    InvalidEvent,
    Ledger,
    LedgerClosed,
    OutcomeUnknown,
    Record,
    StoreError,
    StoreUnavailable,
    open_ledger,
)
from ledger.chain import GENESIS, ChainBreak, check_link, record_hash
from ledger.failpoints import ENV
from ledger.store.sqlite import MIGRATIONS, SCHEMA_VERSION
from projections import TradeHistory, standard
from tests.lifecycles import T0, closed, opened, stop_moved

APPLICATION_ID = 0x54524C47


def path_of(url: str) -> str:
    return url.removeprefix("sqlite:///")


@contextlib.contextmanager
def connect(url_or_path: str) -> Any:
    conn = sqlite3.connect(path_of(url_or_path), timeout=5, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


async def all_records(book: Ledger) -> list[Record]:
    return [record async for record in book.store.read()]


def first_break(records: list[Record]) -> ChainBreak | None:
    previous = (0, GENESIS)
    for record in records:
        broken = check_link(record, *previous)
        if broken is not None:
            return broken
        previous = (record.position, record.hash)
    return None


def read_all(url: str) -> list[Record]:
    async def body() -> list[Record]:
        async with open_ledger(url) as book:
            return await all_records(book)

    return asyncio.run(body())


# Group commit


def test_concurrent_callers_all_land_at_dense_positions(sqlite_url: str) -> None:
    """16 tasks each opening their own trade at once all succeed, at positions 1..16."""

    async def body() -> tuple[list[Record], list[Record]]:
        async with open_ledger(sqlite_url) as book:
            returned = await asyncio.gather(*(book.record(opened(f"t{n}")) for n in range(16)))
            return list(returned), await all_records(book)

    returned, stored = asyncio.run(body())
    assert sorted(r.position for r in returned) == list(range(1, 17))
    assert sorted(stored, key=lambda r: r.stream_id) == sorted(returned, key=lambda r: r.stream_id)
    assert first_break(stored) is None


def test_appends_arriving_during_a_commit_are_committed_together_in_the_next_one(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one transaction is in flight, the 15 appends that arrive share the next transaction (one recorded_at)."""
    monkeypatch.setenv(ENV, "after_begin=sleep:0.5")

    async def body() -> list[Record]:
        async with open_ledger(sqlite_url) as book:
            first = asyncio.ensure_future(book.record(opened("t0")))
            await asyncio.sleep(0.1)
            rest = await asyncio.gather(*(book.record(opened(f"t{n}")) for n in range(1, 16)))
            return [await first, *rest]

    records = asyncio.run(body())
    assert sorted(r.position for r in records) == list(range(1, 17))
    assert records[0].position == 1
    assert len({r.recorded_at for r in records[1:]}) == 1


def test_one_callers_refusal_does_not_fail_its_neighbours_in_the_group(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In one group, refused callers get their own error and every other caller's event is written."""
    monkeypatch.setenv(ENV, "after_begin=sleep:0.5")

    async def body() -> tuple[list[Any], list[Record]]:
        async with open_ledger(sqlite_url) as book:
            await book.record(opened("base"))
            await book.record(stop_moved("base"), event_id="taken")
            blocker = asyncio.ensure_future(book.record(opened("blocker")))
            await asyncio.sleep(0.1)
            calls = [book.record(opened(f"t{n}")) for n in range(12)]
            calls.insert(3, book.record(stop_moved("ghost")))
            calls.insert(6, book.record(stop_moved("base"), expected_version=9))
            calls.insert(
                9, book.record(stop_moved("base", stop_price=Decimal(1)), event_id="taken")
            )
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            await blocker
            return outcomes, await all_records(book)

    outcomes, stored = asyncio.run(body())
    assert isinstance(outcomes[3], InvalidEvent)
    assert outcomes[3].rule == "unknown_trade"
    assert isinstance(outcomes[6], ConcurrencyError)
    assert isinstance(outcomes[9], IdempotencyConflict)
    written = [o for i, o in enumerate(outcomes) if i not in (3, 6, 9)]
    assert all(isinstance(o, Record) for o in written)
    assert len({o.recorded_at for o in written}) == 1  # they did share one transaction
    assert [r.position for r in stored] == list(range(1, 16))
    assert {r.stream_id for r in stored[3:]} == {f"trade-t{n}" for n in range(12)}
    assert first_break(stored) is None


def test_a_failed_commit_fails_every_caller_of_the_group_and_writes_nothing(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the group's commit fails, each of its callers gets a StoreError and the log is as before."""
    # The first group (one blocker) commits; the second (16 callers) fails before its COMMIT.
    monkeypatch.setenv(ENV, "after_begin=sleep:0.5,before_commit=error@2")

    async def body() -> tuple[Record, list[Any], list[Record], Record]:
        async with open_ledger(sqlite_url) as book:
            blocker = asyncio.ensure_future(book.record(opened("blocker")))
            await asyncio.sleep(0.1)
            outcomes = await asyncio.gather(
                *(book.record(opened(f"t{n}")) for n in range(16)), return_exceptions=True
            )
            committed = await blocker
            after = await all_records(book)
            later = await book.record(opened("t0"))
            return committed, outcomes, after, later

    committed, outcomes, after, later = asyncio.run(body())
    assert all(isinstance(o, StoreError) for o in outcomes), outcomes
    assert after == [committed]
    assert later.position == 2


def test_a_committed_groups_answers_go_out_while_another_process_holds_the_write_lock(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group committed while more appends wait holds its answers for the next COMMIT; when
    the next group cannot take the write lock, they go out at once instead of waiting with it.

    a commits, then the writer stalls (after_commit) while another process takes the write
    lock and b queues up; a's caller hears back while that lock is still held, b after it.
    """
    monkeypatch.setenv(ENV, "after_commit=sleep:0.5@1")

    async def body() -> tuple[bool, Record, Record]:
        async with open_ledger(sqlite_url, timeout=5) as book:
            a = asyncio.ensure_future(book.record(opened("a")))
            await asyncio.sleep(0.2)  # a is committed; the writer sleeps before answering
            with connect(sqlite_url) as holder:
                holder.execute("BEGIN IMMEDIATE")
                b = asyncio.ensure_future(book.record(opened("b")))
                done, _ = await asyncio.wait({a}, timeout=2.5)
                answered_while_locked = a in done and not b.done()
                holder.execute("ROLLBACK")
            return answered_while_locked, await a, await b

    answered_while_locked, a, b = asyncio.run(body())
    assert answered_while_locked
    assert (a.position, b.position) == (1, 2)


def test_a_caller_whose_wait_runs_out_while_its_answer_is_held_gets_its_record(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """a's group commits while b waits, so a's answer is held for b's COMMIT; b's group then
    stalls before it (before_commit) past a's 1 s wait: a still gets its record, not
    OutcomeUnknown, and only b, whose write started and did not finish, hears OutcomeUnknown."""
    monkeypatch.setenv(ENV, "after_commit=sleep:0.3@1,before_commit=sleep:2@2")

    async def body() -> list[Any]:
        async with open_ledger(sqlite_url, timeout=1) as book:
            a = asyncio.ensure_future(book.record(opened("a")))
            await asyncio.sleep(0.1)
            b = asyncio.ensure_future(book.record(opened("b")))
            return await asyncio.gather(a, b, return_exceptions=True)

    a, b = asyncio.run(body())
    stored = read_all(sqlite_url)
    assert isinstance(a, Record) and a.position == 1
    assert isinstance(b, OutcomeUnknown)
    assert [r.stream_id for r in stored] == ["trade-a", "trade-b"]


def test_a_retry_withdrawn_while_the_first_attempt_commits_is_not_told_nothing_was_written(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt stalls before its COMMIT past its 0.5 s wait (OutcomeUnknown); the
    retry queues behind it and its own wait runs out before it starts. It wrote nothing,
    but its event is being written: it hears OutcomeUnknown too, not StoreUnavailable.
    Once the stall ends, a third attempt returns the one record."""
    monkeypatch.setenv(ENV, "before_commit=sleep:2@1")

    async def body() -> tuple[list[Any], Record]:
        async with open_ledger(sqlite_url, timeout=0.5) as book:
            outcomes: list[Any] = []
            for _ in range(2):
                try:
                    outcomes.append(await book.record(opened("a")))
                except StoreError as e:
                    outcomes.append(e)
            await asyncio.sleep(1.5)  # the stall is over
            return outcomes, await book.record(opened("a"))

    (first, second), third = asyncio.run(body())
    assert isinstance(first, OutcomeUnknown) and isinstance(second, OutcomeUnknown)
    assert "earlier append of the same event" in str(second)
    assert third.position == 1
    assert [r.stream_id for r in read_all(sqlite_url)] == ["trade-a"]


def test_a_retry_withdrawn_after_another_group_began_is_not_told_nothing_was_written(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every commit stalls 0.75 s against a 0.5 s wait. a's first attempt hears
    OutcomeUnknown and commits; c's group begins next; the retry of a, queued behind it,
    is withdrawn when its wait runs out. Its event is in the log: not StoreUnavailable."""
    monkeypatch.setenv(ENV, "before_commit=sleep:0.75")

    async def attempt(book: Ledger, event: Any) -> Any:
        try:
            return await book.record(event)
        except StoreError as e:
            return e

    async def body() -> tuple[Any, Any]:
        async with open_ledger(sqlite_url, timeout=0.5) as book:
            first = asyncio.ensure_future(attempt(book, opened("a")))
            await asyncio.sleep(0.45)
            other = asyncio.ensure_future(attempt(book, opened("c")))
            told_first = await first
            await asyncio.sleep(0.3)  # a is committed, c's group has begun
            told_retry = await attempt(book, opened("a"))
            await other
            return told_first, told_retry

    first, retry = asyncio.run(body())
    assert isinstance(first, OutcomeUnknown) and isinstance(retry, OutcomeUnknown)
    assert [r.stream_id for r in read_all(sqlite_url)] == ["trade-a", "trade-c"]


def test_closing_while_the_writer_is_stuck_returns_within_the_timeout(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk stalled for 4 s under a commit: the caller hears OutcomeUnknown after its 0.5 s,
    and aclose returns after the writer's bounded wait (timeout + 1 s), not after the
    stall; the writer finishes on its own, the append lands, and the writer closes the
    answer channel the close left to it."""
    monkeypatch.setenv(ENV, "before_commit=sleep:4@1")

    async def body() -> tuple[Any, float]:
        loop = asyncio.get_running_loop()
        book = await open_ledger(sqlite_url, timeout=0.5)
        try:
            outcome: Any = await book.record(opened("a"))
        except StoreError as e:
            outcome = e
        started = loop.time()
        await book.aclose()
        return outcome, loop.time() - started

    def writers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "tradeledger-sqlite-writer"]

    descriptors = len(os.listdir("/proc/self/fd"))
    outcome, closing = asyncio.run(body())
    assert isinstance(outcome, OutcomeUnknown)
    assert closing < 3
    for thread in writers():  # the stuck writer commits once the stall ends, then stops
        thread.join(10)
    assert [r.stream_id for r in read_all(sqlite_url)] == ["trade-a"]
    assert len(os.listdir("/proc/self/fd")) == descriptors  # its answer channel too


def test_a_cancelled_close_goes_on_and_leaves_nothing_open(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aclose cut short by its caller's own timeout while the writer finishes a stalled
    commit: the closing goes on, a second aclose waits for it, and no descriptor or
    connection thread is left behind."""

    def connection_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if "connection_worker" in t.name]

    async def body() -> tuple[int, int, bool, list[threading.Thread]]:
        async with open_ledger(sqlite_url) as book:  # the loop's own descriptors exist from here
            await book.record(opened("a"))
        before = len(os.listdir("/proc/self/fd"))
        monkeypatch.setenv(ENV, "before_commit=sleep:1@1")
        book = await open_ledger(sqlite_url, timeout=0.5)
        with contextlib.suppress(OutcomeUnknown):
            await book.record(opened("b"))
        cut = False
        try:
            async with asyncio.timeout(0.1):
                await book.aclose()
        except TimeoutError:
            cut = True
        await book.aclose()
        return before, len(os.listdir("/proc/self/fd")), cut, connection_threads()

    before, after, cut, threads = asyncio.run(body())
    assert cut
    assert after == before
    for thread in threads:  # a connection's thread ends a moment after its close
        thread.join(5)
    assert not any(thread.is_alive() for thread in threads)


def test_a_table_view_whose_write_lock_is_taken_falls_behind_and_catches_up_not_faulted(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another connection holds the write lock past the 0.5 s timeout right after a close
    commits: the views cannot store their rows then. The record still returns; trade
    history stays readable (behind, not faulted) and stores the close with the next flush."""
    monkeypatch.setenv(ENV, "after_commit=sleep:0.3@2")

    async def body() -> tuple[list[str], list[str]]:
        async with open_ledger(sqlite_url, [TradeHistory()], timeout=0.5) as book:
            await book.record(opened("a"))
            closing = asyncio.ensure_future(book.record(closed("a")))
            await asyncio.sleep(0.1)  # committed; the writer sleeps before it answers
            with connect(sqlite_url) as holder:
                holder.execute("BEGIN IMMEDIATE")
                await closing  # its views' flush waits out the timeout meanwhile
                holder.execute("ROLLBACK")
            while_behind = [t.trade_id for t in (await book.view(TradeHistory).trades()).trades]
            await book.record(opened("b"))
            after = [t.trade_id for t in (await book.view(TradeHistory).trades()).trades]
            return while_behind, after

    while_behind, after = asyncio.run(body())
    assert while_behind == []
    assert after == ["a"]


def test_a_big_next_group_does_not_hold_the_last_groups_answers(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers are held over the next group's staging only when that group is small: behind
    a batch of 1,001 events (here stalled 1 s before its COMMIT), a hears back at once."""
    monkeypatch.setenv(ENV, "after_commit=sleep:0.3@1,before_commit=sleep:1@2")

    async def body() -> tuple[bool, Record, list[Any]]:
        async with open_ledger(sqlite_url) as book:
            a = asyncio.ensure_future(book.record(opened("a")))
            await asyncio.sleep(0.1)
            b = asyncio.ensure_future(book.record_batch([opened(f"b{n}") for n in range(1001)]))
            done, _ = await asyncio.wait({a}, timeout=0.8)
            answered_first = a in done and not b.done()
            return answered_first, await a, await b

    answered_first, a, b = asyncio.run(body())
    assert answered_first
    assert a.position == 1 and [r.position for r in b] == list(range(2, 1003))


def test_appends_queued_past_a_groups_cap_wait_for_the_next_group(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group takes queued appends until it holds 4,096 events or more: behind a stalled
    commit, five batches of 1,000 share one commit (one recorded_at), the sixth the next."""
    monkeypatch.setenv(ENV, "after_begin=sleep:0.5@1")

    async def body() -> list[list[Record]]:
        async with open_ledger(sqlite_url) as book:
            first = asyncio.ensure_future(book.record(opened("first")))
            await asyncio.sleep(0.1)
            batches = await asyncio.gather(
                *(book.record_batch([opened(f"b{b}-{n}") for n in range(1000)]) for b in range(6))
            )
            return [[await first], *batches]

    first, *batches = asyncio.run(body())
    assert [r.position for batch in [first, *batches] for r in batch] == list(range(1, 6002))
    assert len({r.recorded_at for batch in batches[:5] for r in batch}) == 1
    assert batches[5][0].recorded_at > batches[4][0].recorded_at


def test_work_queued_between_appends_runs_alone_in_its_turn(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a stalled commit: two appends, a piece of work, two appends. The work runs
    after the first two are committed (in one group) and before the last two."""
    monkeypatch.setenv(ENV, "after_begin=sleep:0.5@1")

    def count(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT count(*) FROM records").fetchone()[0])

    async def body() -> tuple[list[Record], int, list[str]]:
        heard: list[str] = []
        async with open_ledger(sqlite_url) as book:
            first = asyncio.ensure_future(book.record(opened("first")))
            await asyncio.sleep(0.1)
            before = [asyncio.ensure_future(book.record(opened(f"a{n}"))) for n in range(2)]
            work = asyncio.ensure_future(book.store.transact(count))
            after = [asyncio.ensure_future(book.record(opened(f"c{n}"))) for n in range(2)]
            for name, task in [("a0", before[0]), ("a1", before[1]), ("work", work)]:
                task.add_done_callback(lambda _, name=name: heard.append(name))
            records = [await first, *[await t for t in before + after]]
            return records, await work, heard

    records, counted, heard = asyncio.run(body())
    assert counted == 3
    assert heard == ["a0", "a1", "work"]  # callers hear back in the order they were served
    assert [r.position for r in records] == [1, 2, 3, 4, 5]
    assert records[1].recorded_at == records[2].recorded_at < records[3].recorded_at
    assert records[3].recorded_at == records[4].recorded_at


def test_a_caller_cancelled_while_its_append_waits_its_turn_is_never_written(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled before the writer takes it, an append is dropped; the one behind it lands."""
    monkeypatch.setenv(ENV, "after_begin=sleep:0.5@1")

    async def body() -> list[str]:
        async with open_ledger(sqlite_url) as book:
            first = asyncio.ensure_future(book.record(opened("first")))
            await asyncio.sleep(0.1)
            dropped = asyncio.ensure_future(book.record(opened("dropped")))
            kept = asyncio.ensure_future(book.record(opened("kept")))
            await asyncio.sleep(0.05)
            dropped.cancel()
            await first, await kept
            with pytest.raises(asyncio.CancelledError):
                await dropped
            return [r.stream_id async for r in book.store.read()]

    assert asyncio.run(body()) == ["trade-first", "trade-kept"]


def test_a_fault_after_a_group_is_answered_leaves_its_callers_their_records(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error the writer did not foresee, after the group committed and its outcomes
    were settled, is logged; the caller still gets its record, not OutcomeUnknown, and
    the writer carries on."""
    monkeypatch.setenv(ENV, "after_answer=error@2")

    async def body() -> tuple[Record, list[str]]:
        async with open_ledger(sqlite_url) as book:
            await book.record(opened("a"))
            b = await book.record(opened("b"))
            await book.record(opened("c"))
            return b, [r.stream_id async for r in book.store.read()]

    b, logged = asyncio.run(body())
    assert (b.position, b.stream_id) == (2, "trade-b")
    assert logged == ["trade-a", "trade-b", "trade-c"]


def test_a_ledger_used_from_another_event_loop_is_refused_at_once(sqlite_url: str) -> None:
    """Its writer answers, and its waits are timed, on the loop it was opened in: a call
    from another loop is refused with LedgerClosed and writes nothing, instead of waiting
    for an answer that never comes."""
    home = asyncio.new_event_loop()
    book = home.run_until_complete(open_ledger(sqlite_url))
    try:
        home.run_until_complete(book.record(opened("a")))

        async def elsewhere() -> None:
            with pytest.raises(LedgerClosed, match="another event loop"):
                await asyncio.wait_for(book.record(opened("b")), 5)  # never a hang

        asyncio.run(elsewhere())
    finally:
        home.run_until_complete(book.aclose())
        home.close()
    assert [r.stream_id for r in read_all(sqlite_url)] == ["trade-a"]


def test_a_sqlite_built_to_bind_999_parameters_still_takes_big_groups_and_views(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite before 3.32 binds at most 999 parameters a statement: the writer and the views
    size their multi-row INSERTs by the connection's own limit."""
    real_connect = sqlite3.connect

    def old_sqlite(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        return conn

    monkeypatch.setattr(sqlite3, "connect", old_sqlite)
    batch = [opened(f"t{n}", signal_id=f"s{n}") for n in range(300)]
    batch += [closed(f"t{n}") for n in range(300)]

    async def body() -> tuple[list[Any], int]:
        async with open_ledger(sqlite_url, standard()) as book:
            returned = await book.record_batch(batch)
            page = await book.view(TradeHistory).trades(limit=1000)
            return returned, page.total

    returned, closes = asyncio.run(body())
    assert [r.position for r in returned] == list(range(1, 601))
    assert closes == 300


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan"), True, "5", None])
def test_a_timeout_that_is_not_a_positive_finite_number_is_refused(
    sqlite_url: str, timeout: Any
) -> None:
    """Every wait is bounded: an endless or empty one is a ValueError, and no file is made."""
    with pytest.raises(ValueError, match="timeout"):
        open_ledger(sqlite_url, timeout=timeout)
    assert not os.path.exists(path_of(sqlite_url))


def test_an_sqlite_older_than_3_38_is_refused_with_its_version(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The views use ->> (SQLite 3.38): an older library is named, not met with an odd SQL error."""
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")

    async def body() -> None:
        async with open_ledger(sqlite_url):
            pass

    with pytest.raises(IncompatibleStore, match=r"3\.38.*3\.31\.1"):
        asyncio.run(body())


def test_a_batch_of_more_rows_than_one_insert_takes_lands_whole(sqlite_url: str) -> None:
    """A group's rows go in 500 to a statement: a batch of 1,201 events lands at 1..1,201, chained."""
    batch = [opened(f"t{n}") for n in range(1201)]

    async def body() -> tuple[list[Any], list[Record]]:
        async with open_ledger(sqlite_url) as book:
            return await book.record_batch(batch), await all_records(book)

    returned, stored = asyncio.run(body())
    assert [r.position for r in returned] == list(range(1, 1202))
    assert stored == returned
    assert [r.stream_id for r in stored] == [f"trade-t{n}" for n in range(1201)]
    assert first_break(stored) is None


def test_racing_callers_with_the_same_expected_version_have_exactly_one_winner(
    sqlite_url: str,
) -> None:
    """50 tasks moving one trade's stop with expected_version=1: one record, 49 ConcurrencyError."""

    async def body() -> tuple[list[Any], list[Record]]:
        async with open_ledger(sqlite_url) as book:
            await book.record(opened("t1"))
            outcomes = await asyncio.gather(
                *(
                    book.record(stop_moved("t1", stop_price=Decimal(90) + n), expected_version=1)
                    for n in range(50)
                ),
                return_exceptions=True,
            )
            return outcomes, await book.store.read_stream("trade-t1")

    outcomes, stream = asyncio.run(body())
    kinds = Counter(type(o).__name__ for o in outcomes)
    assert kinds == {"Record": 1, "ConcurrencyError": 49}
    assert [r.version for r in stream] == [1, 2]
    (winner,) = [o for o in outcomes if isinstance(o, Record)]
    assert stream[1] == winner


def test_a_second_writer_on_the_same_file_is_seen_by_the_first_writers_rules(
    sqlite_url: str,
) -> None:
    """Two ledgers on one file: each sees the other's appends in versions and trade rules."""

    async def body() -> None:
        async with open_ledger(sqlite_url) as a, open_ledger(sqlite_url) as b:
            await a.record(opened("t1"))
            moved = await b.record(stop_moved("t1"), expected_version=1)
            with pytest.raises(ConcurrencyError):
                await a.record(stop_moved("t1", stop_price=Decimal(96)), expected_version=1)
            assert (await a.record(stop_moved("t1", stop_price=Decimal(97)))).version == 3
            await b.record(closed("t1"))
            with pytest.raises(InvalidEvent) as caught:
                await a.record(stop_moved("t1", stop_price=Decimal(98)))
            assert caught.value.rule == "trade_closed"
            assert moved.version == 2
            assert first_break(await all_records(a)) is None

    asyncio.run(body())


_WRITER_SCRIPT = textwrap.dedent(
    """
    import asyncio, datetime as dt, logging, sys
    from decimal import Decimal
    import structlog
    from ledger import ParameterChanged, StopMoved, TradeClosed, TradeOpened, open_ledger

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    URL, WHO, TRADES = sys.argv[1], sys.argv[2], int(sys.argv[3])
    T = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)

    async def trade(book, n):
        trade_id = f"{WHO}-{n}"
        await book.record(TradeOpened(trade_id=trade_id, symbol="BTCUSDT", side="long",
            quantity=Decimal("1"), price=Decimal("100"), currency="USDT", occurred_at=T))
        await book.record(StopMoved(trade_id=trade_id, stop_price=Decimal("95"), occurred_at=T))
        await book.record(ParameterChanged(name=f"{trade_id}", new_value=n,
            changed_by="system_auto", occurred_at=T))
        await book.record(TradeClosed(trade_id=trade_id, price=Decimal("101"), reason="manual",
            occurred_at=T))

    async def lane(book, lane_no, lanes):
        for n in range(lane_no, TRADES, lanes):
            await trade(book, n)

    async def main():
        async with open_ledger(URL, timeout=30) as book:
            await asyncio.gather(*(lane(book, k, 4) for k in range(4)))

    asyncio.run(main())
    """
)


def test_four_processes_appending_to_one_file_lose_and_duplicate_nothing(sqlite_url: str) -> None:
    """4 OS processes x 200 appends: 800 records at dense positions, a valid chain, contiguous versions."""
    trades = 50  # four events each: 200 per process
    assert read_all(sqlite_url) == []  # the file exists before the race
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER_SCRIPT, sqlite_url, f"p{k}", str(trades)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(4)
    ]
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        assert out == ""

    records = read_all(sqlite_url)
    assert [r.position for r in records] == list(range(1, 4 * 4 * trades + 1))
    assert first_break(records) is None
    assert len({r.event_id for r in records}) == len(records)
    streams: dict[str, list[int]] = {}
    for record in records:
        streams.setdefault(record.stream_id, []).append(record.version)
    assert streams["parameters"] == list(range(1, 4 * trades + 1))
    trade_streams = {s: v for s, v in streams.items() if s != "parameters"}
    assert set(trade_streams) == {f"trade-p{k}-{n}" for k in range(4) for n in range(trades)}
    assert all(versions == [1, 2, 3] for versions in trade_streams.values())
    assert Counter(r.type for r in records) == {
        "TradeOpened": 4 * trades,
        "StopMoved": 4 * trades,
        "ParameterChanged": 4 * trades,
        "TradeClosed": 4 * trades,
    }


class _LoopWithoutReaders(asyncio.SelectorEventLoop):
    """A real event loop that cannot watch file descriptors (as on Windows' proactor)."""

    def add_reader(self, *args: Any) -> None:
        raise NotImplementedError


def test_a_loop_that_cannot_watch_descriptors_still_gets_every_answer(sqlite_url: str) -> None:
    """Answers then go through call_soon_threadsafe: one producer and 16 at once all hear back."""

    async def body() -> list[Record]:
        async with open_ledger(sqlite_url) as book:
            one = [await book.record(opened(f"a{n}")) for n in range(5)]
            many = await asyncio.gather(*(book.record(opened(f"b{n}")) for n in range(16)))
            return [*one, *many]

    loop = _LoopWithoutReaders()
    try:
        records = loop.run_until_complete(body())
    finally:
        loop.close()
    assert sorted(r.position for r in records) == list(range(1, 22))


def test_opening_and_closing_a_ledger_leaves_no_descriptor_open(sqlite_url: str) -> None:
    """The writer's answer channel (an eventfd the loop watches) is closed with the ledger."""

    async def cycle() -> None:
        async with open_ledger(sqlite_url) as book:
            for n in range(3):
                await book.record(stop_moved("t", stop_price=Decimal(90 + n)))

    async def body() -> tuple[int, int]:
        async with open_ledger(sqlite_url) as book:
            await book.record(opened("t"))
        await cycle()  # the loop's own descriptors (default executor) exist from here on
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(10):
            await cycle()
        return before, len(os.listdir("/proc/self/fd"))

    before, after = asyncio.run(body())
    assert after == before


# Integrity


def test_closing_with_appends_in_flight_returns_every_durable_record_to_its_caller(
    sqlite_url: str,
) -> None:
    """A shutdown (aclose) while callers await record(): each caller gets its record, never LedgerClosed for an event on disk."""

    async def body() -> tuple[list[Any], set[str]]:
        book = await open_ledger(sqlite_url)
        calls = [asyncio.ensure_future(book.record(opened(f"t{n}"))) for n in range(100)]
        await asyncio.sleep(0)
        await book.aclose()
        told = await asyncio.gather(*calls, return_exceptions=True)
        async with open_ledger(sqlite_url) as again:
            return told, {r.stream_id async for r in again.store.read()}

    told, logged = asyncio.run(body())
    assert all(isinstance(t, Record) for t in told), Counter(type(t).__name__ for t in told)
    assert logged == {f"trade-t{n}" for n in range(100)}


def test_a_record_altered_beneath_the_triggers_is_caught_by_rehashing(sqlite_url: str) -> None:
    """Changing one byte of a record's data (triggers dropped) makes check_link report a ChainBreak at it."""

    async def body() -> None:
        async with open_ledger(sqlite_url) as book:
            await book.record(opened("t1", price=Decimal("100")))
            await book.record(stop_moved("t1"))
            await book.record(closed("t1"))

    asyncio.run(body())
    with connect(sqlite_url) as conn:
        conn.execute("DROP TRIGGER records_no_update")
        conn.execute(
            'UPDATE records SET data = replace(data, \'"price":"100"\', \'"price":"900"\') '
            "WHERE position = 1"
        )
    records = read_all(sqlite_url)
    assert '"price":"900"' in records[0].data
    assert first_break(records) == ChainBreak(1, "the record's content does not match its hash")


def test_a_record_swapped_for_a_rehashed_one_breaks_the_next_link(sqlite_url: str) -> None:
    """Re-hashing an altered record in place still breaks the chain at the following record."""

    async def body() -> None:
        async with open_ledger(sqlite_url) as book:
            for event in [opened("t1"), stop_moved("t1"), closed("t1")]:
                await book.record(event)

    asyncio.run(body())
    original = read_all(sqlite_url)
    second = original[1]
    forged = second.data.replace('"95"', '"1"')
    forged_hash = record_hash(
        second.prev_hash,
        second.position,
        second.stream_id,
        second.version,
        second.event_id,
        second.type,
        second.schema_version,
        second.occurred_at,
        second.recorded_at,
        forged,
        second.metadata,
    )
    with connect(sqlite_url) as conn:
        conn.execute("DROP TRIGGER records_no_update")
        conn.execute(
            "UPDATE records SET data = ?, hash = ? WHERE position = 2", (forged, forged_hash)
        )
    assert first_break(read_all(sqlite_url)) == ChainBreak(
        3, "prev_hash does not match the previous record's hash"
    )


def test_a_new_ledger_file_is_readable_and_writable_by_its_owner_only(sqlite_url: str) -> None:
    """A ledger file created by open_ledger has mode 0o600."""
    read_all(sqlite_url)
    assert stat.S_IMODE(os.stat(path_of(sqlite_url)).st_mode) == 0o600


# Schema


def test_a_new_file_is_marked_as_a_ledger_at_the_current_schema(sqlite_url: str) -> None:
    """user_version is SCHEMA_VERSION, application_id marks a tradeledger, and the ledger has an id."""

    async def body() -> str:
        async with open_ledger(sqlite_url) as book:
            return await book.store.ledger_id()

    ledger_id = asyncio.run(body())
    with connect(sqlite_url) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT value FROM ledger WHERE key = 'ledger_id'").fetchone() == (
            ledger_id,
        )
    assert len(MIGRATIONS) == SCHEMA_VERSION


def test_reopening_a_ledger_keeps_its_id(sqlite_url: str) -> None:
    """A ledger's id is fixed when the file is created and kept across opens."""

    async def ledger_id() -> str:
        async with open_ledger(sqlite_url) as book:
            return await book.store.ledger_id()

    assert asyncio.run(ledger_id()) == asyncio.run(ledger_id())


def open_fails(url: str) -> BaseException:
    async def body() -> None:
        async with open_ledger(url):
            pass

    with pytest.raises(IncompatibleStore) as caught:
        asyncio.run(body())
    return caught.value


def test_a_file_from_a_newer_schema_is_refused(sqlite_url: str) -> None:
    """A ledger file whose user_version is above SCHEMA_VERSION raises IncompatibleStore."""
    read_all(sqlite_url)
    with connect(sqlite_url) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    assert "upgrade" in str(open_fails(sqlite_url))


def test_a_sqlite_file_that_is_not_a_ledger_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """Another application's SQLite file raises IncompatibleStore and is not modified."""
    path = tmp_path / "other.db"
    with connect(str(path)) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    before = path.read_bytes()
    open_fails(f"sqlite:///{path}")
    assert path.read_bytes() == before
    with connect(str(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert conn.execute("SELECT name FROM customers").fetchall() == [("ada",)]


def test_a_sqlite_file_of_another_application_with_a_schema_version_is_refused(
    tmp_path: Path,
) -> None:
    """A SQLite file with a user_version but another application_id raises IncompatibleStore."""
    path = tmp_path / "other.db"
    with connect(str(path)) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("PRAGMA application_id = 1234")
        conn.execute("PRAGMA user_version = 1")
    open_fails(f"sqlite:///{path}")


def test_a_garbage_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """A file that is not SQLite at all raises IncompatibleStore and keeps its bytes."""
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my trading notes, not a database\n" * 100)
    before = path.read_bytes()
    open_fails(f"sqlite:///{path}")
    assert path.read_bytes() == before


def _schema_1_file(path: str) -> list[tuple[Any, ...]]:
    """A ledger file as tradeledger schema 1 left it, with two records; returns the rows."""
    with connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        for statement in MIGRATIONS[0].split(";\n"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 1")
        conn.execute("INSERT INTO ledger (key, value) VALUES ('ledger_id', 'old-ledger')")
        prev = GENESIS
        rows = []
        for position, (stream, version, kind, data) in enumerate(
            [
                (
                    "trade-t1",
                    1,
                    "TradeOpened",
                    '{"currency":"USDT","occurred_at":"2026-01-05T09:30:00Z","price":"100",'
                    '"quantity":"1","side":"long","symbol":"BTCUSDT","trade_id":"t1","type":"TradeOpened"}',
                ),
                (
                    "trade-t1",
                    2,
                    "StopMoved",
                    '{"occurred_at":"2026-01-05T09:31:00Z","stop":"99","trade_id":"t1","type":"StopMoved"}',
                ),
            ],
            start=1,
        ):
            occurred = T0.replace(minute=29 + position)
            recorded = T0.replace(minute=40 + position)
            schema = 1
            digest = record_hash(
                prev, position, stream, version, f"e{position}", kind, schema,
                occurred, recorded, data, "{}",
            )  # fmt: skip
            row = (
                position,
                stream,
                version,
                f"e{position}",
                kind,
                schema,
                occurred.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                recorded.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                data,
                "{}",
                prev,
                digest,
            )
            conn.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            rows.append(row)
            prev = digest
        return rows


def test_a_schema_1_file_is_migrated_to_the_current_schema_keeping_its_records(
    sqlite_url: str,
) -> None:
    """Opening a schema-1 ledger brings it to SCHEMA_VERSION with its records, id and chain intact."""
    rows = _schema_1_file(path_of(sqlite_url))

    async def body() -> tuple[str, list[Record], Record]:
        async with open_ledger(sqlite_url) as book:
            appended = await book.record(closed("t1", price=Decimal("102")))
            return await book.store.ledger_id(), await all_records(book), appended

    ledger_id, records, appended = asyncio.run(body())
    with connect(sqlite_url) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("SELECT * FROM records WHERE position <= 2").fetchall() == rows
        indexes = {
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
    assert "records_by_recorded_at" in indexes
    assert ledger_id == "old-ledger"
    assert (appended.position, appended.version) == (3, 3)
    assert first_break(records) is None
    assert records[1].event.stop_price == Decimal("99")  # type: ignore[attr-defined]


# Lifecycle


def test_a_closed_ledger_refuses_record(sqlite_url: str) -> None:
    """record() after aclose() raises LedgerClosed and writes nothing."""

    async def body() -> None:
        book = await open_ledger(sqlite_url)
        await book.record(opened("t1"))
        await book.aclose()
        await book.aclose()  # closing twice is harmless
        with pytest.raises(LedgerClosed):
            await book.record(opened("t2"))
        with pytest.raises(LedgerClosed):
            await book.record_batch([opened("t3")])

    asyncio.run(body())
    assert [r.stream_id for r in read_all(sqlite_url)] == ["trade-t1"]


def test_a_ledger_opens_only_once(sqlite_url: str) -> None:
    """Opening an already opened (or closed) Ledger object raises LedgerClosed."""

    async def body() -> None:
        book = open_ledger(sqlite_url)
        async with book:
            with pytest.raises(LedgerClosed):
                await book.open()
        with pytest.raises(LedgerClosed):
            await book.open()

    asyncio.run(body())


def test_importing_the_library_prints_nothing() -> None:
    """`import ledger` (and its store) in a fresh interpreter writes nothing to stdout or stderr."""
    done = subprocess.run(
        [sys.executable, "-c", "import ledger, ledger.store.sqlite, ledger.codec, ledger.trade"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0
    assert (done.stdout, done.stderr) == ("", "")


def test_a_ledger_in_a_missing_directory_raises_store_unavailable(tmp_path: Path) -> None:
    """open_ledger() on a path whose directory does not exist raises StoreUnavailable."""

    async def body() -> None:
        async with open_ledger(f"sqlite:///{tmp_path / 'missing' / 'ledger.db'}"):
            pass

    with pytest.raises(StoreUnavailable):
        asyncio.run(body())
