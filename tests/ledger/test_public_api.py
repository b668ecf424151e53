"""The public surface of ``ledger``: names added or removed only on purpose."""

from __future__ import annotations

import ledger

PUBLIC = [
    "Append",
    "ConcurrencyError",
    "Event",
    "FeeCharged",
    "FundingApplied",
    "IdempotencyConflict",
    "IncompatibleStore",
    "IntegrityError",
    "InvalidEvent",
    "Ledger",
    "LedgerClosed",
    "LedgerError",
    "OutcomeUnknown",
    "ParameterChanged",
    "Pending",
    "ProjectionFaulted",
    "Record",
    "SignalEmitted",
    "StopMoved",
    "StoreError",
    "StoreUnavailable",
    "TargetMoved",
    "TradeClosed",
    "TradeIncreased",
    "TradeOpened",
    "TradeReduced",
    "TradeState",
    "open_ledger",
]


def test_all_is_sorted() -> None:
    """ledger.__all__ is in sorted order."""
    assert ledger.__all__ == sorted(ledger.__all__)


def test_all_is_exactly_the_pinned_public_names() -> None:
    """ledger.__all__ is exactly the pinned list of public names."""
    assert ledger.__all__ == PUBLIC


def test_every_public_name_is_importable_from_the_package() -> None:
    """Each name in ledger.__all__ is an attribute of the package."""
    missing = [name for name in ledger.__all__ if not hasattr(ledger, name)]
    assert missing == []


def test_every_error_derives_from_ledger_error() -> None:
    """All public exception classes share the root LedgerError."""
    errors = [
        getattr(ledger, name)
        for name in ledger.__all__
        if isinstance(getattr(ledger, name), type)
        and issubclass(getattr(ledger, name), BaseException)
    ]
    assert len(errors) == 11
    assert all(issubclass(error, ledger.LedgerError) for error in errors)
    assert issubclass(ledger.StoreUnavailable, ledger.StoreError)
    assert issubclass(ledger.OutcomeUnknown, ledger.StoreError)
