"""Measure how fast tradeledger appends to Redis, against what redis-py itself allows.

Every scenario runs in one process against one redis-server: by default one
started here in a temp dir (appendonly yes, appendfsync always) on a free
loopback port, or the server on ``--port``. Scenarios, each on keys of its own:

  a  tradeledger, one producer awaiting each ``book.record``
  b  tradeledger, ``--producers`` tasks on one open ledger (grouped into one script per group)
  c  plain redis-py asyncio (hiredis) ``XADD`` of a's records, one at a time
  d  a minimal version-checking Lua script (HGET version, XADD, HSET), one at a time
  e  reading ``--records`` records back through the store, decoding every event

a, c and d take turns op by op (each op timed on its own, so that other load on
the machine, and the disk's fsync latency, fall on them alike); b runs in
``--rounds`` chunks between them.
Goals, as ratios in the same run: a/d >= 0.8 and b/a >= 3.

    .venv/bin/python scripts/bench_redis.py              # 5,000 appends, read back 1,000,000
    .venv/bin/python scripts/bench_redis.py --quick      # 1,000 appends, read back 20,000
    .venv/bin/python scripts/bench_redis.py --port 6379 --events 20000 --records 200000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import redis
import redis.asyncio
import structlog

import ledger
from ledger.chain import GENESIS
from ledger.codec import encode_data, encode_metadata
from ledger.events import natural_event_id, stream_of, validate
from ledger.store.protocol import Head, Proposal
from ledger.store.staging import make_record

GOALS = {"a/d": 0.8, "b/a": 3.0}
MINIMAL_LUA = """
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if current ~= tonumber(ARGV[2]) - 1 then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
FIELDS = [
    "stream_id",
    "version",
    "event_id",
    "type",
    "schema_version",
    "occurred_at",
    "recorded_at",
    "data",
    "metadata",
    "prev_hash",
    "hash",
]
ROW = "| {0.scenario} | {0.producers} | {0.events:,} | {0.per_second:,.0f} | {0.p50_ms:.3f} | {0.p99_ms:.3f} |"

Event = ledger.Event


class Result(msgspec.Struct):
    scenario: str
    producers: int
    events: int
    per_second: float
    p50_ms: float
    p99_ms: float


def result(name: str, producers: int, seconds: float, ms: list[float]) -> Result:
    cuts = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return Result(name, producers, len(ms), len(ms) / seconds, cuts[49], cuts[98])


def trades(prefix: str, start: dt.datetime) -> Iterator[list[Event]]:
    """Trade lifecycles of four events each (open, stop, partial exit, close), forever."""
    number = 0
    while True:
        tid = f"{prefix}-{number:07d}"
        at = start + dt.timedelta(seconds=number)
        fill = {"fill_id": f"{tid}-f1"}
        yield [
            ledger.TradeOpened(
                trade_id=tid, symbol="BTCUSDT", side="long", quantity=Decimal("0.250"),
                price=Decimal("64123.5"), currency="USDT", stop_price=Decimal("63000"),
                fee=Decimal("0.64"), fill_id=f"{tid}-f0", strategy="breakout", occurred_at=at,
            ),
            ledger.StopMoved(
                trade_id=tid, stop_price=Decimal("64123.5"), reason="breakeven", occurred_at=at,
            ),
            ledger.TradeReduced(
                trade_id=tid, quantity=Decimal("0.125"), price=Decimal("64800"),
                fee=Decimal("0.32"), occurred_at=at, **fill,
            ),
            ledger.TradeClosed(
                trade_id=tid, price=Decimal("65000.25"), reason="take_profit", fee=Decimal("0.33"),
                fill_id=f"{tid}-f2", occurred_at=at,
            ),
        ]  # fmt: skip
        number += 1


def lanes(count: int, producers: int, tag: str) -> list[list[Event]]:
    """``count`` events in ``producers`` lanes, each lane its own trades in order."""
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    made: list[list[Event]] = [[] for _ in range(producers)]
    feeds = [trades(f"{tag}{lane}", start) for lane in range(producers)]
    total = 0
    while total < count:
        for lane, feed in zip(made, feeds, strict=True):
            for event in next(feed):
                if total < count:
                    lane.append(event)
                    total += 1
    return made


