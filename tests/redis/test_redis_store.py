"""The Redis store beyond the contract: SQLite's hashes, many writers, faults, durability, views.

Tests that break a server (kill, pause, reconfigure) start one of their own
with the ``make_server`` fixture; the rest share the session's server.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import sqlite3
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from redis import exceptions as redis_errors
from structlog.testing import capture_logs

from ledger import (
    Append,
    IncompatibleStore,
    IntegrityError,
    InvalidEvent,
    LedgerError,
    OutcomeUnknown,
    Record,
    StoreUnavailable,
    open_ledger,
)
from ledger.events import natural_event_id
from ledger.failpoints import ENV, FailPoints
from ledger.store.redis import RedisStore
from ledger.trade import fold
from projections import OpenPositions, Pnl, TradeHistory
from tests.lifecycles import (
    T0,
    closed,
    fee_charged,
    funding,
    opened,
    parameter,
    random_lifecycle,
    signal,
    stop_moved,
)
from tests.redis.conftest import MakeServer
from tests.redis.support import (
    Child,
    ProtectedServer,
    all_records,
    chain_problems,
    eventually,
    ledger_keys,
    name_of,
    pause,
    resume,
)
from tests.servers import RedisServer

pytestmark = pytest.mark.timeout(120)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class SettableClock:
    """A clock that reads whatever instant the test last set."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def fields(record: Any) -> tuple[Any, ...]:
    return msgspec.structs.astuple(record)


# The same chain as SQLite


def _history() -> list[list[Append]]:
    """Interleaved trades, signals, parameters and batches, every event with a fixed id."""
    rng = random.Random(20260105)
    lanes = [
        list(random_lifecycle(rng, f"t{n}", start=T0 + dt.timedelta(minutes=n), steps=6))
        for n in range(6)
    ]
    extras = [signal("s1"), parameter("risk"), funding("t0", amount=Decimal("-0.25"))]
    items: list[list[Append]] = []
    counter = 0

    def append(event: Any) -> Append:
        nonlocal counter
        counter += 1
        return Append(event, event_id=natural_event_id(event) or f"fixed-{counter}")

    while any(lanes):
        for lane in lanes:
            if lane:
                items.append([append(lane.pop(0))])
        if extras:
            items.append([append(extras.pop(0))])
    items.append([append(opened("b1")), append(stop_moved("b1")), append(closed("b1"))])
    return items


def test_one_history_hashes_byte_for_byte_the_same_in_sqlite_and_in_redis(
    sqlite_url: str, redis_url: str
) -> None:
    """The same events, ids and clock give identical records (hash, prev_hash, position, version, data) on both stores."""
    history = _history()

    async def record(url: str) -> list[tuple[Any, ...]]:
        clock = SettableClock(T0)
        async with open_ledger(url, clock=clock) as book:
            for step, batch in enumerate(history):
                clock.now = T0 + dt.timedelta(days=2, seconds=step, microseconds=step * 7)
                await book.record_batch(batch)
            return [fields(r) for r in await all_records(book)]

    in_sqlite, in_redis = run(record(sqlite_url)), run(record(redis_url))
    assert len(in_redis) == sum(len(batch) for batch in history) > 50
    assert [r[-1] for r in in_redis] == [r[-1] for r in in_sqlite]  # hashes first, for a clear diff
    assert in_redis == in_sqlite


# Several writers


