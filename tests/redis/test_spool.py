"""The spool: appends keep being accepted while Redis is down, then drain in order, or quarantine."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from ledger import (
    Append,
    IncompatibleStore,
    Ledger,
    OutcomeUnknown,
    Pending,
    Record,
    StoreUnavailable,
    open_ledger,
)
from ledger.failpoints import ENV as FAILPOINTS
from ledger.store.spool import SpoolStore
from projections import OpenPositions
from tests.lifecycles import closed, fee_charged, increased, opened, signal, stop_moved
from tests.redis.conftest import MakeServer
from tests.redis.support import all_records, chain_problems, eventually, pause, resume
from tests.servers import RedisServer

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]


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
    other_url = server.url(tmp_path, name="shared", spool=str(tmp_path / "spool.db"))
    bot_url = _as_user(server, other_url, "bot")

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


def _as_user(server: RedisServer, url: str, user: str) -> str:
    """``url`` logged in as a new Redis user, whom ``_lock_out`` can shut out alone."""
    client = server.client()
    client.acl_setuser(
        user, enabled=True, passwords=[f"+{user}-pw"], keys=["*"], channels=["*"],
        commands=["+@all"],
    )  # fmt: skip
    client.close()
    return url.replace("redis://", f"redis://{user}:{user}-pw@")


STALLING_DRAINER = """
import asyncio, logging, sys
import structlog
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
from ledger import open_ledger

async def main() -> None:
    async with open_ledger(sys.argv[1]):
        print("open", flush=True)
        await asyncio.sleep(float(sys.argv[2]))

asyncio.run(main())
"""


def _stalling_drainer(tmp_path: Path, url: str, stall: float, live: float) -> Any:
    """A second process on ``url`` whose forwarder stops for ``stall`` s right after it
    reads the first spooled batch (a CLI suspended with ^Z); it exits after ``live`` s."""
    script = tmp_path / "drainer.py"
    script.write_text(STALLING_DRAINER)
    process = subprocess.Popen(
        [sys.executable, str(script), url, str(live)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), FAILPOINTS: f"spool_drain=sleep:{stall}@1"},
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "open"
    return process


def test_a_batch_spooled_while_another_process_forwards_the_spool_is_never_lost(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """A second process stalls mid-forward: this one waits its turn instead of forwarding too, and its next batch, spooled meanwhile, lands after the first, once each."""
    server = make_server()
    other_url = server.url(tmp_path, name="shared", spool=str(tmp_path / "spool.db"))
    bot_url = _as_user(server, other_url, "bot")

    async def body() -> tuple[list[Record], tuple[int, int]]:
        async with open_ledger(bot_url) as bot:
            await bot.record(opened("t1"))
            _lock_out(server, "bot", enabled=False)
            assert isinstance(await bot.record(stop_moved("t1"), event_id="X"), Pending)
            other = _stalling_drainer(tmp_path, other_url, stall=3, live=5)
            await asyncio.sleep(1)  # it has read X and stopped, forwarding
            _lock_out(server, "bot", enabled=True)
            await asyncio.sleep(1)  # the bot's forwarder finds the spool taken
            _lock_out(server, "bot", enabled=False)
            assert isinstance(await bot.record(signal("s1"), event_id="Y"), Pending)
            await asyncio.to_thread(other.communicate)
            _lock_out(server, "bot", enabled=True)
            await drained(bot)
            return await all_records(bot), spool_of(bot).counts()

    records, counts = run(body())
    assert [r.event_id for r in records[1:]] == ["X", "Y"]
    assert chain_problems(records) == []
    assert counts == (0, 0)


def test_a_batch_one_forwarder_holds_is_not_quarantined_by_another_meanwhile(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """A batch a stalled process is forwarding is neither quarantined by this one meanwhile nor overtaken by the batch behind it: it lands once, in its place."""
    server = make_server()
    other_url = server.url(tmp_path, name="shared", spool=str(tmp_path / "spool.db"))
    bot_url = _as_user(server, other_url, "bot")
    plain = other_url.split("&spool=")[0]

    async def body() -> tuple[list[Record], list[Any]]:
        async with open_ledger(bot_url) as bot:
            await bot.record(opened("t1"))
            _lock_out(server, "bot", enabled=False)
            # t9 is not open yet: forwarded now, E1 would be refused and quarantined
            assert isinstance(
                await bot.record(increased("t9", fill_id="f1"), event_id="E1"), Pending
            )
            assert isinstance(await bot.record(signal("s1"), event_id="E2"), Pending)
            other = _stalling_drainer(tmp_path, other_url, stall=3, live=5)
            await asyncio.sleep(1)  # it has read E1 and stopped, forwarding
            _lock_out(server, "bot", enabled=True)
            await asyncio.sleep(1)  # the bot's forwarder finds the spool taken
            async with open_ledger(plain) as host:  # another host opens t9 meanwhile
                await host.record(opened("t9"))
            await asyncio.to_thread(other.communicate)
            await drained(bot)
            return await all_records(bot), spool_of(bot).quarantined()

    records, quarantined = run(body())
    assert [r.event_id for r in records[2:]] == ["E1", "E2"]
    assert [r.stream_id for r in records[1:3]] == ["trade-t9", "trade-t9"]
    assert quarantined == []


def test_a_seq_is_never_handed_out_twice_so_a_second_refused_batch_is_quarantined_too(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """Two refused batches spooled one after the other's drain both reach the quarantine, and the batch behind them lands."""
    server = make_server()
    plain = server.url(tmp_path, name="q")
    bot_url = _as_user(server, plain, "bot") + f"&spool={tmp_path / 'spool.db'}"

    async def body() -> tuple[list[Record], list[Any], list[int]]:
        async with open_ledger(bot_url) as bot:
            await bot.record(opened("t1"))
            seqs = []
            for bad in ("bad-1", "bad-2"):
                _lock_out(server, "bot", enabled=False)
                spooled = await bot.record(stop_moved("t1"), expected_version=7, event_id=bad)
                assert isinstance(spooled, Pending)
                seqs.append(spooled.spool_seq)
                _lock_out(server, "bot", enabled=True)
                await drained(bot)
            _lock_out(server, "bot", enabled=False)
            assert isinstance(await bot.record(signal("s1"), event_id="good"), Pending)
            _lock_out(server, "bot", enabled=True)
            await drained(bot)
            return await all_records(bot), spool_of(bot).quarantined(), seqs

    records, quarantined, seqs = run(body())
    assert seqs[0] < seqs[1]
    assert [q.batch[0].event_id for q in quarantined] == ["bad-1", "bad-2"]
    assert [r.event_id for r in records[1:]] == ["good"]


