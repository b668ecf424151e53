"""The ``tradeledger`` command: a thin layer over the library.

Tables for people, ``--json`` for machines. Exit 0 on success, 1 when the
ledger refuses or verify fails, 2 on usage errors; expected errors print one
line, never a traceback.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, TypeVar

import click
import msgspec
import structlog
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

import projections as views
from ledger import LedgerError, open_ledger
from ledger.book import Append, Ledger
from ledger.events import canonical_decimal
from ledger.record import Pending, Record
from ledger.store import safe_url
from projections.positions import Position
from replay.anchor import Anchor, load_private_key, load_public_key, new_key, sign
from replay.rebuild import rebuild as rebuild_views
from replay.trail import (
    ExportFile,
    ExportFilter,
    describe,
    parse_line,
    read_export,
    record_row,
    select,
)
from replay.trail import (
    export as export_trail,
)
from replay.travel import Cut, travel
from replay.verify import Problem, Report, verify_records
from replay.verify import verify as verify_ledger

T = TypeVar("T")

DEFAULT_URL = "sqlite:///tradeledger.db"
_encode = msgspec.json.Encoder(decimal_format="string").encode


class DecimalType(click.ParamType[Decimal]):
    """A decimal option: a usage error, not a traceback, when it is not one."""

    name = "decimal"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Decimal:
        if isinstance(value, Decimal):
            return value
        try:
            found = Decimal(str(value))
        except ArithmeticError:
            self.fail(f"{value!r} is not a decimal number", param, ctx)
        if not found.is_finite():
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return found


class Refused(Exception):
    """The ledger said no: exit 1 after the message."""


# plumbing


def _configure_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    import re  # here, not at the top: this function and _run are the guarantees' part of the CLI
    from collections.abc import Mapping, MutableMapping

    credentials = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")

    def scrub(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        # No password in a log line, and nothing a terminal would obey.
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = _safe(credentials.sub(r"\1***@", value))
        return event

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def _run(coro: Awaitable[T]) -> T:
    """Run a command's coroutine; every failure becomes one line on stderr and an exit code.

    1 when the ledger refuses or a store fails, 2 for usage errors, 130 on ^C;
    never a traceback (``-vv`` logs one for an unexpected error). Messages
    never carry a URL's password or a control character.
    """

    import re
    from typing import NoReturn

    async def main() -> T:
        return await coro

    def fail(message: str, code: int) -> NoReturn:
        text = re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@", r"\1***@", message)
        click.echo(_safe(text), err=True)
        sys.exit(code)

    try:
        return asyncio.run(main())
    except Refused as e:
        fail(f"error: {e}", 1)
    except LedgerError as e:
        fail(f"error: {type(e).__name__}: {e}", 1)
    except ValueError as e:
        fail(f"usage error: {e}", 2)
    except BrokenPipeError:
        # the reader went away (`| head`): nothing more to say, and no one to say it to
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as e:
        fail(f"error: {e.strerror or e}: {getattr(e, 'filename', '') or ''}", 1)
    except KeyboardInterrupt:
        sys.exit(130)
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise  # click prints these itself, with its own exit codes
    except Exception as e:
        structlog.get_logger("tradeledger").debug("unexpected_error", exc_info=True)
        fail(f"error: unexpected {type(e).__name__}: {e} (run with -vv for details)", 1)


def _safe(value: object) -> str:
    """Text for a terminal: control characters shown escaped, never obeyed."""
    text = "" if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _amount(value: Decimal | None) -> str:
    if value is None:
        return "-"
    value = canonical_decimal(value)
    if -value.as_tuple().exponent > 10:  # type: ignore[operator]
        value = canonical_decimal(value.quantize(Decimal("1e-10")))
    return str(value)


def _ratio(value: Decimal | None, places: int = 4) -> str:
    if value is None:
        return "-"
    return str(value.quantize(Decimal(1).scaleb(-places)))


def _percent(value: Decimal | None) -> str:
    return "-" if value is None else f"{(value * 100).quantize(Decimal('0.01'))}%"


def _when(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=72)
    for row in rows:
        table.add_row(*(Text(_safe(cell)) for cell in row))
    # piped output is for reading later, not for an 80-column window
    width = None if sys.stdout.isatty() else 240
    Console(markup=False, highlight=False, soft_wrap=False, width=width).print(table)


def _json(value: object) -> None:
    click.echo(_encode(value).decode())


def _moment(text: str | None, name: str) -> dt.datetime | None:
    if text is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as e:
        raise click.BadParameter(f"not an ISO 8601 time: {text!r}", param_hint=name) from e
    if moment.utcoffset() is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment


class Source:
    """The views a query command reads: the live ledger, or a cut of it."""

    def __init__(self, book: Ledger | None, cut: Cut | None) -> None:
        self.book = book
        self.cut = cut

    def view(self, cls: type[T]) -> T:
        if self.cut is not None:
            return self.cut.view(cls)
        assert self.book is not None
        return self.book.view(cls)

    @property
    def inconsistent(self) -> dict[str, str]:
        return self.cut.inconsistent if self.cut is not None else {}


@contextlib.asynccontextmanager
async def _views(
    url: str,
    cut: dict[str, Any],
    *,
    starting_equity: Decimal = Decimal(0),
    annualization_days: int = 365,
) -> AsyncIterator[Source]:
    chosen = {k: v for k, v in cut.items() if v is not None}
    if len(chosen) > 1:
        raise click.UsageError("give at most one of --as-of, --known-at, --at-position")
    defaults = starting_equity == 0 and annualization_days == 365
    standard = views.standard(
        starting_equity=starting_equity, annualization_days=annualization_days
    )
    if not chosen and defaults:
        async with open_ledger(url, standard, create=False) as book:
            yield Source(book, None)
        return
    if not chosen:
        # other settings than the stored views': fold the whole log in memory
        async with open_ledger(url, create=False) as book:
            head = await book.store.head()
        chosen = {"at_position": head.position}
    async with travel(url, standard, **chosen) as found:
        yield Source(None, found)


def _cut_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")(
        command
    )
    command = click.option(
        "--at-position",
        type=click.IntRange(min=0),
        help="The book as the log stood at this position.",
    )(command)
    command = click.option(
        "--known-at", metavar="TIME", help="The book as the ledger knew it at TIME (recorded time)."
    )(command)
    command = click.option(
        "--as-of", metavar="TIME", help="The book as events had occurred by TIME (event time)."
    )(command)
    return command


def _cut(as_of: str | None, known_at: str | None, at_position: int | None) -> dict[str, Any]:
    return {
        "as_of": _moment(as_of, "--as-of"),
        "known_at": _moment(known_at, "--known-at"),
        "at_position": at_position,
    }


def _warn_inconsistent(source: Source, as_json: bool) -> None:
    """Trades the cut cannot fold, on stderr (so --json output stays clean)."""
    if source.inconsistent:
        for trade_id, reason in source.inconsistent.items():
            click.echo(
                f"inconsistent at this cut: trade {_safe(trade_id)}: {_safe(reason)}", err=True
            )


# the command group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar="TRADELEDGER_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="The ledger: sqlite:///path (default from TRADELEDGER_URL).",
)
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug) to stderr.")
@click.version_option(package_name="tradeledger")
@click.pass_context
def main(ctx: click.Context, url: str, verbose: int) -> None:
    """tradeledger: an event-sourced trade ledger for trading bots.

    \b
    Example:
      tradeledger --url sqlite:///bot.db positions
    """
    _configure_logging(verbose)
    ctx.obj = url


@main.command()
@click.argument("source", type=click.File("rb"))
@click.option("--atomic", is_flag=True, help="All lines or none: one bad line writes nothing.")
@click.pass_obj
def record(url: str, source: IO[bytes], atomic: bool) -> None:
    """Record event JSON Lines from FILE (or - for stdin); one JSON line out per durable event.

    Each line is an event's fields with its "type", plus optional "event_id",
    "expected_version" and "metadata"; export files are accepted too.

    \b
    Example:
      echo '{"type":"StopMoved","trade_id":"t1","stop_price":"101","occurred_at":"2026-01-05T10:00:00Z"}' \\
        | tradeledger record -
    """
    _run(_record(url, source, atomic))


def _ack(number: int, record: Record | Pending) -> None:
    if isinstance(record, Pending):
        click.echo(
            _encode(
                {
                    "line": number,
                    "pending": True,
                    "event_id": record.event_id,
                    "stream_id": record.stream_id,
                }
            ).decode()
        )
        sys.stdout.flush()
        return
    click.echo(
        _encode(
            {
                "line": number,
                "position": record.position,
                "stream_id": record.stream_id,
                "version": record.version,
                "event_id": record.event_id,
                "hash": record.hash,
            }
        ).decode()
    )
    sys.stdout.flush()


def _bad(number: int, error: LedgerError) -> None:
    click.echo(_encode({"line": number, **describe(error)}).decode(), err=True)


async def _record(url: str, source: IO[bytes], atomic: bool) -> None:
    if atomic:  # one batch: every line is read and checked before anything is recorded
        parsed: list[tuple[int, Append]] = []
        refused = 0
        async for number, item in _parsed(source):
            if isinstance(item, LedgerError):
                _bad(number, item)
                refused += 1
            else:
                parsed.append((number, item))
        if refused:
            raise Refused(f"{refused} bad line(s); --atomic: nothing was recorded")
        async with open_ledger(url) as book:
            refused = await _check_lines(book, parsed)
            if refused:
                raise Refused(f"{refused} bad line(s); --atomic: nothing was recorded")
            if parsed:
                try:
                    records = await book.record_batch([item for _, item in parsed])
                except LedgerError as e:
                    raise Refused(f"the batch was refused, nothing was recorded: {e}") from e
                for (number, _), found in zip(parsed, records, strict=True):
                    _ack(number, found)
        return
    async with open_ledger(url) as book:
        recorded, refused = await _record_each(book, _parsed(source))
    if refused:
        others = "the others are recorded" if recorded else "nothing was recorded"
        raise Refused(f"{refused} line(s) refused; {others}")


async def _check_lines(book: Ledger, parsed: list[tuple[int, Append]]) -> int:
    """Report every line of an --atomic batch the ledger would refuse, by number, and
    count them."""
    refused = 0
    for (number, _), refusal in zip(
        parsed, await book.check_batch([item for _, item in parsed]), strict=True
    ):
        if refusal is not None:
            _bad(number, refusal)
            refused += 1
    return refused


async def _lines(source: IO[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    """The numbered lines of ``source`` as they come: a pipe's lines are recorded while
    it stays open, and a big file is never held whole. Reads run in a thread, what is
    there up to 64 KiB at a time, so the event loop keeps acknowledging meanwhile."""
    read = getattr(source, "read1", source.read)
    pending, number = b"", 0
    while chunk := await asyncio.to_thread(read, 1 << 16):
        *complete, pending = (pending + chunk).split(b"\n")
        for line in complete:
            number += 1
            yield number, line
    if pending:
        yield number + 1, pending


async def _parsed(source: IO[bytes]) -> AsyncIterator[tuple[int, Append | LedgerError]]:
    """Each non-blank line of ``source`` as what to record, or why it cannot be."""
    async for number, raw in _lines(source):
        line = raw.rstrip(b"\r")
        if not line.strip():
            continue
        try:
            item = parse_line(line)
        except LedgerError as e:
            yield number, e
            continue
        if item is not None:  # an export's header or trailer
            yield number, item


async def _record_each(
    book: Ledger, items: AsyncIterator[tuple[int, Append | LedgerError]]
) -> tuple[int, int]:
    """Record lines in order, many in flight (they share commits); each is acknowledged
    once it and every line before it are done, while the next lines are still read.
    Returns how many lines were recorded and how many refused."""
    recorded = refused = 0
    window: collections.deque[tuple[int, asyncio.Task[Record | Pending]]] = collections.deque()
    failed: list[BaseException] = []

    def settle(_: object = None) -> None:
        nonlocal recorded, refused
        while window and window[0][1].done() and not failed:
            number, task = window.popleft()
            try:
                _ack(number, task.result())
                recorded += 1
            except LedgerError as e:
                _bad(number, e)
                refused += 1
            except BaseException as e:  # not a refusal: the command fails with it
                failed.append(e)

    async for number, item in items:
        if failed:
            break
        if isinstance(item, LedgerError):
            _bad(number, item)
            refused += 1
            continue
        # tasks take their first step in creation order, so lines reach the writer in order
        task = asyncio.create_task(
            book.record(
                item.event,
                expected_version=item.expected_version,
                event_id=item.event_id,
                metadata=item.metadata,
            )
        )
        task.add_done_callback(settle)
        window.append((number, task))
        if len(window) >= 256:
            await asyncio.wait([window[0][1]])
            settle()
    while window and not failed:
        await asyncio.wait([window[0][1]])
        settle()
    if failed:
        raise failed[0]
    return recorded, refused


@main.command()
@_cut_options
@click.option("--symbol", help="Only this symbol.")
@click.option("--account", help="Only this account.")
@click.option("--strategy", help="Only this strategy.")
@click.pass_obj
def positions(
    url: str,
    as_of: str | None,
    known_at: str | None,
    at_position: int | None,
    as_json: bool,
    symbol: str | None,
    account: str | None,
    strategy: str | None,
) -> None:
    """Open positions: quantity, average entry, stop, target, realized net so far.

    \b
    Example:
      tradeledger positions --symbol BTCUSDT --json
    """

    async def go() -> None:
        async with _views(url, _cut(as_of, known_at, at_position)) as source:
            found = source.view(views.OpenPositions).positions(
                symbol=symbol, account=account, strategy=strategy
            )
            _warn_inconsistent(source, as_json)
        if as_json:
            _json([Position.of(t) for t in found])
            return
        _table(
            f"Open positions ({len(found)})",
            [
                "trade",
                "symbol",
                "side",
                "qty",
                "avg entry",
                "stop",
                "target",
                "realized net",
                "fees",
                "funding",
                "ccy",
                "opened",
                "strategy",
            ],
            [
                [
                    t.trade_id,
                    t.symbol,
                    t.side,
                    _amount(t.quantity),
                    _amount(t.average_entry),
                    _amount(t.stop_price),
                    _amount(t.target_price),
                    _amount(t.net),
                    _amount(t.fees),
                    _amount(t.funding),
                    t.currency,
                    _when(t.opened_at),
                    t.strategy or "-",
                ]
                for t in found
            ],
        )

    _run(go())


_GROUP = click.Choice(["symbol", "strategy", "session", "account", "side"])


@main.command()
@_cut_options
@click.option(
    "--group-by", type=_GROUP, help="Group by symbol, strategy, session, account or side."
)
@click.option("--currency", help="Only this currency.")
@click.pass_obj
def pnl(
    url: str,
    as_of: str | None,
    known_at: str | None,
    at_position: int | None,
    as_json: bool,
    group_by: str | None,
    currency: str | None,
) -> None:
    """Realized PnL per currency: gross, fees, funding, net (open trades' exits included).

    \b
    Example:
      tradeledger pnl --group-by symbol
    """

    async def go() -> None:
        async with _views(url, _cut(as_of, known_at, at_position)) as source:
            rows = source.view(views.Pnl).totals(group_by, currency=currency)
            _warn_inconsistent(source, as_json)
        if as_json:
            _json([{**msgspec.to_builtins(r), "net": r.net} for r in rows])
            return
        _table(
            "Realized PnL",
            [
                "currency",
                *([group_by] if group_by else []),
                "gross",
                "fees",
                "funding",
                "net",
                "closed trades",
            ],
            [
                [
                    r.currency,
                    *([r.group] if group_by else []),
                    _amount(r.gross),
                    _amount(r.fees),
                    _amount(r.funding),
                    _amount(r.net),
                    r.closed_trades,
                ]
                for r in rows
            ],
        )

    _run(go())


@main.command()
@_cut_options
@click.option(
    "--group-by", type=_GROUP, help="Group by symbol, strategy, session, account or side."
)
@click.option("--currency", help="Only this currency.")
@click.option("--daily", is_flag=True, help="The daily series instead of the figures.")
@click.option(
    "--starting-equity",
    type=DecimalType(),
    default=Decimal(0),
    show_default=True,
    help="Equity before the first trade.",
)
@click.option(
    "--annualization-days",
    type=click.IntRange(min=1),
    default=365,
    show_default=True,
    help="365, or 252 for stock markets.",
)
@click.pass_obj
def performance(
    url: str,
    as_of: str | None,
    known_at: str | None,
    at_position: int | None,
    as_json: bool,
    group_by: str | None,
    currency: str | None,
    daily: bool,
    starting_equity: Decimal,
    annualization_days: int,
) -> None:
    """Performance of closed trades: win rate, profit factor, expectancy, R, SQN, drawdown, Sharpe, Sortino.

    \b
    Example:
      tradeledger performance --group-by strategy --starting-equity 10000
    """

    async def go() -> None:
        async with _views(
            url,
            _cut(as_of, known_at, at_position),
            starting_equity=starting_equity,
            annualization_days=annualization_days,
        ) as source:
            view = source.view(views.Performance)
            if daily:
                days = await view.daily(currency=currency)
            else:
                figures = await view.figures(group_by, currency=currency)
            _warn_inconsistent(source, as_json)
        if daily:
            if as_json:
                _json(days)
            else:
                _table(
                    "Daily",
                    ["day", "ccy", "trades", "wins", "losses", "net"],
                    [[d.day, d.currency, d.trades, d.wins, d.losses, _amount(d.net)] for d in days],
                )
            return
        if as_json:
            _json(figures)
            return
        if not figures:
            click.echo("no closed trades" + (f" in {currency}" if currency else ""))
        for f in figures:
            title = f"Performance {f.currency}" + (f" {group_by}={f.group}" if group_by else "")
            _table(title, ["figure", "value"], _figure_rows(f))

    _run(go())


def _figure_rows(f: views.Figures) -> list[list[object]]:
    return [
        ["trades (W/L/BE)", f"{f.trades} ({f.wins}/{f.losses}/{f.breakevens})"],
        ["win rate", _percent(f.win_rate)],
        ["net", _amount(f.net)],
        ["gross profit / loss", f"{_amount(f.gross_profit)} / {_amount(f.gross_loss)}"],
        ["profit factor", _ratio(f.profit_factor)],
        ["expectancy", _amount(f.expectancy)],
        ["average win / loss", f"{_amount(f.average_win)} / {_amount(f.average_loss)}"],
        ["largest win / loss", f"{_amount(f.largest_win)} / {_amount(f.largest_loss)}"],
        ["average R", _ratio(f.average_r)],
        ["SQN", _ratio(f.sqn)],
        ["equity (start -> end)", f"{_amount(f.starting_equity)} -> {_amount(f.ending_equity)}"],
        [
            "max drawdown",
            _amount(f.max_drawdown)
            + (f" ({_percent(f.max_drawdown_pct)})" if f.max_drawdown_pct is not None else ""),
        ],
        [
            f"Sharpe / Sortino ({f.annualization_days}d, {f.days} day{'' if f.days == 1 else 's'})",
            f"{_ratio(f.sharpe)} / {_ratio(f.sortino)}",
        ],
        ["longest losing streak", f.longest_losing_streak],
        [
            "average holding",
            "-"
            if f.average_holding_seconds is None
            else f"{_ratio(f.average_holding_seconds / 3600, 2)} h",
        ],
    ]


@main.command()
@_cut_options
@click.option("--symbol")
@click.option("--side", type=click.Choice(["long", "short"]))
@click.option("--strategy")
@click.option("--session")
@click.option("--pattern")
@click.option("--account")
@click.option("--outcome", type=click.Choice(["win", "loss", "breakeven"]))
@click.option(
    "--since", metavar="TIME", help="Closed (or opened, with --by opened) at or after TIME."
)
@click.option("--until", metavar="TIME", help="... and before TIME.")
@click.option("--by", type=click.Choice(["closed", "opened"]), default="closed", show_default=True)
@click.option(
    "--sort-by",
    type=click.Choice(["closed_at", "opened_at", "net", "r"]),
    default="closed_at",
    show_default=True,
)
@click.option("--desc", is_flag=True, help="Sort descending.")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.pass_obj
def history(
    url: str,
    as_of: str | None,
    known_at: str | None,
    at_position: int | None,
    as_json: bool,
    symbol: str | None,
    side: str | None,
    strategy: str | None,
    session: str | None,
    pattern: str | None,
    account: str | None,
    outcome: str | None,
    since: str | None,
    until: str | None,
    by: str,
    sort_by: str,
    desc: bool,
    limit: int,
    offset: int,
) -> None:
    """Closed trades with their figures, filtered, sorted and paged.

    \b
    Example:
      tradeledger history --symbol ETHUSDT --since 2026-01-01 --sort-by net --desc --limit 10
    """

    async def go() -> None:
        async with _views(url, _cut(as_of, known_at, at_position)) as source:
            page = await source.view(views.TradeHistory).trades(
                start=_moment(since, "--since"),
                end=_moment(until, "--until"),
                by=by,  # type: ignore[arg-type]
                symbol=symbol,
                side=side,
                strategy=strategy,
                session=session,
                pattern=pattern,
                account=account,
                outcome=outcome,
                sort_by=sort_by,  # type: ignore[arg-type]
                descending=desc,
                limit=limit,
                offset=offset,
            )
            _warn_inconsistent(source, as_json)
        if as_json:
            _json(page)
            return
        shown = (
            f"{offset + 1}-{offset + len(page.trades)}" if page.trades else f"none past {offset}"
        )
        _table(
            f"Closed trades {shown} of {page.total}",
            [
                "trade",
                "symbol",
                "side",
                "qty",
                "entry",
                "exit",
                "net",
                "fees",
                "R",
                "outcome",
                "reason",
                "closed",
                "ccy",
            ],
            [
                [
                    t.trade_id,
                    t.symbol,
                    t.side,
                    _amount(t.quantity),
                    _amount(t.average_entry),
                    _amount(t.average_exit),
                    _amount(t.net),
                    _amount(t.fees),
                    _ratio(t.r, 2),
                    t.outcome,
                    t.close_reason,
                    _when(t.closed_at),
                    t.currency,
                ]
                for t in page.trades
            ],
        )

    _run(go())


@main.command()
@_cut_options
@click.option("--symbol")
@click.option("--strategy")
@click.option("--session")
@click.option(
    "--followed/--not-followed",
    default=None,
    help="Only signals that did / did not lead to a trade.",
)
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.pass_obj
def signals(
    url: str,
    as_of: str | None,
    known_at: str | None,
    at_position: int | None,
    as_json: bool,
    symbol: str | None,
    strategy: str | None,
    session: str | None,
    followed: bool | None,
    limit: int,
    offset: int,
) -> None:
    """Signals, and the trade each led to.

    \b
    Example:
      tradeledger signals --not-followed --json
    """

    async def go() -> None:
        async with _views(url, _cut(as_of, known_at, at_position)) as source:
            page = await source.view(views.Signals).signals(
                symbol=symbol,
                strategy=strategy,
                session=session,
                followed=followed,
                limit=limit,
                offset=offset,
            )
            _warn_inconsistent(source, as_json)
        if as_json:
            _json(page)
            return
        _table(
            f"Signals ({page.total})",
            [
                "signal",
                "time",
                "symbol",
                "side",
                "confidence",
                "entry",
                "stop",
                "target",
                "strategy",
                "trade",
            ],
            [
                [
                    s.signal_id,
                    _when(s.occurred_at),
                    s.symbol,
                    s.side,
                    _amount(s.confidence),
                    _amount(s.entry_price),
                    _amount(s.stop_price),
                    _amount(s.target_price),
                    s.strategy or "-",
                    s.trade_id or "-",
                ]
                for s in page.signals
            ],
        )

    _run(go())


@main.command()
@_cut_options
@click.option("--name", help="Only this parameter.")
@click.option(
    "--changed-by", type=click.Choice(["system_auto", "learning_agent", "manual", "emergency"])
)
@click.option("--current", is_flag=True, help="The latest value of every parameter.")
@click.pass_obj
def parameters(
    url: str,
    as_of: str | None,
    known_at: str | None,
    at_position: int | None,
    as_json: bool,
    name: str | None,
    changed_by: str | None,
    current: bool,
) -> None:
    """The parameter-change trail (or --current values).

    \b
    Example:
      tradeledger parameters --name risk_per_trade
    """

    async def go() -> None:
        async with _views(url, _cut(as_of, known_at, at_position)) as source:
            view = source.view(views.Parameters)
            latest = await view.current() if current else {}
            changes = [] if current else await view.changes(name=name, changed_by=changed_by)
            _warn_inconsistent(source, as_json)
        if current:
            if as_json:
                _json(latest)
            else:
                _table("Parameters", ["name", "value"], [[k, v] for k, v in latest.items()])
            return
        if as_json:
            _json(changes)
            return
        _table(
            "Parameter changes",
            ["time", "name", "old", "new", "by", "reason", "scope"],
            [
                [
                    _when(c.occurred_at),
                    c.name,
                    c.old_value,
                    c.new_value,
                    c.changed_by,
                    c.reason or "-",
                    c.scope or "-",
                ]
                for c in changes
            ],
        )

    _run(go())


def _filters(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option(
                "--stream",
                "stream_id",
                help="Only this stream (trade-<id>, signal-<id>, parameters).",
            ),
            click.option("--type", "event_type", help="Only this event type."),
            click.option(
                "--correlation-id", help="Only records with this metadata correlation_id."
            ),
            click.option("--from-position", type=click.IntRange(min=1), help="From this position."),
            click.option("--to-position", type=click.IntRange(min=1), help="Up to this position."),
            click.option("--since", metavar="TIME", help="Occurred at or after TIME."),
            click.option("--until", metavar="TIME", help="Occurred at or before TIME."),
        ]
    ):
        command = option(command)
    return command


def _where(
    stream_id: str | None,
    event_type: str | None,
    correlation_id: str | None,
    from_position: int | None,
    to_position: int | None,
    since: str | None,
    until: str | None,
) -> ExportFilter:
    return ExportFilter(
        start=from_position,
        stop=to_position,
        since=_moment(since, "--since"),
        until=_moment(until, "--until"),
        stream_id=stream_id,
        type=event_type,
        correlation_id=correlation_id,
    )


@main.command()
@_filters
@click.option(
    "--at-position", type=click.IntRange(min=0), help="As the log stood at this position."
)
@click.option("--known-at", metavar="TIME", help="As the ledger knew it at TIME.")
@click.option("--as-of", metavar="TIME", help="Events that had occurred by TIME.")
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON Lines for machines.")
@click.pass_obj
def events(
    url: str,
    stream_id: str | None,
    event_type: str | None,
    correlation_id: str | None,
    from_position: int | None,
    to_position: int | None,
    since: str | None,
    until: str | None,
    at_position: int | None,
    known_at: str | None,
    as_of: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The raw audit trail, filtered by stream, type, correlation id, position or time.

    \b
    Example:
      tradeledger events --stream trade-t42 --json
    """

    async def go() -> None:
        where = _where(
            stream_id, event_type, correlation_id, from_position, to_position, since, until
        )
        async with open_ledger(url, create=False) as book:
            stop = where.stop
            if at_position is not None:
                stop = at_position if stop is None else min(stop, at_position)
            moment = _moment(known_at, "--known-at")
            if moment is not None:
                known = await book.store.position_at(moment)
                stop = known if stop is None else min(stop, known)
            cutoff = _moment(as_of, "--as-of")
            if cutoff is not None:
                where = msgspec.structs.replace(
                    where, until=cutoff if where.until is None else min(where.until, cutoff)
                )
            where = msgspec.structs.replace(where, stop=stop)
            found: list[Record] = []
            if stop != 0 and limit:
                async with contextlib.aclosing(select(book.store, where)) as chosen:
                    async for record in chosen:
                        found.append(record)
                        if len(found) >= limit:
                            break
        if as_json:
            for record in found:
                click.echo(_encode(record_row(record)).decode())
            return
        _table(
            f"Events ({len(found)})",
            ["pos", "occurred", "recorded", "stream", "v", "type", "data", "metadata"],
            [
                [
                    r.position,
                    _when(r.occurred_at),
                    _when(r.recorded_at),
                    r.stream_id,
                    r.version,
                    r.type,
                    r.data,
                    r.metadata if r.metadata != "{}" else "",
                ]
                for r in found
            ],
        )

    _run(go())


@main.command()
@click.option(
    "--anchor",
    "anchor_file",
    type=click.Path(exists=True, dir_okay=False),
    help="An anchor line from `tradeledger anchor`.",
)
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False),
    help="The public key the anchor was signed with.",
)
@click.option(
    "--file",
    "export_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Verify an export offline instead of the ledger.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def verify(
    url: str,
    anchor_file: str | None,
    public_key: str | None,
    export_file: str | None,
    as_json: bool,
) -> None:
    """Re-hash the whole log and check it; exit 1 naming the first bad position.

    \b
    Example:
      tradeledger verify --anchor anchor.json --public-key ledger.key.pub
    """
    if bool(anchor_file) != bool(public_key):
        raise click.UsageError("--anchor and --public-key go together")

    async def go() -> None:
        anchors = []
        notes: list[str] = []  # what an ok report could not check
        if anchor_file and public_key:
            key = load_public_key(public_key)
            for line in Path(anchor_file).read_text().splitlines():
                if line.strip():
                    anchors.append((Anchor.parse(line), key))
            if not anchors:  # an auditor who asked for an anchor check gets one, or a failure
                raise Refused(f"{anchor_file} holds no anchor")
        if export_file:
            try:
                report = await _verify_export(export_file, anchors, notes)
            except UnicodeDecodeError:
                raise Refused(f"{export_file} is not an export: it is not UTF-8 text") from None
        else:
            with _progress("verifying") as tick:
                report = await verify_ledger(url, anchors=anchors, progress=tick)
        report.notes = notes
        if as_json:
            _json(report)
        else:
            _print_report(report, export_file or safe_url(url))
        if not report.ok:
            sys.exit(1)

    _run(go())


