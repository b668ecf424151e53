"""Where the library's log events go.

The application decides: once it has configured structlog, the library's
loggers follow that configuration. Left unconfigured, structlog would print
every level to stdout, which a bot may be using for its own data (``bot |
tradeledger record -``), and would format a debug line for every append; so
until then the library writes warnings and errors to stderr and drops the rest.
Configure structlog before opening a ledger to see its debug and info events.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

__all__ = ["get_logger"]


def get_logger(name: str = "tradeledger") -> Any:
    """The logger for ``name``: the application's structlog setup, or warnings up to stderr."""
    if structlog.is_configured():
        return structlog.get_logger(name)
    return structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_name=name,
    )
