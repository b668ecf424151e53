"""Fixtures for the Redis store's own tests: dedicated servers a test may break."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.redis.support import resume
from tests.servers import RedisServer

MakeServer = Callable[..., RedisServer]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[MakeServer]:
    """Start a redis-server of the test's own (extra arguments after the durable defaults)."""
    servers: list[RedisServer] = []

    def make(*extra: str, server_class: type[RedisServer] = RedisServer) -> RedisServer:
        directory = tmp_path / f"redis-{len(servers)}"
        directory.mkdir()
        server = server_class(directory, extra=extra)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        resume(server)
        server.stop()
