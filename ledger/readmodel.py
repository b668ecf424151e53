"""A local SQLite file (or memory) for table projections, when the log lives elsewhere.

The Redis store keeps its table projections here, one file per host, and
time travel builds its views in memory: both can always be rebuilt from the log.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from ledger.errors import LedgerClosed, StoreUnavailable

__all__ = ["LocalReadModel"]


class LocalReadModel:
    """Table projections' rows in a SQLite file of their own (``":memory:"`` for none)."""

    def __init__(self, path: str = ":memory:", *, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        if self.path != ":memory:" and not os.path.exists(self.path):
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            self._conn = await asyncio.to_thread(self._connect)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"cannot open the read model {self.path}: {e}") from e

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        if self.path != ":memory:":
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    async def aclose(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            async with self._lock:
                await asyncio.to_thread(conn.close)

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerClosed("the read model is not open")
        return self._conn

    async def transact(
        self, work: Callable[[sqlite3.Connection], Any], *, durable: bool = True
    ) -> Any:
        """Run ``work`` in one transaction; read models never need an fsync."""
        conn = self._live()

        def run() -> Any:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        async with self._lock:
            try:
                return await asyncio.to_thread(run)
            except sqlite3.Error as e:
                raise StoreUnavailable(f"the read model {self.path} failed: {e}") from e

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of a read-only query."""
        conn = self._live()
        async with self._lock:
            try:
                return await asyncio.to_thread(lambda: conn.execute(sql, params).fetchall())
            except sqlite3.Error as e:
                raise StoreUnavailable(f"the read model {self.path} failed: {e}") from e
