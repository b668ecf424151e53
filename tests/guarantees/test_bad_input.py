"""The bad-input catalogue: every way an event can be wrong, tried at the Python API, at
`tradeledger record` and at import (``replay.trail.parse_line`` then ``record``).

Each case gets a typed error naming its field or its rule, and nothing is
written: the log's raw rows are compared before and after. SQL- and
shell-looking text is not bad input: it is stored verbatim and does nothing.
The catalogue is a table, so it can be counted:

    .venv/bin/python -m tests.guarantees.test_bad_input
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ledger import (
    Append,
    ConcurrencyError,
    IdempotencyConflict,
    InvalidEvent,
    LedgerError,
    ParameterChanged,
    open_ledger,
)
from projections import standard
from replay.trail import parse_line
from tests.guarantees.harness import raw_log
from tests.lifecycles import closed, opened, reduced, signal, stop_moved
from tests.replay.ledgers import cli

WHEN = "2026-01-05T10:00:00Z"
MB10 = "x" * 10_000_000
SAME: Any = object()  # a line's expectation equal to the API's


@dataclass(frozen=True)
class Call:
    """One call at the Python API: ``record(event, **options)`` (or ``record_batch(events)``)."""

    event: Any
    options: dict[str, Any] = field(default_factory=dict)
    batch: list[Any] | None = None


@dataclass(frozen=True)
class Case:
    """One bad input, its spellings at each surface, and the error each must get."""

    name: str
    error: type[LedgerError]
    api: Callable[[], Call] | None
    line: Callable[[], bytes] | None
    field: str | None = None
    rule: str | None = None
    line_field: Any = SAME
    line_rule: Any = SAME
    gap: str | None = None  # a known gap, with the change that closes it
    gap_at: tuple[str, ...] = ("api", "line")  # the surfaces the gap shows at

    def expected(self, surface: str) -> tuple[str | None, str | None]:
        if surface == "api":
            return self.field, self.rule
        return (
            self.field if self.line_field is SAME else self.line_field,
            self.rule if self.line_rule is SAME else self.line_rule,
        )


def opening(**changes: Any) -> dict[str, Any]:
    """A new trade's opening line, with ``changes`` (``...`` removes a field)."""
    base: dict[str, Any] = {
        "type": "TradeOpened",
        "trade_id": "new1",
        "symbol": "BTCUSDT",
        "side": "long",
        "quantity": "1",
        "price": "100",
        "currency": "USDT",
        "occurred_at": WHEN,
    }
    for key, value in changes.items():
        if value is ...:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def line(payload: dict[str, Any] | None = None, **changes: Any) -> Callable[[], bytes]:
    return lambda: json.dumps(payload if payload is not None else opening(**changes)).encode()


def raw(text: bytes) -> Callable[[], bytes]:
    return lambda: text


def api(event: Callable[[], Any], **options: Any) -> Callable[[], Call]:
    return lambda: Call(event(), options)


def new(**fields: Any) -> Callable[[], Any]:
    def build() -> Any:
        given = dict(fields)
        return opened(given.pop("trade_id", "new1"), **given)

    return build


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def at(year: int, *rest: int) -> dt.datetime:
    return (
        dt.datetime(year, *rest, tzinfo=dt.UTC) if rest else dt.datetime(year, 1, 1, tzinfo=dt.UTC)
    )


STOP = {"type": "StopMoved", "trade_id": "open1", "stop_price": "90", "occurred_at": WHEN}
REDUCE = {"type": "TradeReduced", "quantity": "1", "price": "100", "occurred_at": WHEN}

