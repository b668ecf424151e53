"""What the guarantee tests share: the raw bytes of a log, and bots run as child processes.

``raw_log`` reads every column of every record straight from the store (plain
sqlite3, or XRANGE on Redis), so "the log is unchanged" is one ``==``.
``RECORDER`` is a child that records ``N`` trade openings one call each and
writes ``ACK <event_id>`` to its stdout (one write(2)) after each returned.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from ledger.failpoints import ENV

ROOT = Path(__file__).resolve().parents[2]

RECORDER = """
import asyncio, logging, os, sys
sys.path.insert(0, {root!r})
import structlog
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
from ledger import open_ledger
from projections import standard
from tests.lifecycles import opened

async def main(url, count, checkpoint_every, views):
    async with open_ledger(url, standard() if views else [], checkpoint_every=checkpoint_every) as book:
        os.write(1, b"OPEN\\n")
        for n in range(count):
            record = await book.record(opened(f"t{{n}}"))
            os.write(1, f"ACK {{record.event_id}}\\n".encode())
        os.write(1, b"DONE\\n")

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"))
"""


def child_env(failpoints: str | None = None) -> dict[str, str]:
    """The environment for a child: this one, with exactly ``failpoints`` switched on."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if failpoints:
        env[ENV] = failpoints
    return env


def record_in_child(
    url: str,
    count: int,
    *,
    failpoints: str | None = None,
    checkpoint_every: int = 1000,
    views: bool = True,
    timeout: float = 60,
) -> tuple[int, list[str], str]:
    """Run ``RECORDER`` to its end (or its death): return code, acknowledged ids, stderr."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            RECORDER.format(root=str(ROOT)),
            url,
            str(count),
            str(checkpoint_every),
            "1" if views else "0",
        ],
        capture_output=True,
        env=child_env(failpoints),
        timeout=timeout,
        check=False,
    )
    lines = result.stdout.decode().splitlines()
    acked = [line.split(" ", 1)[1] for line in lines if line.startswith("ACK ")]
    return result.returncode, acked, result.stderr.decode()


def path_of(url: str) -> Path:
    """The file of a ``sqlite:///`` URL."""
    return Path(url.removeprefix("sqlite:///").split("?", 1)[0])


@contextlib.contextmanager
def connect(url: str) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection to a ledger file, closed afterwards."""
    conn = sqlite3.connect(path_of(url), timeout=10, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def _redis_parts(url: str) -> tuple[redis.Redis, str]:
    parts = urllib.parse.urlsplit(url)
    name = urllib.parse.parse_qs(parts.query)["ledger"][0]
    client = redis.Redis(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,
        password=parts.password,
        db=int((parts.path or "/0").lstrip("/") or 0),
        socket_timeout=5,
    )
    return client, f"tradeledger:{{{name}}}:"


def raw_log(url: str) -> list[tuple[Any, ...]]:
    """Every record of the log, every column, exactly as stored."""
    if url.startswith("sqlite:"):
        if not path_of(url).exists():
            return []
        with connect(url) as conn:
            return list(conn.execute("SELECT * FROM records ORDER BY position"))
    client, prefix = _redis_parts(url)
    with contextlib.closing(client):
        entries = client.xrange(prefix + "log")
        return [(entry_id, tuple(sorted(fields.items()))) for entry_id, fields in entries]


def raw_checkpoints(url: str) -> list[tuple[Any, ...]]:
    """Every stored checkpoint, exactly as stored."""
    if url.startswith("sqlite:"):
        with connect(url) as conn:
            return list(conn.execute("SELECT * FROM checkpoints ORDER BY name"))
    client, prefix = _redis_parts(url)
    with contextlib.closing(client):
        return sorted(client.hgetall(prefix + "checkpoints").items())


async def answers(source: Any) -> dict[str, Any]:
    """Every standard view's whole answer, from a ledger or a time-travel cut, as plain data."""
    import datetime as dt
    from decimal import Decimal

    import msgspec

    from projections import OpenPositions, Parameters, Performance, Pnl, Signals, TradeHistory
    from projections.grouping import GROUPS

    everything = 10_000_000
    performance = source.view(Performance)
    pnl = source.view(Pnl)
    found: dict[str, Any] = {
        "positions": source.view(OpenPositions).positions(),
        "daily": await performance.daily(),
        "history": await source.view(TradeHistory).trades(limit=everything),
        "signals": await source.view(Signals).signals(limit=everything),
        "parameters": await source.view(Parameters).changes(limit=everything),
        "current": await source.view(Parameters).current(),
    }
    for group in (None, *GROUPS):
        found[f"pnl/{group}"] = pnl.totals(group)
        found[f"performance/{group}"] = await performance.figures(group)
    plain: dict[str, Any] = msgspec.to_builtins(found, builtin_types=(Decimal, dt.datetime))
    return plain
