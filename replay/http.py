"""The HTTP API and the live dashboard: the ledger's views, read-only, over HTTP.

    tradeledger --url sqlite:///bot.db serve          # dashboard at http://127.0.0.1:8080/
    curl -s '127.0.0.1:8080/api/v1/trades?symbol=BTCUSDT&sort_by=net&sort_order=desc'

Every endpoint is a GET and none appends. The server keeps its own copy of
the standard views, folded from the log into memory and kept current through
the store's subscription, so it writes nothing to the ledger: no records, no
checkpoints, no view rows. Answers are the CLI's ``--json`` answers (decimals
as strings, times ISO 8601 UTC); ``X-Ledger-Position`` names the position of
the log an answer reflects. Loopback by default; any other address needs a
bearer token from ``TRADELEDGER_API_TOKEN``, which every request must send.

Starlette and uvicorn come with the ``http`` extra and are imported only when
the server starts, so the rest of the CLI does not need them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hmac
import importlib.metadata
import importlib.resources
import ipaddress
import json
import os
import re
import socket
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import click
import msgspec

import projections as views
from ledger import LedgerError, open_ledger
from ledger.book import Ledger
from ledger.errors import ProjectionFaulted, StoreError
from ledger.logs import get_logger
from ledger.readmodel import LocalReadModel
from ledger.record import Record
from ledger.runner import Runner
from ledger.store import EventStore, safe_url
from projections.history import ClosedTrade
from projections.positions import Position
from replay.trail import ExportFilter, record_row
from replay.travel import travel
from replay.verify import Report, verify

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Book", "create_app", "serve"]

TOKEN_ENV = "TRADELEDGER_API_TOKEN"
PREFIX = "/api/v1"
_NEVER = 2**62  # a checkpoint interval the server never reaches: it writes no checkpoints
_MAX_INT = 2**53
_KEEP_ALIVE = 15.0
_encode = msgspec.json.Encoder(decimal_format="string").encode


# what the API answers (the CLI's --json shapes, as types the schema is made from)


class PnlLine(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Realized figures of one currency (and group), as ``tradeledger pnl --json`` shows them."""

    currency: str
    group_by: str | None
    group: str | None
    gross: Decimal
    fees: Decimal
    funding: Decimal
    closed_trades: int
    net: Decimal

    @classmethod
    def of(cls, row: views.PnlRow) -> PnlLine:
        return cls(
            currency=row.currency,
            group_by=row.group_by,
            group=row.group,
            gross=row.gross,
            fees=row.fees,
            funding=row.funding,
            closed_trades=row.closed_trades,
            net=row.net,
        )


