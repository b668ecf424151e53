"""A real redis-server on a free loopback port, in its own directory, for the tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import redis


def ledger_keys(client: redis.Redis, name: str) -> list[tuple[Any, ...]]:
    """Every key of the ledger ``name`` and its content, exactly as Redis holds it."""
    found: list[tuple[Any, ...]] = []
    for key in sorted(client.scan_iter(match=f"tradeledger:{{{name}}}:*")):
        kind = client.type(key)
        if kind == b"stream":
            content: Any = client.xrange(key)
        elif kind == b"hash":
            content = sorted(client.hgetall(key).items())
        elif kind == b"list":
            content = client.lrange(key, 0, -1)
        else:
            content = client.dump(key)
        found.append((key, kind, content))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process; ``kill`` and ``start`` to make it blip."""

    def __init__(
        self, directory: Path, *, port: int | None = None, extra: tuple[str, ...] = ()
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run scripts/install")
        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--protected-mode",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    return
            except redis.exceptions.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no goodbye."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait()
            self.process = None

    def url(self, tmp_path: Path, name: str | None = None, **options: str) -> str:
        """A fresh ledger on this server, its views in ``tmp_path``."""
        name = name or f"t{uuid.uuid4().hex[:12]}"
        query = "&".join(
            f"{k}={v}"
            for k, v in {
                "ledger": name,
                "views": str(tmp_path / f"{name}.views.db"),
                **options,
            }.items()
        )
        return f"redis://127.0.0.1:{self.port}/0?{query}"