async def _verify_export(
    export_file: str, anchors: list[tuple[Anchor, Any]], notes: list[str]
) -> Report:
    """Verify an export file offline; what an ok report could not check goes to ``notes``."""
    info = ExportFile()
    with open(export_file, encoding="utf-8") as f:
        first = f.readline()
        is_csv = first.startswith("position,")
        try:
            header = {} if is_csv else json.loads(first)
        except json.JSONDecodeError:
            header = {}
        f.seek(0)
        filters = header.get("filters", {}) if isinstance(header, dict) else {}
        filtered = any(
            filters.get(k) is not None
            for k in ("since", "until", "stream_id", "type", "correlation_id")
        )

        async def each() -> AsyncIterator[Record]:
            for found in read_export(f, info):
                yield found

        report = await verify_records(each(), anchors=anchors, links=not filtered)
    if not is_csv:
        _check_trailer(report, info)
    elif not anchors:
        notes.append("a CSV export has no trailer: a cut tail shows only against an anchor")
    if filtered:
        notes.append(
            "a filtered export: each record's own hash checked, not the links between them"
        )
    elif not report.complete:
        notes.append("a partial export: links before its first record not checked")
    return report


def _check_trailer(report: Report, info: ExportFile) -> None:
    trailer = info.trailer
    if trailer is None:
        report.problems.append(
            Problem(None, "the export has no trailer: it may have been cut short")
        )
    elif trailer.records != report.records or (trailer.last_hash or "") != (
        report.head_hash if report.records else ""
    ):
        report.problems.append(
            Problem(
                None, "the export's trailer does not match its records: lines were added or removed"
            )
        )
    if report.problems:
        report.ok = False
        report.first_bad = report.first_bad or report.problems[0]