_CONCURRENT_WRITER = """
import asyncio, datetime as dt, json, logging, sys
from decimal import Decimal
import structlog
from ledger import ParameterChanged, StopMoved, TradeOpened, open_ledger
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
T = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)

async def main(url, who, trades):
    async with open_ledger(url, timeout=10) as book:
        print("ready", flush=True)
        sys.stdin.readline()
        done = []
        for k in range(trades):
            trade = f"{who}-t{k}"
            for event, event_id in [
                (TradeOpened(trade_id=trade, symbol="BTCUSDT", side="long", quantity=Decimal(1),
                             price=Decimal(100), currency="USDT", occurred_at=T), None),
                (StopMoved(trade_id=trade, stop_price=Decimal(95), occurred_at=T), trade + "-stop"),
                (ParameterChanged(name="risk", new_value=trade, changed_by="manual",
                                  occurred_at=T), trade + "-risk"),
                (StopMoved(trade_id="shared", stop_price=Decimal(90 + k), occurred_at=T),
                 trade + "-shared"),
            ]:
                record = await book.record(event, event_id=event_id)
                done.append([record.event_id, record.position])
        print(json.dumps(done), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def test_four_processes_appending_at_once_lose_nothing_and_keep_one_dense_chain(
    redis_url: str,
) -> None:
    """Four OS processes appending to one ledger (contending for one head and shared streams) leave every record once, dense and chained."""
    trades = 12

    async def prepare() -> None:
        async with open_ledger(redis_url) as book:
            await book.record(opened("shared"))

    run(prepare())
    children = [Child(_CONCURRENT_WRITER, redis_url, f"w{n}", str(trades)) for n in range(4)]
    try:
        for child in children:
            child.wait_for(lambda lines: "ready" in lines)
        for child in children:
            child.send("go\n")
        reported = [json.loads(child.finish()[-1]) for child in children]
    finally:
        for child in children:
            if child.process.poll() is None:
                child.kill()

    async def read() -> list[Any]:
        async with open_ledger(redis_url) as book:
            return await all_records(book)

    records = run(read())
    assert len(records) == 1 + 4 * trades * 4
    assert [r.position for r in records] == list(range(1, len(records) + 1))
    assert chain_problems(records) == []
    at = {r.event_id: r.position for r in records}
    for done in reported:
        assert len(done) == trades * 4
        assert all(at[event_id] == position for event_id, position in done)
    shared = [r.version for r in records if r.stream_id == "trade-shared"]
    assert shared == list(range(1, 4 * trades + 2))


def test_a_conflicting_open_from_a_second_instance_is_refused_not_retried_forever(
    redis_url: str,
) -> None:
    """A second ledger instance that never saw trade t1 gets trade_exists for another open of it, promptly, and writes nothing."""

    async def body() -> tuple[float, list[Any], list[Any]]:
        async with open_ledger(redis_url) as first, open_ledger(redis_url, timeout=5) as second:
            await first.record(opened("t1"))
            before = await all_records(first)
            began = time.monotonic()
            with pytest.raises(InvalidEvent) as caught:
                await second.record(opened("t1"), event_id="another-open")
            assert caught.value.rule == "trade_exists"
            return time.monotonic() - began, before, await all_records(second)

    seconds, before, after = run(body())
    assert after == before
    assert seconds < 2


_STEADY_WRITER = """
import asyncio, datetime as dt, logging, sys
import structlog
from ledger import OutcomeUnknown, ParameterChanged, StoreUnavailable, open_ledger
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
T = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)

async def lane(book, n):
    for i in range(1_000_000):
        event = ParameterChanged(name=f"p{n}", new_value=str(i), changed_by="system_auto",
                                 occurred_at=T)
        while True:
            try:
                record = await book.record(event, event_id=f"w{n}-{i}")
                break
            except (StoreUnavailable, OutcomeUnknown):
                await asyncio.sleep(0.05)
        print("ack", record.event_id, record.position, flush=True)

async def main(url):
    async with open_ledger(url, timeout=1) as book:
        await asyncio.gather(*(lane(book, n) for n in range(4)))