def entries(events: list[Event]) -> list[dict[str, Any]]:
    """The records ``events`` become in a fresh log, as stream entry fields."""
    head, versions, now, found = (
        Head(0, GENESIS, None),
        dict[str, int](),
        dt.datetime.now(dt.UTC),
        [],
    )
    for event in events:
        event = validate(event)
        kind = type(event)
        proposal = Proposal(
            event, stream_of(event), natural_event_id(event) or str(uuid.uuid4()), None,
            kind.__name__, kind.schema_version, event.occurred_at, encode_data(event),
            encode_metadata(event.metadata),
        )  # fmt: skip
        version = versions[proposal.stream_id] = versions.get(proposal.stream_id, 0) + 1
        record, row = make_record(head, proposal, version, now)
        head = Head(record.position, record.hash, now)
        found.append(dict(zip(FIELDS, row[1:], strict=True)))  # a row is position, then FIELDS
    return found


async def timed(
    jobs: list[list[Any]], call: Callable[[Any], Awaitable[object]]
) -> tuple[float, list[float]]:
    """One task per lane of ``jobs``, each awaiting ``call`` per item; (seconds, latencies ms)."""
    latencies: list[float] = []

    async def produce(lane: list[Any]) -> None:
        for item in lane:
            began = time.perf_counter()
            await call(item)
            latencies.append((time.perf_counter() - began) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(produce(lane) for lane in jobs))
    return time.perf_counter() - began, latencies


def ledger_url(port: int, name: str, directory: Path) -> str:
    return f"redis://127.0.0.1:{port}/0?ledger={name}&views={directory / name}.views.db"


class Scenario:
    """One row of the table: its latencies and the time it spent, over every chunk."""

    def __init__(self, name: str, producers: int) -> None:
        self.name, self.producers = name, producers
        self.seconds = 0.0
        self.ms: list[float] = []

    async def run(self, jobs: list[list[Any]], call: Callable[[Any], Awaitable[object]]) -> None:
        seconds, ms = await timed(jobs, call)
        self.seconds += seconds
        self.ms += ms

    def result(self) -> Result:
        return result(self.name, self.producers, self.seconds, self.ms)


async def alternate(
    turns: list[tuple[Scenario, list[Any], Callable[[Any], Awaitable[object]]]],
) -> None:
    """One op of each scenario in turn (the order rotating), each timed on its own."""
    for i in range(len(turns[0][1])):
        for scenario, items, call in turns[i % 3 :] + turns[: i % 3]:
            began = time.perf_counter()
            await call(items[i])
            took = time.perf_counter() - began
            scenario.seconds += took
            scenario.ms.append(took * 1000)


def lua_call(client: redis.asyncio.Redis, key: str) -> Callable[[dict[str, Any]], Awaitable[None]]:
    script = client.register_script(MINIMAL_LUA)
    keys = [f"{key}:versions", f"{key}:log"]

    async def call(fields: dict[str, Any]) -> None:
        args = [fields["stream_id"], fields["version"]]
        for name in FIELDS:
            args += [name, fields[name]]
        if await script(keys=keys, args=args) != 1:
            raise RuntimeError("the minimal script refused an append")

    return call


