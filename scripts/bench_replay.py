"""Replay benchmark: rebuild speed against the read+decode ceiling, and startup
time from checkpoints, measured side by side in one run.

Builds ledgers of realistic lifecycles (signals, opens, stop moves, scale-ins,
partial exits, fees, funding, closes across 50 symbols), then reports:

  (a) a full rebuild of every standard projection, events/s (from 50,000
      records on, in two processes: see ``Runner.rebuild``)
  (b) the ceiling: the same records read with plain sqlite3 and decoded with
      msgspec, no projections, events/s; and (a)/(b)
  (c) open time from fresh checkpoints plus a 1,000-event tail, at each size
  (d) the peak RSS of each step (each runs in its own process; the rebuild's
      worker process counted when it is the larger)

    python scripts/bench_replay.py                 # 100,000 and 1,000,000 events
    python scripts/bench_replay.py --quick         # 20,000 and 50,000, for CI
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import structlog

import projections
from ledger import (
    Event,
    FeeCharged,
    FundingApplied,
    SignalEmitted,
    StopMoved,
    TradeClosed,
    TradeIncreased,
    TradeOpened,
    TradeReduced,
    open_ledger,
)
from ledger.codec import decode_event
from replay.rebuild import rebuild

SYMBOLS = [f"SYM{i:02d}USDT" for i in range(50)]
START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def lifecycles(count: int, seed: int, first: int = 0) -> list[Event]:
    """About ``count`` events of whole trade lifecycles, in time order."""
    rng = random.Random(seed)
    events: list[Event] = []
    n = first
    while len(events) < count:
        n += 1
        symbol = rng.choice(SYMBOLS)
        side = rng.choice(["long", "short"])
        d = 1 if side == "long" else -1
        at = START + dt.timedelta(minutes=n)
        price = Decimal(rng.randint(1000, 90000)) / 100
        qty = Decimal(rng.randint(1, 400)) / 100
        stop = price * (1 - d * Decimal("0.01"))
        tid, sid = f"t{n}", f"s{n}"
        fee = Decimal("0.05")
        strategy = rng.choice(["breakout", "mean_revert", "trend"])
        events.append(
            SignalEmitted(
                signal_id=sid,
                symbol=symbol,
                side=side,
                entry_price=price,
                stop_price=stop,
                strategy=strategy,
                occurred_at=at,
            )
        )
        events.append(
            TradeOpened(
                trade_id=tid,
                symbol=symbol,
                side=side,
                quantity=qty,
                price=price,
                currency="USDT",
                stop_price=stop,
                fee=fee,
                fill_id="o",
                signal_id=sid,
                strategy=strategy,
                session=rng.choice(["asia", "europe", "us"]),
                account="main",
                occurred_at=at,
            )
        )
        events.append(
            StopMoved(
                trade_id=tid,
                stop_price=price,
                reason="breakeven",
                occurred_at=at + dt.timedelta(seconds=20),
            )
        )
        if rng.random() < 0.3:
            events.append(
                TradeIncreased(
                    trade_id=tid,
                    quantity=qty,
                    price=price * (1 + d * Decimal("0.002")),
                    fee=fee,
                    fill_id="i",
                    occurred_at=at + dt.timedelta(seconds=25),
                )
            )
            qty *= 2
        events.append(
            TradeReduced(
                trade_id=tid,
                quantity=qty / 2,
                price=price * (1 + d * Decimal(rng.randint(-10, 20)) / 1000),
                fee=fee,
                fill_id="r",
                occurred_at=at + dt.timedelta(seconds=30),
            )
        )
        events.append(
            FundingApplied(
                trade_id=tid,
                amount=Decimal(rng.randint(-50, 50)) / 100,
                occurred_at=at + dt.timedelta(seconds=40),
            )
        )
        if rng.random() < 0.2:
            events.append(
                FeeCharged(
                    trade_id=tid,
                    amount=Decimal("0.10"),
                    kind="borrow",
                    occurred_at=at + dt.timedelta(seconds=45),
                )
            )
        events.append(
            TradeClosed(
                trade_id=tid,
                price=price * (1 + d * Decimal(rng.randint(-15, 25)) / 1000),
                reason=rng.choice(["take_profit", "stop_loss", "manual"]),
                fee=fee,
                fill_id="c",
                occurred_at=at + dt.timedelta(seconds=50),
            )
        )
    return events


async def append(url: str, events: list[Event], batch: int = 2000) -> None:
    async with open_ledger(url, timeout=60) as book:
        for i in range(0, len(events), batch):
            await book.record_batch(events[i : i + batch])


def peak_rss_mb() -> float:
    """The peak RSS of this step's process, or of its rebuild worker if that was larger."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, worker) / 1024