asyncio.run(main(sys.argv[1]))
"""


def _acks(lines: list[str]) -> dict[str, int]:
    acks = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "ack":
            acks[parts[1]] = int(parts[2])
    return acks


def test_every_acknowledged_record_survives_redis_killed_mid_stream(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """SIGKILL on redis-server (appendfsync always) while four tasks append: after a restart every acknowledged record is there and the chain verifies."""
    server = make_server()
    url = server.url(tmp_path)
    writer = Child(_STEADY_WRITER, url)
    try:
        killed_at = len(_acks(writer.wait_for(lambda lines: len(_acks(lines)) >= 40)))
        server.kill()
        time.sleep(0.2)
        server.start()
        writer.wait_for(lambda lines: len(_acks(lines)) >= killed_at + 40)
    finally:
        acks = _acks(writer.kill())

    async def read() -> list[Any]:
        async with open_ledger(url) as book:
            return await all_records(book)

    records = run(read())
    at = {r.event_id: r.position for r in records}
    assert {event_id: at.get(event_id) for event_id in acks} == acks
    assert chain_problems(records) == []
    assert [r.position for r in records] == list(range(1, len(records) + 1))


# Faults


def _exception_texts(error: BaseException) -> list[str]:
    texts, seen = [], set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    return texts


def test_a_stopped_redis_raises_store_unavailable_naming_the_address_but_never_the_password(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """With Redis down, record raises StoreUnavailable naming host:port; the password is in no error, log, url or describe()."""
    server = make_server(server_class=ProtectedServer)
    password = ProtectedServer.password
    url = server.url(tmp_path)
    texts: list[str] = []

    async def body() -> None:
        async with open_ledger(url) as book:
            await book.record(opened("t1"))
            texts.extend([book.store.url, repr(await book.store.describe()), book.store.durability])
            assert isinstance(book.store, RedisStore)
            texts.append(repr(book.store.options))
            server.stop()
            for event in (stop_moved("t1"), signal("s2"), signal("s3"), signal("s4")):
                with pytest.raises(StoreUnavailable) as caught:
                    await book.record(event, event_id=f"{type(event).__name__}-x")
                texts.extend(_exception_texts(caught.value))
                assert f"127.0.0.1:{server.port}" in str(caught.value)
            for read in (book.store.head(), book.store.describe(), book.store.find("x")):
                with pytest.raises(StoreUnavailable) as caught:
                    await read
                texts.extend(_exception_texts(caught.value))

    with capture_logs() as logs:
        run(body())
        wrong = url.replace(password, "not-the-password")
        server.start()
        with pytest.raises(StoreUnavailable) as caught:
            run(open_ledger(wrong).open())
        texts.extend(_exception_texts(caught.value))
    assert any(log["event"] == "store_fault" for log in logs)
    texts.append(repr(logs))
    assert [t for t in texts if password in t] == []
    assert all("not-the-password" not in t for t in texts)


def test_the_same_ledger_recovers_by_itself_once_redis_is_back_and_the_cool_down_passed(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """After StoreUnavailable from a stopped Redis, the same open ledger records again once Redis restarts, without being reopened."""
    server = make_server()
    url = server.url(tmp_path)

    async def body() -> tuple[Any, Any]:
        async with open_ledger(url, [OpenPositions()]) as book:
            first = await book.record(opened("t1"))
            server.stop()
            for n in range(4):  # enough failures to open the circuit breaker
                with pytest.raises(StoreUnavailable):
                    await book.record(signal(f"s{n}"))
            server.start()
            deadline = time.monotonic() + 10
            while True:
                try:
                    second = await book.record(opened("t2"))
                    break
                except StoreUnavailable:
                    assert time.monotonic() < deadline, "the ledger never recovered"
                    await asyncio.sleep(0.1)
            assert book.view(OpenPositions).get("t2") is not None
            return first, second

    first, second = run(body())
    assert (first.position, second.position) == (1, 2)


def test_one_append_is_bounded_as_a_whole_not_call_by_call(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """Redis stalls just under the timeout at every turn (another client's back-to-back
    DEBUG SLEEP 0.45 against a 0.5 s timeout): a fresh executor's append, which reads the
    head and the trade's stream before its script, answers within about one timeout,
    not one per call."""
    server = make_server("--enable-debug-command", "yes")
    url = server.url(tmp_path)
    stalling = threading.Event()

    def stall() -> None:
        client = server.client()
        client.connection_pool.connection_kwargs["socket_timeout"] = 10
        while stalling.is_set():
            client.execute_command("DEBUG", "SLEEP", "0.45")
        client.close()

    async def body() -> tuple[Any, float]:
        async with open_ledger(url) as book:
            await book.record(opened("t1"))
        async with open_ledger(url.replace(".views.db", "-2.views.db"), timeout=0.5) as book:
            stalling.set()
            staller = threading.Thread(target=stall)
            staller.start()
            await asyncio.sleep(0.1)
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                outcome: Any = await book.record(stop_moved("t1", stop_price=Decimal(95)))
            except LedgerError as e:
                outcome = e
            took = loop.time() - started
            stalling.clear()
            await asyncio.to_thread(staller.join)
            return outcome, took

    outcome, took = run(body())
    assert isinstance(outcome, StoreUnavailable | OutcomeUnknown)
    assert took < 0.8


def test_a_fault_after_the_script_ran_is_outcome_unknown_not_nothing_written(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unforeseen error right after the script wrote (the after_commit fail point): the
    caller hears OutcomeUnknown, for the event is in the log, and its retry returns it."""
    monkeypatch.setenv(ENV, "after_commit=error@2")

    async def body() -> tuple[Any, Record, list[str]]:
        async with open_ledger(redis_url) as book:
            await book.record(opened("t0"))
            try:
                outcome: Any = await book.record(opened("t1"))
            except LedgerError as e:
                outcome = e
            retried = await book.record(opened("t1"))
            return outcome, retried, [r.stream_id for r in await all_records(book)]

    outcome, retried, logged = run(body())
    assert isinstance(outcome, OutcomeUnknown)
    assert retried.position == 2
    assert logged == ["trade-t0", "trade-t1"]


