"""Performance: every figure of the design's Accounting section, per currency and group.

Statistics are over closed trades, per currency, optionally by symbol,
strategy, session, account or side. The state stays bounded: one row of
running sums per (currency, group), the equity path (cumulative net, peak,
drawdowns, losing streak) updated as trades close in close-time order, and the
daily series in a table. A trade that closes with an earlier close time than
one already counted is recorded too, and that group's equity path is
recomputed from its closes in close-time order.
"""

from __future__ import annotations

import datetime as dt
import decimal
import sqlite3
from collections.abc import Callable, Iterable
from decimal import Decimal
from functools import reduce
from itertools import accumulate, groupby
from operator import le
from typing import Any

import msgspec

from ledger.chain import timestamp
from ledger.events import TradeClosed, TradeReduced, canonical_text
from ledger.projection import Step, TableProjection, insert_rows
from ledger.trade import CONTEXT, RATIO, TradeState
from projections.grouping import ALL, check_group, keys

_ZERO = Decimal(0)
_CLOSE_COLUMNS = (
    "position",
    "trade_id",
    "currency",
    "symbol",
    "strategy",
    "session",
    "account",
    "side",
    "closed_at",
    "net",
)
_DAY_COLUMNS = ("currency", "kind", "value", "day", "trades", "wins", "losses", "net", "through")


class Figures(msgspec.Struct, frozen=True, kw_only=True):
    """The performance figures of one currency (and one group, when grouped)."""

    currency: str
    group_by: str | None
    group: str | None
    trades: int
    wins: int
    losses: int
    breakevens: int
    win_rate: Decimal | None
    net: Decimal
    gross_profit: Decimal
    gross_loss: Decimal
    profit_factor: Decimal | None
    expectancy: Decimal | None
    average_win: Decimal | None
    average_loss: Decimal | None
    largest_win: Decimal | None
    largest_loss: Decimal | None
    average_r: Decimal | None
    sqn: Decimal | None
    starting_equity: Decimal
    ending_equity: Decimal
    max_drawdown: Decimal
    max_drawdown_pct: Decimal | None
    sharpe: Decimal | None
    sortino: Decimal | None
    annualization_days: int
    days: int
    longest_losing_streak: int
    average_holding_seconds: Decimal | None


class Day(msgspec.Struct, frozen=True, kw_only=True):
    """One UTC day of closes (zero-filled days have no trades)."""

    day: dt.date
    currency: str
    trades: int
    wins: int
    losses: int
    net: Decimal


class _Stats(msgspec.Struct, kw_only=True):
    currency: str
    kind: str
    value: str
    trades: int = 0
    wins: int = 0
    losses: int = 0
    breakevens: int = 0
    net: Decimal = _ZERO
    gross_profit: Decimal = _ZERO
    gross_loss: Decimal = _ZERO
    largest_win: Decimal | None = None
    largest_loss: Decimal | None = None
    r_count: int = 0
    r_sum: Decimal = _ZERO
    r_squares: Decimal = _ZERO
    holding_seconds: Decimal = _ZERO
    peak: Decimal | None = None
    max_drawdown: Decimal = _ZERO
    max_drawdown_pct: Decimal | None = None
    streak: int = 0
    longest_losing_streak: int = 0
    last_close: str = ""
    last_position: int = 0
    reorder: bool = False


class _Close(msgspec.Struct, frozen=True, array_like=True):
    """What the running figures need of one close."""

    position: int
    closed_at: str  # timestamp text: orders closes and names the day
    net: Decimal
    r: Decimal | None
    r_square: Decimal
    holding: Decimal


def _path(stats: _Stats, start: Decimal, nets: list[Decimal], cumulative: list[Decimal]) -> None:
    """Advance the equity path by closes in close-time order: their nets, and the
    cumulative net after each. The peak is seeded at the starting equity."""
    equities = [CONTEXT.add(start, total) for total in cumulative]
    peaks = list(accumulate(equities, max, initial=start if stats.peak is None else stats.peak))
    del peaks[0]
    drawdowns = list(map(CONTEXT.subtract, peaks, equities))
    worst = max(drawdowns)
    if worst > stats.max_drawdown:
        stats.max_drawdown = worst
    if start > 0:  # then every peak is too
        fraction = max(map(RATIO.divide, drawdowns, peaks))
        if stats.max_drawdown_pct is None or fraction > stats.max_drawdown_pct:
            stats.max_drawdown_pct = fraction
    streak, longest = stats.streak, stats.longest_losing_streak
    for net in nets:
        if net < 0:
            streak += 1
            longest = max(longest, streak)
        else:
            streak = 0
    stats.peak, stats.streak, stats.longest_losing_streak = peaks[-1], streak, longest