class RecordRow(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One record with every field, hashes included, as ``tradeledger events --json`` shows it."""

    position: int
    stream_id: str
    version: int
    event_id: str
    type: str
    schema_version: int
    occurred_at: str
    recorded_at: str
    data: str
    metadata: str
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, record: Record) -> RecordRow:
        return cls(**record_row(record))


class TradeDetail(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One trade: its figures (open or closed) and its whole event trail."""

    trade_id: str
    status: Literal["open", "closed", "inconsistent"]
    open: Position | None
    closed: ClosedTrade | None
    inconsistent: str | None
    events: list[RecordRow]


class Health(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Whether the store answers, where the log and the views stand, and what durability means."""

    status: Literal["ok", "degraded", "unavailable"]
    reachable: bool
    store: str
    location: str
    durability: str
    head_position: int | None
    head_hash: str | None
    last_recorded_at: dt.datetime | None
    views_position: int
    following: bool
    faulted: dict[str, str]
    error: str | None


class Error(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What went wrong; ``parameter`` names the query parameter or header at fault."""

    error: str
    message: str
    parameter: str | None = None


class _Problem(Exception):
    """An answer other than 200, raised from anywhere in a handler."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        parameter: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = Error(error=error, message=message, parameter=parameter)
        self.headers = dict(headers or {})


def _bad(parameter: str, message: str) -> _Problem:
    return _Problem(400, "invalid_parameter", f"{parameter}: {message}", parameter)


# query parameters: one declaration, used to parse requests and to write the schema


class Param(msgspec.Struct, frozen=True, kw_only=True):
    """One query parameter (or header) of an endpoint."""

    name: str
    kind: Literal["string", "integer", "boolean", "time", "decimal", "choice"]
    help: str
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    default: Any = None
    where: Literal["query", "header", "path"] = "query"

    def schema(self) -> dict[str, Any]:
        found: dict[str, Any]
        if self.kind == "integer":
            top = _MAX_INT if self.maximum is None else self.maximum
            found = {"type": "integer", "minimum": self.minimum or 0, "maximum": top}
        elif self.kind == "boolean":
            found = {"type": "boolean"}
        elif self.kind == "time":
            found = {"type": "string", "format": "date-time"}
        elif self.kind == "decimal":
            found = {"type": "string", "pattern": _DECIMAL.pattern}
        elif self.kind == "choice":
            found = {"type": "string", "enum": list(self.choices)}
        else:
            found = {"type": "string", "minLength": 1, "maxLength": _MAX_TEXT}
        if self.default is not None:
            found["default"] = self.default
        return found

    def parse(self, raw: str) -> Any:
        if self.kind == "integer":
            if not _DIGITS.fullmatch(raw):
                raise _bad(self.name, f"must be a whole number >= {self.minimum or 0}")
            value = int(raw)
            top = _MAX_INT if self.maximum is None else self.maximum
            if value < (self.minimum or 0) or value > top:
                raise _bad(self.name, f"must be from {self.minimum or 0} to {top}")
            return value
        if self.kind == "boolean":
            if raw not in ("true", "false"):
                raise _bad(self.name, "must be true or false")
            return raw == "true"
        if self.kind == "time":
            return _moment(self.name, raw)
        if self.kind == "decimal":
            if not _DECIMAL.fullmatch(raw):
                raise _bad(
                    self.name, "must be a decimal number, 0 or more, such as 10000 or 2500.50"
                )
            return Decimal(raw)
        if self.kind == "choice":
            if raw not in self.choices:
                raise _bad(self.name, f"must be one of {', '.join(self.choices)}")
            return raw
        if not raw or len(raw) > _MAX_TEXT:
            raise _bad(self.name, f"must be 1 to {_MAX_TEXT} characters")
        return raw


_DIGITS = re.compile(r"[0-9]{1,16}")
_DECIMAL = re.compile(r"^[0-9]{1,24}(\.[0-9]{1,24})?$")  # 0 or more: equity, never below
_MAX_TEXT = 512


def _moment(name: str, text: str) -> dt.datetime:
    """An ISO 8601 time, as the CLI reads it: no offset means UTC."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as e:
        raise _bad(name, f"not an ISO 8601 time: {text[:64]!r}") from e
    if moment.utcoffset() is None:
        moment = moment.replace(tzinfo=dt.UTC)
    try:
        return moment.astimezone(dt.UTC)
    except OverflowError:
        # a valid ISO time at the very edge of the calendar: before or after any
        # record of any ledger, which is what the cut then answers
        edge = dt.datetime.min if moment.year == dt.MINYEAR else dt.datetime.max
        return edge.replace(tzinfo=dt.UTC)


def _text(name: str, help: str) -> Param:
    return Param(name=name, kind="string", help=help)


def _int(
    name: str,
    help: str,
    *,
    minimum: int = 0,
    maximum: int | None = None,
    default: int | None = None,
) -> Param:
    return Param(
        name=name, kind="integer", help=help, minimum=minimum, maximum=maximum, default=default
    )


def _flag(name: str, help: str) -> Param:
    return Param(name=name, kind="boolean", help=help)


def _time(name: str, help: str) -> Param:
    return Param(name=name, kind="time", help=help)


def _choice(name: str, help: str, choices: Sequence[str], default: str | None = None) -> Param:
    return Param(name=name, kind="choice", help=help, choices=tuple(choices), default=default)


_GROUPS = ("symbol", "strategy", "session", "account", "side")
_CUT = (
    _int("at_position", "The book as the log stood at this position (like --at-position)."),
    _time("known_at", "The book as the ledger knew it at this time: recorded_at <= known_at."),
    _time("as_of", "The book as events had occurred by this time: occurred_at <= as_of."),
)
_GROUP_BY = _choice("group_by", "Group by symbol, strategy, session, account or side.", _GROUPS)
_CURRENCY = _text("currency", "Only this currency.")
_LAST_EVENT_ID = Param(
    name="Last-Event-ID",
    kind="integer",
    help="Resume after this position (EventSource sends it when it reconnects).",
    where="header",
)


class Operation(msgspec.Struct, frozen=True, kw_only=True):
    """One endpoint: its path, its parameters and what it answers."""

    name: str
    path: str
    summary: str
    params: tuple[Param, ...]
    answers: tuple[Any, ...]  # types msgspec describes as JSON schemas (several: anyOf)
    positioned: bool = True  # answers carry X-Ledger-Position
    media: str = "application/json"
    statuses: tuple[int, ...] = (400,)


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in [
        Operation(
            name="positions",
            path="/positions",
            summary="Open positions: quantity, average entry, stop, target, realized net so far.",
            params=(
                *_CUT,
                _text("symbol", "Only this symbol."),
                _text("account", "Only this account."),
                _text("strategy", "Only this strategy."),
            ),
            answers=(list[Position],),
        ),
        Operation(
            name="pnl",
            path="/pnl",
            summary="Realized PnL per currency (and group): gross, fees, funding, net.",
            params=(*_CUT, _GROUP_BY, _CURRENCY),
            answers=(list[PnlLine],),
        ),
        Operation(
            name="performance",
            path="/performance",
            summary="Performance figures of closed trades per currency (and group), or the daily series.",
            params=(
                *_CUT,
                _GROUP_BY,
                _CURRENCY,
                _flag(
                    "daily",
                    "The daily net series per currency (zero-filled) instead of the figures; "
                    "group_by is ignored with it, as in the CLI.",
                ),
                Param(
                    name="starting_equity",
                    kind="decimal",
                    help="Equity before the first trade (default 0).",
                ),
                _int(
                    "annualization_days",
                    "365, or 252 for stock markets.",
                    minimum=1,
                    maximum=100_000,
                ),
            ),
            answers=(list[views.Figures], list[views.Day]),
        ),
        Operation(
            name="trades",
            path="/trades",
            summary="Closed trades with every figure, filtered, sorted and paged, with the total that matched.",
            params=(
                *_CUT,
                _time("start", "Closed (or opened, with by=opened) at or after this time."),
                _time("end", "... and before this time."),
                _choice("by", "Which time start and end bound.", ("closed", "opened"), "closed"),
                _text("symbol", "Only this symbol."),
                _choice("side", "Only this side.", ("long", "short")),
                _text("strategy", "Only this strategy."),
                _text("session", "Only this session."),
                _text("pattern", "Only this pattern."),
                _text("account", "Only this account."),
                _choice("outcome", "Only this outcome.", ("win", "loss", "breakeven")),
                _CURRENCY,
                _choice(
                    "sort_by",
                    "Sort key (ties by log position).",
                    ("closed_at", "opened_at", "net", "r"),
                    "closed_at",
                ),
                _choice("sort_order", "Sort direction.", ("asc", "desc"), "asc"),
                _int("limit", "Page size.", maximum=1000, default=50),
                _int("offset", "Trades to skip.", default=0),
            ),
            answers=(views.TradePage,),
        ),
        Operation(
            name="trade",
            path="/trades/{trade_id}",
            summary="One trade, open or closed: its figures and its full event trail.",
            params=(
                Param(name="trade_id", kind="string", help="The trade's id.", where="path"),
                *_CUT,
            ),
            answers=(TradeDetail,),
            statuses=(400, 404),
        ),
        Operation(
            name="signals",
            path="/signals",
            summary="Signals in log order, and the trade each led to.",
            params=(
                *_CUT,
                _text("symbol", "Only this symbol."),
                _text("strategy", "Only this strategy."),
                _text("session", "Only this session."),
                _flag(
                    "followed", "Only signals that did (true) or did not (false) lead to a trade."
                ),
                _time("start", "Occurred at or after this time."),
                _time("end", "... and before this time."),
                _int("limit", "Page size.", maximum=1000, default=50),
                _int("offset", "Signals to skip.", default=0),
            ),
            answers=(views.SignalPage,),
        ),
        Operation(
            name="parameters",
            path="/parameters",
            summary="The parameter-change trail in log order, or with current=true the latest value of each.",
            params=(
                *_CUT,
                _text("name", "Only this parameter."),
                _choice(
                    "changed_by",
                    "Only changes by this kind of changer.",
                    ("system_auto", "learning_agent", "manual", "emergency"),
                ),
                _flag(
                    "current",
                    "The latest value of every parameter instead of the trail "
                    "(the other filters are ignored with it, as in the CLI).",
                ),
                _int("limit", "Page size.", maximum=10_000, default=1000),
                _int("offset", "Changes to skip.", default=0),
            ),
            answers=(list[views.Change], dict[str, str | int | bool | None]),
        ),
        Operation(
            name="events",
            path="/events",
            summary="The raw audit trail, every field and hash, filtered like `tradeledger events`.",
            params=(
                _text("stream", "Only this stream (trade-<id>, signal-<id>, parameters)."),
                _text("type", "Only this event type."),
                _text("correlation_id", "Only records with this metadata correlation_id."),
                _int("from_position", "From this position.", minimum=1),
                _int("to_position", "Up to this position.", minimum=1),
                _time("since", "Occurred at or after this time."),
                _time("until", "Occurred at or before this time."),
                *_CUT,
                _int("limit", "At most this many records.", minimum=1, maximum=10_000, default=100),
            ),
            answers=(list[RecordRow],),
        ),
        Operation(
            name="verify",
            path="/verify",
            summary="Re-hash the whole log and check it, like `tradeledger verify --json`.",
            params=(),
            answers=(Report,),
        ),
        Operation(
            name="health",
            path="/health",
            summary="Whether the store answers, the last position, the views' position, the durability.",
            params=(),
            answers=(Health,),
            positioned=False,
            statuses=(503,),
        ),
        Operation(
            name="stream",
            path="/stream",
            summary="Server-Sent Events: each record as it becomes durable (id = position, data = the record).",
            params=(
                _int(
                    "from",
                    "The first position to send (default: the next record). "
                    "A Last-Event-ID header resumes after that position instead.",
                    minimum=1,
                ),
                _int("limit", "Close the stream after this many records.", minimum=1),
                _LAST_EVENT_ID,
            ),
            answers=(str,),
            positioned=False,
            media="text/event-stream",
        ),
    ]
}


def _arguments(request: Request, op: Operation) -> dict[str, Any]:
    """The query parameters of ``request`` as ``op`` declares them; 400 for anything else."""
    declared = {p.name: p for p in op.params if p.where == "query"}
    seen: set[str] = set()
    for key, _ in request.query_params.multi_items():
        if key not in declared:
            known = ", ".join(declared) or "none"
            raise _Problem(
                400,
                "unknown_parameter",
                f"unknown parameter {key[:64]!r}; this endpoint takes: {known}",
                key[:64],
            )
        if key in seen:
            raise _Problem(400, "repeated_parameter", f"{key} is given more than once", key)
        seen.add(key)
    found: dict[str, Any] = {}
    for name, param in declared.items():
        raw = request.query_params.get(name)
        found[name] = param.default if raw is None else param.parse(raw)
    return found


def _one_cut(found: Mapping[str, Any]) -> dict[str, Any]:
    chosen = {k: found[k] for k in ("at_position", "known_at", "as_of") if found.get(k) is not None}
    if len(chosen) > 1:
        names = sorted(chosen)
        raise _Problem(
            400,
            "conflicting_parameters",
            f"give at most one of at_position, known_at, as_of (got {', '.join(names)})",
            names[-1],
        )
    return chosen


# the views the server reads


class Book:
    """The ledger as the server reads it: the store, and views kept current in memory.

    The views are the standard projections, folded from the log into an
    in-memory read model and fed by the store's subscription, so records
    other processes append show up without the server writing a byte.

        async with Book("sqlite:///bot.db") as book:
            book.position
    """

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout
        self.gate = asyncio.Lock()  # live queries and the follower take turns
        self.cuts = asyncio.Semaphore(2)  # folds for time-travel answers, at most two at once
        self.verifying = asyncio.Lock()
        self.verified: Report | None = None
        self.verified_from = 0.0  # when the re-hash behind ``verified`` began (monotonic)
        self.following = False
        self.stopping = False
        self._ledger: Ledger = open_ledger(url, timeout=timeout, create=False)
        self._model = LocalReadModel()
        self._runner: Runner | None = None
        self._follower: asyncio.Task[None] | None = None
        self._moved = asyncio.Condition()
        self._log = get_logger("tradeledger.http")

    async def __aenter__(self) -> Book:
        await self._ledger.open()
        try:
            await self._model.open()
            self._runner = Runner(
                self._ledger.store,
                self._model,
                views.standard(),
                clock=self._ledger.clock,
                checkpoint_every=_NEVER,
            )
            await self._runner.open()
        except BaseException:
            await self.aclose()
            raise
        self._follower = asyncio.create_task(self._follow())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop following and close the store; safe to call twice."""
        self.stop_streams()
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        await self._model.aclose()
        await self._ledger.aclose()

    @property
    def store(self) -> EventStore:
        return self._ledger.store

    @property
    def runner(self) -> Runner:
        assert self._runner is not None, "open the book with `async with` first"
        return self._runner

    @property
    def position(self) -> int:
        """The last position the views have folded."""
        return self.runner.position

    async def _follow(self) -> None:
        pause = 0.1
        while True:
            try:
                self.following = True
                async for record in self.store.subscribe(self.position + 1):
                    async with self.gate:
                        await self.runner.offer([record])
                    async with self._moved:
                        self._moved.notify_all()
                    pause = 0.1
                return  # the store was closed
            except LedgerError as e:
                self.following = False
                self._log.warning("follow_interrupted", error=str(e), retry_in=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
            finally:
                self.following = False

    async def wait_past(self, position: int, timeout: float) -> bool:
        """Wait until the views have folded past ``position``; False on timeout or stop."""

        def moved() -> bool:
            return self.stopping or self.position > position

        async with self._moved:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved.wait_for(moved), timeout)
        return not self.stopping and self.position > position

    def stop_streams(self) -> None:
        """End every open event stream (the server is shutting down)."""
        self.stopping = True

        async def wake() -> None:
            async with self._moved:
                self._moved.notify_all()

        with contextlib.suppress(RuntimeError):  # no running loop: nothing is waiting
            asyncio.get_running_loop().create_task(wake())


@dataclasses.dataclass
class _Source:
    """Where one answer comes from: the live views, or a cut folded for it."""

    view: Callable[[type[Any]], Any]
    position: int
    inconsistent: dict[str, str]
    as_of: dt.datetime | None = None


@contextlib.asynccontextmanager
async def _source(
    book: Book,
    cut: Mapping[str, Any],
    *,
    starting_equity: Decimal = Decimal(0),
    annualization_days: int = 365,
) -> AsyncIterator[_Source]:
    """The views an answer reads, like the CLI's: live, or folded in memory for a cut."""
    defaults = starting_equity == 0 and annualization_days == 365
    if not cut and defaults:
        async with book.gate:
            yield _Source(book.runner.view, book.position, {})
        return
    chosen = dict(cut) or {"at_position": book.position}
    standard = views.standard(
        starting_equity=starting_equity, annualization_days=annualization_days
    )
    async with book.cuts, travel(book.url, standard, **chosen) as found:
        yield _Source(found.view, found.position, found.inconsistent, chosen.get("as_of"))


# the handlers


@contextlib.asynccontextmanager
async def _reading(records: AsyncIterator[Record]) -> AsyncIterator[AsyncIterator[Record]]:
    """``records``, closed on the way out: a store's read fetches ahead, and an answer may stop early."""
    try:
        yield records
    finally:
        close = getattr(records, "aclose", None)
        if close is not None:
            await close()


async def _selected(store: EventStore, where: ExportFilter) -> AsyncIterator[Record]:
    """What the CLI's ``events`` lists (``select``), through the stream index for one stream."""
    if where.stop == 0:
        return
    if where.stream_id is not None:
        for record in await store.read_stream(where.stream_id):
            last = record.position if where.stop is None else where.stop
            if (where.start or 1) <= record.position <= last and where.admits(record):
                yield record
        return
    async with _reading(store.read(where.start or 1, where.stop)) as records:
        async for record in records:
            if where.admits(record):
                yield record


def _respond(
    body: object,
    *,
    status: int = 200,
    position: int | None = None,
    inconsistent: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    from starlette.responses import Response

    found = {"Cache-Control": "no-store", **(headers or {})}
    if position is not None:
        found["X-Ledger-Position"] = str(position)
    if inconsistent:
        # ASCII JSON of the first few: a header cannot hold everything or any byte
        shown = dict(list(inconsistent.items())[:20])
        found["X-Ledger-Inconsistent"] = json.dumps(shown, ensure_ascii=True)
    return Response(_encode(body), status_code=status, media_type="application/json", headers=found)


class Api:
    """The endpoints over one open :class:`Book`."""

    def __init__(self, book: Book) -> None:
        self.book = book

    async def positions(self, request: Request) -> Response:
        found = _arguments(request, OPERATIONS["positions"])
        async with _source(self.book, _one_cut(found)) as source:
            trades = source.view(views.OpenPositions).positions(
                symbol=found["symbol"], account=found["account"], strategy=found["strategy"]
            )
            return _respond(
                [Position.of(t) for t in trades],
                position=source.position,
                inconsistent=source.inconsistent,
            )

    async def pnl(self, request: Request) -> Response:
        found = _arguments(request, OPERATIONS["pnl"])
        async with _source(self.book, _one_cut(found)) as source:
            rows = source.view(views.Pnl).totals(found["group_by"], currency=found["currency"])
            return _respond(
                [PnlLine.of(r) for r in rows],
                position=source.position,
                inconsistent=source.inconsistent,
            )

    async def performance(self, request: Request) -> Response:
        found = _arguments(request, OPERATIONS["performance"])
        async with _source(
            self.book,
            _one_cut(found),
            starting_equity=found["starting_equity"] or Decimal(0),
            annualization_days=found["annualization_days"] or 365,
        ) as source:
            view = source.view(views.Performance)
            answer: object
            if found["daily"]:
                answer = await view.daily(currency=found["currency"])
            else:
                answer = await view.figures(found["group_by"], currency=found["currency"])
            return _respond(answer, position=source.position, inconsistent=source.inconsistent)

    async def trades(self, request: Request) -> Response:
        found = _arguments(request, OPERATIONS["trades"])
        async with _source(self.book, _one_cut(found)) as source:
            page = await source.view(views.TradeHistory).trades(
                start=found["start"],
                end=found["end"],
                by=found["by"],
                symbol=found["symbol"],
                side=found["side"],
                strategy=found["strategy"],
                session=found["session"],
                pattern=found["pattern"],
                account=found["account"],
                outcome=found["outcome"],
                currency=found["currency"],
                sort_by=found["sort_by"],
                descending=found["sort_order"] == "desc",
                limit=found["limit"],
                offset=found["offset"],
            )
            return _respond(page, position=source.position, inconsistent=source.inconsistent)

    async def trade(self, request: Request) -> Response:
        found = _arguments(request, OPERATIONS["trade"])
        trade_id = str(request.path_params["trade_id"])
        async with _source(self.book, _one_cut(found)) as source:
            closed = await source.view(views.TradeHistory).get(trade_id)
            still_open = source.view(views.OpenPositions).get(trade_id)
            reason = source.inconsistent.get(trade_id)
            if closed is None and still_open is None and reason is None:
                raise _Problem(404, "not_found", f"no trade {trade_id[:128]!r} at this position")
            trail = [
                RecordRow.of(r)
                for r in await self.book.store.read_stream(f"trade-{trade_id}")
                if r.position <= source.position
                and (source.as_of is None or r.occurred_at <= source.as_of)
            ]
            status: Literal["open", "closed", "inconsistent"] = (
                "closed"
                if closed is not None
                else "open"
                if still_open is not None
                else "inconsistent"
            )
            detail = TradeDetail(
                trade_id=trade_id,
                status=status,
                open=Position.of(still_open) if still_open is not None else None,
                closed=closed,
                inconsistent=reason,
                events=trail,
            )
            return _respond(detail, position=source.position, inconsistent=source.inconsistent)

    async def signals(self, request: Request) -> Response:
        found = _arguments(request, OPERATIONS["signals"])
        async with _source(self.book, _one_cut(found)) as source:
            page = await source.view(views.Signals).signals(
                symbol=found["symbol"],
                strategy=found["strategy"],
                session=found["session"],
                followed=found["followed"],
                start=found["start"],
                end=found["end"],
                limit=found["limit"],
                offset=found["offset"],
            )
            return _respond(page, position=source.position, inconsistent=source.inconsistent)

    async def parameters(self, request: Request) -> Response:
        found = _arguments(request, OPERATIONS["parameters"])
        async with _source(self.book, _one_cut(found)) as source:
            view = source.view(views.Parameters)
            answer: object
            if found["current"]:
                answer = await view.current()
            else:
                answer = await view.changes(
                    name=found["name"],
                    changed_by=found["changed_by"],
                    limit=found["limit"],
                    offset=found["offset"],
                )
            return _respond(answer, position=source.position, inconsistent=source.inconsistent)

    async def events(self, request: Request) -> Response:
        """Like `tradeledger events`, read at the head: the cuts combine as the CLI's do."""
        found = _arguments(request, OPERATIONS["events"])
        store = self.book.store
        last = (await store.head()).position
        if found["at_position"] is not None:
            last = min(last, found["at_position"])
        if found["known_at"] is not None:
            last = min(last, await store.position_at(found["known_at"]))
        until = found["until"]
        if found["as_of"] is not None:
            until = found["as_of"] if until is None else min(until, found["as_of"])
        stop = last if found["to_position"] is None else min(last, found["to_position"])
        where = ExportFilter(
            start=found["from_position"],
            stop=stop,
            since=found["since"],
            until=until,
            stream_id=found["stream"],
            type=found["type"],
            correlation_id=found["correlation_id"],
        )
        rows: list[RecordRow] = []
        async with _reading(_selected(store, where)) as records:
            async for record in records:
                rows.append(RecordRow.of(record))
                if len(rows) >= found["limit"]:
                    break
        return _respond(rows, position=last)

    async def verify(self, request: Request) -> Response:
        _arguments(request, OPERATIONS["verify"])
        book = self.book
        asked = time.monotonic()
        # One full re-hash at a time. A request shares a report only if that re-hash
        # began after it came: an unchanged head proves nothing about the records
        # below it, which is what tampering changes.
        async with book.verifying:
            report = book.verified
            if report is None or book.verified_from < asked:
                began = time.monotonic()
                report = book.verified = await verify(book.url)
                book.verified_from = began
        return _respond(report, position=report.head_position)

    async def health(self, request: Request) -> Response:
        _arguments(request, OPERATIONS["health"])
        book = self.book
        store = book.store
        faulted = {p.name: p.faulted for p in book.runner.projections if p.faulted is not None}
        try:
            head = await store.head()
            durability = store.durability
        except LedgerError as e:
            return _respond(
                Health(
                    status="unavailable",
                    reachable=False,
                    store=type(store).__name__,
                    location=safe_url(book.url),
                    durability="unknown: the store does not answer",
                    head_position=None,
                    head_hash=None,
                    last_recorded_at=None,
                    views_position=book.position,
                    following=book.following,
                    faulted=faulted,
                    error=f"{type(e).__name__}: {e}",
                ),
                status=503,
            )
        return _respond(
            Health(
                status="degraded" if faulted or not book.following else "ok",
                reachable=True,
                store=type(store).__name__,
                location=safe_url(book.url),
                durability=durability,
                head_position=head.position,
                head_hash=head.hash,
                last_recorded_at=head.recorded_at,
                views_position=book.position,
                following=book.following,
                faulted=faulted,
                error=None,
            )
        )

    async def stream(self, request: Request) -> Response:
        from starlette.responses import StreamingResponse

        found = _arguments(request, OPERATIONS["stream"])
        book = self.book
        start = found["from"] or book.position + 1
        resume = request.headers.get("last-event-id")
        if resume is not None:
            start = _LAST_EVENT_ID.parse(resume.strip()) + 1
        limit: int | None = found["limit"]

        async def frames() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            sent, next_position = 0, start
            while not book.stopping:
                if book.position >= next_position:
                    async with _reading(book.store.read(next_position, book.position)) as records:
                        async for record in records:
                            row = _encode(record_row(record))
                            yield b"id: %d\ndata: %s\n\n" % (record.position, row)
                            next_position = record.position + 1
                            sent += 1
                            if limit is not None and sent >= limit:
                                return
                elif not await book.wait_past(next_position - 1, _KEEP_ALIVE) and not book.stopping:
                    yield b": keep-alive\n\n"

        return StreamingResponse(
            frames(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def openapi(self, request: Request) -> Response:
        return _respond(request.app.state.openapi)


# the dashboard

_ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


def _asset(name: str) -> bytes:
    return importlib.resources.files("replay").joinpath("dashboard", name).read_bytes()


# the edge: authentication, host check, security headers, access log, last-resort errors

_CSP = (
    "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", _CSP.encode()),
]


def _printable(text: str) -> str:
    return (
        text
        if text.isprintable()
        else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    )


class _Edge:
    """Pure ASGI middleware in front of every request (streams included)."""

    def __init__(self, app: ASGIApp, *, token: str | None, hosts: frozenset[str] | None) -> None:
        self.app = app
        self.token = None if token is None else token.encode()
        self.hosts = hosts
        self.log = get_logger("tradeledger.http")

    def _refusal(self, scope: Scope) -> _Problem | None:
        headers = dict(scope.get("headers") or [])
        if self.token is not None:
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
                return _Problem(
                    401,
                    "unauthorized",
                    "send the API token as Authorization: Bearer <token>",
                    "Authorization",
                    {"WWW-Authenticate": 'Bearer realm="tradeledger"'},
                )
        elif self.hosts is not None and b"host" in headers:
            # a loopback server without a token answers only to loopback names (no DNS rebinding)
            host = headers[b"host"].decode("latin-1").lower()
            name = host[1:].partition("]")[0] if host.startswith("[") else host.partition(":")[0]
            if name not in self.hosts:
                return _Problem(
                    400, "bad_host", "this server answers only to loopback names", "Host"
                )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_guarded(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *_SECURITY_HEADERS]}
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await _problem_response(refusal)(scope, receive, send_guarded)
            else:
                await self.app(scope, receive, send_guarded)
        except Exception as e:
            self.log.error(
                "request_failed",
                method=scope.get("method"),
                path=_printable(scope.get("path", "")),
                error=repr(e),
                traceback=traceback.format_exc(),
            )
            if status == 0:
                internal = _Problem(500, "internal", "the server failed; its log says why")
                await _problem_response(internal)(scope, receive, send_guarded)
        finally:
            self.log.info(
                "request",
                method=scope.get("method"),
                path=_printable(scope.get("path", "")),
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 1),
            )


def _problem_response(problem: _Problem) -> Response:
    return _respond(problem.body, status=problem.status, headers=problem.headers)


# the application


def create_app(book: Book, *, token: str | None = None, loopback: bool = True) -> Starlette:
    """The ASGI app over an open :class:`Book`.

    With ``token``, every request must send ``Authorization: Bearer <token>``;
    without one, a ``loopback`` app answers only to loopback host names.
    """
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.responses import Response
    from starlette.routing import Route

    api = Api(book)
    # a trade id may hold a slash: the path converter takes the rest of the path
    routes = [
        Route(
            PREFIX + op.path.replace("{trade_id}", "{trade_id:path}"),
            getattr(api, op.name),
            methods=["GET"],
            name=op.name,
        )
        for op in OPERATIONS.values()
    ]
    routes.append(Route(PREFIX + "/openapi.json", api.openapi, methods=["GET"]))
    page = _asset("index.html")
    assets = {name: _asset(name) for name in _ASSETS}

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets:
            raise _Problem(404, "not_found", "no such file")
        return Response(assets[name], media_type=_ASSETS[name])

    routes += [
        Route("/", index, methods=["GET"]),
        Route("/dashboard/{name}", asset, methods=["GET"]),
    ]

    async def problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Problem)
        return _problem_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        names = {404: "not_found", 405: "method_not_allowed"}
        error = names.get(exc.status_code, "http_error")
        message = "read-only: every endpoint is a GET" if exc.status_code == 405 else exc.detail
        headers = dict(exc.headers or {})
        return _respond(
            Error(error=error, message=message), status=exc.status_code, headers=headers
        )

    async def ledger_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LedgerError)
        error = (
            "view_faulted"
            if isinstance(exc, ProjectionFaulted)
            else "store_unavailable"
            if isinstance(exc, StoreError)
            else "ledger_error"
        )
        get_logger("tradeledger.http").warning(
            "ledger_error", error=type(exc).__name__, reason=str(exc)
        )
        return _respond(Error(error=error, message=f"{type(exc).__name__}: {exc}"), status=503)

    hosts = None
    if loopback:
        hosts = frozenset({"127.0.0.1", "localhost", "::1"})
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_Edge, token=token, hosts=hosts)],
        exception_handlers={
            _Problem: problem,
            HTTPException: http_error,
            LedgerError: ledger_error,
        },
    )
    app.state.openapi = openapi(secured=token is not None)
    return app