def test_a_caller_queued_behind_a_stalled_append_waits_one_timeout_not_two(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """Redis holds every write (CLIENT PAUSE WRITE): one append is in flight, a second
    queued behind it. Each caller hears back within about its 0.5 s; one told nothing was
    written finds nothing written once Redis lets the writes through."""
    server = make_server()
    url = server.url(tmp_path)
    admin = server.client()

    async def body() -> tuple[list[Any], list[float], list[str]]:
        async with open_ledger(url, timeout=0.5) as book:
            await book.record(opened("t0"))
            admin.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
            loop = asyncio.get_running_loop()
            started = loop.time()

            async def timed(event: Any) -> tuple[Any, float]:
                try:
                    outcome: Any = await book.record(event)
                except LedgerError as e:
                    outcome = e
                return outcome, loop.time() - started

            answers = await asyncio.gather(timed(opened("t1")), timed(opened("t2")))
            admin.execute_command("CLIENT", "UNPAUSE")
            await asyncio.sleep(0.3)  # what was sent lands
            logged = [r.stream_id for r in await all_records(book)]
        return [a for a, _ in answers], [t for _, t in answers], logged

    outcomes, took, logged = run(body())
    admin.close()
    assert all(isinstance(o, StoreUnavailable | OutcomeUnknown) for o in outcomes)
    assert max(took) < 0.8
    for outcome, stream in zip(outcomes, ["trade-t1", "trade-t2"], strict=True):
        if isinstance(outcome, StoreUnavailable):
            assert stream not in logged


def test_an_append_whose_script_lost_the_race_is_told_nothing_was_written_when_time_runs_out(
    make_server: MakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another executor moved the trade on, so the script answers that it wrote nothing;
    Redis then stalls (DEBUG SLEEP 1.5) while the stream is read again, past the 1 s
    timeout. Nothing was sent that could have landed: StoreUnavailable, not OutcomeUnknown."""
    server = make_server("--enable-debug-command", "yes")
    url = server.url(tmp_path)
    admin = server.client()
    stall = threading.Event()
    load_stream = RedisStore._load_stream

    async def stalling_load(store: RedisStore, stream_id: str) -> Any:
        if stall.is_set():
            stall.clear()
            threading.Thread(target=admin.execute_command, args=("DEBUG", "SLEEP", "1.5")).start()
            await asyncio.sleep(0.05)
        return await load_stream(store, stream_id)

    monkeypatch.setattr(RedisStore, "_load_stream", stalling_load)

    async def body() -> tuple[Any, list[str]]:
        async with (
            open_ledger(url, timeout=1) as first,
            open_ledger(url.replace(".views.db", "-2.views.db"), timeout=1) as second,
        ):
            await first.record(opened("t1"))
            await second.record(stop_moved("t1", stop_price=Decimal(90)))
            stall.set()
            try:
                outcome: Any = await first.record(
                    stop_moved("t1", stop_price=Decimal(95)), event_id="x1"
                )
            except LedgerError as e:
                outcome = e
            await asyncio.sleep(1)  # the stall is over
            return outcome, [r.event_id for r in await all_records(first)]

    outcome, logged = run(body())
    admin.close()
    assert isinstance(outcome, StoreUnavailable)
    assert "x1" not in logged


def test_a_cancelled_close_goes_on_and_a_second_close_waits_for_it(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """Redis stalls (DEBUG SLEEP 0.8) with one append in flight and one queued; the first
    aclose is cut short by its caller's timeout. The closing goes on: the second aclose
    returns once both appends are answered and every connection to Redis is closed."""
    server = make_server("--enable-debug-command", "yes")
    url = server.url(tmp_path)
    admin = server.client()

    async def body() -> tuple[bool, list[Any], int]:
        book = await open_ledger(url, timeout=2)
        await book.record(opened("t0"))
        sleeper = threading.Thread(target=admin.execute_command, args=("DEBUG", "SLEEP", "0.8"))
        sleeper.start()
        await asyncio.sleep(0.05)
        calls = [asyncio.ensure_future(book.record(opened(t))) for t in ("t1", "t2")]
        await asyncio.sleep(0.01)
        cut = False
        try:
            async with asyncio.timeout(0.1):
                await book.aclose()
        except TimeoutError:
            cut = True
        await book.aclose()
        answered = [call.done() for call in calls]
        await asyncio.to_thread(sleeper.join)
        mine = [c for c in admin.client_list() if c["cmd"] not in ("client|list", "debug")]
        return cut, answered, len(mine)

    cut, answered, connections = run(body())
    admin.close()
    assert cut
    assert answered == [True, True]
    assert connections == 0


def test_the_circuit_breaker_fails_fast_while_redis_hangs(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """After three timeouts against a hung (SIGSTOPped) Redis, the next call fails with StoreUnavailable far faster than the timeout."""
    server = make_server()
    timeout = 0.4

    async def body() -> tuple[list[float], float]:
        async with open_ledger(server.url(tmp_path), timeout=timeout) as book:
            await book.record(opened("t1"))
            pause(server)
            try:
                slow = []
                for n in range(3):
                    began = time.monotonic()
                    with pytest.raises((StoreUnavailable, OutcomeUnknown)):
                        await book.record(signal(f"s{n}"))
                    slow.append(time.monotonic() - began)
                began = time.monotonic()
                with pytest.raises(StoreUnavailable, match="not trying again"):
                    await book.record(signal("s-fast"))
                fast = time.monotonic() - began
            finally:
                resume(server)
            return slow, fast

    slow, fast = run(body())
    assert min(slow) >= timeout * 0.8
    assert fast * 10 < min(slow)


def test_an_append_whose_answer_is_lost_raises_outcome_unknown_and_its_retry_never_duplicates(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """A record sent to a hung Redis raises OutcomeUnknown; it lands when Redis resumes, and the retry returns it instead of writing it twice."""
    server = make_server()
    url = server.url(tmp_path)
    name = name_of(url)

    async def body() -> tuple[Any, list[Any]]:
        async with open_ledger(url, timeout=0.5) as book:
            await book.record(opened("t1"))
            pause(server)
            try:
                with pytest.raises(OutcomeUnknown):
                    await book.record(stop_moved("t1"), event_id="move-1")
            finally:
                resume(server)
            client = server.client()
            try:
                await eventually(
                    lambda: asyncio.to_thread(
                        client.hexists, f"tradeledger:{{{name}}}:ids", "move-1"
                    ),
                    what="the paused script landing",
                )
            finally:
                client.close()
            retried = await book.record(stop_moved("t1"), event_id="move-1")
            return retried, await all_records(book)

    retried, records = run(body())
    assert [r.event_id for r in records].count("move-1") == 1
    assert records[-1] == retried
    assert chain_problems(records) == []


def test_cancelling_one_record_call_leaves_other_callers_and_retries_sound(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """A record cancelled mid-flight (Redis hung) harms no other caller's append, and its retry records it once."""
    server = make_server()

    async def body() -> tuple[Any, Any, list[Any]]:
        async with open_ledger(server.url(tmp_path), timeout=5) as book:
            await book.record(opened("t1"))
            pause(server)
            try:
                cancelled = asyncio.ensure_future(book.record(stop_moved("t1"), event_id="move-1"))
                await asyncio.sleep(0.1)
                other = asyncio.ensure_future(book.record(signal("s1")))
                await asyncio.sleep(0.1)
                cancelled.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await cancelled
            finally:
                resume(server)
            theirs = await other
            retried = await book.record(stop_moved("t1"), event_id="move-1")
            return theirs, retried, await all_records(book)

    theirs, retried, records = run(body())
    assert [r.event_id for r in records].count("move-1") == 1
    assert theirs in records and retried in records
    assert len(records) == 3
    assert chain_problems(records) == []


def test_a_caller_told_nothing_was_written_finds_nothing_written(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A fresh process, a short timeout and 600 streams it has to load: callers that hear StoreUnavailable (queued or staging too long) find their event absent; every answered record is present."""
    url = redis_server.url(tmp_path)
    count = 600

    async def body() -> tuple[list[str], list[str], set[str]]:
        async with open_ledger(url) as book:
            await book.record_batch([opened(f"t{i}") for i in range(count)])
        async with open_ledger(url.replace(".views.db", "-2.views.db"), timeout=0.05) as book:

            async def one(i: int) -> str:
                try:
                    await book.record(fee_charged(f"t{i}"), event_id=f"fee-{i}")
                except StoreUnavailable:
                    return "unavailable"
                except OutcomeUnknown:
                    return "unknown"
                return "recorded"

            told = await asyncio.gather(*(one(i) for i in range(count)))
        async with open_ledger(url.replace(".views.db", "-3.views.db"), timeout=0.05) as book:
            batch = [fee_charged(f"t{i}") for i in range(count)]
            with pytest.raises(StoreUnavailable):  # one caller, in its own task: the same bound
                await book.record_batch(batch)
            await asyncio.sleep(0.5)  # anything still in flight lands first
            logged = {r.event_id for r in await all_records(book) if r.type == "FeeCharged"}
            return told, [f"fee-{i}" for i in range(count)], logged

    told, ids, logged = run(body())
    assert "unavailable" in told  # the bound was reached: the check below means something
    for outcome, event_id in zip(told, ids, strict=True):
        if outcome == "unavailable":
            assert event_id not in logged
        if outcome == "recorded":
            assert event_id in logged
    assert all(event_id.startswith("fee-") for event_id in logged)  # the batch left nothing


def test_a_refused_wait_after_the_script_wrote_is_outcome_unknown(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """An ACL without WAIT (as on some managed services) with wait_replicas=1: the primary has the append, so the caller hears OutcomeUnknown, and the retry records nothing twice."""
    server = make_server()
    client = server.client()
    client.acl_setuser(
        "nowait", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
        commands=["+@all", "-wait"],
    )  # fmt: skip
    client.close()
    url = server.url(tmp_path, wait_replicas="1").replace("redis://", "redis://nowait:pw@")

    async def body() -> list[Any]:
        async with open_ledger(url, timeout=0.5) as book:
            for _ in range(2):
                with pytest.raises(OutcomeUnknown, match="WAIT"):
                    await book.record(opened("t1"))
            return await all_records(book)

    records = run(body())
    assert [r.stream_id for r in records] == ["trade-t1"]


@pytest.mark.parametrize("loss", ["flushed", "older copy"])
def test_a_ledger_that_went_back_in_redis_is_refused_not_written_over(
    make_server: MakeServer, tmp_path: Path, loss: str
) -> None:
    """Redis loses acknowledged records under a running executor (a flush, or a failover to
    a replica a record behind): the next append raises IntegrityError and writes nothing,
    instead of giving an acknowledged position to another event."""
    server = make_server()
    url = server.url(tmp_path, name="back")
    client = server.client()

    async def body() -> tuple[list[Any], list[Record]]:
        outcomes: list[Any] = []
        async with open_ledger(url) as book:
            await book.record(opened("t1"))
            copy = {key: client.dump(key) for key in client.keys("tradeledger:{back}:*")}
            await book.record(opened("t2"))
            client.delete(*client.keys("tradeledger:{back}:*"))
            if loss == "older copy":
                for key, value in copy.items():
                    client.restore(key, 0, value)
            for event in (opened("t3"), stop_moved("t1", stop_price=Decimal(95))):
                try:
                    outcomes.append(await book.record(event))
                except LedgerError as e:
                    outcomes.append(e)
            return outcomes, await all_records(book)

    outcomes, records = run(body())
    client.close()
    assert all(isinstance(o, IntegrityError) and "went back" in str(o) for o in outcomes)
    assert [r.stream_id for r in records] == ([] if loss == "flushed" else ["trade-t1"])


def test_redis_out_of_memory_refuses_the_append_before_writing_anything(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """With used memory over maxmemory (noeviction), record raises StoreUnavailable and every ledger key stays as it was."""
    server = make_server()
    url = server.url(tmp_path)
    client = server.client()

    async def body() -> None:
        async with open_ledger(url) as book:
            await book.record(opened("t1"))
            client.set("ballast", "x" * 3_000_000)
            client.config_set("maxmemory", "1mb")
            before = ledger_keys(server, name_of(url))
            with pytest.raises(StoreUnavailable, match="out of memory"):
                await book.record_batch([stop_moved("t1"), Append(closed("t1"))])
            assert ledger_keys(server, name_of(url)) == before
            client.delete("ballast")
            client.config_set("maxmemory", "0")
            assert (await book.record(stop_moved("t1"))).position == 2

    try:
        run(body())
    finally:
        client.close()


# Durability and eviction


def test_an_evicting_maxmemory_policy_is_refused_unless_allowed(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """maxmemory-policy allkeys-lru makes open raise IncompatibleStore and create nothing; allow_eviction=1 opens."""
    server = make_server()
    client = server.client()
    client.config_set("maxmemory-policy", "allkeys-lru")
    url = server.url(tmp_path)
    try:
        with pytest.raises(IncompatibleStore, match="allkeys-lru"):
            run(open_ledger(url).open())
        assert client.dbsize() == 0

        async def allowed() -> int:
            async with open_ledger(server.url(tmp_path, allow_eviction="1")) as book:
                return (await book.record(opened("t1"))).position

        assert run(allowed()) == 1
    finally:
        client.close()


@pytest.mark.parametrize(
    ("error", "written"),
    [
        (redis_errors.ConnectionError("Error 111 connecting to reconnecting-proxy:6379."), False),
        (redis_errors.ConnectionError("Error -2 connecting to reconnecting-proxy:6379."), False),
        (redis_errors.TimeoutError("Timeout connecting to server"), False),
        (
            redis_errors.ConnectionError(
                "Error Multiple exceptions: [Errno 111] Connect call failed ('::1', 6379, 0, 0), "
                "[Errno 111] Connect call failed ('127.0.0.1', 6379) connecting to localhost:6379."
            ),
            False,
        ),
        (
            redis_errors.ConnectionError(
                "Error while reading from reconnecting-proxy:6379 : (104, 'Connection reset')"
            ),
            True,
        ),
        (redis_errors.TimeoutError("Timeout reading from reconnecting-proxy:6379"), True),
    ],
    ids=[
        "refused",
        "no-such-host",
        "connect-timeout",
        "every-address-refused",
        "reset-after-send",
        "read-timeout",
    ],
)
def test_a_connection_that_never_opened_is_told_from_one_lost_after_the_append_was_sent(
    error: Exception, written: bool
) -> None:
    """By redis-py's words for a failed connect, matched from the start of its message: a
    host whose name holds "connecting" must not make a reset after the send look like
    nothing was written."""
    store = RedisStore(
        "redis://reconnecting-proxy:6379/0?ledger=x",
        rules=fold,
        clock=lambda: dt.datetime.now(dt.UTC),
        timeout=1,
        failpoints=FailPoints(),
    )
    outcome = store._error(error, sent=True)
    assert isinstance(outcome, OutcomeUnknown if written else StoreUnavailable)


@pytest.mark.parametrize(
    ("setting", "loss"),
    [
        (("--appendfsync", "everysec"), "about the last second"),
        (("--no-appendfsync-on-rewrite", "yes"), "while Redis rewrites its AOF"),
        (("--appendonly", "no", "--save", "900 1"), "since the last RDB snapshot"),
        (("--appendonly", "no"), "loses the whole ledger"),
    ],
    ids=["everysec", "no-fsync-on-rewrite", "snapshots-only", "no-persistence"],
)
def test_a_server_that_can_lose_acknowledged_records_says_so_and_require_durable_refuses_it(
    make_server: MakeServer, tmp_path: Path, setting: tuple[str, ...], loss: str
) -> None:
    """A non-durable server opens with a warning naming what can be lost, shows it in durability and describe(), and require_durable=1 refuses it."""
    server = make_server(*setting)

    async def body() -> tuple[str, dict[str, Any]]:
        async with open_ledger(server.url(tmp_path)) as book:
            await book.record(opened("t1"))
            return book.store.durability, await book.store.describe()

    with capture_logs() as logs:
        durability, facts = run(body())
    warnings = [log for log in logs if log["event"] == "redis_not_durable"]
    assert len(warnings) == 1
    assert loss in warnings[0]["durability"]
    assert durability.startswith("not durable") and loss in durability
    assert facts["durability"] == durability
    with pytest.raises(IncompatibleStore, match="require_durable"):
        run(open_ledger(server.url(tmp_path, require_durable="1")).open())


def test_a_durable_server_is_reported_durable_without_a_warning(redis_url: str) -> None:
    """appendonly yes + appendfsync always opens quietly, durability says so, and describe() reports the ledger's memory."""

    async def body() -> tuple[str, dict[str, Any]]:
        async with open_ledger(redis_url) as book:
            await book.record(opened("t1"))
            return book.store.durability, await book.store.describe()

    with capture_logs() as logs:
        durability, facts = run(body())
    assert [log for log in logs if log["log_level"] in ("warning", "error")] == []
    assert durability.startswith("durable on this server")
    assert facts["persistence"]["appendfsync"] == "always"
    assert facts["ledger_memory_bytes"] > 0
    assert facts["ledger_memory_exact"] is True


@pytest.mark.parametrize("how", ["acl", "renamed"])
def test_a_server_that_forbids_config_reports_durability_unknown(
    make_server: MakeServer, tmp_path: Path, how: str
) -> None:
    """Where CONFIG is renamed away or denied by an ACL, durability is unknown, appends work, and require_durable=1 refuses."""
    if how == "renamed":
        server = make_server("--rename-command", "CONFIG", "")
        url = server.url(tmp_path)
    else:
        server = make_server()
        client = server.client()
        client.acl_setuser(
            "executor", enabled=True, passwords=["+exec-pw"], keys=["*"], channels=["*"],
            commands=["+@all", "-config"],
        )  # fmt: skip
        client.close()
        url = server.url(tmp_path).replace("redis://", "redis://executor:exec-pw@")

    async def body() -> tuple[str, int]:
        async with open_ledger(url) as book:
            return book.store.durability, (await book.record(opened("t1"))).position

    durability, position = run(body())
    assert durability.startswith("unknown")
    assert position == 1
    with pytest.raises(IncompatibleStore, match="require_durable"):
        run(open_ledger(url + "&require_durable=1").open())


# WAIT for replicas


def test_waiting_for_a_replica_that_is_not_there_raises_outcome_unknown_every_time(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """With wait_replicas=1 and no replica, record raises OutcomeUnknown though the primary has it, and a retry raises it again without duplicating."""
    url = redis_server.url(tmp_path, wait_replicas="1")

    async def body() -> list[Any]:
        async with open_ledger(url, timeout=0.6) as book:
            for _ in range(2):
                with pytest.raises(OutcomeUnknown, match="0 of 1 replica"):
                    await book.record(opened("t1"))
            return await all_records(book)

    records = run(body())
    assert [r.stream_id for r in records] == ["trade-t1"]


def test_waiting_for_a_live_replica_acknowledges_once_the_replica_has_the_record(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """With a real replica (--replicaof), wait_replicas=1 returns the record and the replica holds it."""
    primary = make_server("--repl-diskless-sync-delay", "0")
    replica = make_server("--replicaof", "127.0.0.1", str(primary.port))
    client, copy = primary.client(), replica.client()
    try:
        deadline = time.monotonic() + 10
        while copy.info("replication")["master_link_status"] != "up":
            assert time.monotonic() < deadline, "the replica never synced"
            time.sleep(0.05)
        url = primary.url(tmp_path, wait_replicas="1")

        async def body() -> Any:
            async with open_ledger(url, timeout=2) as book:
                await book.record(opened("t1"))
                return await book.record(stop_moved("t1"), event_id="m1")

        record = run(body())
        log = f"tradeledger:{{{name_of(url)}}}:log"
        assert copy.xlen(log) == 2
        assert (
            copy.xrange(log, f"{record.position}-1", f"{record.position}-1")[0][1][b"hash"]
            == record.hash.encode()
        )
    finally:
        client.close()
        copy.close()


# Views, checkpoints and followers


_ONE_OPEN = """
import asyncio, datetime as dt, logging, sys
from decimal import Decimal
import structlog
from ledger import TradeOpened, open_ledger
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

async def main(url, trade):
    async with open_ledger(url) as book:
        record = await book.record(TradeOpened(
            trade_id=trade, symbol="ETHUSDT", side="short", quantity=Decimal(2),
            price=Decimal(3000), currency="USDT",
            occurred_at=dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)))
        print(record.position, flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_a_following_ledger_sees_a_trade_another_process_records(redis_url: str) -> None:
    """A ledger opened with follow=True has in its views, within moments, a trade a separate process records."""

    async def body() -> None:
        async with open_ledger(redis_url, [OpenPositions()], follow=True) as book:
            await book.record(opened("mine"))
            child = await asyncio.to_thread(Child, _ONE_OPEN, redis_url, "theirs")
            assert (await asyncio.to_thread(child.finish))[-1] == "2"
            view = book.view(OpenPositions)

            async def arrived() -> bool:
                return view.get("theirs") is not None

            await eventually(arrived, what="the other process's trade reaching the view")
            assert sorted(t.trade_id for t in view.positions()) == ["mine", "theirs"]

    run(body())


def test_a_second_host_opens_from_checkpoints_kept_in_redis(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A second ledger with its own views file restores state views from Redis checkpoints and replays nothing."""
    name = f"t{uuid.uuid4().hex[:12]}"
    first = redis_server.url(tmp_path / "host-a", name)
    second = redis_server.url(tmp_path / "host-b", name)
    (tmp_path / "host-a").mkdir()
    (tmp_path / "host-b").mkdir()

    async def body() -> None:
        async with open_ledger(first, [OpenPositions(), Pnl()]) as book:
            for n in range(20):
                await book.record(opened(f"t{n}"))
                if n % 2:
                    await book.record(closed(f"t{n}", price=Decimal(101)))
            expected = [t.trade_id for t in book.view(OpenPositions).positions()]
            head = (await book.store.head()).position
        async with open_ledger(second, [OpenPositions(), Pnl()]) as other:
            assert other.runner.restored == {"open_positions": head, "pnl": head}
            assert other.runner.replayed == 0
            assert [t.trade_id for t in other.view(OpenPositions).positions()] == expected

    run(body())
    assert (tmp_path / "host-b" / f"{name}.views.db").exists()


def _views_rows(path: Path) -> list[Any]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT trade_id FROM trade_history ORDER BY trade_id").fetchall()


def test_table_views_live_in_the_local_views_file_and_are_rebuilt_when_it_is_deleted(
    redis_url: str,
) -> None:
    """Trade history rows sit in the host's views file, not in Redis; deleting the file rebuilds them from the log on open."""
    views = Path(redis_url.split("views=", 1)[1])

    async def record() -> None:
        async with open_ledger(redis_url, [TradeHistory()]) as book:
            for n in range(3):
                await book.record(opened(f"t{n}"))
                await book.record(closed(f"t{n}"))

    async def reopen() -> tuple[int, list[str]]:
        async with open_ledger(redis_url, [TradeHistory()]) as book:
            page = await book.view(TradeHistory).trades()
            return page.total, [t.trade_id for t in page.trades]

    run(record())
    assert _views_rows(views) == [("t0",), ("t1",), ("t2",)]
    for suffix in ("", "-wal", "-shm"):
        Path(f"{views}{suffix}").unlink(missing_ok=True)
    assert run(reopen()) == (3, ["t0", "t1", "t2"])
    assert _views_rows(views) == [("t0",), ("t1",), ("t2",)]


def test_no_redis_exception_escapes_a_stopped_store(
    make_server: MakeServer, tmp_path: Path
) -> None:
    """Every store operation against a stopped Redis raises a ledger error, never a redis-py one."""
    server = make_server()

    async def body() -> list[BaseException]:
        async with open_ledger(server.url(tmp_path)) as book:
            await book.record(opened("t1"))
            store = book.store
            server.stop()
            operations = [
                store.head(),
                store.find("x"),
                store.read_stream("trade-t1"),
                store.record_at(1),
                store.count_by_type(),
                store.load_checkpoints(),
                store.ledger_id(),
                store.describe(),
                store.position_at(T0),
                anext(store.read()),
                anext(store.subscribe(5)),
                book.record(stop_moved("t1")),
            ]
            errors: list[BaseException] = []
            for operation in operations:
                try:
                    await operation
                except BaseException as e:
                    errors.append(e)
            return errors

    errors = run(body())
    assert len(errors) == 12
    assert [type(e).__name__ for e in errors if not isinstance(e, LedgerError)] == []
    assert all(isinstance(e, StoreUnavailable) for e in errors)