def _print_report(report: Report, where: str) -> None:
    if report.ok:
        scope = "".join(f" ({note})" for note in report.notes)
        click.echo(
            f"ok: {where}: {report.records} records, head {report.head_position} {report.head_hash}, "
            f"{report.checkpoints} checkpoint(s), {report.anchors} anchor(s) verified{scope}"
        )
        return
    first = report.first_bad
    assert first is not None
    click.echo(f"FAILED: {where}: first bad: {_at(first)}{_safe(first.reason)}")
    for problem in report.problems[1:10]:
        click.echo(f"  also: {_at(problem)}{_safe(problem.reason)}")


def _at(problem: Problem) -> str:
    """Where a problem is, for a report line (an anchor's or a trailer's has no position)."""
    return "" if problem.position is None else f"position {problem.position}: "


@contextlib.contextmanager
def _progress(label: str) -> Any:
    if not sys.stderr.isatty():
        yield None
        return
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def tick(done: int, total: int | None = None) -> None:
            bar.update(task, completed=done, total=total)

        yield tick


@main.command()
@click.option(
    "--key",
    "key_file",
    type=click.Path(exists=True, dir_okay=False),
    help="The Ed25519 private key to sign with.",
)
@click.option(
    "--new-key",
    "new_key_file",
    type=click.Path(dir_okay=False),
    help="Write a new key pair (PATH and PATH.pub) and exit.",
)
@click.pass_obj
def anchor(url: str, key_file: str | None, new_key_file: str | None) -> None:
    """Verify the log, then sign its head (position and hash) and print the anchor as one JSON line.

    Keep the line somewhere else (another host, write-once storage); `verify
    --anchor` later proves the log still holds exactly that head. A log that
    fails verify is not signed: exit 1, naming the first bad position.

    \b
    Example:
      tradeledger anchor --new-key ledger.key
      tradeledger anchor --key ledger.key >> anchors.jsonl
    """
    if new_key_file:
        if os.path.exists(new_key_file):
            raise click.UsageError(f"{new_key_file} exists; not overwriting a key")
        try:
            private, public = new_key(new_key_file)
        except OSError as e:
            click.echo(f"error: cannot write {new_key_file}: {e.strerror or e}", err=True)
            sys.exit(1)
        click.echo(f"wrote {private} (private, owner-only) and {public} (public)")
        return
    if not key_file:
        raise click.UsageError("give --key KEYFILE (or --new-key PATH to make one)")

    async def go() -> None:
        key = load_private_key(key_file)
        # an anchor vouches for everything up to its head: sign only what verifies,
        # and exactly the head that was verified (the bot may append meanwhile)
        with _progress("verifying") as tick:
            report = await verify_ledger(url, progress=tick)
        if not report.ok:
            first = report.first_bad
            assert first is not None
            click.echo(
                f"error: {safe_url(url)} fails verify, not signing: first bad: {_at(first)}"
                f"{_safe(first.reason)} (run `tradeledger verify` for the report)",
                err=True,
            )
            sys.exit(1)
        async with open_ledger(url, create=False) as book:
            ledger_id, now = await book.store.ledger_id(), book.clock()
        signed = sign(ledger_id, report.head_position, report.head_hash, key, now)
        click.echo(_encode(signed).decode())

    _run(go())


