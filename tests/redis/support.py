"""Helpers for the Redis store's tests: pausing a server, raw views of a ledger, child writers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from ledger import Ledger, Record
from ledger.chain import GENESIS, check_link
from tests import servers
from tests.servers import RedisServer


class ProtectedServer(RedisServer):
    """A redis-server that asks for a password (``--requirepass``)."""

    password = "s3cr3t-Pa55-do-not-leak"

    def __init__(self, directory: Path, *, extra: tuple[str, ...] = ()) -> None:
        super().__init__(directory, extra=("--requirepass", self.password, *extra))

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_timeout=2)

    def url(self, tmp_path: Path, name: str | None = None, **options: str) -> str:
        plain = super().url(tmp_path, name, **options)
        return plain.replace("redis://", f"redis://:{self.password}@", 1)


def pause(server: RedisServer) -> None:
    """SIGSTOP: the server holds every connection open and answers nothing."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)


def resume(server: RedisServer) -> None:
    """SIGCONT, for a server paused by :func:`pause` (harmless otherwise)."""
    if server.process is not None:
        os.kill(server.process.pid, signal.SIGCONT)


def ledger_keys(server: RedisServer, name: str) -> list[tuple[Any, ...]]:
    """Every key of the ledger ``name`` and its content, exactly as Redis holds it."""
    client = server.client()
    try:
        return servers.ledger_keys(client, name)
    finally:
        client.close()


def name_of(url: str) -> str:
    return url.split("ledger=", 1)[1].split("&", 1)[0]


async def all_records(book: Ledger) -> list[Record]:
    return [record async for record in book.store.read()]


def chain_problems(records: list[Record]) -> list[str]:
    """Why ``records`` are not a dense, verifying chain from position 1 (empty when they are)."""
    problems = []
    previous = (0, GENESIS)
    for record in records:
        broken = check_link(record, *previous)
        if broken is not None:
            problems.append(f"{broken.position}: {broken.reason}")
        previous = (record.position, record.hash)
    versions: dict[str, int] = {}
    for record in records:
        expected = versions.get(record.stream_id, 0) + 1
        if record.version != expected:
            problems.append(f"{record.position}: version {record.version}, expected {expected}")
        versions[record.stream_id] = record.version
    if len({r.event_id for r in records}) != len(records):
        problems.append("an event_id appears twice")
    return problems


class Child:
    """A Python child process running ``code``, its stdout lines collected by a thread."""

    def __init__(self, code: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def seen(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def wait_for(self, ready: Callable[[list[str]], bool], timeout: float = 30) -> list[str]:
        """Wait until ``ready(lines)``; fail with the child's stderr if it dies or time runs out."""
        deadline = time.monotonic() + timeout
        while not ready(lines := self.seen()):
            if self.process.poll() is not None:
                self._reader.join(5)
                if ready(lines := self.seen()):
                    return lines
                raise AssertionError(f"the child exited {self.process.returncode}: {self.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the child did not get there in {timeout}s: {lines[-3:]}")
            time.sleep(0.02)
        return lines

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text)
        self.process.stdin.flush()

    def finish(self, timeout: float = 60) -> list[str]:
        """Close stdin, wait for a clean exit, and return every line."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        code = self.process.wait(timeout)
        self._reader.join(5)
        if code != 0:
            raise AssertionError(f"the child exited {code}: {self.stderr()}")
        self._close()
        return self.seen()

    def kill(self) -> list[str]:
        self.process.kill()
        self.process.wait()
        self._reader.join(5)
        self._close()
        return self.seen()

    def stderr(self) -> str:
        assert self.process.stderr is not None
        try:
            return self.process.stderr.read()[-3000:] if self.process.poll() is not None else ""
        except ValueError:
            return ""

    def _close(self) -> None:
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None and not stream.closed:
                stream.close()


async def eventually(check: Callable[[], Any], timeout: float = 10, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(0.02)
