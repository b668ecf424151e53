"""Measure how fast tradeledger appends to SQLite, against what the disk allows.

Each scenario writes the same trade lifecycles (~50 symbols) to a fresh SQLite
file, WAL, synchronous=FULL. a: one producer awaiting each ``book.record``;
b: ``--producers`` asyncio tasks on one open ledger; c: the physical baseline,
a's rows inserted by plain sqlite3 with one commit per row; d: group commit
through aiosqlite's public API instead of the store's writer thread (per group
BEGIN IMMEDIATE, per event SELECT by event_id, SELECT max(version), INSERT, then
COMMIT: one thread hop per statement), with 1 and N producers; e: the floor of
any writer that keeps the caller's event loop free, c's rows handed one at a
time from an asyncio producer to a thread (BEGIN IMMEDIATE, INSERT, COMMIT) and
answered back through the loop. c, d and e skip validation, rules and encoding.
Scenarios run in interleaved ``--rounds``; each row is its median round.
Goals: a >= 0.5 x c, b >= 1.5 x c. "ev/commit": events per commit.

    .venv/bin/python scripts/bench_append.py                 # 5000 events, 3 rounds
    .venv/bin/python scripts/bench_append.py --quick         # CI smoke: 500 events, 1 round
    .venv/bin/python scripts/bench_append.py --dir /data --json --strict
    .venv/bin/python scripts/bench_append.py --cpu 1           # every thread on CPU 1

``--cpu`` runs the whole benchmark (the event loop, the writer thread, every
scenario) on one CPU, as ``taskset -c N`` would: on a small VM, a thread woken
on the other vCPU costs an interrupt between vCPUs, one on the same vCPU does not.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import logging
import os
import queue
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import msgspec
import structlog

import ledger
from ledger.chain import GENESIS, record_hash, timestamp
from ledger.codec import encode_data, encode_metadata
from ledger.events import TradeEvent, natural_event_id, stream_of, validate
from ledger.store.protocol import Proposal
from ledger.store.sqlite import MIGRATIONS

SYMBOLS = (  # noqa: SIM905
    "BTC ETH SOL BNB XRP ADA DOGE AVAX DOT LINK MATIC LTC TRX ATOM UNI ETC XLM NEAR APT "
    "ARB OP FIL ICP HBAR VET INJ SUI SEI TIA RNDR GRT AAVE MKR SNX CRV LDO RUNE FTM ALGO "
    "EGLD SAND MANA AXS THETA FLOW KAVA ZEC DASH XMR PEPE"
).split()
SCHEMA = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;\n" + "\n".join(MIGRATIONS)
INSERT = "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
BY_EVENT_ID = "SELECT position FROM records WHERE event_id = ?"
VERSION = "SELECT coalesce(max(version), 0) FROM records WHERE stream_id = ?"
GOALS = {"a/c": 0.5, "b/c": 1.5}
ROW = (
    "| {0.scenario} | {0.producers} | {0.events} | {0.per_second:,.0f} | {0.per_commit:.1f} "
    "| {0.p50_ms:.2f} | {0.p95_ms:.2f} | {0.p99_ms:.2f} |"
)

Event = ledger.Event
Item = TypeVar("Item")  # what one append takes: an event, or a row in e


class Result(msgspec.Struct):
    scenario: str
    producers: int
    events: int
    per_second: float
    per_commit: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def result(name: str, producers: int, seconds: float, commits: int, ms: list[float]) -> Result:
    n = len(ms)
    cuts = statistics.quantiles(ms, n=100, method="inclusive") if n > 1 else ms * 99
    return Result(name, producers, n, n / seconds, n / commits, cuts[49], cuts[94], cuts[98])


def lifecycle(rng: random.Random, number: int, start: dt.datetime) -> list[Event]:
    """One trade from its open to its close, with some of what a live trade sees between."""
    tid, sign = f"T{number:07d}", rng.choice((1, -1))
    price = Decimal(f"{rng.uniform(0.5, 70_000):.4f}")
    quantity = Decimal(f"{rng.uniform(0.01, 25):.3f}")
    at = sorted(start + dt.timedelta(seconds=rng.uniform(1, 28_800)) for _ in range(5))
    events: list[Event] = []

    def px(move: float) -> Decimal:
        return (price * Decimal(1 + sign * move)).quantize(Decimal("0.0001"))

    def add(cls: type[TradeEvent], when: dt.datetime, **fields: Any) -> None:
        events.append(cls(trade_id=tid, occurred_at=when, **fields))

    opened: dict[str, Any] = {"symbol": rng.choice(SYMBOLS) + "USDT", "currency": "USDT"}
    opened |= {"side": "long" if sign > 0 else "short", "leverage": Decimal(rng.choice((1, 3, 5)))}
    opened |= {"stop_price": px(-0.02), "fee": quantity * price * Decimal("0.00004")}
    add(ledger.TradeOpened, start, quantity=quantity, price=price, fill_id=f"{tid}-f0", **opened)
    if rng.random() < 0.7:
        add(ledger.StopMoved, at[0], stop_price=price, reason="breakeven")
    if rng.random() < 0.6:
        part = (quantity / 2).quantize(Decimal("0.001"))
        quantity -= part
        add(ledger.TradeReduced, at[1], quantity=part, price=px(0.01), fill_id=f"{tid}-f1")
    if rng.random() < 0.4:
        add(ledger.FeeCharged, at[2], amount=Decimal("0.35"), kind="borrow")
    if rng.random() < 0.5:
        add(ledger.FundingApplied, at[3], amount=Decimal(f"{rng.uniform(-3, 3):.6f}"))
    close = {"price": px(rng.uniform(-0.02, 0.04)), "fee": Decimal("0.2"), "fill_id": f"{tid}-f2"}
    if rng.random() < 0.8:
        add(ledger.TradeClosed, at[4], reason=rng.choice(("take_profit", "stop_loss")), **close)
    else:  # a venue reporting the close as a reduce of exactly what is open
        add(ledger.TradeReduced, at[4], quantity=quantity, reason="stop_loss", **close)
    return events


def make_events(count: int, producers: int, seed: int = 7) -> list[list[Event]]:
    """``count`` events of interleaved trades in time order, one lane per producer by trade."""
    rng = random.Random(seed)
    origin = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    events: list[Event] = []
    while len(events) < count:
        start = origin + dt.timedelta(seconds=len(events) * 12 + rng.uniform(0, 60))
        events.extend(lifecycle(rng, len(events), start))
    events.sort(key=lambda event: event.occurred_at)
    lanes: list[list[Event]] = [[] for _ in range(producers)]
    lane_of: dict[str, int] = {}
    for event in events[:count]:  # a cut in time leaves every trade a valid prefix
        lanes[lane_of.setdefault(stream_of(event), len(lane_of) % producers)].append(event)
    return lanes


def propose(event: Event) -> Proposal:
    event = validate(event)
    event_id = natural_event_id(event) or str(uuid.uuid4())
    kind, data, metadata = type(event), encode_data(event), encode_metadata(event.metadata)
    return Proposal(
        event, stream_of(event), event_id, None, kind.__name__, kind.schema_version,
        event.occurred_at, data, metadata,
    )  # fmt: skip


async def drive(
    lanes: Sequence[Sequence[Item]], append: Callable[[Item], Awaitable[object]]
) -> tuple[float, list[float]]:
    """Run one producer task per lane, each awaiting its appends one by one."""
    latencies: list[float] = []

    async def produce(lane: Sequence[Item]) -> None:
        for item in lane:
            began = time.perf_counter()
            await append(item)
            latencies.append((time.perf_counter() - began) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(produce(lane) for lane in lanes))
    return time.perf_counter() - began, latencies


async def bench_ledger(path: Path, name: str, lanes: list[list[Event]]) -> Result:
    async with ledger.open_ledger(f"sqlite:///{path}") as book:
        seconds, latencies = await drive(lanes, book.record)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (commits,) = conn.execute("SELECT count(DISTINCT recorded_at) FROM records").fetchone()
    return result(name, len(lanes), seconds, commits, latencies)


def stored_rows(source: Path) -> list[Any]:
    """The records a's ledger stored, as rows, in log order."""
    with contextlib.closing(sqlite3.connect(source)) as conn:
        return conn.execute("SELECT * FROM records ORDER BY position").fetchall()


