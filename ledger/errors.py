"""Every error tradeledger raises, under one root.

    LedgerError
    ├── InvalidEvent          bad data or an impossible transition; nothing was written
    ├── ConcurrencyError      the stream was not at the expected version; nothing was written
    ├── IdempotencyConflict   the event_id is in the log with a different payload
    ├── IncompatibleStore     not a ledger, or written by a newer tradeledger
    ├── IntegrityError        the log contradicts its checkpoints, anchors or hash chain
    ├── LedgerClosed          the ledger was used after aclose(), or opened twice
    ├── ProjectionFaulted     a view failed after an append; rebuild it
    └── StoreError            the store could not do what was asked
        ├── StoreUnavailable  nothing was sent, or it certainly did not land; retry later
        └── OutcomeUnknown    the append may have landed; retry with the same event_id

Store backends translate driver exceptions into these (``raise ... from e``);
no ``sqlite3`` or ``redis`` exception leaves the library.
"""

from __future__ import annotations


class LedgerError(Exception):
    """The root of every error tradeledger raises."""


class InvalidEvent(LedgerError):
    """The event is malformed or impossible for its stream; nothing was written.

    ``field`` names the offending field (or None), ``rule`` the refused rule.
    """

    def __init__(self, message: str, *, field: str | None = None, rule: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.rule = rule


class ConcurrencyError(LedgerError):
    """The stream was not at the expected version; nothing was written."""

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream_id!r} is at version {actual}, expected {expected}")
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class IdempotencyConflict(LedgerError):
    """The event_id is already in the log with a different payload."""

    def __init__(self, event_id: str, position: int) -> None:
        super().__init__(
            f"event_id {event_id!r} was recorded at position {position} with a different payload"
        )
        self.event_id = event_id
        self.position = position


class IncompatibleStore(LedgerError):
    """The location holds no ledger, or one written by a newer tradeledger."""


class IntegrityError(LedgerError):
    """The log contradicts its own checkpoints, an anchor or its hash chain."""


class LedgerClosed(LedgerError):
    """The ledger is closed, or was already opened; open a new one."""


class ProjectionFaulted(LedgerError):
    """The view raised while applying a record; its queries fail until it is rebuilt."""


class StoreError(LedgerError):
    """The store could not complete the operation."""


class StoreUnavailable(StoreError):
    """The store could not be reached or refused the write; nothing landed."""


class OutcomeUnknown(StoreError):
    """The append was sent but its outcome is unknown; retry with the same event_id.

    ``event_ids`` holds the ids the ledger appended under (one per event, in
    order), including any it generated, so a retry can pass them back.
    """

    event_ids: tuple[str, ...] = ()
