"""The spool: appends keep being accepted while Redis is down, then drain in order, or quarantine."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from ledger import Append, Ledger, OutcomeUnknown, Pending, Record, StoreUnavailable, open_ledger
from ledger.store.spool import SpoolStore
from projections import OpenPositions
from tests.lifecycles import closed, fee_charged, increased, opened, signal, stop_moved
from tests.redis.conftest import MakeServer
from tests.redis.support import all_records, chain_problems, eventually, pause, resume
from tests.servers import RedisServer

pytestmark = pytest.mark.timeout(120)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def spool_of(book: Ledger) -> SpoolStore:
    store = book.store
    assert isinstance(store, SpoolStore)
    return store


async def drained(book: Ledger) -> None:
    spool = spool_of(book)

    async def empty() -> bool:
        return spool.counts()[0] == 0

    await eventually(empty, what="the spool draining")


def test_appends_while_redis_is_down_are_pending_then_drain_in_order_into_the_log_and_views(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """With Redis stopped, record returns Pending (no position, not in the views), later appends queue behind it, and once Redis is back they become records in that order and reach the views."""
    server = make_server()
    url = server.url(tmp_path, spool=str(tmp_path / "spool.db"))

    async def body() -> None:
        async with open_ledger(url, [OpenPositions()]) as book:
            await book.record(opened("t0"))
            server.stop()
            waiting = [
                await book.record(opened("t1")),
                await book.record(stop_moved("t1"), event_id="move-1"),
                (await book.record_batch([opened("t2"), Append(closed("t0"))]))[0],
            ]
            assert all(isinstance(p, Pending) for p in waiting)
            assert not hasattr(waiting[0], "position")
            assert [p.spool_seq for p in waiting] == sorted(p.spool_seq for p in waiting)
            view = book.view(OpenPositions)
            assert [t.trade_id for t in view.positions()] == ["t0"]
            facts = await book.store.describe()
            assert (facts["spool_pending"], facts["spool_quarantined"]) == (3, 0)
            assert facts["redis"].startswith("unreachable")
            server.start()
            await drained(book)

            async def in_views() -> bool:
                return [t.trade_id for t in view.positions()] == ["t1", "t2"]

            await eventually(in_views, what="the drained records reaching the views")
            after = await book.record(opened("t3"))
            assert isinstance(after, Record)
            records = await all_records(book)
            assert [(r.stream_id, r.type) for r in records] == [
                ("trade-t0", "TradeOpened"),
                ("trade-t1", "TradeOpened"),
                ("trade-t1", "StopMoved"),
                ("trade-t2", "TradeOpened"),
                ("trade-t0", "TradeClosed"),
                ("trade-t3", "TradeOpened"),
            ]
            assert [r.event_id for r in records[1:5]] == [p.event_id for p in waiting] + [
                records[4].event_id
            ]
            assert chain_problems(records) == []
            facts = await book.store.describe()
            assert (facts["spool_pending"], facts["spool_quarantined"]) == (0, 0)

    run(body())


def test_a_spooled_append_that_had_landed_is_not_recorded_twice(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """An append spooled after OutcomeUnknown from a hung Redis, whose script did run, drains into its first record instead of a duplicate."""
    server = make_server()
    url = server.url(tmp_path, spool=str(tmp_path / "spool.db"))

    async def body() -> None:
        async with open_ledger(url, timeout=0.5) as book:
            await book.record(opened("t1"))
            pause(server)
            try:
                pending = await book.record(stop_moved("t1"), event_id="move-1")
            finally:
                resume(server)
            assert isinstance(pending, Pending)
            await drained(book)
            records = await all_records(book)
        assert [r.event_id for r in records].count("move-1") == 1
        assert len(records) == 2
        assert chain_problems(records) == []

    run(body())


def _lock_out(server: RedisServer, user: str, enabled: bool) -> None:
    """Let ``user`` in, or shut it out (and drop its connections): Redis down for it alone."""
    client = server.client()
    try:
        client.acl_setuser(user, enabled=enabled, reset_channels=False)
        if not enabled:
            client.client_kill_filter(user=user)
    finally:
        client.close()


def test_a_spooled_append_that_redis_refuses_is_quarantined_logged_and_kept(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """Spooled events that conflict with another host's (a stale expected version, a trade it closed) go to quarantine with an error log, and the spool drains on past them."""
    server = make_server()
    client = server.client()
    client.acl_setuser(
        "spooler", enabled=True, passwords=["+spool-pw"], keys=["*"], channels=["*"],
        commands=["+@all"],
    )  # fmt: skip
    client.close()
    plain = server.url(tmp_path)
    spooling = plain.replace("redis://", "redis://spooler:spool-pw@") + (
        f"&spool={tmp_path / 'spool.db'}"
    )

    async def body() -> tuple[list[Record], Any, dict[str, Any]]:
        async with open_ledger(spooling) as book, open_ledger(plain) as other:
            await book.record(opened("t1"))
            _lock_out(server, "spooler", enabled=False)
            spooled = [
                await book.record(stop_moved("t1"), expected_version=1, event_id="late-stop"),
                await book.record(increased("t1", fill_id="late-fill")),
                await book.record(signal("s9")),
            ]
            assert all(isinstance(p, Pending) for p in spooled)
            await other.record(stop_moved("t1"), expected_version=1, event_id="their-stop")
            await other.record(closed("t1"))
            _lock_out(server, "spooler", enabled=True)
            await drained(book)
            spool = spool_of(book)
            return await all_records(book), spool.quarantined(), await spool.describe()

    with capture_logs() as logs:
        records, quarantined, facts = run(body())
    assert [r.type for r in records] == ["TradeOpened", "StopMoved", "TradeClosed", "SignalEmitted"]
    assert records[1].event_id == "their-stop"
    assert [(q.batch[0].event_id, q.reason.split(":")[0]) for q in quarantined] == [
        ("late-stop", "ConcurrencyError"),
        (quarantined[1].batch[0].event_id, "InvalidEvent"),
    ]
    assert quarantined[1].batch[0].type == "TradeIncreased"
    errors = [log for log in logs if log["event"] == "spool_quarantined"]
    assert [(log["log_level"], log["event_ids"]) for log in errors] == [
        ("error", ["late-stop"]),
        ("error", [quarantined[1].batch[0].event_id]),
    ]
    assert (facts["spool_pending"], facts["spool_quarantined"]) == (0, 2)


