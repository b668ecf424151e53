"""The ways figures can be grouped: by symbol, strategy, session, account or side."""

from __future__ import annotations

from typing import Literal

from ledger.trade import TradeState

GroupBy = Literal["symbol", "strategy", "session", "account", "side"]
GROUPS: tuple[GroupBy, ...] = ("symbol", "strategy", "session", "account", "side")
ALL = ""  # the kind of the ungrouped (per-currency) figures


def keys(trade: TradeState) -> list[tuple[str, str]]:
    """(kind, value) for the ungrouped figures and for every grouping of ``trade``."""
    found = [(ALL, "")]
    for kind in GROUPS:
        value = getattr(trade, kind)
        found.append((kind, "" if value is None else value))
    return found


def check_group(group_by: str | None) -> str:
    """The kind for ``group_by``; a clear error for anything else."""
    if group_by is None:
        return ALL
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}, got {group_by!r}")
    return group_by
