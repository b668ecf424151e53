"""The tour: a simulated bot records into sqlite:///demo.db, is killed with SIGKILL
mid-run, restarts, and finds its open positions, PnL and performance back from
checkpoints; the log then verifies against an anchor signed before the kill.

    scripts/demo                 # sets up, then runs this
    python scripts/demo.py --url sqlite:///demo.db
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import random
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import structlog

import projections
from ledger import (
    FeeCharged,
    FundingApplied,
    ParameterChanged,
    SignalEmitted,
    StopMoved,
    TradeClosed,
    TradeIncreased,
    TradeOpened,
    TradeReduced,
    TradeState,
    open_ledger,
)
from ledger.book import Ledger
from projections import OpenPositions

SYMBOLS = {
    "BTCUSDT": Decimal(64000),
    "ETHUSDT": Decimal(3200),
    "SOLUSDT": Decimal(140),
    "XRPUSDT": Decimal("0.62"),
    "ADAUSDT": Decimal("0.45"),
}
START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
CENT = Decimal("0.0001")


def step_price(price: Decimal, rng: random.Random) -> Decimal:
    move = Decimal(str(round(rng.gauss(0, 0.004), 5)))
    return (price * (1 + move)).quantize(CENT)


class Bot:
    """A toy breakout bot: the point is its events, not its edge."""

    def __init__(
        self, book: Ledger, rng: random.Random, now: dt.datetime, ack: Path | None
    ) -> None:
        self.book = book
        self.rng = rng
        self.now = now
        self.ack = ack.open("a") if ack else None
        self.prices = dict(SYMBOLS)
        self.counter = 0

    async def record(self, event: object) -> None:
        record = await self.book.record(event)  # type: ignore[arg-type]
        if self.ack is not None:
            # written only after record() returned: the event is durable
            self.ack.write(f"{record.event_id}\n")
            self.ack.flush()

    def open_trades(self) -> list[TradeState]:
        return self.book.view(OpenPositions).positions()

    async def tick(self) -> None:
        self.now += dt.timedelta(minutes=7)
        for symbol in self.prices:
            self.prices[symbol] = step_price(self.prices[symbol], self.rng)
        for trade in self.open_trades():
            await self.manage(trade, self.prices[trade.symbol])
        if self.rng.random() < 0.35 and len(self.open_trades()) < 6:
            await self.enter(self.rng.choice(list(self.prices)))
        if self.rng.random() < 0.03:
            await self.record(
                ParameterChanged(
                    name="risk_per_trade",
                    new_value=self.rng.choice(["0.005", "0.01", "0.015"]),
                    changed_by="learning_agent",
                    reason="volatility regime",
                    occurred_at=self.now,
                )
            )

    async def enter(self, symbol: str) -> None:
        self.counter += 1
        ident = f"{self.now:%m%d%H%M}-{self.counter}"
        side = self.rng.choice(["long", "short"])
        price = self.prices[symbol]
        d = 1 if side == "long" else -1
        stop = (price * (1 - d * Decimal("0.012"))).quantize(CENT)
        target = (price * (1 + d * Decimal("0.03"))).quantize(CENT)
        quantity = (Decimal(1000) / price).quantize(Decimal("0.001")) or Decimal("0.001")
        strategy = self.rng.choice(["breakout", "mean_revert"])
        session = "asia" if self.now.hour < 8 else "europe" if self.now.hour < 16 else "us"
        await self.record(
            SignalEmitted(
                signal_id=f"s-{ident}",
                symbol=symbol,
                side=side,
                confidence=Decimal(self.rng.randint(55, 95)) / 100,
                entry_price=price,
                stop_price=stop,
                target_price=target,
                strategy=strategy,
                session=session,
                timeframe="5m",
                occurred_at=self.now,
            )
        )
        await self.record(
            TradeOpened(
                trade_id=f"t-{ident}",
                symbol=symbol,
                side=side,
                quantity=quantity,
                price=price,
                currency="USDT",
                stop_price=stop,
                target_price=target,
                fee=(quantity * price * Decimal("0.0004")).quantize(CENT),
                fill_id=f"f-{ident}-0",
                signal_id=f"s-{ident}",
                strategy=strategy,
                session=session,
                account="main",
                occurred_at=self.now,
            )
        )

    async def manage(self, trade: TradeState, price: Decimal) -> None:
        d = trade.direction
        entry = trade.average_entry or price
        gain = d * (price - entry) / entry
        fill = f"f-{trade.trade_id}-{trade.events}"
        fee = (trade.quantity * price * Decimal("0.0004")).quantize(CENT)
        if trade.stop_price is not None and d * (price - trade.stop_price) <= 0:
            reason = "trailing_stop" if d * (trade.stop_price - entry) > 0 else "stop_loss"
            await self.record(
                TradeClosed(
                    trade_id=trade.trade_id,
                    price=price,
                    reason=reason,
                    fee=fee,
                    fill_id=fill,
                    occurred_at=self.now,
                )
            )
        elif trade.target_price is not None and d * (price - trade.target_price) >= 0:
            await self.record(
                TradeClosed(
                    trade_id=trade.trade_id,
                    price=price,
                    reason="take_profit",
                    fee=fee,
                    fill_id=fill,
                    occurred_at=self.now,
                )
            )
        elif gain > Decimal("0.018") and trade.exit_quantity == 0:
            half = (trade.quantity / 2).quantize(Decimal("0.001"))
            await self.record(
                TradeReduced(
                    trade_id=trade.trade_id,
                    quantity=half,
                    price=price,
                    fee=(half * price * Decimal("0.0004")).quantize(CENT),
                    reason="partial_take_profit",
                    fill_id=fill,
                    occurred_at=self.now,
                )
            )
        elif (
            gain > Decimal("0.008")
            and trade.stop_price is not None
            and d * (trade.stop_price - entry) < 0
        ):
            await self.record(
                StopMoved(
                    trade_id=trade.trade_id,
                    stop_price=entry.quantize(CENT),
                    reason="breakeven",
                    occurred_at=self.now,
                )
            )
        elif gain > Decimal("0.015") and trade.stop_price is not None:
            trail = (price * (1 - d * Decimal("0.007"))).quantize(CENT)
            if d * (trail - trade.stop_price) > 0:
                await self.record(
                    StopMoved(
                        trade_id=trade.trade_id,
                        stop_price=trail,
                        reason="trailing",
                        occurred_at=self.now,
                    )
                )
        elif (
            gain < Decimal("-0.004")
            and trade.entry_quantity == trade.initial_quantity
            and self.rng.random() < 0.2
        ):
            await self.record(
                TradeIncreased(
                    trade_id=trade.trade_id,
                    quantity=(trade.quantity / 2).quantize(Decimal("0.001")),
                    price=price,
                    fee=fee / 2,
                    fill_id=fill,
                    occurred_at=self.now,
                )
            )
        elif self.now.minute < 7 and self.now.hour % 8 == 0:
            await self.record(
                FundingApplied(
                    trade_id=trade.trade_id,
                    amount=(-d * trade.quantity * price * Decimal("0.0001")).quantize(CENT),
                    rate=Decimal("0.0001"),
                    occurred_at=self.now,
                )
            )
        elif self.rng.random() < 0.01:
            await self.record(
                FeeCharged(
                    trade_id=trade.trade_id,
                    amount=Decimal("0.25"),
                    kind="borrow",
                    occurred_at=self.now,
                )
            )


async def run_bot(url: str, ticks: int, seed: int, ack: Path | None, pause: float) -> None:
    started = time.perf_counter()
    async with open_ledger(url, projections.standard(), checkpoint_every=100) as book:
        opened_ms = (time.perf_counter() - started) * 1000
        head = await book.store.head()
        last = await book.store.record_at(head.position) if head.position else None
        now = max(last.occurred_at, START) if last else START
        if head.position:
            restored = book.runner.restored
            print(
                f"  the bot opens the ledger in {opened_ms:.1f} ms: views restored from checkpoints at "
                f"position {min(restored.values(), default=0)} + a tail of {book.runner.replayed} records (head {head.position})"
            )
            open_now = book.view(OpenPositions).positions()
            print(
                f"  and knows its {len(open_now)} open trades: "
                + ", ".join(
                    f"{t.trade_id} {t.side} {t.symbol} stop {t.stop_price}" for t in open_now[:4]
                )
                + (" ..." if len(open_now) > 4 else "")
            )
        bot = Bot(book, random.Random(seed), now, ack)
        for _ in range(ticks):
            await bot.tick()
            if pause:
                await asyncio.sleep(pause)


def cli(*args: str) -> None:
    print(f"\n$ tradeledger {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "replay", "--url", URL, *args], check=False)


URL = "sqlite:///demo.db"


def main() -> None:
    global URL
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=URL)
    parser.add_argument("--bot", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ticks", type=int, default=400)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--ack", type=Path)
    parser.add_argument("--pause", type=float, default=0.0)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    URL = args.url
    if args.bot:
        asyncio.run(run_bot(args.url, args.ticks, args.seed, args.ack, args.pause))
        return
    path = Path(URL.removeprefix("sqlite:///"))
    workdir = path.parent
    key, acks, anchors = workdir / "demo.key", workdir / "demo.acks", workdir / "demo.anchor.jsonl"
    for stale in (
        path,
        Path(f"{path}-wal"),
        Path(f"{path}-shm"),
        key,
        Path(f"{key}.pub"),
        acks,
        anchors,
    ):
        stale.unlink(missing_ok=True)
    bot = [sys.executable, __file__, "--bot", "--url", URL, "--ack", str(acks)]

    print(f"1. A bot trades five symbols and records every event into {URL}.")
    subprocess.run([*bot, "--ticks", "600", "--seed", "1"], check=True)
    cli("anchor", "--new-key", str(key))
    print(
        "\n2. Before the crash, an auditor keeps a signed anchor of the head elsewhere.", flush=True
    )
    with anchors.open("w") as out:
        subprocess.run(
            [sys.executable, "-m", "replay", "--url", URL, "anchor", "--key", str(key)],
            stdout=out,
            check=True,
        )
    print(anchors.read_text().strip())

    print("\n3. The bot runs on; we kill it with SIGKILL mid-run.", flush=True)
    child = subprocess.Popen([*bot, "--ticks", "100000", "--seed", "2", "--pause", "0.002"])
    time.sleep(3.0)
    child.send_signal(signal.SIGKILL)
    child.wait()
    acked = acks.read_text().split()
    print(f"  killed pid {child.pid}; it had {len(acked)} acknowledged events in all")

    print("\n4. It restarts and carries on from what the ledger tells it.", flush=True)
    subprocess.run([*bot, "--ticks", "150", "--seed", "3"], check=True)
    cli("info")
    cli("positions")
    cli("pnl", "--group-by", "symbol")
    cli("performance", "--starting-equity", "10000")
    cli("history", "--sort-by", "net", "--desc", "--limit", "5")
    print(
        "\n5. Every acknowledged event is in the log, and the log verifies against the anchor.",
        flush=True,
    )
    acked = acks.read_text().split()
    found = subprocess.run(
        [sys.executable, "-m", "replay", "--url", URL, "events", "--limit", "10000000", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    missing = set(acked) - {
        line.split('"event_id":"', 1)[1].split('"', 1)[0] for line in found.splitlines()
    }
    print(f"  acknowledged: {len(acked)}, missing after the kill: {len(missing)}")
    cli("verify", "--anchor", str(anchors), "--public-key", f"{key}.pub")
    if missing:
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