def bench_sqlite3(path: Path, source: Path) -> Result:
    rows = stored_rows(source)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(SCHEMA)
    latencies: list[float] = []
    started = time.perf_counter()
    for values in rows:
        began = time.perf_counter()
        conn.execute(INSERT, values)  # autocommit: one transaction, one WAL fsync
        latencies.append((time.perf_counter() - began) * 1000)
    seconds = time.perf_counter() - started
    conn.close()
    return result("c sqlite3, commit per row", 1, seconds, len(rows), latencies)


async def bench_handoff(path: Path, source: Path) -> Result:
    """c's rows, each awaited by one asyncio producer while a thread commits it; handed
    over as the store's writer does it: a SimpleQueue in, an eventfd the loop watches out."""
    rows = stored_rows(source)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.executescript(SCHEMA)
    loop = asyncio.get_running_loop()
    inbox: queue.SimpleQueue[tuple[Any, asyncio.Future[None]] | None] = queue.SimpleQueue()
    done: collections.deque[asyncio.Future[None]] = collections.deque()
    doorbell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def answer() -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(doorbell)
        while done:
            done.popleft().set_result(None)

    def writer() -> None:
        while (item := inbox.get()) is not None:
            values, future = item
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(INSERT, values)
            conn.execute("COMMIT")
            done.append(future)
            os.eventfd_write(doorbell, 1)

    loop.add_reader(doorbell, answer)
    thread = threading.Thread(target=writer)
    thread.start()

    async def append(values: Any) -> None:
        future = loop.create_future()
        inbox.put((values, future))
        await future

    try:
        seconds, latencies = await drive([rows], append)
    finally:
        inbox.put(None)
        thread.join()
        loop.remove_reader(doorbell)
        os.close(doorbell)
        conn.close()
    return result("e thread hand-off floor", 1, seconds, len(rows), latencies)


