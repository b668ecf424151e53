"""The lifecycle events an executor records, as one tagged union of frozen Structs.

Money, prices and quantities are ``Decimal``; times are timezone-aware. msgspec
does not check constraints when a Struct is built in Python, so the ledger runs
:func:`validate` on every event it receives: it refuses bad fields with an
:class:`~ledger.errors.InvalidEvent` naming the field and returns the event in
its canonical form (decimals without exponent or trailing zeros, times in UTC),
so that equal values encode and hash equal.

    >>> from datetime import datetime, timezone
    >>> from decimal import Decimal
    >>> TradeOpened(trade_id="t1", symbol="BTCUSDT", side="long", quantity=Decimal("0.5"),
    ...             price=Decimal("64000"), currency="USDT",
    ...             occurred_at=datetime(2026, 1, 5, 9, 30, tzinfo=timezone.utc))  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import math
import re
import typing
import uuid
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from ledger.chain import timestamp
from ledger.errors import InvalidEvent

__all__ = [
    "CLOSE_REASONS",
    "TRADE_EVENTS",
    "Event",
    "FeeCharged",
    "FundingApplied",
    "ParameterChanged",
    "SignalEmitted",
    "StopMoved",
    "TargetMoved",
    "TradeClosed",
    "TradeEvent",
    "TradeIncreased",
    "TradeOpened",
    "TradeReduced",
    "natural_event_id",
    "stream_of",
    "validate",
]

# Field kinds: the checks validate() runs beyond msgspec's own.
_ID = "id"
_TEXT = "text"
_POSITIVE = "positive"
_SIGNED = "signed"
_UNIT = "unit"

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128, extra={"kind": _ID})]
Symbol = Annotated[str, msgspec.Meta(min_length=1, max_length=64, extra={"kind": _TEXT})]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=256, extra={"kind": _TEXT})]
# \Z, not $: msgspec searches with re, and $ also matches before a final newline
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z0-9]{1,16}\Z")]
Positive = Annotated[Decimal, msgspec.Meta(extra={"kind": _POSITIVE})]
Signed = Annotated[Decimal, msgspec.Meta(extra={"kind": _SIGNED})]
Unit = Annotated[Decimal, msgspec.Meta(extra={"kind": _UNIT})]
Timestamp = Annotated[dt.datetime, msgspec.Meta(tz=True)]
Side = Literal["long", "short"]
CloseReason = Literal[
    "take_profit",
    "stop_loss",
    "trailing_stop",
    "manual",
    "signal",
    "liquidation",
    "expired",
    "external",
    "other",
]
FeeKind = Literal["commission", "borrow", "liquidation", "other"]
ChangedBy = Literal["system_auto", "learning_agent", "manual", "emergency"]
ParamValue = str | int | bool | None

CLOSE_REASONS: frozenset[str] = frozenset(typing.get_args(CloseReason))

MAX_DIGITS = 32
MAX_METADATA_BYTES = 16_384
MAX_METADATA_DEPTH = 8
EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MAX_CLOCK_SKEW = dt.timedelta(days=1)

_WIDE = decimal.Context(prec=200, Emax=999_999, Emin=-999_999)


class Event(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag_field="type",
    omit_defaults=True,
    forbid_unknown_fields=True,
):
    """A lifecycle event; the tag (``type``) is the class name."""

    schema_version: ClassVar[int] = 1

    occurred_at: Timestamp
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class SignalEmitted(Event, frozen=True, kw_only=True):
    """A strategy's signal, recorded whether or not a trade follows."""

    signal_id: Id
    symbol: Symbol
    side: Side
    timeframe: Text | None = None
    confidence: Unit | None = None
    entry_price: Positive | None = None
    stop_price: Positive | None = None
    target_price: Positive | None = None
    strategy: Text | None = None
    model: Text | None = None
    session: Text | None = None
    pattern: Text | None = None


class TradeEvent(Event, frozen=True, kw_only=True):
    """An event of one trade's stream, ``trade-<trade_id>``."""

    trade_id: Id