@main.command(name="export")
@_filters
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False), help="Write to this file instead of stdout."
)
@click.pass_obj
def export_command(
    url: str,
    stream_id: str | None,
    event_type: str | None,
    correlation_id: str | None,
    from_position: int | None,
    to_position: int | None,
    since: str | None,
    until: str | None,
    fmt: str,
    output: str | None,
) -> None:
    """Export the audit trail (every field, hashes included) as JSON Lines or CSV.

    \b
    Example:
      tradeledger export -o trail.jsonl && tradeledger verify --file trail.jsonl
    """

    async def go() -> None:
        where = _where(
            stream_id, event_type, correlation_id, from_position, to_position, since, until
        )
        async with open_ledger(url, create=False) as book:
            if output:
                _refuse_overwriting(output, book.store)
                # the whole audit trail: owner-only, like the ledger it comes from
                fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with open(fd, "w", encoding="utf-8", newline="") as out:
                    trailer = await export_trail(
                        book.store, out, where=where, format=fmt, exported_at=book.clock()
                    )
                click.echo(f"exported {trailer.records} records to {output}", err=True)
            else:
                await export_trail(
                    book.store, sys.stdout, where=where, format=fmt, exported_at=book.clock()
                )

    _run(go())


def _refuse_overwriting(output: str, store: object) -> None:
    """An export written over the ledger's own files would destroy the ledger."""
    path = getattr(store, "path", None)
    if path is None or not os.path.exists(output):
        return
    for own in (path, path + "-wal", path + "-shm"):
        if os.path.exists(own) and os.path.samefile(output, own):
            raise ValueError(f"{output} is the ledger's own file: choose another output")


