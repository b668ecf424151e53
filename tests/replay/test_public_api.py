"""The public surface of ``replay``: names added or removed only on purpose."""

from __future__ import annotations

import replay

PUBLIC = [
    "Anchor",
    "Cut",
    "ExportFilter",
    "Problem",
    "Report",
    "export",
    "parse_line",
    "read_export",
    "rebuild",
    "travel",
    "verify",
    "verify_records",
]


def test_replay_all_is_sorted_and_pinned() -> None:
    """replay.__all__ is sorted and names exactly the operator layer's public names."""
    assert replay.__all__ == sorted(replay.__all__) == PUBLIC
    assert all(hasattr(replay, name) for name in PUBLIC)