def _fold(stats: _Stats, closes: list[_Close], start: Decimal) -> None:
    """Fold one group's new closes (in log order) into its running figures.

    A group at a time, not a close at a time: the sums run in C (``reduce``,
    ``accumulate``) and a close costs a few list items per group.
    """
    add = CONTEXT.add
    nets = [close.net for close in closes]
    wins = [net for net in nets if net > 0]
    losses = [net for net in nets if net < 0]
    stats.trades += len(nets)
    stats.wins += len(wins)
    stats.losses += len(losses)
    stats.breakevens += len(nets) - len(wins) - len(losses)
    if wins:
        stats.gross_profit = reduce(add, wins, stats.gross_profit)
        best = max(wins)
        if stats.largest_win is None or best > stats.largest_win:
            stats.largest_win = best
    if losses:
        stats.gross_loss = reduce(add, losses, stats.gross_loss)
        worst = min(losses)
        if stats.largest_loss is None or worst < stats.largest_loss:
            stats.largest_loss = worst
    rs = [close.r for close in closes if close.r is not None]
    if rs:
        stats.r_count += len(rs)
        stats.r_sum = reduce(add, rs, stats.r_sum)
        squares = [close.r_square for close in closes if close.r is not None]
        stats.r_squares = reduce(add, squares, stats.r_squares)
    stats.holding_seconds = reduce(add, [close.holding for close in closes], stats.holding_seconds)
    cumulative = list(accumulate(nets, add, initial=stats.net))
    del cumulative[0]
    stats.net = cumulative[-1]
    if stats.reorder:
        return
    order = [(close.closed_at, close.position) for close in closes]
    if order[0] >= (stats.last_close, stats.last_position) and all(map(le, order, order[1:])):
        _path(stats, start, nets, cumulative)
        stats.last_close, stats.last_position = order[-1]
    else:
        # a close earlier than one already counted: the path is recomputed from
        # the group's closes in close-time order when the view is written
        stats.reorder = True


