"""The public surface of ``projections``: names added or removed only on purpose."""

from __future__ import annotations

import projections

PUBLIC = [
    "Change",
    "ClosedTrade",
    "Day",
    "Figures",
    "OpenPositions",
    "Parameters",
    "Performance",
    "Pnl",
    "PnlRow",
    "Signal",
    "SignalPage",
    "Signals",
    "TradeHistory",
    "TradePage",
    "standard",
]


def test_projections_all_is_sorted_and_pinned() -> None:
    """projections.__all__ is sorted and names exactly the public read models and standard()."""
    assert projections.__all__ == sorted(projections.__all__) == PUBLIC
    assert all(hasattr(projections, name) for name in PUBLIC)


def test_standard_gives_one_fresh_instance_of_each_view() -> None:
    """standard() returns the six standard views, new objects on every call."""
    first, second = projections.standard(), projections.standard()
    assert [type(p).__name__ for p in first] == [
        "OpenPositions",
        "Pnl",
        "Performance",
        "Signals",
        "TradeHistory",
        "Parameters",
    ]
    assert all(a is not b for a, b in zip(first, second, strict=True))
