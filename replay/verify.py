"""verify: re-hash the whole log and check everything it claims about itself.

From position 1: positions dense, every hash recomputed and chained, versions
contiguous per stream, event ids unique, every record decodes and is a valid
transition for its stream, every checkpoint's hash still in the log, and the
log not shorter than any checkpoint or anchor. The report names the first bad
position and what is wrong there.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, Sequence

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger import open_ledger
from ledger.chain import GENESIS, check_link
from ledger.errors import LedgerError
from ledger.events import SignalEmitted, TradeEvent, TradeOpened, validate
from ledger.record import Record
from ledger.trade import StreamState, fold
from replay.anchor import Anchor, check_signature

__all__ = ["Problem", "Report", "verify", "verify_records"]

_MAX_PROBLEMS = 100


class Problem(msgspec.Struct, frozen=True):
    """One thing wrong, at a position when it has one."""

    position: int | None
    reason: str


class Report(msgspec.Struct, kw_only=True):
    """What verify found."""

    ok: bool
    records: int
    head_position: int
    head_hash: str
    first_bad: Problem | None
    problems: list[Problem]
    checkpoints: int = 0
    anchors: int = 0
    complete: bool = True
    notes: list[str] = msgspec.field(default_factory=list)  # what an ok report could not check


class Checker:
    """Feeds on records in log order and remembers what is wrong with them."""

    def __init__(
        self,
        *,
        watch: Sequence[int] = (),
        start_hash: str = GENESIS,
        links: bool = True,
        whole: bool = False,
    ) -> None:
        self.problems: list[Problem] = []
        self.position = 0
        self.hash = start_hash
        self.records = 0
        self.contiguous = True
        self.started = False
        self._versions: dict[str, int] = {}
        self._states: dict[str, StreamState] = {}
        self._closed: set[str] = set()
        self._ids: set[bytes] = set()
        self._watch = set(watch)
        self.seen: dict[int, str] = {}
        # False for an export filtered by stream, type or time: its records are not
        # neighbours in the log, so only each record's own hash can be checked.
        self.links = links
        if not links:
            self.contiguous = False
        # a whole log (not an export) starts at position 1 from the genesis hash:
        # a missing head is a cut, never a partial export
        self.whole = whole

    def problem(self, position: int | None, reason: str) -> None:
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(Problem(position, reason))

    def feed(self, record: Record, *, check_rules: bool = True) -> None:
        if not self.links or (not self.started and record.position != 1 and not self.whole):
            # a partial export: each record chains from its own prev_hash (filtered),
            # or the chain is checked from the export's first record on
            self.position, self.hash = record.position - 1, record.prev_hash
            self.contiguous = False
        self.started = True
        broken = check_link(record, self.position, self.hash)
        if broken is not None:
            self.problem(broken.position, broken.reason)
            if record.position > self.position + 1 and record.prev_hash != self.hash:
                self.problem(record.position, "prev_hash does not match the previous record's hash")
        self.records += 1
        self.position, self.hash = record.position, record.hash
        if record.position in self._watch:
            self.seen[record.position] = record.hash
        digest = hashlib.blake2b(record.event_id.encode(), digest_size=16).digest()
        if digest in self._ids:
            self.problem(record.position, f"event_id {record.event_id!r} appears twice")
        self._ids.add(digest)
        last = self._versions.get(record.stream_id)
        expected = (0 if last is None else last) + 1
        partial_start = last is None and not self.contiguous
        if record.version != expected and not partial_start and self.links:
            self.problem(
                record.position,
                f"stream {record.stream_id!r} jumps to version {record.version}, expected {expected}",
            )
        self._versions[record.stream_id] = record.version
        if check_rules and self.contiguous:
            self._check_rules(record)

    def _check_rules(self, record: Record) -> None:
        try:
            event = validate(record.event)
        except LedgerError as e:
            self.problem(record.position, f"{record.type} does not decode or validate: {e}")
            return
        stream = record.stream_id
        if stream in self._closed:
            what = (
                "opens an existing trade" if isinstance(event, TradeOpened) else "follows the close"
            )
            self.problem(record.position, f"{record.type} {what} of {stream}")
            return
        try:
            state = fold(self._states.get(stream), event)
        except LedgerError as e:
            self.problem(record.position, f"{record.type} is not a valid transition: {e}")
            return
        if isinstance(event, TradeEvent):
            if state is not None and getattr(state, "closed_at", None) is not None:
                self._states.pop(stream, None)
                self._closed.add(stream)
            else:
                self._states[stream] = state
        elif isinstance(event, SignalEmitted):
            self._closed.add(stream)  # a signal stream holds one event


def check_anchor(
    checker: Checker, anchor: Anchor, public: Ed25519PublicKey, ledger_id: str | None
) -> None:
    """Add to ``checker`` what is wrong between the log it read and ``anchor``."""
    if not check_signature(anchor, public):
        checker.problem(
            None, "the anchor's signature is not valid for this public key: forged or altered"
        )
        return
    if ledger_id is not None and anchor.ledger_id != ledger_id:
        checker.problem(None, f"the anchor is for ledger {anchor.ledger_id}, not {ledger_id}")
        return
    if anchor.position > checker.position:
        checker.problem(
            checker.position + 1,
            f"the log ends at {checker.position} but the anchor was signed at {anchor.position}: "
            "the tail was cut",
        )
        return
    found = checker.seen.get(anchor.position)
    if found is None and anchor.position > 0:
        checker.problem(None, f"position {anchor.position} of the anchor is not in what was read")
    elif anchor.position > 0 and found != anchor.hash:
        checker.problem(
            anchor.position,
            f"the hash at position {anchor.position} differs from the anchor's: the log was rewritten",
        )


def _report(checker: Checker, *, checkpoints: int = 0, anchors: int = 0) -> Report:
    problems = sorted(checker.problems, key=lambda p: (p.position is None, p.position or 0))
    return Report(
        ok=not problems,
        records=checker.records,
        head_position=checker.position,
        head_hash=checker.hash,
        first_bad=problems[0] if problems else None,
        problems=problems,
        checkpoints=checkpoints,
        anchors=anchors,
        complete=checker.contiguous,
    )


async def verify_records(
    records: AsyncIterable[Record],
    *,
    anchors: Sequence[tuple[Anchor, Ed25519PublicKey]] = (),
    ledger_id: str | None = None,
    links: bool = True,
) -> Report:
    """Verify a stream of records (a log or an export) against optional anchors.

    ``links=False`` is for an export filtered by stream, type or time: each
    record's hash is checked, not its place among neighbours.
    """
    checker = Checker(watch=[a.position for a, _ in anchors], links=links)
    async for record in records:
        checker.feed(record)
    for anchor, public in anchors:
        check_anchor(checker, anchor, public, ledger_id)
    return _report(checker, anchors=len(anchors))


async def verify(
    url: str,
    *,
    anchors: Sequence[tuple[Anchor, Ed25519PublicKey]] = (),
    progress: object = None,
) -> Report:
    """Verify the ledger at ``url`` (and its checkpoints) against optional anchors."""
    async with open_ledger(url, create=False) as book:
        store = book.store
        checkpoints = await store.load_checkpoints()
        watch = [a.position for a, _ in anchors] + [c.position for c in checkpoints.values()]
        checker = Checker(watch=watch, whole=True)
        try:
            async for record in store.read(1):
                checker.feed(record)
                if callable(progress):
                    progress(record.position)
        except LedgerError as e:
            checker.problem(checker.position + 1, f"the record cannot be read: {e}")
        for checkpoint in checkpoints.values():
            if checkpoint.position > checker.position:
                checker.problem(
                    checker.position + 1,
                    f"the log ends at {checker.position} but checkpoint {checkpoint.name!r} was "
                    f"taken at {checkpoint.position}: the tail was cut",
                )
            elif checker.seen.get(checkpoint.position) != checkpoint.hash:
                checker.problem(
                    checkpoint.position,
                    f"checkpoint {checkpoint.name!r} does not match the log's hash at its position",
                )
        ledger_id = await store.ledger_id()
        for anchor, public in anchors:
            check_anchor(checker, anchor, public, ledger_id)
        return _report(checker, checkpoints=len(checkpoints), anchors=len(anchors))