def chunk(items: list[Any], number: int, chunks: int) -> list[Any]:
    return items[number * len(items) // chunks : (number + 1) * len(items) // chunks]


async def bench_read(port: int, directory: Path, count: int) -> tuple[Result, Result]:
    """Fill a ledger with ``count`` records in batches of 1,000, then read them all back."""
    name = f"read{uuid.uuid4().hex[:6]}"
    feed = trades("r", dt.datetime.now(dt.UTC) - dt.timedelta(days=30))
    async with ledger.open_ledger(ledger_url(port, name, directory), timeout=60) as book:
        filled, batch_ms = 0, []
        began = time.perf_counter()
        while filled < count:
            batch: list[Event] = []
            while len(batch) < min(1000, count - filled):
                batch.extend(next(feed)[: count - filled - len(batch)])
            t0 = time.perf_counter()
            await book.record_batch(batch)
            batch_ms.append((time.perf_counter() - t0) * 1000 / len(batch))
            filled += len(batch)
        fill_seconds = time.perf_counter() - began
        read_ms: list[float] = []
        began = time.perf_counter()
        last = time.perf_counter()
        seen = 0
        async for record in book.store.read():
            record.event  # noqa: B018 - decoding is what is measured
            seen += 1
            if seen % 1000 == 0:
                now = time.perf_counter()
                read_ms.append((now - last) / 1000 * 1000)
                last = now
        read_seconds = time.perf_counter() - began
    assert seen == count, f"read back {seen} of {count} records"
    fill = Result(
        "fill: record_batch of 1,000", 1, count, count / fill_seconds,
        statistics.median(batch_ms), max(batch_ms),
    )  # fmt: skip
    cuts = statistics.quantiles(read_ms, n=100) if len(read_ms) > 1 else read_ms * 99
    read = Result("e read + decode", 1, count, count / read_seconds, cuts[49], cuts[98])
    return fill, read


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(port: int | None, directory: Path) -> Iterator[int]:
    """The server on ``port``, or a durable one of our own in ``directory``."""
    if port is not None:
        yield port
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    args += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield port
    finally:
        process.terminate()
        process.wait()


async def measure(args: argparse.Namespace, port: int, directory: Path) -> list[Result]:
    """The append scenarios in ``--rounds`` chunks: a, c, d op by op in turn, then b."""
    client = redis.asyncio.Redis(port=port, decode_responses=True)
    info = await client.info("server")
    config = await client.config_get("append*")
    print(
        f"\nredis {info['redis_version']} on 127.0.0.1:{port}, appendonly {config['appendonly']}, "
        f"appendfsync {config['appendfsync']}; redis-py {redis.__version__}, Python "
        f"{sys.version.split()[0]}; {args.rounds} interleaved rounds\n"
    )
    tag = uuid.uuid4().hex[:6]
    single = lanes(args.events, 1, f"a{tag}-")[0]
    many = lanes(args.events, args.producers, f"b{tag}-")
    rows = entries(single)
    chosen: list[Any] = []
    if args.views:
        import projections

        chosen = list(projections.standard())
    a = Scenario("a tradeledger record", 1)
    b = Scenario("b tradeledger record", args.producers)
    c = Scenario("c redis-py XADD", 1)
    d = Scenario("d minimal Lua script", 1)
    lua = lua_call(client, f"bench:{{{tag}}}:lua")

    async def xadd(fields: dict[str, Any]) -> None:
        await client.xadd(f"bench:{{{tag}}}:xadd", fields)

    async with (
        ledger.open_ledger(ledger_url(port, f"a{tag}", directory), chosen) as one,
        ledger.open_ledger(ledger_url(port, f"b{tag}", directory), list(chosen)) as other,
    ):
        for n in range(args.rounds):
            # a, c and d take turns op by op, so that they see the same disk and CPU
            await alternate(
                [
                    (c, chunk(rows, n, args.rounds), xadd),
                    (d, chunk(rows, n, args.rounds), lua),
                    (a, chunk(single, n, args.rounds), one.record),
                ]
            )
            await b.run([chunk(lane, n, args.rounds) for lane in many], other.record)
        for book in (one, other):
            head = await book.store.head()
            assert head.position == args.events, "the ledger lost or duplicated appends"
    await client.aclose()
    results = [a.result(), b.result(), c.result(), d.result()]
    if args.records:
        results += await bench_read(port, directory, args.records)
    return results


def report(results: list[Result]) -> dict[str, float]:
    print("| scenario | producers | events | events/s | p50 ms | p99 ms |")
    print("|---|--:|--:|--:|--:|--:|")
    for r in results:
        print(ROW.format(r))
    a, b, _, d = (r.per_second for r in results[:4])
    ratios = {"a/d": a / d, "b/a": b / a}
    print("\n| ratio | value | goal | result |\n|---|--:|--:|---|")
    names = {"a/d": "single producer / minimal Lua", "b/a": "16 producers / single producer"}
    for key, value in ratios.items():
        verdict = "PASS" if value >= GOALS[key] else "FAIL"
        print(f"| {key}: {names[key]} | {value:.2f} | >= {GOALS[key]} | {verdict} |")
    typical = results[3].p50_ms / results[0].p50_ms
    print(f"| a/d by p50 latency (for reference) | {typical:.2f} | | |")
    print("\n(e: p50/p99 are ms per 1,000 records; fill: median and worst ms per event)")
    return ratios


def main(argv: list[str] | None = None) -> int:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, help="use the redis-server on this loopback port")
    parser.add_argument("--events", type=int, default=5000, help="appends per scenario")
    parser.add_argument("--producers", type=int, default=16, help="concurrent producers in b")
    parser.add_argument("--records", type=int, default=1_000_000, help="records to read back")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved chunks per scenario")
    parser.add_argument("--views", action="store_true", help="register the standard projections")
    parser.add_argument("--quick", action="store_true", help="1,000 appends, 20,000 records")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.records, args.rounds = 1000, 20_000, 4
    with (
        tempfile.TemporaryDirectory(prefix="bench_redis-") as tmp,
        server(args.port, Path(tmp)) as port,
    ):
        results = asyncio.run(measure(args, port, Path(tmp)))
    ratios = report(results)
    if args.json:
        summary = {"results": results, "ratios": ratios, "goals": GOALS}
        print(msgspec.json.format(msgspec.json.encode(summary)).decode())
    missed = any(ratios[key] < goal for key, goal in GOALS.items())
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