CATALOGUE: list[Case] = [
    # shape
    Case(
        "a required field missing",
        InvalidEvent,
        api(new(price=None)),
        line(price=...),
        "price",
        "schema",
        line_field="price",
        gap_at=("line",),
    ),
    Case("an extra field", InvalidEvent, None, line(colour="red"), "colour", "schema"),
    Case("no type", InvalidEvent, None, line(type=...), "type", "schema"),
    Case(
        "an unknown event type",
        InvalidEvent,
        api(lambda: {"type": "TradeTeleported"}),
        line(type="TradeTeleported"),
        "type",
        "unknown_type",
        line_rule="schema",
    ),
    Case("a line that is not an object", InvalidEvent, None, raw(b"[1, 2, 3]"), None, "json"),
    Case(
        "invalid JSON",
        InvalidEvent,
        None,
        raw(b'{"type": "TradeOpened", "trade_id": '),
        None,
        "json",
    ),
    Case(
        "a duplicate key",
        InvalidEvent,
        None,
        raw(b'{"type": "TradeOpened", "price": "1", "price": "2"}'),
        "price",
        "duplicate_key",
    ),
    Case(
        "non-UTF-8 bytes",
        InvalidEvent,
        api(new(trade_id="t\udcff")),
        raw(json.dumps(opening(trade_id="@@")).encode().replace(b"@@", b"\xff\xfe")),
        "trade_id",
        "printable",
        line_field=None,
        line_rule="utf8",
    ),
    # types
    Case(
        "a quantity of the wrong type",
        InvalidEvent,
        api(new(quantity=1.5)),
        line(quantity=True),
        "quantity",
        "decimal",
        line_rule="schema",
    ),
    Case(
        "a quantity given as text",
        InvalidEvent,
        api(new(quantity="1")),
        line(quantity="one"),
        "quantity",
        "decimal",
        line_rule="schema",
    ),
    Case(
        "an id of the wrong type",
        InvalidEvent,
        api(new(trade_id=123)),
        line(trade_id=123),
        "trade_id",
        "schema",
    ),
    Case(
        "an id given as bytes",
        InvalidEvent,
        api(new(trade_id=b"t1")),
        None,
        "trade_id",
        "schema",
    ),
    Case(
        "a time of the wrong type",
        InvalidEvent,
        api(new(occurred_at="2026-01-05")),
        line(occurred_at=1767607200),
        "occurred_at",
        "schema",
    ),
    Case(
        "a time that is not a time",
        InvalidEvent,
        None,
        line(occurred_at="yesterday"),
        "occurred_at",
        "schema",
    ),
    Case(
        "a side outside long/short",
        InvalidEvent,
        api(new(side="sideways")),
        line(side="sideways"),
        "side",
        "schema",
    ),
    Case(
        "a lowercase currency",
        InvalidEvent,
        api(new(currency="usdt")),
        line(currency="usdt"),
        "currency",
        "schema",
    ),
    Case(
        "a currency with a trailing newline",
        InvalidEvent,
        api(new(currency="USDT\n")),
        line(currency="USDT\n"),
        "currency",
        "schema",
    ),
    Case(
        "a time past the last instant in UTC",
        InvalidEvent,
        api(
            new(
                occurred_at=dt.datetime(
                    9999, 12, 31, 22, tzinfo=dt.timezone(-dt.timedelta(hours=5))
                )
            )
        ),
        line(occurred_at="9999-12-31T22:00:00-05:00"),
        "occurred_at",
        "range",
    ),
    Case(
        "metadata given for an event whose own metadata is not an object",
        InvalidEvent,
        api(new(metadata=None), metadata={"run": 1}),
        None,
        "metadata",
        "schema",
    ),
    Case(
        "a parameter value of a type JSON keeps inexact",
        InvalidEvent,
        api(
            lambda: ParameterChanged(
                name="p",
                new_value=1.5,  # type: ignore[arg-type]
                changed_by="manual",
                occurred_at=at(2026),
            )
        ),
        line(
            {
                "type": "ParameterChanged",
                "name": "p",
                "new_value": 1.5,
                "changed_by": "manual",
                "occurred_at": WHEN,
            }
        ),
        "new_value",
        "schema",
    ),
    # numbers
    Case(
        "a zero quantity",
        InvalidEvent,
        api(new(quantity=Decimal(0))),
        line(quantity="0"),
        "quantity",
        "positive",
    ),
    Case(
        "a negative price",
        InvalidEvent,
        api(new(price=Decimal(-5))),
        line(price="-5"),
        "price",
        "positive",
    ),
    Case("NaN", InvalidEvent, api(new(price=Decimal("NaN"))), line(price="NaN"), "price", "finite"),
    Case(
        "a bare NaN in JSON",
        InvalidEvent,
        None,
        raw(json.dumps(opening(price="@@")).encode().replace(b'"@@"', b"NaN")),
        None,
        "json",
    ),
    Case(
        "Infinity",
        InvalidEvent,
        api(new(price=Decimal("Infinity"))),
        line(price="Infinity"),
        "price",
        "finite",
    ),
    Case(
        "a bare -Infinity in JSON",
        InvalidEvent,
        None,
        raw(json.dumps(opening(price="@@")).encode().replace(b'"@@"', b"-Infinity")),
        None,
        "json",
    ),
    Case(
        "1e400",
        InvalidEvent,
        api(new(price=Decimal("1e400"))),
        line(price="1e400"),
        "price",
        "digits",
    ),
    Case(
        "1e400 as a JSON number",
        InvalidEvent,
        None,
        raw(json.dumps(opening(price="@@")).encode().replace(b'"@@"', b"1e400")),
        "price",
        "digits",
    ),
    Case(
        "a 40-digit decimal",
        InvalidEvent,
        api(new(quantity=Decimal("1" * 40))),
        line(quantity="1" * 40),
        "quantity",
        "digits",
    ),
    Case(
        "a 40-digit fraction",
        InvalidEvent,
        api(new(quantity=Decimal("1e-40"))),
        line(quantity="0." + "0" * 39 + "1"),
        "quantity",
        "digits",
    ),
    Case(
        "a confidence above 1",
        InvalidEvent,
        api(lambda: signal("s9", confidence=Decimal("1.5"))),
        line(
            {
                "type": "SignalEmitted",
                "signal_id": "s9",
                "symbol": "BTCUSDT",
                "side": "long",
                "confidence": "1.5",
                "occurred_at": WHEN,
            }
        ),
        "confidence",
        "range",
    ),
    # times
    Case(
        "a naive datetime",
        InvalidEvent,
        api(new(occurred_at=dt.datetime(2026, 1, 5))),
        line(occurred_at="2026-01-05T10:00:00"),
        "occurred_at",
        "schema",
    ),
    Case(
        "a far-future time",
        InvalidEvent,
        api(new(occurred_at=at(2999))),
        line(occurred_at="2999-01-01T00:00:00Z"),
        "occurred_at",
        "range",
    ),
    Case(
        "a time before 1970",
        InvalidEvent,
        api(new(occurred_at=at(1969, 12, 31))),
        line(occurred_at="1969-12-31T23:59:59Z"),
        "occurred_at",
        "range",
    ),
    # strings
    Case(
        "an empty id", InvalidEvent, api(new(trade_id="")), line(trade_id=""), "trade_id", "schema"
    ),
    Case(
        "a 10 MB string",
        InvalidEvent,
        api(new(symbol=MB10)),
        line(symbol=MB10),
        "symbol",
        "schema",
        line_field=None,
        line_rule="size",
    ),
    Case(
        "control characters in an id",
        InvalidEvent,
        api(new(trade_id="t\x1b[31m")),
        line(trade_id="t\x1b[31m"),
        "trade_id",
        "printable",
    ),
    Case(
        "an unpaired surrogate in free text",
        InvalidEvent,
        api(
            lambda: ParameterChanged(
                name="p", new_value="\udcff", changed_by="manual", occurred_at=at(2026)
            )
        ),
        line(
            {
                "type": "ParameterChanged",
                "name": "p",
                "new_value": "\udcff",
                "changed_by": "manual",
                "occurred_at": WHEN,
            }
        ),
        "new_value",
        "utf8",
    ),
    # metadata
    Case(
        "oversized metadata",
        InvalidEvent,
        api(new(metadata={"pad": "x" * 20_000})),
        line(metadata={"pad": "x" * 20_000}),
        "metadata",
        "size",
    ),
    Case(
        "deeply nested metadata",
        InvalidEvent,
        api(new(metadata=nested(20))),
        line(metadata=nested(20)),
        "metadata",
        "depth",
    ),
    Case(
        "JSON nested a hundred thousand deep",
        InvalidEvent,
        None,
        raw(
            json.dumps(opening(metadata="@@"))
            .encode()
            .replace(b'"@@"', b"[" * 100_000 + b"]" * 100_000)
        ),
        None,
        "json",
    ),
    Case(
        "metadata that is not an object",
        InvalidEvent,
        api(new(), metadata=[1, 2]),
        line(metadata=[1, 2]),
        "metadata",
        "json",
    ),
    Case(
        "a NaN in metadata",
        InvalidEvent,
        api(new(metadata={"x": float("nan")})),
        None,
        "metadata",
        "json",
    ),
    Case(
        "a non-JSON value in metadata",
        InvalidEvent,
        api(new(metadata={"x": object()})),
        None,
        "metadata",
        "json",
    ),
    Case(
        "an unpaired surrogate in metadata",
        InvalidEvent,
        api(new(metadata={"x": "\udcff"})),
        line(metadata={"x": "\udcff"}),
        "metadata",
        "utf8",
    ),
    # options
    Case(
        "an expected_version that is not a number",
        InvalidEvent,
        api(new(), expected_version="x"),
        line(expected_version="x"),
        "expected_version",
        "schema",
    ),
    Case(
        "a negative expected_version",
        InvalidEvent,
        api(new(), expected_version=-1),
        line(expected_version=-1),
        "expected_version",
        "schema",
    ),
    Case(
        "an event_id of 200 characters",
        InvalidEvent,
        api(new(), event_id="e" * 200),
        line(event_id="e" * 200),
        "event_id",
        "schema",
    ),
    Case(
        "an event_id that is not a string",
        InvalidEvent,
        api(new(), event_id=5),
        line(event_id=5),
        "event_id",
        "schema",
    ),
    Case(
        "an empty event_id",
        InvalidEvent,
        api(lambda: stop_moved("open1"), event_id=""),
        line(STOP | {"event_id": ""}),
        "event_id",
        "schema",
    ),
    Case("an empty batch", InvalidEvent, lambda: Call(None, batch=[]), None, None, "empty_batch"),
    # rules
    Case(
        "an event for an unknown trade",
        InvalidEvent,
        api(lambda: reduced("ghost")),
        line(REDUCE | {"trade_id": "ghost"}),
        "trade_id",
        "unknown_trade",
    ),
    Case(
        "an event after the close",
        InvalidEvent,
        api(lambda: stop_moved("closed1")),
        line(STOP | {"trade_id": "closed1"}),
        "trade_id",
        "trade_closed",
    ),
    Case(
        "reducing more than is open",
        InvalidEvent,
        api(lambda: reduced("open1", quantity=Decimal(3))),
        line(REDUCE | {"trade_id": "open1", "quantity": "3"}),
        "quantity",
        "over_reduce",
    ),
    Case(
        "opening an existing trade under a new event_id",
        InvalidEvent,
        api(lambda: opened("open1"), event_id="another"),
        line(opening(trade_id="open1", event_id="another")),
        "trade_id",
        "trade_exists",
    ),
    Case(
        "a signal emitted twice under a new event_id",
        InvalidEvent,
        api(lambda: signal("s1"), event_id="another"),
        line(
            {
                "type": "SignalEmitted",
                "signal_id": "s1",
                "symbol": "BTCUSDT",
                "side": "long",
                "occurred_at": WHEN,
                "event_id": "another",
            }
        ),
        "signal_id",
        "signal_exists",
    ),
    Case(
        "an expected-version mismatch",
        ConcurrencyError,
        api(lambda: stop_moved("open1"), expected_version=5),
        line(STOP | {"expected_version": 5}),
        None,
        None,
    ),
    Case(
        "expected_version 0 on an existing stream",
        ConcurrencyError,
        api(lambda: stop_moved("open1"), expected_version=0),
        line(STOP | {"expected_version": 0}),
        None,
        None,
    ),
    Case(
        "a reused event_id with a different payload",
        IdempotencyConflict,
        api(lambda: stop_moved("open1", stop_price=Decimal(80)), event_id="used-id"),
        line(STOP | {"stop_price": "80", "event_id": "used-id"}),
        None,
        None,
    ),
    Case(
        "a natural key reused with a different payload",
        IdempotencyConflict,
        api(lambda: opened("open1", price=Decimal(101))),
        line(opening(trade_id="open1", price="101")),
        None,
        None,
    ),
]