def test_a_spool_drained_by_another_process_lets_appends_go_straight_to_redis_again(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """Two ledgers on one spool path (a bot and a CLI with the same URL): when the other drains what this one spooled, this one's next append is a record again, not a Pending for good."""
    server = make_server()
    client = server.client()
    client.acl_setuser(
        "bot", enabled=True, passwords=["+bot-pw"], keys=["*"], channels=["*"],
        commands=["+@all"],
    )  # fmt: skip
    client.close()
    spool = f"&spool={tmp_path / 'spool.db'}"
    other_url = server.url(tmp_path, name="shared") + spool
    bot_url = other_url.replace("redis://", "redis://bot:bot-pw@")

    async def body() -> tuple[Any, list[Record], dict[str, Any]]:
        async with open_ledger(bot_url) as bot:
            await bot.record(opened("t1"))
            _lock_out(server, "bot", enabled=False)
            assert isinstance(await bot.record(stop_moved("t1"), event_id="m1"), Pending)
            async with open_ledger(other_url) as other:  # drains the bot's spool
                await drained(other)
            _lock_out(server, "bot", enabled=True)
            after = await bot.record(closed("t1"))
            return after, await all_records(bot), await bot.store.describe()

    after, records, facts = run(body())
    assert isinstance(after, Record)
    assert [(r.type, r.position) for r in records] == [
        ("TradeOpened", 1),
        ("StopMoved", 2),
        ("TradeClosed", 3),
    ]
    assert (facts["spool_pending"], facts["spool_quarantined"]) == (0, 0)


def test_a_spool_left_with_pending_events_drains_when_the_ledger_opens_again(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """Events still spooled when a ledger closes are forwarded, in order, by the next ledger opened on the same spool."""
    server = make_server()
    url = server.url(tmp_path, spool=str(tmp_path / "spool.db"))

    async def first() -> None:
        async with open_ledger(url) as book:
            await book.record(opened("t1"))
            server.stop()
            assert isinstance(await book.record(stop_moved("t1"), event_id="m1"), Pending)
            assert isinstance(await book.record(closed("t1")), Pending)

    async def second() -> list[Record]:
        async with open_ledger(url, [OpenPositions()]) as book:
            await drained(book)
            assert book.view(OpenPositions).positions() == []
            return await all_records(book)

    run(first())
    server.start()
    records = run(second())
    assert [r.type for r in records] == ["TradeOpened", "StopMoved", "TradeClosed"]


def test_a_spool_ledger_refuses_to_open_while_redis_is_unreachable(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """Opening a ledger with a spool while Redis is down raises StoreUnavailable: the views need the log."""
    server = make_server()
    url = server.url(tmp_path, spool=str(tmp_path / "spool.db"))
    server.stop()
    with pytest.raises(StoreUnavailable):
        run(open_ledger(url).open())


def _hold_write_lock(path: Path, seconds: float) -> threading.Event:
    """Another connection write-locks the spool file for ``seconds`` (a backup, a shell)."""
    locked = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(seconds)
        conn.execute("ROLLBACK")
        conn.close()

    threading.Thread(target=hold, daemon=True).start()
    locked.wait(10)
    return locked


def test_a_locked_spool_file_stalls_the_drain_without_blocking_the_loop_or_killing_it(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """The spool file write-locked past the busy timeout: the drain waits off the event loop, and once the lock goes the spool drains and appends go straight to Redis again."""
    server = make_server()
    spool = tmp_path / "spool.db"
    url = server.url(tmp_path, spool=str(spool))

    async def body() -> tuple[float, list[Any]]:
        async with open_ledger(url, timeout=0.3) as book:
            spool_of(book).retry_every = 0.1
            server.stop()
            assert isinstance(await book.record(opened("t1")), Pending)
            _hold_write_lock(spool, 1.5)
            server.start()
            began = time.monotonic()
            await asyncio.sleep(0.2)
            slept = time.monotonic() - began  # the loop ran on while the drain waited
            await drained(book)  # the forwarder outlived the lock
            await book.record(stop_moved("t1"), event_id="m1")
            await drained(book)
            return slept, await all_records(book)

    slept, records = run(body())
    assert slept < 0.3 + 0.2  # never the busy timeout on the loop's thread
    assert [r.type for r in records] == ["TradeOpened", "StopMoved"]


def test_an_append_whose_outcome_is_unknown_stays_outcome_unknown_when_the_spool_fails_too(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """Redis hangs after the script was sent and the spool is locked: the caller hears OutcomeUnknown (it may have landed), not StoreUnavailable."""
    server = make_server()
    spool = tmp_path / "spool.db"
    url = server.url(tmp_path, spool=str(spool))

    async def body() -> tuple[tuple[str, ...], list[Any]]:
        async with open_ledger(url, timeout=0.3) as book:
            await book.record(opened("t1"))
            _hold_write_lock(spool, 1.0)
            pause(server)
            try:
                with pytest.raises(OutcomeUnknown) as caught:
                    await book.record(fee_charged("t1"))
            finally:
                resume(server)
            ids = caught.value.event_ids
            await book.record(fee_charged("t1"), event_id=ids[0])  # the retry it owes
            return ids, await all_records(book)

    ids, records = run(body())
    assert [r.type for r in records] == ["TradeOpened", "FeeCharged"]
    assert records[1].event_id == ids[0]