# the schema


def openapi(*, secured: bool = False) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API, made from the same declarations it runs on."""
    described = [op for op in OPERATIONS.values() if op.media == "application/json"]
    schemas, components = msgspec.json.schema_components(
        [*(t for op in described for t in op.answers), Error],
        ref_template="#/components/schemas/{name}",
    )
    found = iter(schemas)
    answers: dict[str, Any] = {}
    for op in described:
        each = [next(found) for _ in op.answers]
        answers[op.name] = each[0] if len(each) == 1 else {"anyOf": each}
    error = next(found)
    paths: dict[str, Any] = {}
    for op in OPERATIONS.values():
        responses: dict[str, Any] = {}
        if op.media == "application/json":
            ok: dict[str, Any] = {
                "description": "OK",
                "content": {op.media: {"schema": answers[op.name]}},
            }
        else:
            ok = {"description": "OK", "content": {op.media: {"schema": {"type": "string"}}}}
        if op.positioned:
            ok["headers"] = {
                "X-Ledger-Position": {
                    "description": "The position of the log this answer reflects.",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 0},
                },
                "X-Ledger-Inconsistent": {
                    "description": "Trades a time-travel cut cannot fold (ASCII JSON: id -> reason).",
                    "schema": {"type": "string"},
                },
            }
        responses["200"] = ok
        statuses = {*op.statuses, 400} if op.params else set(op.statuses)
        if secured:
            statuses.add(401)
        if op.name != "health":
            statuses.add(503)
        for status in sorted(statuses):
            responses[str(status)] = {
                "description": _REASONS[status],
                "content": {"application/json": {"schema": error}},
            }
        paths[PREFIX + op.path] = {
            "get": {
                "operationId": op.name,
                "summary": op.summary,
                "parameters": [
                    {
                        "name": p.name,
                        "in": p.where,
                        "required": p.where == "path",
                        "description": p.help,
                        "schema": p.schema(),
                    }
                    for p in op.params
                ],
                "responses": responses,
            }
        }
    paths[PREFIX + "/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document.",
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **(
                    {
                        "401": {
                            "description": _REASONS[401],
                            "content": {"application/json": {"schema": error}},
                        }
                    }
                    if secured
                    else {}
                ),
            },
        }
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "tradeledger",
            "version": importlib.metadata.version("tradeledger"),
            "description": (
                "The ledger's views, read-only. Decimals are strings, times ISO 8601 UTC. "
                "Every query endpoint takes one of at_position, known_at, as_of to answer "
                "as the book stood then."
            ),
        },
        "paths": paths,
        "components": {"schemas": components},
    }
    if secured:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document


_REASONS = {
    400: "A parameter is invalid; `parameter` names it.",
    401: "The bearer token is missing or wrong.",
    404: "Nothing is there.",
    503: "The store or a view cannot answer now.",
}


# the command


def _address(host: str, port: int) -> tuple[int, Any]:
    """The socket family and address ``host`` names (the first, as a listener would take it)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError as e:
        raise click.UsageError(f"cannot listen on {host}: {e}") from e
    return family, address