HARMLESS = {
    "SQL": "x'); DROP TABLE records;--",
    "SQL with quotes": "\" OR 1=1; DELETE FROM records WHERE ''='",
    "shell": "$(touch PWNED) `touch PWNED` ; touch PWNED | cat",
}


def count() -> int:
    """How many bad inputs the catalogue holds (plus the harmless texts stored verbatim)."""
    return len(CATALOGUE)


def setup_events() -> list[Append]:
    """What the catalogue's rule cases run against: an open trade, a closed one, a signal."""
    return [
        Append(opened("open1", quantity=Decimal(2))),
        Append(stop_moved("open1"), event_id="used-id"),
        Append(opened("closed1")),
        Append(closed("closed1")),
        Append(signal("s1")),
    ]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed ledger file holding ``setup_events()``."""
    path = tmp_path_factory.mktemp("bad") / "ledger.db"

    async def go() -> None:
        async with open_ledger(f"sqlite:///{path}", standard()) as book:
            await book.record_batch(setup_events())

    asyncio.run(go())
    return path


@pytest.fixture
def base(pristine: Path, tmp_path: Path) -> tuple[str, list[Any]]:
    """This test's own copy of the catalogue's ledger, and its raw rows."""
    shutil.copy(pristine, tmp_path / "ledger.db")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    return url, raw_log(url)


def check(error: LedgerError, case: Case, surface: str) -> None:
    assert isinstance(error, case.error), f"{case.name} at {surface}: {error!r}"
    want_field, want_rule = case.expected(surface)
    if want_field is not None or want_rule is not None:
        assert (getattr(error, "field", None), getattr(error, "rule", None)) == (
            want_field,
            want_rule,
        ), f"{case.name} at {surface}: {error!r}"


async def attempt_api(book: Any, case: Case) -> LedgerError:
    assert case.api is not None
    call = case.api()
    try:
        if call.batch is not None:
            await book.record_batch(call.batch)
        else:
            await book.record(call.event, **call.options)
    except LedgerError as e:
        return e
    raise AssertionError(f"{case.name}: accepted at the API")


async def attempt_import(book: Any, case: Case) -> LedgerError:
    assert case.line is not None
    try:
        item = parse_line(case.line())
        assert item is not None
        await book.record(
            item.event,
            expected_version=item.expected_version,
            event_id=item.event_id,
            metadata=item.metadata,
        )
    except LedgerError as e:
        return e
    raise AssertionError(f"{case.name}: accepted at import")


def marked(cases: list[Case], surface: str) -> list[Any]:
    chosen = [c for c in cases if (c.api if surface == "api" else c.line) is not None]
    return [pytest.param(c, id=c.name) for c in chosen]


@pytest.mark.parametrize("case", marked(CATALOGUE, "api"))
def test_each_bad_input_at_the_python_api_gets_a_typed_error_naming_its_field_or_rule_and_writes_nothing(
    base: tuple[str, list[Any]], case: Case
) -> None:
    """``book.record`` refuses the case with its error class, field and rule; the log's rows are unchanged."""
    url, rows = base

    async def go() -> LedgerError:
        async with open_ledger(url) as book:
            return await attempt_api(book, case)

    check(asyncio.run(go()), case, "api")
    assert raw_log(url) == rows


