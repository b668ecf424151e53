"""A known trading history and the tools the replay tests share.

``HISTORY`` is fourteen event JSON lines with figures worked out by hand (see
the comments); ``cli`` runs the real ``tradeledger`` entry point in a
subprocess; ``build`` records lines in-process through the same parser the
CLI uses; ``views_of`` gathers every standard view's whole answer into one
dict that compares with ``==``; ``Clock`` is a settable fake clock;
``tampered`` opens a ledger file with its append-only triggers dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

import projections
from ledger import open_ledger
from ledger.book import Append
from projections import OpenPositions, Parameters, Performance, Pnl, Signals, TradeHistory
from replay.trail import parse_line

EVERYTHING = 1_000_000

# Realized figures of HISTORY, by hand:
# t1 long 2@100 (fee .5, stop 90), reduce 1@110 (fee .5), close 1@120 (fee .5):
#    gross 10 + 20 = 30, fees 1.5, net 28.5, risk 2*10 = 20, R 1.425, win.
# t2 short 10@50 (stop 55), funding -1, close @52 (fee 1):
#    gross -(520 - 500) = -20, fees 1, funding -1, net -22, loss.
# t3 long 1@200 and t4 long 5@20 stay open.
# USDT: gross 10, fees 2.5, funding -1, net 6.5, closed 2.
HISTORY: list[dict[str, Any]] = [
    {
        "type": "ParameterChanged",
        "name": "risk_pct",
        "new_value": "0.5",
        "changed_by": "manual",
        "occurred_at": "2026-01-05T08:00:00Z",
    },
    {
        "type": "SignalEmitted",
        "signal_id": "s1",
        "symbol": "BTCUSDT",
        "side": "long",
        "strategy": "trend",
        "occurred_at": "2026-01-05T09:00:00Z",
    },
    {
        "type": "SignalEmitted",
        "signal_id": "s2",
        "symbol": "ETHUSDT",
        "side": "short",
        "strategy": "meanrev",
        "occurred_at": "2026-01-05T09:05:00Z",
    },
    {
        "type": "TradeOpened",
        "trade_id": "t1",
        "symbol": "BTCUSDT",
        "side": "long",
        "quantity": "2",
        "price": "100",
        "currency": "USDT",
        "stop_price": "90",
        "fee": "0.5",
        "signal_id": "s1",
        "strategy": "trend",
        "session": "london",
        "account": "A",
        "occurred_at": "2026-01-05T09:30:00Z",
        "metadata": {"correlation_id": "c1", "actor": "bot-1"},
    },
    {
        "type": "StopMoved",
        "trade_id": "t1",
        "stop_price": "95",
        "reason": "breakeven",
        "occurred_at": "2026-01-05T10:00:00Z",
        "metadata": {"correlation_id": "c1"},
    },
    {
        "type": "TradeReduced",
        "trade_id": "t1",
        "quantity": "1",
        "price": "110",
        "fee": "0.5",
        "fill_id": "f1",
        "occurred_at": "2026-01-05T11:00:00Z",
        "metadata": {"correlation_id": "c1"},
    },
    {
        "type": "TradeClosed",
        "trade_id": "t1",
        "price": "120",
        "reason": "take_profit",
        "fee": "0.5",
        "occurred_at": "2026-01-05T12:00:00Z",
        "metadata": {"correlation_id": "c1"},
    },
    {
        "type": "TradeOpened",
        "trade_id": "t2",
        "symbol": "ETHUSDT",
        "side": "short",
        "quantity": "10",
        "price": "50",
        "currency": "USDT",
        "stop_price": "55",
        "strategy": "meanrev",
        "session": "ny",
        "account": "B",
        "occurred_at": "2026-01-06T14:00:00Z",
        "metadata": {"correlation_id": "c2"},
    },
    {
        "type": "FundingApplied",
        "trade_id": "t2",
        "amount": "-1",
        "occurred_at": "2026-01-06T16:00:00Z",
    },
    {
        "type": "TradeClosed",
        "trade_id": "t2",
        "price": "52",
        "reason": "stop_loss",
        "fee": "1",
        "occurred_at": "2026-01-07T10:00:00Z",
    },
    {
        "type": "TradeOpened",
        "trade_id": "t3",
        "symbol": "BTCUSDT",
        "side": "long",
        "quantity": "1",
        "price": "200",
        "currency": "USDT",
        "stop_price": "190",
        "strategy": "trend",
        "occurred_at": "2026-01-08T09:00:00Z",
    },
    {
        "type": "TargetMoved",
        "trade_id": "t3",
        "target_price": "230",
        "occurred_at": "2026-01-08T10:00:00Z",
    },
    {
        "type": "ParameterChanged",
        "name": "risk_pct",
        "new_value": "0.75",
        "old_value": "0.5",
        "changed_by": "learning_agent",
        "event_id": "param-2",
        "occurred_at": "2026-01-08T11:00:00Z",
    },
    {
        "type": "TradeOpened",
        "trade_id": "t4",
        "symbol": "SOLUSDT",
        "side": "long",
        "quantity": "5",
        "price": "20",
        "currency": "USDT",
        "strategy": "breakout",
        "occurred_at": "2026-01-09T09:00:00Z",
    },
]


def jsonl(lines: Iterable[dict[str, Any]]) -> str:
    """Event JSON Lines, one object a line."""
    return "".join(json.dumps(line) + "\n" for line in lines)


def tradeledger() -> list[str]:
    """The argv prefix of the installed console script (or ``python -m replay``)."""
    script = Path(sys.executable).parent / "tradeledger"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "replay"]


def cli(
    url: str | None, *args: str, input: str | bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``tradeledger [--url URL] ARGS`` to the end; text in and out."""
    env = {k: v for k, v in os.environ.items() if k != "TRADELEDGER_URL"}
    argv = [*tradeledger(), *(["--url", url] if url is not None else []), *args]
    data = input.decode() if isinstance(input, bytes) else input
    return subprocess.run(
        argv,
        input=data,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def path_of(url: str) -> Path:
    """The file of a ``sqlite:///`` URL."""
    return Path(url[len("sqlite:///") :])


def appends(lines: Iterable[dict[str, Any]]) -> list[Append]:
    """Lines parsed exactly as ``tradeledger record`` parses them."""
    found = []
    for line in lines:
        item = parse_line(json.dumps(line).encode())
        assert item is not None
        found.append(item)
    return found


def build(url: str, lines: Sequence[dict[str, Any]] = HISTORY, *, standard: bool = True) -> None:
    """Record ``lines`` in one batch (with the standard views, so checkpoints exist)."""

    async def go() -> None:
        views = projections.standard() if standard else []
        async with open_ledger(url, views) as book:
            await book.record_batch(appends(lines))

    asyncio.run(go())


class Clock:
    """A fake clock: returns ``now`` until told otherwise."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def _plain(value: Any) -> Any:
    return msgspec.to_builtins(value, builtin_types=(Decimal, dt.datetime))


async def views_of(source: Any) -> dict[str, Any]:
    """Every standard view's whole answer, from a ledger or a cut, as plain data."""
    performance = source.view(Performance)
    found: dict[str, Any] = {
        "positions": _plain(source.view(OpenPositions).positions()),
        "pnl": _plain(source.view(Pnl).totals()),
        "performance": _plain(await performance.figures()),
        "daily": _plain(await performance.daily()),
        "history": _plain(await source.view(TradeHistory).trades(limit=EVERYTHING)),
        "signals": _plain(await source.view(Signals).signals(limit=EVERYTHING)),
        "parameters": _plain(await source.view(Parameters).changes(limit=EVERYTHING)),
        "current": _plain(await source.view(Parameters).current()),
    }
    for group in ("symbol", "strategy", "side"):
        found[f"pnl_by_{group}"] = _plain(source.view(Pnl).totals(group))
        found[f"performance_by_{group}"] = _plain(await performance.figures(group))
    return found


def without_positions(value: Any) -> Any:
    """``value`` with every ``position`` key dropped (log positions differ between ledgers)."""
    if isinstance(value, dict):
        return {k: without_positions(v) for k, v in value.items() if k != "position"}
    if isinstance(value, list):
        return [without_positions(v) for v in value]
    return value


@contextlib.contextmanager
def tampered(url: str) -> Iterator[sqlite3.Connection]:
    """A plain connection to the ledger file with the append-only triggers dropped."""
    conn = sqlite3.connect(path_of(url), isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DROP TRIGGER IF EXISTS records_no_update")
        conn.execute("DROP TRIGGER IF EXISTS records_no_delete")
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