async def bench_aiosqlite(path: Path, name: str, lanes: list[list[Event]]) -> Result:
    proposals = {id(event): propose(event) for lane in lanes for event in lane}
    conn = await aiosqlite.connect(path, isolation_level=None)
    await conn.executescript(SCHEMA)
    queue: asyncio.Queue[tuple[Proposal, asyncio.Future[None]]] = asyncio.Queue()
    commits = 0

    async def writer() -> None:
        nonlocal commits
        position, prev = 0, GENESIS
        while True:
            group = [await queue.get()]
            while not queue.empty():
                group.append(queue.get_nowait())
            try:
                await conn.execute("BEGIN IMMEDIATE")
                now = dt.datetime.now(dt.UTC)
                for p, _ in group:
                    if await conn.execute_fetchall(BY_EVENT_ID, (p.event_id,)):
                        continue
                    ((version,),) = await conn.execute_fetchall(VERSION, (p.stream_id,))
                    position += 1
                    key = (position, p.stream_id, version + 1, p.event_id, p.type, p.schema_version)
                    digest = record_hash(prev, *key, p.occurred_at, now, p.data, p.metadata)
                    times = (timestamp(p.occurred_at), timestamp(now))
                    await conn.execute(INSERT, (*key, *times, p.data, p.metadata, prev, digest))
                    prev = digest
                await conn.commit()
            except Exception as e:
                for _, future in group:
                    future.set_exception(e)
                continue
            commits += 1
            for _, future in group:
                future.set_result(None)

    async def append(event: Event) -> None:
        future = asyncio.get_running_loop().create_future()
        queue.put_nowait((proposals[id(event)], future))
        await future

    task = asyncio.create_task(writer())
    seconds, latencies = await drive(lanes, append)
    task.cancel()
    await conn.close()
    return result(name, len(lanes), seconds, commits, latencies)