@pytest.mark.parametrize("case", marked(CATALOGUE, "line"))
def test_each_bad_input_at_import_gets_a_typed_error_naming_its_field_or_rule_and_writes_nothing(
    base: tuple[str, list[Any]], case: Case
) -> None:
    """``parse_line`` then ``record`` refuses the case's line with its error class, field and rule; the log is unchanged."""
    url, rows = base

    async def go() -> LedgerError:
        async with open_ledger(url) as book:
            return await attempt_import(book, case)

    check(asyncio.run(go()), case, "line")
    assert raw_log(url) == rows


def test_every_bad_line_at_tradeledger_record_gets_its_own_typed_error_and_nothing_is_written(
    base: tuple[str, list[Any]], tmp_path: Path
) -> None:
    """One file of every bad line: each line's JSON error names its class, field and rule; exit 1; the log is unchanged."""
    url, rows = base
    cases = [
        c for c in CATALOGUE if c.line is not None and "line" not in ((c.gap and c.gap_at) or ())
    ]
    source = tmp_path / "bad.jsonl"
    source.write_bytes(b"".join(c.line() + b"\n" for c in cases if c.line is not None))
    result = cli(url, "record", str(source))
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    errors = {e["line"]: e for e in map(json.loads, result.stderr.splitlines()[:-1])}
    wrong = []
    for number, case in enumerate(cases, start=1):
        found = errors.get(number, {})
        want_field, want_rule = case.expected("line")
        got = (found.get("error"), found.get("field"), found.get("rule"))
        want = (case.error.__name__, want_field, want_rule)
        if (want_field, want_rule) == (None, None):
            got, want = got[:1], want[:1]
        if got != want:
            wrong.append(f"line {number} ({case.name}): got {got}, want {want}")
    assert not wrong, "\n".join(wrong)
    assert (
        result.stderr.splitlines()[-1]
        == f"error: {len(cases)} line(s) refused; nothing was recorded"
    )
    assert raw_log(url) == rows


