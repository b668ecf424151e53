"""A bot for the HTTP tests: records a known history fast, says so, then keeps recording slowly.

    python tests/http/recorder.py sqlite:///bot.db --trades 120 --pace 0.2 --live-seconds 300

Trades in two currencies (USDT and EUR) with strategies, sessions, patterns,
accounts, scale-ins, partial exits, stop moves, fees, funding, wins, losses
and breakevens, interleaved and on a simulated clock that only moves forward.
Two trades (``hold-BTCUSDT``, ``hold-DAX``) stay open throughout. After the history it prints one JSON line (``{"ready": ..., "position": ...,
"recorded_at": ..., "occurred_at": ...}``) and goes on recording one event
every ``--pace`` seconds (a simulated minute apart) until ``--live-seconds`` have passed or it is killed.
It opens the ledger without views, as an executor would.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import random
import sys
import time
from collections.abc import Iterator
from decimal import Decimal

import structlog

from ledger import (
    Event,
    FeeCharged,
    FundingApplied,
    ParameterChanged,
    SignalEmitted,
    StopMoved,
    TradeClosed,
    TradeIncreased,
    TradeOpened,
    TradeReduced,
    open_ledger,
)
from ledger.chain import timestamp

MARKETS = {
    "BTCUSDT": ("USDT", Decimal(64000), Decimal("0.02")),
    "ETHUSDT": ("USDT", Decimal(3200), Decimal("0.3")),
    "SOLUSDT": ("USDT", Decimal(140), Decimal("7")),
    "DAX": ("EUR", Decimal(18000), Decimal("0.05")),
    "CAC": ("EUR", Decimal(7500), Decimal("0.1")),
}
STRATEGIES = ("breakout", "mean_revert", "trend")
PATTERNS = ("flag", "wedge", None)
START = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
TICK = Decimal("0.01")


class Bot:
    """Plans each trade's whole life up front, then hands out its events one at a time."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = START
        self.prices = {symbol: price for symbol, (_, price, _) in MARKETS.items()}
        self.count = 0
        self.active: list[Iterator[Event]] = []
        self.step = 40  # at most this many simulated minutes between events

    def clock(self) -> dt.datetime:
        self.now += dt.timedelta(minutes=self.rng.randint(1, self.step))
        return self.now

    def move(self, symbol: str) -> Decimal:
        drift = Decimal(str(round(self.rng.gauss(0, 0.006), 5)))
        self.prices[symbol] = (self.prices[symbol] * (1 + drift)).quantize(TICK)
        return self.prices[symbol]

    def session(self) -> str:
        return "asia" if self.now.hour < 8 else "europe" if self.now.hour < 16 else "us"

    def trade(self) -> Iterator[Event]:
        self.count += 1
        number = self.count
        rng = self.rng
        symbol = rng.choice(list(MARKETS))
        currency, _, size = MARKETS[symbol]
        side = rng.choice(["long", "short"])
        d = 1 if side == "long" else -1
        strategy = rng.choice(STRATEGIES)
        pattern = rng.choice(PATTERNS)
        trade_id = f"t{number:04d}"
        signal_id = f"s{number:04d}"
        price = self.move(symbol)
        stop = (price * (1 - d * Decimal("0.01"))).quantize(TICK)
        yield SignalEmitted(
            signal_id=signal_id,
            symbol=symbol,
            side=side,
            confidence=Decimal(rng.randint(50, 95)) / 100,
            entry_price=price,
            stop_price=stop,
            strategy=strategy,
            session=self.session(),
            pattern=pattern,
            occurred_at=self.clock(),
        )
        if number % 7 == 3:
            return  # a signal no trade followed
        breakeven = number % 11 == 5
        quantity = size * rng.randint(1, 4)
        yield TradeOpened(
            trade_id=trade_id,
            symbol=symbol,
            side=side,
            quantity=quantity,
            price=price,
            currency=currency,
            stop_price=stop,
            target_price=(price * (1 + d * Decimal("0.02"))).quantize(TICK),
            fee=Decimal(0) if breakeven else (quantity * price * Decimal("0.0004")).quantize(TICK),
            fill_id=f"{trade_id}-0",
            signal_id=signal_id,
            strategy=strategy,
            session=self.session(),
            pattern=pattern,
            account=rng.choice(["main", "hedge"]),
            occurred_at=self.clock(),
        )
        if breakeven:
            yield TradeClosed(
                trade_id=trade_id,
                price=price,
                reason="manual",
                fill_id=f"{trade_id}-x",
                occurred_at=self.clock(),
            )
            return
        open_quantity = quantity
        average = price
        if rng.random() < 0.3:
            extra = quantity / 2
            added = self.move(symbol)
            average = (quantity * price + extra * added) / (quantity + extra)
            open_quantity += extra
            yield TradeIncreased(
                trade_id=trade_id,
                quantity=extra,
                price=added,
                fee=Decimal("0.5"),
                fill_id=f"{trade_id}-1",
                occurred_at=self.clock(),
            )
        if rng.random() < 0.5:
            yield StopMoved(
                trade_id=trade_id, stop_price=price, reason="breakeven", occurred_at=self.clock()
            )
        if rng.random() < 0.3:
            yield FundingApplied(
                trade_id=trade_id,
                amount=Decimal(rng.randint(-300, 300)) / 100,
                rate=Decimal("0.0001"),
                occurred_at=self.clock(),
            )
        if rng.random() < 0.15:
            yield FeeCharged(
                trade_id=trade_id, amount=Decimal("0.25"), kind="borrow", occurred_at=self.clock()
            )
        if rng.random() < 0.4:
            half = open_quantity / 2
            open_quantity -= half
            yield TradeReduced(
                trade_id=trade_id,
                quantity=half,
                price=self.move(symbol),
                fee=Decimal("0.3"),
                reason="partial_take_profit",
                fill_id=f"{trade_id}-2",
                occurred_at=self.clock(),
            )
        exit_price = self.move(symbol)
        if rng.random() < 0.2:
            # the venue reports the close as a fill of the whole remaining quantity
            yield TradeReduced(
                trade_id=trade_id,
                quantity=open_quantity,
                price=exit_price,
                fee=Decimal("0.3"),
                reason="stop_loss",
                fill_id=f"{trade_id}-3",
                occurred_at=self.clock(),
            )
            return
        reason = "take_profit" if d * (exit_price - average) > 0 else "stop_loss"
        yield TradeClosed(
            trade_id=trade_id,
            price=exit_price,
            reason=reason,
            fee=Decimal("0.4"),
            fill_id=f"{trade_id}-3",
            occurred_at=self.clock(),
        )

    def holds(self) -> list[Event]:
        """Two trades that stay open for good, so there are always open positions."""
        return [
            TradeOpened(
                trade_id=f"hold-{symbol}",
                symbol=symbol,
                side=side,
                quantity=MARKETS[symbol][2],
                price=self.move(symbol),
                currency=MARKETS[symbol][0],
                stop_price=None,
                strategy="trend",
                session=self.session(),
                account="main",
                occurred_at=self.clock(),
            )
            for symbol, side in (("BTCUSDT", "long"), ("DAX", "short"))
        ]

    def events(self) -> Iterator[Event]:
        """Events forever, a few trades interleaved."""
        while True:
            if self.rng.random() < 0.05:
                yield ParameterChanged(
                    name=self.rng.choice(["risk_per_trade", "max_open"]),
                    new_value=self.rng.choice(["0.005", "0.01", "4", "6"]),
                    changed_by=self.rng.choice(["manual", "learning_agent"]),
                    reason="test",
                    occurred_at=self.clock(),
                )
            if len(self.active) < 4 and (not self.active or self.rng.random() < 0.35):
                self.active.append(self.trade())
            lifecycle = self.rng.choice(self.active)
            try:
                yield next(lifecycle)
            except StopIteration:
                self.active.remove(lifecycle)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--trades", type=int, default=120)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--pace", type=float, default=0.2)
    parser.add_argument("--live-seconds", type=float, default=300.0)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    bot = Bot(args.seed)
    events = bot.events()
    async with open_ledger(args.url) as book:
        batch: list[Event] = []
        while bot.count < args.trades:
            batch.append(next(events))
            if len(batch) >= 200:
                await book.record_batch(batch)
                batch = []
        await book.record_batch([*batch, *bot.holds()])
        head = await book.store.head()
        assert head.recorded_at is not None
        print(
            json.dumps(
                {
                    "ready": True,
                    "position": head.position,
                    "recorded_at": timestamp(head.recorded_at),
                    "occurred_at": timestamp(bot.now),
                }
            ),
            flush=True,
        )
        bot.step = 1  # live, the simulated clock moves a minute an event
        deadline = time.monotonic() + args.live_seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(args.pace)
            await book.record(next(events))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
