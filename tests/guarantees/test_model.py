"""The ledger against a model: random valid and invalid commands, retries and reopenings.

A Hypothesis state machine drives a real ledger (a SQLite file; a Redis
ledger in the second test) and, beside it, a small model of the trade rules
and the accounting written here from the design, in exact fractions (not
``ledger.trade``). Every refused command must raise the model's typed error
and leave the log's raw rows unchanged; every accepted one must land where
the model says; after every step the open positions, the PnL totals and the
closed-trade history equal the model.

Amounts of open trades after a partial exit are C*q/Q, which the ledger
keeps to 80 digits; they are compared to the model within 1e-60. Closed
trades and every total of fees and funding are compared exactly.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import hypothesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ledger import (
    ConcurrencyError,
    Event,
    FeeCharged,
    FundingApplied,
    IdempotencyConflict,
    InvalidEvent,
    LedgerError,
    StopMoved,
    TradeClosed,
    TradeIncreased,
    TradeOpened,
    TradeReduced,
    open_ledger,
)
from ledger.book import Ledger
from ledger.codec import encode_data
from ledger.events import CLOSE_REASONS, natural_event_id, validate
from projections import OpenPositions, Pnl, TradeHistory, standard
from replay.verify import verify
from tests.guarantees.harness import raw_log
from tests.servers import RedisServer

T0 = dt.datetime(2026, 2, 2, tzinfo=dt.UTC)
TOLERANCE = Fraction(1, 10**60)

trade_ids = st.integers(0, 29).map(lambda n: f"T{n}")
# which trade a command is for: mostly an open one, else any known trade or any id at all
targets = st.tuples(st.integers(0, 10_000), st.integers(0, 5))
quantities = st.sampled_from(["20", "1", "0.5", "2", "3", "1.5", "7"]).map(Decimal)
prices = st.integers(90, 110).map(Decimal) | st.sampled_from(["99.5", "100.25"]).map(Decimal)
fees = st.sampled_from(["0", "0.1", "1", "-0.05"]).map(Decimal)
amounts = st.sampled_from(["0.3", "-1.25", "2"]).map(Decimal)


@dataclass
class Trade:
    """The model's trade: exact fractions, per the accounting in DESIGN.md."""

    side: int  # +1 long, -1 short
    multiplier: Fraction
    currency: str
    quantity: Fraction
    cost: Fraction
    entry_quantity: Fraction
    entry_cost: Fraction
    gross: Fraction = Fraction(0)
    fees: Fraction = Fraction(0)
    funding: Fraction = Fraction(0)
    stop: Decimal | None = None
    closed: bool = False
    reason: str | None = None
    version: int = 1

    @property
    def net(self) -> Fraction:
        return self.gross - self.fees + self.funding

    def exit(self, quantity: Fraction, price: Fraction, fee: Fraction) -> None:
        released = self.cost if quantity == self.quantity else self.cost * quantity / self.quantity
        self.gross += self.multiplier * self.side * (quantity * price - released)
        self.cost -= released
        self.quantity -= quantity
        self.fees += fee


@dataclass
class Command:
    event: Event
    event_id: str | None = None
    expected_version: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class Refusal(Exception):
    """What the model expects the ledger to raise."""

    def __init__(self, error: type[LedgerError], rule: str | None = None) -> None:
        super().__init__(error.__name__, rule)
        self.error = error
        self.rule = rule


def exact(value: Decimal) -> Fraction:
    return Fraction(value)


def close_enough(found: Decimal, expected: Fraction) -> bool:
    return abs(Fraction(found) - expected) <= TOLERANCE * max(1, abs(expected))