def test_one_bad_line_in_an_atomic_record_writes_none_of_the_good_ones(
    base: tuple[str, list[Any]], tmp_path: Path
) -> None:
    """`record --atomic`: good lines around one over-reduce are all refused, exit 1, log unchanged."""
    url, rows = base
    lines = [
        opening(trade_id="fine1"),
        REDUCE | {"trade_id": "open1", "quantity": "3"},
        opening(trade_id="fine2"),
    ]
    result = cli(url, "record", "--atomic", "-", input="".join(json.dumps(x) + "\n" for x in lines))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "nothing was recorded" in result.stderr
    assert raw_log(url) == rows


# harmless text


@pytest.mark.parametrize("text", sorted(HARMLESS.values()), ids=sorted(HARMLESS))
def test_sql_and_shell_looking_text_is_stored_verbatim_and_does_nothing(
    tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Text that looks like SQL or a shell command is recorded at all three surfaces, read back byte for byte, and runs nothing."""
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    fields = {"strategy": text, "symbol": text[:64]}
    metadata = {"note": text, text: text}

    async def go() -> list[Any]:
        async with open_ledger(url, standard()) as book:
            await book.record(opened("api", **fields), metadata=metadata)
            item = parse_line(
                json.dumps(opening(trade_id="import", **fields, metadata=metadata)).encode()
            )
            assert item is not None
            await book.record(item.event, metadata=item.metadata)
        return []

    asyncio.run(go())
    line = json.dumps(opening(trade_id="cli", **fields, metadata=metadata)) + "\n"
    result = cli(url, "record", "-", input=line, cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    async def read() -> list[Any]:
        async with open_ledger(url) as book:
            return [r async for r in book.store.read()]

    records = asyncio.run(read())
    assert [r.event.strategy for r in records] == [text] * 3  # type: ignore[attr-defined]
    assert [r.event.symbol for r in records] == [text[:64]] * 3  # type: ignore[attr-defined]
    assert [r.meta for r in records] == [metadata] * 3
    assert not (tmp_path / "PWNED").exists()
    tables = [row[0] for row in raw_tables(url)]
    assert "records" in tables and "checkpoints" in tables


def raw_tables(url: str) -> list[Any]:
    import sqlite3

    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        return list(conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    finally:
        conn.close()


def test_the_catalogue_has_a_case_for_every_kind_the_issue_names() -> None:
    """Missing and extra fields, wrong types, unknown type, bad numbers, times, strings, metadata, bytes, JSON, rules and retries are all there."""
    names = " ".join(c.name for c in CATALOGUE)
    for kind in (
        "missing",
        "extra",
        "wrong type",
        "unknown event type",
        "zero",
        "negative",
        "NaN",
        "Infinity",
        "1e400",
        "40-digit",
        "naive",
        "far-future",
        "before 1970",
        "empty id",
        "10 MB",
        "oversized metadata",
        "nested metadata",
        "non-UTF-8",
        "invalid JSON",
        "duplicate key",
        "unknown trade",
        "after the close",
        "more than is open",
        "expected-version mismatch",
        "reused event_id",
    ):
        assert kind in names, kind
    assert not [
        c for c in CATALOGUE if c.field is None and c.rule is None and c.error is InvalidEvent
    ]


if __name__ == "__main__":
    gaps = [c for c in CATALOGUE if c.gap]
    print(
        f"{count()} bad inputs ({sum(c.api is not None for c in CATALOGUE)} at the Python API, "
        f"{sum(c.line is not None for c in CATALOGUE)} as lines for record and import), "
        f"{len(gaps)} known gaps; {len(HARMLESS)} harmless texts stored verbatim"
    )