@main.command()
@click.pass_obj
def rebuild(url: str) -> None:
    """Rebuild every view from position 1 and checkpoint it.

    \b
    Example:
      tradeledger rebuild
    """

    async def go() -> None:
        with _progress("rebuilding") as tick:
            position = await rebuild_views(url, views.standard(), progress=tick)
        click.echo(f"rebuilt every view to position {position}")

    _run(go())


@main.command()
@click.option(
    "--from-position",
    type=click.IntRange(min=1),
    help="Start here (default: after the current head).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON Lines.")
@click.option("--limit", type=click.IntRange(min=1), help="Stop after this many records.")
@click.pass_obj
def tail(url: str, from_position: int | None, as_json: bool, limit: int | None) -> None:
    """Follow new records as they become durable, also those of other processes.

    \b
    Example:
      tradeledger tail --json | jq .type
    """

    async def go() -> None:
        async with open_ledger(url, create=False) as book:
            start = from_position or (await book.store.head()).position + 1
            count = 0
            async for found in book.store.subscribe(start):
                if as_json:
                    click.echo(_encode(record_row(found)).decode())
                else:
                    click.echo(
                        f"{found.position:>8} {_when(found.occurred_at)} {_safe(found.stream_id)} v{found.version} {found.type} {_safe(found.data)}"
                    )
                sys.stdout.flush()
                count += 1
                if limit is not None and count >= limit:
                    return

    _run(go())


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def info(url: str, as_json: bool) -> None:
    """The store, its durability, the head, counts by event type and checkpoints.

    \b
    Example:
      tradeledger info --json
    """

    async def go() -> None:
        async with open_ledger(url, create=False) as book:
            store = book.store
            head = await store.head()
            counts = await store.count_by_type()
            checkpoints = await store.load_checkpoints()
            backend = await store.describe()
            facts = {
                "store": type(store).__name__,
                "location": safe_url(url),
                "ledger_id": await store.ledger_id(),
                "durability": store.durability,
                "head_position": head.position,
                "head_hash": head.hash,
                "last_recorded_at": head.recorded_at,
                "events_by_type": dict(sorted(counts.items())),
                "checkpoints": {
                    c.name: c.position for c in sorted(checkpoints.values(), key=lambda c: c.name)
                },
                "backend": backend,
            }
        if as_json:
            _json(facts)
            return
        rows = [
            [k, v]
            for k, v in facts.items()
            if k not in ("events_by_type", "checkpoints", "backend")
        ]
        rows += [[f"store: {k}", v] for k, v in facts["backend"].items()]  # type: ignore[attr-defined]
        rows += [[f"events: {k}", v] for k, v in facts["events_by_type"].items()]  # type: ignore[attr-defined]
        rows += [[f"checkpoint: {k}", v] for k, v in facts["checkpoints"].items()]  # type: ignore[attr-defined]
        _table("Ledger", ["", ""], rows)

    _run(go())


from replay.http import serve  # noqa: E402 - last: the command imports no server until it runs

main.add_command(serve)

if __name__ == "__main__":  # pragma: no cover
    main()