class LedgerMachine(RuleBasedStateMachine):
    """Commands against a real ledger and the model, compared after every step."""

    def __init__(self, make_url: Callable[[], str]) -> None:
        super().__init__()
        self.make_url = make_url
        self.loop = asyncio.Runner()
        self.url = ""
        self.book: Ledger | None = None
        self.trades: dict[str, Trade] = {}
        self.recorded: dict[str, tuple[str, int]] = {}  # event_id -> (canonical data, position)
        self.done: list[Command] = []
        self.head = 0
        self.tick = 0
        self.ids = 0

    # plumbing

    def run(self, coroutine: Any) -> Any:
        return self.loop.run(coroutine)

    def now(self) -> dt.datetime:
        self.tick += 1
        return T0 + dt.timedelta(seconds=self.tick)

    def target(self, chosen: tuple[int, int]) -> str:
        pick, kind = chosen
        live = sorted(k for k, t in self.trades.items() if not t.closed)
        if kind == 0 or not self.trades:
            return f"T{pick % 30}"  # unknown, closed or open: whatever it hits
        if kind == 1 or not live:
            known = sorted(self.trades)
            return known[pick % len(known)]
        return live[pick % len(live)]

    def fresh_id(self) -> str:
        self.ids += 1
        return f"e{self.ids}"

    def open_book(self) -> None:
        self.book = self.run(
            open_ledger(self.url, standard(), checkpoint_every=5, timeout=10).open()
        )

    @initialize(sides=st.lists(st.sampled_from(["long", "short"]), min_size=1, max_size=3))
    def start(self, sides: list[str]) -> None:
        """Open the ledger and a trade or three to work on."""
        self.url = self.make_url()
        self.open_book()
        for n, side in enumerate(sides):
            event = TradeOpened(
                trade_id=f"S{n}",
                symbol="ETHUSDT",
                side=side,  # type: ignore[arg-type]
                quantity=Decimal(3),
                price=Decimal(100),
                currency="USDT",
                occurred_at=self.now(),
            )
            self.submit(Command(event))

    def teardown(self) -> None:
        try:
            if self.book is not None:
                self.run(self.book.aclose())
                report = self.run(verify(self.url))
                assert report.ok, report.first_bad
        finally:
            self.loop.close()

    # the model

    def expect(self, command: Command) -> int:
        """The position the command's record must have; raises the Refusal the ledger must raise."""
        event = validate(command.event)
        event_id = command.event_id or natural_event_id(event)
        assert event_id is not None
        found = self.recorded.get(event_id)
        if found is not None:
            if found[0] != f"{type(event).__name__}:{encode_data(event)}":
                raise Refusal(IdempotencyConflict)
            return found[1]
        trade_id = getattr(event, "trade_id", None)
        assert trade_id is not None
        trade = self.trades.get(trade_id)
        version = trade.version if trade is not None else 0
        if command.expected_version is not None and command.expected_version != version:
            raise Refusal(ConcurrencyError)
        if isinstance(event, TradeOpened):
            if trade is not None:
                raise Refusal(InvalidEvent, "trade_exists")
        elif trade is None:
            raise Refusal(InvalidEvent, "unknown_trade")
        elif trade.closed:
            raise Refusal(InvalidEvent, "trade_closed")
        elif isinstance(event, TradeReduced) and event.quantity > trade.quantity:
            raise Refusal(InvalidEvent, "over_reduce")
        return self.head + 1

    def apply(self, event: Event) -> None:
        """Fold an accepted event into the model."""
        if isinstance(event, TradeOpened):
            q, p = exact(event.quantity), exact(event.price)
            self.trades[event.trade_id] = Trade(
                side=1 if event.side == "long" else -1,
                multiplier=exact(event.multiplier),
                currency=event.currency,
                quantity=q,
                cost=q * p,
                entry_quantity=q,
                entry_cost=q * p,
                fees=exact(event.fee),
                stop=event.stop_price,
            )
            return
        trade = self.trades[getattr(event, "trade_id", "")]
        trade.version += 1
        if isinstance(event, TradeIncreased):
            q, p = exact(event.quantity), exact(event.price)
            trade.quantity += q
            trade.cost += q * p
            trade.entry_quantity += q
            trade.entry_cost += q * p
            trade.fees += exact(event.fee)
        elif isinstance(event, TradeReduced):
            trade.exit(exact(event.quantity), exact(event.price), exact(event.fee))
            if trade.quantity == 0:
                trade.closed = True
                trade.reason = event.reason if event.reason in CLOSE_REASONS else "other"
        elif isinstance(event, TradeClosed):
            trade.exit(trade.quantity, exact(event.price), exact(event.fee))
            trade.closed, trade.reason = True, event.reason
        elif isinstance(event, StopMoved):
            trade.stop = event.stop_price
        elif isinstance(event, FeeCharged):
            trade.fees += exact(event.amount)
        elif isinstance(event, FundingApplied):
            trade.funding += exact(event.amount)

    def submit(self, command: Command) -> None:
        """Record the command; check the outcome, the position and the log against the model."""
        assert self.book is not None
        try:
            position = self.expect(command)
            refusal = None
        except Refusal as r:
            position, refusal = -1, r
        hypothesis.event(
            f"{type(command.event).__name__}: "
            + (refusal.args[-1] or refusal.args[0] if refusal else "accepted")
        )
        before = raw_log(self.url)
        try:
            record = self.run(
                self.book.record(
                    command.event,
                    event_id=command.event_id,
                    expected_version=command.expected_version,
                    metadata=command.metadata or None,
                )
            )
        except LedgerError as e:
            assert refusal is not None, f"refused, the model accepts: {e!r}"
            assert type(e) is refusal.error, f"{e!r}, expected {refusal.error.__name__}"
            if refusal.rule is not None:
                assert getattr(e, "rule", None) == refusal.rule, repr(e)
            assert raw_log(self.url) == before, "a refused command changed the log"
            return
        assert refusal is None, f"accepted, the model expects {refusal.error.__name__}"
        assert record.position == position
        if position <= self.head:
            assert raw_log(self.url) == before, "a retry changed the log"
            return
        event = validate(command.event)
        self.head = position
        self.recorded[record.event_id] = (f"{type(event).__name__}:{encode_data(event)}", position)
        self.done.append(command)
        self.apply(event)

    # commands

    @rule(
        trade_id=trade_ids,
        again=st.integers(0, 3),
        side=st.sampled_from(["long", "short"]),
        quantity=quantities,
        price=prices,
        fee=fees,
        multiplier=st.sampled_from(["1", "2", "0.5"]).map(Decimal),
        currency=st.sampled_from(["USDT", "EUR"]),
        stop=st.none() | prices,
        fresh=st.booleans(),
    )
    def open(
        self,
        trade_id: str,
        again: int,
        side: str,
        quantity: Decimal,
        price: Decimal,
        fee: Decimal,
        multiplier: Decimal,
        currency: str,
        stop: Decimal | None,
        fresh: bool,
    ) -> None:
        """Open a trade (one time in four an existing one), keyed naturally or by a fresh event id."""
        if again == 0 and self.trades:
            known = sorted(self.trades)
            trade_id = known[int(trade_id[1:]) % len(known)]
        event = TradeOpened(
            trade_id=trade_id,
            symbol="BTCUSDT",
            side=side,  # type: ignore[arg-type]
            quantity=quantity,
            price=price,
            currency=currency,
            multiplier=multiplier,
            fee=fee,
            stop_price=stop,
            occurred_at=self.now(),
        )
        self.submit(Command(event, self.fresh_id() if fresh else None))

    @rule(whom=targets, quantity=quantities, price=prices, fee=fees)
    def increase(
        self, whom: tuple[int, int], quantity: Decimal, price: Decimal, fee: Decimal
    ) -> None:
        trade_id = self.target(whom)
        event = TradeIncreased(
            trade_id=trade_id, quantity=quantity, price=price, fee=fee, occurred_at=self.now()
        )
        self.submit(Command(event, self.fresh_id()))

    @rule(
        whom=targets,
        price=prices,
        expected=st.sampled_from(["none", "right", "wrong", "zero"]),
    )
    def move_stop(self, whom: tuple[int, int], price: Decimal, expected: str) -> None:
        """Move a stop, with no, the right, a wrong or a zero expected version."""
        trade_id = self.target(whom)
        trade = self.trades.get(trade_id)
        version = trade.version if trade is not None else 0
        expected_version = {"none": None, "right": version, "wrong": version + 3, "zero": 0}
        event = StopMoved(trade_id=trade_id, stop_price=price, occurred_at=self.now())
        self.submit(Command(event, self.fresh_id(), expected_version[expected]))

    @rule(
        whom=targets,
        quantity=quantities,
        price=prices,
        fee=fees,
        reason=st.sampled_from([None, "take_profit", "scale_out"]),
        everything=st.booleans(),
    )
    def reduce(
        self,
        whom: tuple[int, int],
        quantity: Decimal,
        price: Decimal,
        fee: Decimal,
        reason: str | None,
        everything: bool,
    ) -> None:
        """Reduce by a random quantity (more than is open too), or by exactly what is open."""
        trade_id = self.target(whom)
        trade = self.trades.get(trade_id)
        if everything and trade is not None and trade.quantity > 0:
            quantity = Decimal(trade.quantity.numerator) / Decimal(trade.quantity.denominator)
        event = TradeReduced(
            trade_id=trade_id,
            quantity=quantity,
            price=price,
            fee=fee,
            reason=reason,
            occurred_at=self.now(),
        )
        self.submit(Command(event, self.fresh_id()))

    @rule(whom=targets, amount=amounts)
    def charge_fee(self, whom: tuple[int, int], amount: Decimal) -> None:
        trade_id = self.target(whom)
        event = FeeCharged(trade_id=trade_id, amount=amount, kind="borrow", occurred_at=self.now())
        self.submit(Command(event, self.fresh_id()))

    @rule(whom=targets, amount=amounts)
    def apply_funding(self, whom: tuple[int, int], amount: Decimal) -> None:
        trade_id = self.target(whom)
        event = FundingApplied(trade_id=trade_id, amount=amount, occurred_at=self.now())
        self.submit(Command(event, self.fresh_id()))

    @rule(
        whom=targets,
        price=prices,
        fee=fees,
        reason=st.sampled_from(["manual", "stop_loss", "take_profit"]),
    )
    def close(self, whom: tuple[int, int], price: Decimal, fee: Decimal, reason: str) -> None:
        trade_id = self.target(whom)
        event = TradeClosed(
            trade_id=trade_id,
            price=price,
            fee=fee,
            reason=reason,  # type: ignore[arg-type]
            occurred_at=self.now(),
        )
        self.submit(Command(event, self.fresh_id()))

    @precondition(lambda self: bool(self.done))
    @rule(pick=st.integers(0, 10_000), metadata=st.booleans())
    def retry(self, pick: int, metadata: bool) -> None:
        """Send an earlier accepted command again (other metadata too): the first record comes back."""
        earlier = self.done[pick % len(self.done)]
        self.submit(
            Command(
                earlier.event,
                earlier.event_id,
                earlier.expected_version,
                {"attempt": 2} if metadata else {},
            )
        )

    @precondition(lambda self: bool(self.done))
    @rule(pick=st.integers(0, 10_000), price=prices)
    def reuse_an_event_id(self, pick: int, price: Decimal) -> None:
        """A stop move under an earlier command's event id: a conflict unless it is that very move."""
        earlier = self.done[pick % len(self.done)]
        event_id = earlier.event_id or natural_event_id(earlier.event)
        trade_id = getattr(earlier.event, "trade_id", "T0")
        self.submit(
            Command(StopMoved(trade_id=trade_id, stop_price=price, occurred_at=T0), event_id)
        )

    @rule()
    def reopen(self) -> None:
        """Close the ledger and open it again: views come back from checkpoints and the tail."""
        assert self.book is not None
        self.run(self.book.aclose())
        self.open_book()

    # the views equal the model

    @invariant()
    def views_equal_the_model(self) -> None:
        if self.book is None:
            return
        book = self.book
        positions = {t.trade_id: t for t in book.view(OpenPositions).positions()}
        open_trades = {k: t for k, t in self.trades.items() if not t.closed}
        assert positions.keys() == open_trades.keys()
        for trade_id, trade in open_trades.items():
            found = positions[trade_id]
            assert exact(found.quantity) == trade.quantity, trade_id
            assert found.stop_price == trade.stop, trade_id
            assert exact(found.fees) == trade.fees and exact(found.funding) == trade.funding
            assert close_enough(found.cost, trade.cost), (trade_id, found.cost, trade.cost)
            assert close_enough(found.gross, trade.gross), (trade_id, found.gross, trade.gross)
        totals = {row.currency: row for row in book.view(Pnl).totals()}
        currencies = {t.currency for t in self.trades.values()}
        assert totals.keys() == currencies
        for currency in currencies:
            mine = [t for t in self.trades.values() if t.currency == currency]
            row = totals[currency]
            assert exact(row.fees) == sum((t.fees for t in mine), Fraction(0))
            assert exact(row.funding) == sum((t.funding for t in mine), Fraction(0))
            assert close_enough(row.gross, sum((t.gross for t in mine), Fraction(0)))
            assert row.closed_trades == sum(t.closed for t in mine)
        history = self.run(book.view(TradeHistory).trades(limit=10_000)).trades
        closed = {k: t for k, t in self.trades.items() if t.closed}
        assert {c.trade_id for c in history} == closed.keys()
        for found in history:
            trade = closed[found.trade_id]
            assert exact(found.gross) == trade.gross, found.trade_id
            assert exact(found.net) == trade.net, found.trade_id
            assert (exact(found.fees), exact(found.funding)) == (trade.fees, trade.funding)
            assert exact(found.quantity) == trade.entry_quantity
            assert found.close_reason == trade.reason
            assert found.outcome == (
                "win" if trade.net > 0 else "loss" if trade.net < 0 else "breakeven"
            )


MODEL_SETTINGS = settings(
    max_examples=30,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_the_sqlite_ledger_behaves_like_the_model_through_random_commands_retries_and_reopenings() -> (
    None
):
    """Random valid and invalid commands on a SQLite ledger: typed refusals, unchanged log, views equal to the model."""
    directories: list[str] = []

    def make_url() -> str:
        directories.append(tempfile.mkdtemp(prefix="model-"))
        return f"sqlite:///{Path(directories[-1]) / 'ledger.db'}"

    try:
        run_state_machine_as_test(lambda: LedgerMachine(make_url), settings=MODEL_SETTINGS)
    finally:
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)


def test_the_redis_ledger_behaves_like_the_model_too(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The same machine on Redis, fewer examples: the same refusals, log and views."""
    counter = iter(range(10**6))

    def make_url() -> str:
        return redis_server.url(tmp_path, name=f"model{next(counter)}")

    run_state_machine_as_test(
        lambda: LedgerMachine(make_url),
        settings=settings(MODEL_SETTINGS, max_examples=8),
    )