class TradeOpened(TradeEvent, frozen=True, kw_only=True):
    """The fill that opened a trade."""

    symbol: Symbol
    side: Side
    quantity: Positive
    price: Positive
    currency: Currency
    multiplier: Positive = Decimal(1)
    leverage: Positive = Decimal(1)
    margin: Positive | None = None
    stop_price: Positive | None = None
    target_price: Positive | None = None
    trailing_pct: Positive | None = None
    fee: Signed = Decimal(0)
    fill_id: Id | None = None
    order_id: Id | None = None
    signal_id: Id | None = None
    account: Text | None = None
    strategy: Text | None = None
    model: Text | None = None
    confidence: Unit | None = None
    regime: Text | None = None
    session: Text | None = None
    pattern: Text | None = None


class TradeIncreased(TradeEvent, frozen=True, kw_only=True):
    """A scale-in fill."""

    quantity: Positive
    price: Positive
    fee: Signed = Decimal(0)
    fill_id: Id | None = None
    order_id: Id | None = None


class StopMoved(TradeEvent, frozen=True, kw_only=True):
    """The protective stop moved (v1 called ``stop_price`` ``stop`` and had no reason)."""

    schema_version: ClassVar[int] = 2

    stop_price: Positive
    reason: Text | None = None


class TargetMoved(TradeEvent, frozen=True, kw_only=True):
    """The profit target moved."""

    target_price: Positive
    reason: Text | None = None


class TradeReduced(TradeEvent, frozen=True, kw_only=True):
    """A partial exit fill; one of exactly the open quantity closes the trade."""

    quantity: Positive
    price: Positive
    fee: Signed = Decimal(0)
    reason: Text | None = None
    fill_id: Id | None = None
    order_id: Id | None = None


class FeeCharged(TradeEvent, frozen=True, kw_only=True):
    """A cost outside a fill (positive lowers PnL, negative is a rebate)."""

    amount: Signed
    kind: FeeKind


class FundingApplied(TradeEvent, frozen=True, kw_only=True):
    """A funding payment received (positive raises PnL, negative was paid)."""

    amount: Signed
    rate: Signed | None = None


class TradeClosed(TradeEvent, frozen=True, kw_only=True):
    """The exit of all the remaining quantity."""

    price: Positive
    reason: CloseReason
    fee: Signed = Decimal(0)
    fill_id: Id | None = None
    order_id: Id | None = None


class ParameterChanged(Event, frozen=True, kw_only=True):
    """A change to a bot's parameter; decimal values are passed as strings."""

    name: Id
    new_value: ParamValue
    old_value: ParamValue = None
    reason: Text | None = None
    changed_by: ChangedBy
    scope: Text | None = None


AnyEvent = (
    SignalEmitted
    | TradeOpened
    | TradeIncreased
    | StopMoved
    | TargetMoved
    | TradeReduced
    | FeeCharged
    | FundingApplied
    | TradeClosed
    | ParameterChanged
)

EVENT_TYPES: dict[str, type[Event]] = {cls.__name__: cls for cls in typing.get_args(AnyEvent)}
TRADE_EVENTS: frozenset[type[Event]] = frozenset(
    cls for cls in EVENT_TYPES.values() if issubclass(cls, TradeEvent)
)


def stream_of(event: Event) -> str:
    """The stream an event belongs to: ``trade-<id>``, ``signal-<id>`` or ``parameters``."""
    if isinstance(event, TradeEvent):
        return f"trade-{event.trade_id}"
    if isinstance(event, SignalEmitted):
        return f"signal-{event.signal_id}"
    return "parameters"


_KEY_SPACE = uuid.UUID("6f0c1d7e-5b1a-4c53-9a57-0e5d2f1b8a41")
_KEY_BYTES = _KEY_SPACE.bytes
_SEP = "\x1f"  # ids are printable, so the unit separator cannot appear inside one
_FILLS = (TradeIncreased, TradeReduced, TradeClosed)  # a tuple: isinstance of a union is slower
# uuid5's variant bits (10xx) set on the hex digit that holds them
_VARIANT = {digit: "89ab"[int(digit, 16) & 0x3] for digit in "0123456789abcdef"}