def round_trip(times: int = 2000) -> float:
    """Microseconds for a token to go from this thread to another and back: what waking
    a sleeping thread costs on this machine (both hand-offs of an append pay it)."""
    there: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    back: queue.SimpleQueue[int] = queue.SimpleQueue()

    def echo() -> None:
        while (token := there.get()) is not None:
            back.put(token)

    thread = threading.Thread(target=echo)
    thread.start()
    started = time.perf_counter()
    for token in range(times):
        there.put(token)
        back.get()
    seconds = time.perf_counter() - started
    there.put(None)
    thread.join()
    return seconds / times * 1e6


async def measure(directory: Path, count: int, producers: int, rounds: int) -> list[Result]:
    single, many = make_events(count, 1), make_events(count, producers)
    runs = []
    for n in range(rounds):
        (where := directory / f"round{n}").mkdir()
        a = await bench_ledger(where / "a.db", "a ledger.record", single)
        b = await bench_ledger(where / "b.db", "b ledger.record", many)
        c = bench_sqlite3(where / "c.db", where / "a.db")
        d1 = await bench_aiosqlite(where / "d1.db", "d aiosqlite group commit", single)
        dn = await bench_aiosqlite(where / "dn.db", "d aiosqlite group commit", many)
        e = await bench_handoff(where / "e.db", where / "a.db")
        runs.append((a, b, c, d1, dn, e))
    columns = zip(*runs, strict=True)  # one column of rounds per scenario
    return [sorted(column, key=lambda r: r.per_second)[rounds // 2] for column in columns]


def report(results: list[Result], where: Path, rounds: int, token_us: float) -> dict[str, float]:
    print(f"\nSQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}, files in {where}")
    cpus = ", ".join(map(str, sorted(os.sched_getaffinity(0))))
    print(f"median of {rounds} interleaved round(s), on CPU {cpus}")
    print(f"a token between two threads: {token_us:.1f} us a round trip\n")
    print("| scenario | producers | events | events/s | ev/commit | p50 ms | p95 ms | p99 ms |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for r in results:
        print(ROW.format(r))
    a, b, c = (r.per_second for r in results[:3])
    ratios = {"a/c": a / c, "b/c": b / c, "e/c": results[5].per_second / c}
    print("\n| ratio | value | goal | result |\n|---|--:|--:|---|")
    for key, value in ratios.items():
        if key in GOALS:
            verdict = "PASS" if value >= GOALS[key] else "FAIL"
            print(f"| {key} | {value:.2f} | >= {GOALS[key]} | {verdict} |")
        else:
            print(f"| {key} | {value:.2f} | | the ceiling for a, given the hand-off |")
    return ratios


def main(argv: list[str] | None = None) -> int:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000, help="events per scenario")
    parser.add_argument("--producers", type=int, default=16, help="concurrent producers in b, d")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each row is the median")
    parser.add_argument("--quick", action="store_true", help="500 events, 1 round: CI smoke")
    parser.add_argument("--dir", type=Path, help="where the SQLite files go (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--cpu", type=int, help="run every thread on this one CPU")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        try:  # this thread's affinity, which every thread started from now on inherits
            os.sched_setaffinity(0, {args.cpu})
        except (OSError, ValueError) as e:
            parser.error(f"cannot run on CPU {args.cpu}: {e}")
    count, rounds = (500, 1) if args.quick else (args.events, args.rounds)
    with tempfile.TemporaryDirectory(prefix="bench_append-", dir=args.dir) as tmp:
        results = asyncio.run(measure(Path(tmp), count, args.producers, rounds))
        token_us = round_trip()
        ratios = report(results, Path(tmp).parent, rounds, token_us)
    if args.json:
        cpus = sorted(os.sched_getaffinity(0))
        summary = {
            "results": results,
            "ratios": ratios,
            "goals": GOALS,
            "cpus": cpus,
            "round_trip_us": token_us,
        }
        print(msgspec.json.format(msgspec.json.encode(summary)).decode())
    missed = any(ratios[key] < goal for key, goal in GOALS.items())
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
