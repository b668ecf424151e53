"""Soak: a million events from 16 concurrent producers while another process tails and a third verifies.

The producers are asyncio tasks sharing one open ledger (with the standard
views, as a bot has them), each recording trade lifecycles one ``record``
call at a time and timing every call. Meanwhile ``tradeledger tail --json``
runs in a second process from position 1, and ``tradeledger verify`` runs
over and over in a third (``--verify-pause`` seconds apart). At the end the
tail must have printed every position exactly once, a last verify must pass,
and the log must hold exactly the acknowledged event ids, each once. One
summary line; exit 1 on any loss, duplicate or failed verify.

    .venv/bin/python scripts/soak.py                      # 1,000,000 events
    .venv/bin/python scripts/soak.py --quick              # 20,000, for CI
    .venv/bin/python scripts/soak.py --events 200000 --backend redis
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402

import projections  # noqa: E402
from ledger import (  # noqa: E402
    Event,
    FeeCharged,
    FundingApplied,
    StopMoved,
    TradeClosed,
    TradeIncreased,
    TradeOpened,
    TradeReduced,
    open_ledger,
)
from tests.servers import RedisServer  # noqa: E402

# Each producer opens a trade every two hours, from here on: a million events span about
# two years of a busy desk (some 190 closes a day), all in the past.
START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")


def lifecycle(producer: int, n: int) -> list[Event]:
    """A trade of eight events; its time and numbers vary with ``producer`` and ``n``."""
    trade_id = f"p{producer}-t{n}"
    at = START + dt.timedelta(hours=2 * n, minutes=7 * producer)
    price = Decimal(100 + (n * 7 + producer) % 50)
    side = "long" if (n + producer) % 2 else "short"

    def later(minutes: int) -> dt.datetime:
        return at + dt.timedelta(minutes=minutes)

    return [
        TradeOpened(
            trade_id=trade_id,
            symbol=SYMBOLS[n % len(SYMBOLS)],
            side=side,
            quantity=Decimal(4),
            price=price,
            currency="USDT",
            stop_price=price - 5 if side == "long" else price + 5,
            fee=Decimal("0.1"),
            strategy=f"s{producer % 4}",
            occurred_at=at,
        ),
        StopMoved(trade_id=trade_id, stop_price=price, reason="breakeven", occurred_at=later(1)),
        TradeIncreased(
            trade_id=trade_id,
            quantity=Decimal(2),
            price=price + 1,
            fill_id="f1",
            occurred_at=later(2),
        ),
        FeeCharged(trade_id=trade_id, amount=Decimal("0.05"), kind="borrow", occurred_at=later(3)),
        FundingApplied(trade_id=trade_id, amount=Decimal("-0.02"), occurred_at=later(4)),
        TradeReduced(
            trade_id=trade_id,
            quantity=Decimal(3),
            price=price + 2,
            fill_id="f2",
            occurred_at=later(5),
        ),
        StopMoved(trade_id=trade_id, stop_price=price + 1, reason="trailing", occurred_at=later(6)),
        TradeClosed(
            trade_id=trade_id,
            price=price + 3,
            reason="take_profit",
            fill_id="f3",
            occurred_at=later(7),
        ),
    ]


def events_for(producer: int, count: int) -> Iterator[tuple[Event, str]]:
    """``count`` events of whole lifecycles (the last one cut short), each with its event id."""
    made = 0
    n = 0
    while made < count:
        for k, event in enumerate(lifecycle(producer, n)):
            if made == count:
                return
            yield event, f"p{producer}-t{n}-e{k}"
            made += 1
        n += 1


class Tail:
    """``tradeledger tail --json`` from position 1, read on a thread: which positions it printed."""

    def __init__(self, url: str, limit: int) -> None:
        self.seen = bytearray(limit + 1)
        self.duplicates = 0
        self.strays = 0
        self.count = 0
        self.process = subprocess.Popen(
            [
                *tradeledger(),
                "--url",
                url,
                "tail",
                "--json",
                "--from-position",
                "1",
                "--limit",
                str(limit),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            position = json.loads(line)["position"]
            if not 0 < position < len(self.seen):
                self.strays += 1
            elif self.seen[position]:
                self.duplicates += 1
            else:
                self.seen[position] = 1
            self.count += 1

    def finish(self, timeout: float) -> str:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.thread.join(timeout=10)
        assert self.process.stderr is not None
        error = self.process.stderr.read().decode()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return error


class Verifier:
    """``tradeledger verify --json`` over and over on a thread, until stopped."""

    def __init__(self, url: str, pause: float) -> None:
        self.url = url
        self.pause = pause
        self.runs: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def once(self) -> dict[str, Any]:
        result = subprocess.run(
            [*tradeledger(), "--url", self.url, "verify", "--json"],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            report: dict[str, Any] = json.loads(result.stdout)
        except json.JSONDecodeError:
            report = {"ok": False, "records": 0}
        if result.returncode != 0 or not report.get("ok"):
            self.failures.append((result.stdout + result.stderr)[-500:])
        self.runs.append(report)
        return report

    def loop(self) -> None:
        while not self.stopping.is_set():
            self.once()
            self.stopping.wait(self.pause)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()


def tradeledger() -> list[str]:
    script = Path(sys.executable).parent / "tradeledger"
    return [str(script)] if script.exists() else [sys.executable, "-m", "replay"]


async def produce(
    url: str, events: int, producers: int, views: bool
) -> tuple[list[float], set[str], float]:
    """Record ``events`` from ``producers`` tasks; the latencies, the acknowledged ids, the seconds."""
    latencies: list[float] = []
    acked: set[str] = set()
    share = [events // producers + (p < events % producers) for p in range(producers)]
    async with open_ledger(url, projections.standard() if views else [], timeout=30) as book:

        async def producer(p: int) -> None:
            clock = time.perf_counter
            for event, event_id in events_for(p, share[p]):
                began = clock()
                record = await book.record(event, event_id=event_id)
                latencies.append(clock() - began)
                acked.add(record.event_id)

        started = time.perf_counter()
        await asyncio.gather(*(producer(p) for p in range(producers)))
        elapsed = time.perf_counter() - started
    return latencies, acked, elapsed


async def logged_ids(url: str) -> tuple[int, list[str]]:
    async with open_ledger(url, create=False) as book:
        ids = [r.event_id async for r in book.store.read()]
        head = (await book.store.head()).position
    return head, ids


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="20,000 events, for CI")
    parser.add_argument("--producers", type=int, default=16)
    parser.add_argument("--backend", choices=["sqlite", "redis"], default="sqlite")
    parser.add_argument("--no-views", action="store_true", help="record without the standard views")
    parser.add_argument(
        "--verify-pause",
        type=float,
        help="seconds between verify runs (default 10; 0.5 with --quick)",
    )
    parser.add_argument("--dir", type=Path, help="work here instead of a temporary directory")
    args = parser.parse_args(argv)
    events = 20_000 if args.quick else args.events
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    work = Path(tempfile.mkdtemp(prefix="soak-", dir=args.dir))
    server = None
    try:
        if args.backend == "redis":
            (work / "redis").mkdir()
            server = RedisServer(work / "redis")
            server.start()
            url = server.url(work, name="soak")
        else:
            url = f"sqlite:///{work / 'soak.db'}"
        asyncio.run(create(url))
        tail = Tail(url, events)
        pause = args.verify_pause if args.verify_pause is not None else 0.5 if args.quick else 10.0
        verifier = Verifier(url, pause)
        latencies, acked, elapsed = asyncio.run(
            produce(url, events, args.producers, not args.no_views)
        )
        verifier.stop()
        tail_error = tail.finish(timeout=max(60.0, elapsed))
        final = verifier.once()
        head, ids = asyncio.run(logged_ids(url))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    logged = set(ids)
    lost = len(acked - logged)
    duplicated = len(ids) - len(logged)
    strangers = len(logged - acked)
    missing = events - sum(tail.seen)
    latencies.sort()
    ms = [1000 * latencies[int(q * (len(latencies) - 1))] for q in (0.5, 0.99)]
    ok = (
        len(acked) == events == head == len(ids)
        and not (lost or duplicated or strangers or missing or tail.duplicates or tail.strays)
        and final.get("ok") is True
        and final.get("records") == events
        and not verifier.failures
    )
    for failure in verifier.failures[:3]:
        print(f"verify failed during the run: {failure}", file=sys.stderr)
    if tail_error.strip():
        print(f"tail: {tail_error.strip()[-500:]}", file=sys.stderr)
    print(
        f"soak backend={args.backend} events={events} producers={args.producers} "
        f"views={'none' if args.no_views else 'standard'} seconds={elapsed:.1f} "
        f"throughput={events / elapsed:,.0f}/s p50={ms[0]:.2f}ms p99={ms[1]:.2f}ms "
        f"max={1000 * latencies[-1]:.1f}ms mean={1000 * statistics.fmean(latencies):.2f}ms "
        f"acknowledged={len(acked)} head={head} lost={lost} duplicated={duplicated} "
        f"strangers={strangers} tail_seen={sum(tail.seen)} tail_missing={missing} "
        f"tail_duplicates={tail.duplicates} verify_runs={len(verifier.runs)} "
        f"verify_failures={len(verifier.failures)} final_verify={'ok' if final.get('ok') else 'FAILED'} "
        f"result={'ok' if ok else 'FAILED'}",
        flush=True,
    )
    return 0 if ok else 1


async def create(url: str) -> None:
    """Create the ledger, so the tail and verify processes find one from the start."""
    async with open_ledger(url):
        pass


if __name__ == "__main__":
    sys.exit(main())