# steps, each run in a child process so its peak RSS is its own


def step_build(path: str, size: int) -> dict[str, float]:
    asyncio.run(append(f"sqlite:///{path}", lifecycles(size, seed=1)))
    return {"rss_mb": peak_rss_mb()}


def step_rebuild(path: str) -> dict[str, float]:
    started = time.perf_counter()
    position = asyncio.run(rebuild(f"sqlite:///{path}", projections.standard()))
    seconds = time.perf_counter() - started
    return {
        "events": position,
        "seconds": seconds,
        "rate": position / seconds,
        "rss_mb": peak_rss_mb(),
    }


def step_ceiling(path: str) -> dict[str, float]:
    started = time.perf_counter()
    conn = sqlite3.connect(path)
    count = 0
    for kind, schema, data, metadata in conn.execute(
        "SELECT type, schema_version, data, metadata FROM records ORDER BY position"
    ):
        decode_event(kind, schema, data, metadata)
        count += 1
    seconds = time.perf_counter() - started
    return {"events": count, "seconds": seconds, "rate": count / seconds, "rss_mb": peak_rss_mb()}


def step_tail(path: str, size: int) -> dict[str, float]:
    asyncio.run(append(f"sqlite:///{path}", lifecycles(1000, seed=2, first=size // 5)[:1000]))
    # fold the WAL into the file so a plain copy of the file is the whole ledger
    sqlite3.connect(path).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    return {}


def step_open(path: str) -> dict[str, float]:
    async def go(copy: str) -> tuple[float, int]:
        started = time.perf_counter()
        async with open_ledger(f"sqlite:///{copy}", projections.standard()) as book:
            seconds = time.perf_counter() - started
            tail = book.runner.replayed
            assert book.runner.restored, "no checkpoint was used"
        return seconds, tail

    timings = []
    for i in range(5):
        # each try opens its own copy: opening catches up and checkpoints the tail
        copy = f"{path}.open{i}"
        shutil.copyfile(path, copy)
        timings.append(asyncio.run(go(copy)))
    best = min(timings)
    return {"ms": best[0] * 1000, "tail": best[1], "rss_mb": peak_rss_mb()}


STEPS = {
    "build": step_build,
    "rebuild": step_rebuild,
    "ceiling": step_ceiling,
    "tail": step_tail,
    "open": step_open,
}


def child(step: str, *args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--step", step, *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        sys.exit(f"step {step} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--quick", action="store_true", help="20,000 and 50,000 events")
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.step:
        fn = STEPS[args.step]
        print(json.dumps(fn(*[int(a) if a.isdigit() else a for a in rest])))
        return
    sizes = [20_000, 50_000] if args.quick else args.sizes
    results = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for size in sizes:
            path = str(Path(tmp) / f"bench-{size}.db")
            built = child("build", path, str(size))
            rebuilt = child("rebuild", path)
            ceiling = child("ceiling", path)
            child("tail", path, str(size))
            opened = child("open", path)
            results.append(
                {
                    "size": rebuilt["events"],
                    "build_rss_mb": built["rss_mb"],
                    "rebuild": rebuilt,
                    "ceiling": ceiling,
                    "open": opened,
                }
            )
    print(
        "| events | (a) rebuild, events/s | (b) read+decode ceiling, events/s | (a)/(b) | (c) open from checkpoints + tail | (d) peak RSS rebuild / ceiling / open |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        a, b, c = r["rebuild"], r["ceiling"], r["open"]
        print(
            f"| {r['size']:,} | {a['rate']:,.0f} | {b['rate']:,.0f} | {a['rate'] / b['rate']:.2f} | {c['ms']:.1f} ms (tail {c['tail']:,}) | {a['rss_mb']:.0f} / {b['rss_mb']:.0f} / {c['rss_mb']:.0f} MB |"
        )
    largest = results[-1]
    goal_a = largest["rebuild"]["rate"] >= 60_000
    goal_c = all(r["open"]["ms"] < 100 for r in results)
    print(f"\ngoal (a) >= 60,000 events/s at {largest['size']:,}: {'PASS' if goal_a else 'FAIL'}")
    print(f"goal (c) open < 100 ms at every size: {'PASS' if goal_c else 'FAIL'}")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