def _listen(family: int, address: Any) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        click.echo(
            f"error: cannot listen on {address[0]}:{address[1]}: {e.strerror or e}", err=True
        )
        sys.exit(1)
    return sock


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _token() -> str | None:
    token = os.environ.get(TOKEN_ENV)
    if token is None or token == "":
        return None
    if len(token) < 16 or not all(33 <= ord(c) < 127 for c in token):
        # never echo the value: it may be a real secret with a typo
        raise click.UsageError(
            f"{TOKEN_ENV} must be at least 16 visible ASCII characters (no spaces)"
        )
    return token


@click.command()
@click.option("--url", help="The ledger (default: the group's --url or TRADELEDGER_URL).")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help=f"Address to listen on; anything but loopback needs {TOKEN_ENV}.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port to listen on (0: any free port; the chosen one is printed).",
)
@click.pass_obj
def serve(obj: str | None, url: str | None, host: str, port: int) -> None:
    """Serve the ledger's views read-only over HTTP, with a live dashboard at /.

    The API lives under /api/v1 (schema at /api/v1/openapi.json); nothing it
    does appends. It listens on loopback unless told otherwise; any other
    address needs a bearer token in TRADELEDGER_API_TOKEN, and then every
    request must send `Authorization: Bearer <token>`.

    \b
    Example:
      tradeledger --url sqlite:///demo.db serve --port 8080
      curl -s 'http://127.0.0.1:8080/api/v1/trades?symbol=BTCUSDT&limit=5'
    """
    url = url or obj or os.environ.get("TRADELEDGER_URL") or "sqlite:///tradeledger.db"
    token = _token()
    try:
        import uvicorn
    except ImportError:
        click.echo("error: serving needs the http extra: pip install 'tradeledger[http]'", err=True)
        sys.exit(1)
    family, address = _address(host, port)
    loopback = _is_loopback(address[0])
    if not loopback and token is None:
        raise click.UsageError(
            f"{host} is not a loopback address: set {TOKEN_ENV} to a secret token to serve on it"
        )
    sock = _listen(family, address)
    bound, chosen = sock.getsockname()[:2]
    shown = f"[{bound}]" if ":" in bound else bound

    class Server(uvicorn.Server):
        book: Book | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            if self.book is not None:  # end the event streams, or shutting down waits for them
                asyncio.get_event_loop().call_soon_threadsafe(self.book.stop_streams)

    async def run() -> None:
        async with Book(url) as book:
            app = create_app(book, token=token, loopback=loopback)
            config = uvicorn.Config(
                app,
                log_config=None,
                access_log=False,
                server_header=False,
                proxy_headers=False,
                lifespan="off",
                ws="none",
                limit_concurrency=100,
                timeout_graceful_shutdown=3,
            )
            server = Server(config)
            server.book = book
            click.echo(
                f"serving {safe_url(url)} read-only at http://{shown}:{chosen}/ "
                f"(API under {PREFIX}/, {'bearer token required' if token else 'no token'}); "
                "Ctrl-C stops",
                err=True,
            )
            await server.serve(sockets=[sock])

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    except LedgerError as e:
        click.echo(f"error: {type(e).__name__}: {e}", err=True)
        sys.exit(1)
    finally:
        sock.close()
