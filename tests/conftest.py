"""Shared fixtures: a fresh ledger file per test, quiet logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import structlog

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """The URL of a ledger file that does not exist yet."""
    return f"sqlite:///{tmp_path / 'ledger.db'}"