def natural_event_id(event: Event) -> str | None:
    """The idempotency key derived from the event's natural key, or None if it has none.

    A retried call carries the same natural key, hence the same id. A trade
    closes only once, so a close without a ``fill_id`` keys on the trade alone.
    """
    parts: tuple[str, ...]
    if isinstance(event, SignalEmitted):
        parts = ("signal", event.signal_id)
    elif isinstance(event, TradeOpened):
        parts = ("open", event.trade_id)
    elif isinstance(event, _FILLS) and event.fill_id:
        parts = ("fill", event.trade_id, event.fill_id)
    elif isinstance(event, TradeClosed):
        parts = ("close", event.trade_id)
    elif isinstance(event, FundingApplied):
        parts = ("funding", event.trade_id, timestamp(event.occurred_at))
    else:
        return None
    # uuid5(_KEY_SPACE, name), spelled out on the hex digest: the UUID object costs
    # more than the hash; the version digit is 5, the variant digit from _VARIANT
    h = hashlib.sha1(_KEY_BYTES + _SEP.join(parts).encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def _kinds(cls: type[Event]) -> dict[str, str | None]:
    """Field name -> the validate() kind of that field, read from its annotation."""
    found: dict[str, str | None] = {}
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        kind = None
        for part in (hint, *typing.get_args(hint)):
            for meta in getattr(part, "__metadata__", ()):
                if isinstance(meta, msgspec.Meta) and meta.extra:
                    kind = meta.extra.get("kind", kind)
        found[name] = kind
    return found


_FIELD_KINDS: dict[type[Event], dict[str, str | None]] = {
    cls: _kinds(cls) for cls in EVENT_TYPES.values()
}


class _Fields(msgspec.Struct, frozen=True):
    """Where validate() finds each kind of field of one event class: (index, name[, ...]),
    the index into ``msgspec.structs.astuple(event)`` (one call, where a getattr per
    field per check cost more than the checks)."""

    numbers: tuple[tuple[int, str, str], ...]  # decimals, with their kind
    texts: tuple[tuple[int, str], ...]  # ids and free text
    strings: tuple[tuple[int, str], ...]  # every field that may hold text (not metadata)
    defaults: tuple[tuple[int, str, Any], ...]  # fields with a default other than None
    occurred_at: int


def _fields(cls: type[Event]) -> _Fields:
    kinds = _FIELD_KINDS[cls]
    fields = msgspec.structs.fields(cls)
    index = {f.name: i for i, f in enumerate(fields)}
    return _Fields(
        numbers=tuple(
            (index[n], n, k) for n, k in kinds.items() if k in (_POSITIVE, _SIGNED, _UNIT)
        ),
        texts=tuple((index[n], n) for n, k in kinds.items() if k in (_ID, _TEXT)),
        strings=tuple((i, f.name) for i, f in enumerate(fields) if f.name != "metadata"),
        defaults=tuple(
            (i, f.name, f.default)
            for i, f in enumerate(fields)
            if f.default is not msgspec.NODEFAULT and f.default is not None
        ),
        occurred_at=index["occurred_at"],
    )


_FIELDS: dict[type[Event], _Fields] = {cls: _fields(cls) for cls in EVENT_TYPES.values()}


def canonical_decimal(value: Decimal) -> Decimal:
    """The one form of a finite decimal: no exponent, no trailing zeros, no negative zero."""
    text = str(value)
    return value if _is_canonical(text) else _canonical(value)


def canonical_numbers(event: Event) -> Event:
    """``event`` with every decimal field in its canonical form (for events read from old
    schemas, which were stored before that form was the rule)."""
    values = msgspec.structs.astuple(event)
    changes: dict[str, Decimal] = {}
    for i, name, _kind in _FIELDS[type(event)].numbers:
        value = values[i]
        if isinstance(value, Decimal) and value.is_finite():
            fixed = canonical_decimal(value)
            if fixed is not value:
                changes[name] = fixed
    return msgspec.structs.replace(event, **changes) if changes else event


def _is_canonical(text: str) -> bool:
    # decided from the text alone: the common case costs no decimal arithmetic
    return "E" not in text and not ("." in text and text[-1] == "0") and text != "-0"


def canonical_text(value: Decimal) -> str:
    """The text of :func:`canonical_decimal`, worked out on the text where it can be."""
    text = str(value)
    if "E" in text:  # str() keeps an exponent below 1e-6, as canonical_decimal's form does
        text = str(Decimal(format(value.normalize(_WIDE), "f")))
    elif "." in text and text[-1] == "0":
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _canonical(value: Decimal) -> Decimal:
    return Decimal(canonical_text(value))


def validate(event: object, *, now: dt.datetime | None = None) -> Event:
    """Check every field of ``event`` and return it in canonical form.

    Raises :class:`InvalidEvent` naming the first bad field. ``now`` bounds
    ``occurred_at`` from above (a day of clock skew is allowed).
    """
    if not isinstance(event, Event) or type(event) not in _FIELDS:
        raise InvalidEvent(
            f"expected one of {', '.join(sorted(EVENT_TYPES))}, got {type(event).__name__}",
            field="type",
            rule="unknown_type",
        )
    fields = _FIELDS[type(event)]
    values = msgspec.structs.astuple(event)
    for i, name, _kind in fields.numbers:
        value = values[i]
        if value is not None and not isinstance(value, Decimal):
            raise InvalidEvent(
                f"{name} must be a Decimal, got {type(value).__name__}",
                field=name,
                rule="decimal",
            )
    texts: list[str] = []
    for i, name in fields.texts:
        value = values[i]
        if value is not None:
            if not isinstance(value, str):
                raise InvalidEvent(
                    f"{name} must be a string, got {type(value).__name__}",
                    field=name,
                    rule="schema",
                )
            texts.append(value)
    occurred_at = values[fields.occurred_at]
    if not isinstance(occurred_at, dt.datetime):
        raise InvalidEvent("occurred_at must be a datetime", field="occurred_at", rule="schema")
    if event.metadata:
        _check_metadata(event.metadata)
    try:
        # msgspec checks lengths, patterns, literals and tz-awareness on conversion only.
        msgspec.convert(msgspec.to_builtins(event), type=type(event))
    except (msgspec.ValidationError, TypeError) as e:
        raise InvalidEvent(str(e), field=field_from(str(e)), rule="schema") from e
    changes: dict[str, Any] = {}
    for i, name, kind in fields.numbers:
        value = values[i]
        if value is not None:
            fixed = _check_decimal(name, value, kind)
            if fixed is not value:
                changes[name] = fixed
    # All the texts at once, then (rarely) which one: a string is printable, or
    # encodes as UTF-8, exactly when each of its parts does.
    if not "".join(texts).isprintable():
        for i, name in fields.texts:
            if values[i] is not None and not values[i].isprintable():
                raise InvalidEvent(f"{name} must be printable text", field=name, rule="printable")
    try:
        "".join([value for value in values if isinstance(value, str)]).encode("utf-8")
    except UnicodeEncodeError:
        for i, name in fields.strings:
            _check_utf8(name, values[i])
    utc = _check_time(occurred_at, now)
    if utc is not occurred_at:
        changes["occurred_at"] = utc
    for i, name, default in fields.defaults:
        # a field set to its default must encode like one left out: same bytes, same hash
        value = changes.get(name, values[i])
        if value is not default and type(value) is type(default) and value == default:
            changes[name] = default
    return msgspec.structs.replace(event, **changes) if changes else event


def field_from(message: str) -> str | None:
    """The top-level field a msgspec error message points at (``$.name...``)."""
    found = re.search(r"`\$\.([A-Za-z_][A-Za-z0-9_]*)", message)
    if found is not None:
        return found.group(1)
    found = re.search(r"(?:unknown|missing required) field `([^`]+)`", message)
    return found.group(1) if found is not None else None


def _check_decimal(name: str, value: Decimal, kind: str | None) -> Decimal:
    if not value.is_finite():
        raise InvalidEvent(
            f"{name} must be a finite number, got {value}", field=name, rule="finite"
        )
    text = str(value)
    fixed = value
    canonical = _is_canonical(text)
    if len(text) > MAX_DIGITS or not canonical:
        # a short text cannot hold too many digits: the exact count only for long ones
        if (len(text) > MAX_DIGITS or "E" in text) and _too_long(value):
            raise InvalidEvent(
                f"{name} has more than {MAX_DIGITS} digits", field=name, rule="digits"
            )
        if not canonical:
            fixed = _canonical(value)
            if len(fixed.as_tuple().digits) > MAX_DIGITS:
                raise InvalidEvent(
                    f"{name} has more than {MAX_DIGITS} digits", field=name, rule="digits"
                )
    if kind == _POSITIVE and fixed <= 0:
        raise InvalidEvent(f"{name} must be > 0, got {fixed}", field=name, rule="positive")
    if kind == _UNIT and not 0 <= fixed <= 1:
        raise InvalidEvent(f"{name} must be within 0..1, got {fixed}", field=name, rule="range")
    if fixed is value or str(fixed) == text:
        return value
    return fixed


def _too_long(value: Decimal) -> bool:
    """Whether the value itself, its trailing zeros aside (and any zero is 0), has more
    than MAX_DIGITS digits or its point more than MAX_DIGITS places from them."""
    exact = decimal.Context(
        prec=len(value.as_tuple().digits), Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN
    )
    reduced = value.normalize(exact)
    if reduced.is_zero():
        return False
    return len(reduced.as_tuple().digits) > MAX_DIGITS or abs(reduced.adjusted()) > MAX_DIGITS


def _check_time(moment: dt.datetime, now: dt.datetime | None) -> dt.datetime:
    offset = moment.utcoffset()
    if offset is None:
        raise InvalidEvent("occurred_at must be timezone-aware", field="occurred_at", rule="tz")
    try:
        utc = moment.astimezone(dt.UTC)
    except OverflowError:
        raise InvalidEvent(
            f"occurred_at {moment.isoformat()} is beyond the last representable instant",
            field="occurred_at",
            rule="range",
        ) from None
    if utc < EARLIEST:
        raise InvalidEvent(
            f"occurred_at {utc.isoformat()} is before 1970", field="occurred_at", rule="range"
        )
    if now is not None and utc > now + MAX_CLOCK_SKEW:
        raise InvalidEvent(
            f"occurred_at {utc.isoformat()} is more than a day in the future",
            field="occurred_at",
            rule="range",
        )
    return utc


def _check_metadata(metadata: dict[str, Any]) -> None:
    if not isinstance(metadata, dict):
        raise InvalidEvent("metadata must be a JSON object", field="metadata", rule="json")
    _check_json(metadata)
    try:
        size = len(msgspec.json.encode(metadata))
    except (TypeError, msgspec.EncodeError) as e:
        raise InvalidEvent(f"metadata is not JSON: {e}", field="metadata", rule="json") from e
    if size > MAX_METADATA_BYTES:
        raise InvalidEvent(
            f"metadata is {size} bytes, more than {MAX_METADATA_BYTES}",
            field="metadata",
            rule="size",
        )
    if _depth(metadata) > MAX_METADATA_DEPTH:
        raise InvalidEvent(
            f"metadata nests deeper than {MAX_METADATA_DEPTH}", field="metadata", rule="depth"
        )
    for key in metadata:
        if not isinstance(key, str):
            raise InvalidEvent("metadata keys must be strings", field="metadata", rule="json")


def _check_utf8(name: str, value: object) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidEvent(f"{name} is not valid UTF-8 text", field=name, rule="utf8") from e


def _check_json(value: object, depth: int = 0) -> None:
    """Refuse anything that would not come back from JSON as it went in."""
    if depth > MAX_METADATA_DEPTH:
        raise InvalidEvent(
            f"metadata nests deeper than {MAX_METADATA_DEPTH}", field="metadata", rule="depth"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidEvent("metadata keys must be strings", field="metadata", rule="json")
            _check_utf8("metadata", key)
            _check_json(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_json(item, depth + 1)
    elif isinstance(value, float | Decimal):
        if not (value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)):
            raise InvalidEvent("metadata numbers must be finite", field="metadata", rule="json")
    elif isinstance(value, str):
        _check_utf8("metadata", value)
    elif not (value is None or isinstance(value, int | bool)):
        raise InvalidEvent(
            f"metadata holds a {type(value).__name__}, which JSON cannot carry",
            field="metadata",
            rule="json",
        )


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list | tuple):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0
