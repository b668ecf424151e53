"""Shared fixtures: a fresh ledger file per test, quiet logs."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
import structlog

from tests.servers import RedisServer

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

# Locally every run draws new examples; CI replays a fixed set, so a landing is
# decided by the code, not by the draw.
hypothesis.settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    hypothesis.settings.load_profile("ci")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """The URL of a ledger file that does not exist yet."""
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server (appendonly, appendfsync always) for the whole run."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer, tmp_path: Path) -> str:
    """The URL of a fresh, empty ledger on the test redis-server."""
    return redis_server.url(tmp_path)