class Performance(TableProjection):
    """Win rate, profit factor, expectancy, R, SQN, drawdown, Sharpe, Sortino and more.

    for figures in await book.view(Performance).figures(group_by="strategy"):
        print(figures.currency, figures.group, figures.win_rate, figures.sharpe)
    """

    name = "performance"
    version = 2
    reads = frozenset({TradeReduced, TradeClosed})  # the events that can close a trade
    tables = ("performance_stats", "performance_daily", "performance_closes")
    indexes = (
        ("performance_closes_by_time", "performance_closes (currency, closed_at, position)"),
    )
    # the costliest view: a large rebuild folds it in a second process, about as
    # long as the first takes for all the others (see Runner.rebuild)
    apart = True

    def __init__(self, *, starting_equity: Decimal = _ZERO, annualization_days: int = 365) -> None:
        if (
            not isinstance(starting_equity, Decimal)
            or not starting_equity.is_finite()
            or starting_equity < 0
        ):  # a drawdown is a fraction of a peak that equity starts from: never below zero
            raise ValueError(
                f"starting_equity must be a finite Decimal, 0 or more, not {starting_equity!r}"
            )
        if (
            isinstance(annualization_days, bool)
            or not isinstance(annualization_days, int)
            or annualization_days <= 0
        ):
            raise ValueError("annualization_days must be a positive int")
        self.starting_equity = starting_equity
        self.annualization_days = annualization_days
        self._stats: dict[tuple[str, str, str], _Stats] = {}
        self._dirty: set[tuple[str, str, str]] = set()
        self._closes: list[tuple[Any, ...]] = []
        self._pending: list[tuple[TradeState, int]] = []  # closes not yet in the figures
        self._days: dict[tuple[str, str, str, str], list[tuple[int, Decimal]]] = {}

    def settings(self) -> dict[str, Any]:
        return {
            "starting_equity": canonical_text(self.starting_equity),  # 0.00 is 0
            "annualization_days": self.annualization_days,
        }

    def setup(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            """CREATE TABLE IF NOT EXISTS performance_stats (
                currency TEXT NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL,
                state BLOB NOT NULL, PRIMARY KEY (currency, kind, value))"""
        )
        columns = [row[1] for row in conn.execute("PRAGMA table_info(performance_daily)")]
        if columns and "through" not in columns:  # version 1's tables: rebuilt anyway
            conn.execute("DROP TABLE performance_daily")
            conn.execute("DELETE FROM performance_stats")
        conn.execute(
            """CREATE TABLE IF NOT EXISTS performance_daily (
                currency TEXT NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL, day TEXT NOT NULL,
                trades INTEGER NOT NULL, wins INTEGER NOT NULL, losses INTEGER NOT NULL,
                net TEXT NOT NULL, through INTEGER NOT NULL,
                PRIMARY KEY (currency, kind, value, day))"""
        )
        conn.execute(
            """CREATE TABLE IF NOT EXISTS performance_closes (
                position INTEGER PRIMARY KEY, trade_id TEXT NOT NULL, currency TEXT NOT NULL,
                symbol TEXT NOT NULL, strategy TEXT NOT NULL, session TEXT NOT NULL,
                account TEXT NOT NULL, side TEXT NOT NULL, closed_at TEXT NOT NULL,
                net TEXT NOT NULL)"""
        )
        decoder = msgspec.json.Decoder(_Stats)
        self._stats, self.unreadable = {}, None
        try:
            for currency, kind, value, state in conn.execute(
                "SELECT currency, kind, value, state FROM performance_stats"
            ):
                self._stats[(currency, kind, value)] = decoder.decode(state)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            self._stats, self.unreadable = {}, f"its stored figures do not decode: {e}"

    def apply(self, step: Step) -> None:
        trade = step.after
        if trade is None or trade.closed_at is None:
            return
        if step.before is not None and step.before.closed_at is not None:
            return
        self._pending.append((trade, step.record.position))

    def _settle(self) -> None:
        """Fold the closes applied since the last call into the figures, by group."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        by_group: dict[tuple[str, str, str], list[_Close]] = {}
        for trade, position in pending:
            assert trade.closed_at is not None
            r = trade.r_multiple
            close = _Close(
                position,
                timestamp(trade.closed_at),
                trade.net,
                r,
                _ZERO if r is None else CONTEXT.multiply(r, r),
                trade.holding_seconds or _ZERO,
            )
            groups = keys(trade)
            self._closes.append(
                (
                    position,
                    trade.trade_id,
                    trade.currency,
                    *(value for _, value in groups[1:]),
                    close.closed_at,
                    str(close.net),
                )
            )
            for kind, value in groups:
                found = by_group.get((trade.currency, kind, value))
                if found is None:
                    by_group[(trade.currency, kind, value)] = [close]
                else:
                    found.append(close)
        for key, closes in by_group.items():
            stats = self._stats.get(key)
            if stats is None:
                stats = self._stats[key] = _Stats(currency=key[0], kind=key[1], value=key[2])
            _fold(stats, closes, self.starting_equity)
            self._dirty.add(key)
            for day, of_day in groupby(closes, key=_day):
                self._days.setdefault((*key, day), []).extend(
                    (close.position, close.net) for close in of_day
                )

    @property
    def settled(self) -> bool:
        # recomputing a reordered equity path reads the closes table and changes
        # the in-memory stats: apply must wait for that write
        self._settle()
        return not any(self._stats[key].reorder for key in self._dirty)

    def take(self) -> Callable[[sqlite3.Connection], None]:
        self._settle()
        closes, self._closes = self._closes, []
        days, self._days = self._days, {}
        dirty, self._dirty = self._dirty, set()
        encoder = msgspec.json.Encoder()
        reordered = [self._stats[key] for key in dirty if self._stats[key].reorder]
        through = self.taken_at  # another process may have stored closes beyond it
        ready = [
            (*key, encoder.encode(self._stats[key]).decode())
            for key in dirty
            if not self._stats[key].reorder
        ]

        def write(conn: sqlite3.Connection) -> None:
            insert_rows(conn, "performance_closes", _CLOSE_COLUMNS, closes)
            insert_rows(conn, "performance_daily", _DAY_COLUMNS, _day_rows(conn, days))
            rows = list(ready)
            for stats in reordered:
                self._replay_path(conn, stats, through)
                rows.append(
                    (stats.currency, stats.kind, stats.value, encoder.encode(stats).decode())
                )
            insert_rows(conn, "performance_stats", ("currency", "kind", "value", "state"), rows)

        return write

    def _replay_path(self, conn: sqlite3.Connection, stats: _Stats, through: int) -> None:
        """Recompute a group's equity path from its closes up to position ``through``,
        in close-time order."""
        where, params = "position <= ? AND currency = ?", [through, stats.currency]
        if stats.kind != ALL:
            where += f" AND {stats.kind} = ?"  # kind is one of GROUPS, never user text
            params.append(stats.value)
        stats.peak, stats.max_drawdown, stats.max_drawdown_pct = None, _ZERO, None
        stats.streak = stats.longest_losing_streak = 0
        rows = conn.execute(
            f"SELECT position, closed_at, net FROM performance_closes WHERE {where} "
            "ORDER BY closed_at, position",
            params,
        ).fetchall()
        if rows:
            nets = [Decimal(net) for _, _, net in rows]
            cumulative = list(accumulate(nets, CONTEXT.add))
            _path(stats, self.starting_equity, nets, cumulative)
            stats.last_position, stats.last_close = rows[-1][0], rows[-1][1]
        stats.reorder = False

    # queries

    async def figures(
        self, group_by: str | None = None, *, currency: str | None = None
    ) -> list[Figures]:
        """The figures per currency, or per (group, currency) with ``group_by``."""
        self.ready()
        kind = check_group(group_by)
        self._settle()
        chosen = sorted(
            (s for s in self._stats.values() if s.kind == kind and currency in (None, s.currency)),
            key=lambda s: (s.currency, s.value),
        )
        series = await self._series(kind, currency)
        return [self._figures(s, group_by, series.get((s.currency, s.value), [])) for s in chosen]

    async def _series(
        self, kind: str, currency: str | None
    ) -> dict[tuple[str, str], list[tuple[str, Decimal]]]:
        sql = "SELECT currency, value, day, net FROM performance_daily WHERE kind = ?"
        params: list[Any] = [kind]
        if currency is not None:
            sql += " AND currency = ?"
            params.append(currency)
        found: dict[tuple[str, str], list[tuple[str, Decimal]]] = {}
        for cur, value, day, net in await self.db.query(
            sql + " ORDER BY currency, value, day", params
        ):
            found.setdefault((cur, value), []).append((day, Decimal(net)))
        return found

    async def daily(
        self, *, currency: str | None = None, group_by: str | None = None, group: str | None = None
    ) -> list[Day]:
        """Net per UTC close day, every calendar day from the first to the last, zero-filled."""
        self.ready()
        kind = check_group(group_by)
        sql = "SELECT currency, day, trades, wins, losses, net FROM performance_daily WHERE kind = ? AND value = ?"
        params: list[Any] = [kind, group or ""]
        if currency is not None:
            sql += " AND currency = ?"
            params.append(currency)
        rows = await self.db.query(sql + " ORDER BY currency, day", params)
        by_currency: dict[str, dict[str, tuple[int, int, int, Decimal]]] = {}
        for cur, day, trades, wins, losses, net in rows:
            by_currency.setdefault(cur, {})[day] = (trades, wins, losses, Decimal(net))
        days: list[Day] = []
        for cur, found in by_currency.items():
            for day in _calendar(found):
                trades, wins, losses, net = found.get(day.isoformat(), (0, 0, 0, _ZERO))
                days.append(
                    Day(day=day, currency=cur, trades=trades, wins=wins, losses=losses, net=net)
                )
        return days

    def _figures(
        self, s: _Stats, group_by: str | None, series: list[tuple[str, Decimal]]
    ) -> Figures:
        # worked in CONTEXT; every quotient published to RATIO's 34 digits
        ratio, per = _rounded, RATIO.divide
        with decimal.localcontext(CONTEXT):
            values = _zero_filled(series)
            sharpe, sortino = _ratios(values, self.annualization_days)
            mean_r = s.r_sum / s.r_count if s.r_count else None
            sqn = None
            if s.r_count >= 2 and mean_r is not None:
                variance = (s.r_squares - s.r_count * mean_r * mean_r) / (s.r_count - 1)
                if variance > 0:
                    sqn = Decimal(min(s.r_count, 100)).sqrt() * mean_r / variance.sqrt()
            return Figures(
                currency=s.currency,
                group_by=group_by,
                group=s.value if group_by else None,
                trades=s.trades,
                wins=s.wins,
                losses=s.losses,
                breakevens=s.breakevens,
                win_rate=per(s.wins, s.trades) if s.trades else None,
                net=s.net,
                gross_profit=s.gross_profit,
                gross_loss=s.gross_loss,
                profit_factor=per(s.gross_profit, abs(s.gross_loss)) if s.gross_loss else None,
                expectancy=per(s.net, s.trades) if s.trades else None,
                average_win=per(s.gross_profit, s.wins) if s.wins else None,
                average_loss=per(s.gross_loss, s.losses) if s.losses else None,
                largest_win=s.largest_win,
                largest_loss=s.largest_loss,
                average_r=per(s.r_sum, s.r_count) if s.r_count else None,
                sqn=ratio(sqn),
                starting_equity=self.starting_equity,
                ending_equity=self.starting_equity + s.net,
                max_drawdown=s.max_drawdown,
                max_drawdown_pct=s.max_drawdown_pct,
                sharpe=ratio(sharpe),
                sortino=ratio(sortino),
                annualization_days=self.annualization_days,
                days=len(values),
                longest_losing_streak=s.longest_losing_streak,
                average_holding_seconds=per(s.holding_seconds, s.trades) if s.trades else None,
            )


def _day_rows(
    conn: sqlite3.Connection, days: dict[tuple[str, str, str, str], list[tuple[int, Decimal]]]
) -> list[tuple[Any, ...]]:
    """Each day's row with its new closes (position, net; in log order) folded in.

    ``through`` is the position of the last close a row counts: closes at or
    before it are skipped, so a flush repeated by another process that follows
    the same file leaves the row as it was instead of counting twice. The rows
    are read in one statement (one step: see ``insert_rows``).
    """
    if not days:
        return []
    (found,) = conn.execute(
        "SELECT json_group_array(json_array(d.currency, d.kind, d.value, d.day, "
        "d.trades, d.wins, d.losses, d.net, d.through)) "
        "FROM json_each(?) AS k JOIN performance_daily AS d ON d.currency = k.value ->> 0 "
        "AND d.kind = k.value ->> 1 AND d.value = k.value ->> 2 AND d.day = k.value ->> 3",
        (msgspec.json.encode(list(days)).decode(),),  # text: a BLOB may be taken for JSONB
    ).fetchone()
    stored = {tuple(row[:4]): row[4:] for row in msgspec.json.decode(found)}
    rows = []
    for key, closes in days.items():
        trades, wins, losses, net_text, through = stored.get(key, (0, 0, 0, "0", 0))
        net = Decimal(net_text)
        for position, amount in closes:
            if position <= through:
                continue
            trades += 1
            wins += amount > 0
            losses += amount < 0
            net = CONTEXT.add(net, amount)
            through = position
        rows.append((*key, trades, wins, losses, str(net), through))
    return rows


def _day(close: _Close) -> str:
    return close.closed_at[:10]


def _calendar(found: Iterable[str]) -> list[dt.date]:
    days = sorted(found)
    if not days:
        return []
    first, last = dt.date.fromisoformat(days[0]), dt.date.fromisoformat(days[-1])
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def _zero_filled(series: list[tuple[str, Decimal]]) -> list[Decimal]:
    nets = dict(series)
    return [nets.get(day.isoformat(), _ZERO) for day in _calendar(nets)]


def _rounded(value: Decimal | None) -> Decimal | None:
    """``value`` to RATIO's 34 significant digits."""
    return None if value is None else RATIO.plus(value)


def _ratios(
    values: list[Decimal], annualization_days: int
) -> tuple[Decimal | None, Decimal | None]:
    """Sharpe and Sortino of a zero-filled daily series (call inside CONTEXT)."""
    count = len(values)
    if count < 2:
        return None, None
    mean = sum(values, _ZERO) / count
    variance = sum(((x - mean) ** 2 for x in values), _ZERO) / (count - 1)
    scale = Decimal(annualization_days).sqrt()
    sharpe = mean / variance.sqrt() * scale if variance > 0 else None
    downside = sum((min(x, _ZERO) ** 2 for x in values), _ZERO) / count
    sortino = mean / downside.sqrt() * scale if downside > 0 else None
    return sharpe, sortino