def test_a_spool_shared_by_two_ledgers_forwards_each_ones_batches_to_its_own_log(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """Two ledgers given one spool path: each forwards only what it spooled, into its own log; neither waits behind the other's."""
    server = make_server()
    spool = str(tmp_path / "spool.db")
    first_url = _as_user(server, server.url(tmp_path, name="acct1", spool=spool), "bot")
    second_url = server.url(tmp_path, name="acct2", spool=spool)

    async def body() -> tuple[list[Record], list[Record], Any]:
        async with open_ledger(first_url) as first:
            _lock_out(server, "bot", enabled=False)
            assert isinstance(await first.record(signal("s1"), event_id="first-1"), Pending)
            async with open_ledger(second_url) as second:
                mine = await second.record(signal("s2"), event_id="second-1")
                await asyncio.sleep(1)  # its forwarder has run
                assert spool_of(second).counts() == (0, 0)
                assert spool_of(first).counts() == (1, 0)
                theirs = await all_records(second)
            _lock_out(server, "bot", enabled=True)
            await drained(first)
            return await all_records(first), theirs, mine

    first_log, second_log, mine = run(body())
    assert isinstance(mine, Record)
    assert [r.event_id for r in first_log] == ["first-1"]
    assert [r.event_id for r in second_log] == ["second-1"]


def test_a_ledger_whose_forwarding_another_process_holds_waits_and_other_ledgers_do_not(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """The forwarding lock is per ledger: while another process holds one ledger's (stopped, say), that ledger's batches wait, and another ledger's on the same spool still go."""
    server = make_server()
    spool = str(tmp_path / "spool.db")
    first_url = _as_user(server, server.url(tmp_path, name="acct1", spool=spool), "bot")
    second_url = _as_user(server, server.url(tmp_path, name="acct2", spool=spool), "bot2")

    async def body() -> tuple[list[Record], list[Record]]:
        async with open_ledger(first_url) as first, open_ledger(second_url) as second:
            held = os.open(f"{spool}-drain-{await first.store.ledger_id()}", os.O_RDWR)
            fcntl.flock(held, fcntl.LOCK_EX)  # another process is forwarding acct1's batches
            try:
                _lock_out(server, "bot", enabled=False)
                _lock_out(server, "bot2", enabled=False)
                assert isinstance(await first.record(signal("s1"), event_id="one"), Pending)
                assert isinstance(await second.record(signal("s2"), event_id="two"), Pending)
                _lock_out(server, "bot", enabled=True)
                _lock_out(server, "bot2", enabled=True)
                await drained(second)
                await asyncio.sleep(1)  # acct1's forwarder has tried, and waits its turn
                assert spool_of(first).counts() == (1, 0)
                with pytest.raises(StoreUnavailable, match="another process is forwarding"):
                    await spool_of(first).drain()
            finally:
                os.close(held)  # as the holder's death would
            await drained(first)
            return await all_records(first), await all_records(second)

    first_log, second_log = run(body())
    assert [r.event_id for r in first_log] == ["one"]
    assert [r.event_id for r in second_log] == ["two"]


def test_a_spool_waiting_for_a_ledger_redis_lost_refuses_to_open_and_keeps_its_batches(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """Batches wait for a ledger that Redis then lost and made anew under its name: the spool refuses to open, naming both ids, and keeps them untouched."""
    server = make_server()
    spool = tmp_path / "spool.db"
    url = _as_user(server, server.url(tmp_path, name="lost", spool=str(spool)), "bot")

    async def spool_two() -> str:
        async with open_ledger(url) as book:
            await book.record(opened("t1"))
            old = str(await book.store.ledger_id())
            spool_of(book).retry_every = 3600  # it forwards when woken by a spooling only
            _lock_out(server, "bot", enabled=False)
            for number in range(2):
                assert isinstance(await book.record(signal(f"s{number}")), Pending)
            await asyncio.sleep(0.2)  # the forwarder's tries, woken by them, have failed
            _lock_out(server, "bot", enabled=True)
            return old

    old = run(spool_two())
    client = server.client()
    client.delete(*client.keys("tradeledger:{lost}:*"))  # a restart without persistence
    client.close()
    rows = sqlite3.connect(spool).execute("SELECT seq, ledger, batch FROM spool").fetchall()
    with pytest.raises(IncompatibleStore, match="2 batch") as refused:
        run(_open_close(url))
    assert old in str(refused.value) and "move the spool file aside" in str(refused.value).lower()
    assert sqlite3.connect(spool).execute("SELECT seq, ledger, batch FROM spool").fetchall() == rows


def test_closing_with_an_append_in_flight_leaves_no_forwarder_behind(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """An append that fails over to the spool while the ledger closes is kept, and no forwarder runs on after the close."""
    server = make_server()
    spool = tmp_path / "spool.db"
    url = server.url(tmp_path, spool=str(spool))

    async def body() -> tuple[list[Any], list[str]]:
        book = await open_ledger(url, timeout=0.5)
        await book.record(opened("t1"))
        pause(server)
        try:
            in_flight = asyncio.create_task(book.record(signal("s1"), event_id="late"))
            await asyncio.sleep(0.1)
            closing = asyncio.create_task(book.aclose())
            outcome = await asyncio.gather(in_flight, return_exceptions=True)
        finally:
            resume(server)
        await closing
        with capture_logs() as logs:
            await asyncio.sleep(1.2)  # a forwarder left running retries every 0.5 s
        return outcome, [log["event"] for log in logs]

    outcome, after_close = run(body())
    assert [type(o).__name__ for o in outcome] == ["Pending"]
    assert after_close == []
    rows = sqlite3.connect(spool).execute("SELECT count(*) FROM spool").fetchone()
    assert rows == (1,)


def test_a_spooled_batch_that_cannot_be_read_is_quarantined_not_stalled_on(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """A damaged batch in the spool (or one a newer version wrote) goes to the quarantine with its bytes kept, and the batches behind it still land."""
    server = make_server()
    spool = tmp_path / "spool.db"
    url = _as_user(server, server.url(tmp_path, spool=str(spool)), "bot")

    async def body() -> tuple[list[Record], list[Any], tuple[int, int], list[str]]:
        async with open_ledger(url) as book:
            ledger_id = await book.store.ledger_id()
            _lock_out(server, "bot", enabled=False)
            conn = sqlite3.connect(spool)
            conn.execute(
                "INSERT INTO spool (ledger, batch, spooled_at) VALUES (?, ?, ?)",
                (ledger_id, b'[["no", "such"]]', "2026-01-05T10:00:00.000000Z"),
            )
            conn.commit()
            conn.close()
            behind = await book.record(signal("s1"), event_id="behind")
            assert isinstance(behind, Pending)
            with capture_logs() as logs:
                _lock_out(server, "bot", enabled=True)
                await drained(book)
            spool_store = spool_of(book)
            events = [log["event"] for log in logs if log["log_level"] == "error"]
            return (
                await all_records(book),
                spool_store.quarantined(),
                spool_store.counts(),
                events,
            )

    records, quarantined, counts, events = run(body())
    assert [r.event_id for r in records] == ["behind"]
    assert [(q.batch, q.reason.split(":")[0]) for q in quarantined] == [([], "IntegrityError")]
    assert "cannot be read" in quarantined[0].reason
    assert counts == (0, 1)
    assert "spool_quarantined" in events
    kept = sqlite3.connect(spool).execute("SELECT batch FROM quarantine").fetchall()
    assert kept == [(b'[["no", "such"]]',)]


def _as_schema_0(path: Path, quarantined_seq: int) -> None:
    """Rewrite a spool file as the first spool schema wrote it (no AUTOINCREMENT, no ledger),
    with a quarantined batch that shares its seq with the batch still waiting."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("CREATE TABLE old AS SELECT seq, batch, spooled_at FROM spool")
    conn.execute("DROP TABLE spool")
    conn.execute("DROP TABLE quarantine")
    conn.execute("DROP TABLE ledgers")
    conn.execute("DELETE FROM sqlite_sequence")
    conn.execute(
        "CREATE TABLE spool (seq INTEGER PRIMARY KEY, batch BLOB NOT NULL, spooled_at TEXT NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE quarantine (seq INTEGER PRIMARY KEY, batch BLOB NOT NULL, "
        "spooled_at TEXT NOT NULL, reason TEXT NOT NULL, quarantined_at TEXT NOT NULL)"
    )
    conn.execute("INSERT INTO spool SELECT * FROM old")
    conn.execute(
        "INSERT INTO quarantine SELECT ?, batch, spooled_at, 'ConcurrencyError: old', spooled_at "
        "FROM old",
        (quarantined_seq,),
    )
    conn.execute("DROP TABLE old")
    conn.execute("PRAGMA user_version = 0")
    conn.execute("COMMIT")
    conn.close()


def test_a_spool_of_the_first_schema_is_upgraded_and_drains_past_a_seq_its_quarantine_shares(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """A spool file of schema 0 whose waiting batch shares its seq with a quarantined one opens, keeps both, and drains the waiting batch."""
    server = make_server()
    spool = tmp_path / "spool.db"
    url = server.url(tmp_path, spool=str(spool))

    async def spool_one() -> int:
        async with open_ledger(url) as book:
            await book.record(opened("t1"))
            server.stop()
            pending = await book.record(stop_moved("t1"), event_id="m1")
            assert isinstance(pending, Pending)
            return pending.spool_seq

    async def reopen() -> tuple[list[Record], list[Any], tuple[int, int]]:
        async with open_ledger(url) as book:
            await drained(book)
            spool = spool_of(book)
            return await all_records(book), spool.quarantined(), spool.counts()

    seq = run(spool_one())
    _as_schema_0(spool, quarantined_seq=seq)
    server.start()
    records, quarantined, counts = run(reopen())
    assert [r.event_id for r in records[1:]] == ["m1"]
    assert [(q.seq, q.reason) for q in quarantined] == [(seq, "ConcurrencyError: old")]
    assert counts == (0, 1)
    conn = sqlite3.connect(spool)
    assert conn.execute("PRAGMA user_version").fetchone() == (1,)
    conn.close()


def test_a_spool_of_a_newer_schema_is_refused_and_left_alone(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """A spool file written by a newer tradeledger is refused with IncompatibleStore, unchanged."""
    server = make_server()
    spool = tmp_path / "spool.db"
    url = server.url(tmp_path, spool=str(spool))
    run(_open_close(url))
    conn = sqlite3.connect(spool)
    conn.execute("PRAGMA user_version = 9")
    conn.close()
    before = spool.read_bytes()
    with pytest.raises(IncompatibleStore, match="schema 9"):
        run(_open_close(url))
    assert spool.read_bytes() == before


async def _open_close(url: str) -> None:
    async with open_ledger(url):
        pass


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
