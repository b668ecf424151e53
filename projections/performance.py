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
from typing import Any

import msgspec

from ledger.chain import timestamp
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


def _path_step(stats: _Stats, start: Decimal, net: Decimal, cumulative: Decimal) -> None:
    """Advance the equity path by one close whose cumulative net is ``cumulative``."""
    equity = CONTEXT.add(start, cumulative)
    if stats.peak is None:
        stats.peak = start  # the peak is seeded at the starting equity
    if equity > stats.peak:
        stats.peak = equity
    drawdown = CONTEXT.subtract(stats.peak, equity)
    if drawdown > stats.max_drawdown:
        stats.max_drawdown = drawdown
    if start > 0 and stats.peak > 0:
        fraction = RATIO.divide(drawdown, stats.peak)
        if stats.max_drawdown_pct is None or fraction > stats.max_drawdown_pct:
            stats.max_drawdown_pct = fraction
    if net < 0:
        stats.streak += 1
        stats.longest_losing_streak = max(stats.longest_losing_streak, stats.streak)
    else:
        stats.streak = 0


class Performance(TableProjection):
    """Win rate, profit factor, expectancy, R, SQN, drawdown, Sharpe, Sortino and more.

    for figures in await book.view(Performance).figures(group_by="strategy"):
        print(figures.currency, figures.group, figures.win_rate, figures.sharpe)
    """

    name = "performance"
    version = 2
    tables = ("performance_stats", "performance_daily", "performance_closes")
    apart = True  # the costliest views: a large rebuild folds them in a second process

    def __init__(self, *, starting_equity: Decimal = _ZERO, annualization_days: int = 365) -> None:
        if not isinstance(starting_equity, Decimal) or not starting_equity.is_finite():
            raise ValueError("starting_equity must be a finite Decimal")
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
        self._days: dict[tuple[str, str, str, str], list[tuple[int, Decimal]]] = {}

    def settings(self) -> dict[str, Any]:
        return {
            "starting_equity": str(self.starting_equity),
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
        conn.execute(
            "CREATE INDEX IF NOT EXISTS performance_closes_by_time "
            "ON performance_closes (currency, closed_at, position)"
        )
        decoder = msgspec.json.Decoder(_Stats)
        self._stats = {}
        for currency, kind, value, state in conn.execute(
            "SELECT currency, kind, value, state FROM performance_stats"
        ):
            self._stats[(currency, kind, value)] = decoder.decode(state)

    def apply(self, step: Step) -> None:
        trade = step.after
        if trade is None or trade.closed_at is None:
            return
        if step.before is not None and step.before.closed_at is not None:
            return
        self._close(trade, step.record.position)

    def _close(self, trade: TradeState, position: int) -> None:
        assert trade.closed_at is not None
        net = trade.net
        r = trade.r_multiple
        closed_at = timestamp(trade.closed_at)
        day = closed_at[:10]
        holding = trade.holding_seconds or _ZERO
        groups = keys(trade)
        self._closes.append(
            (
                position,
                trade.trade_id,
                trade.currency,
                *(value for _, value in groups[1:]),
                closed_at,
                str(net),
            )
        )
        add = CONTEXT.add
        r_square = CONTEXT.multiply(r, r) if r is not None else _ZERO
        currency, start, all_stats = trade.currency, self.starting_equity, self._stats
        for kind, value in groups:
            key = (currency, kind, value)
            stats = all_stats.get(key)
            if stats is None:
                stats = all_stats[key] = _Stats(currency=currency, kind=kind, value=value)
            stats.trades += 1
            stats.net = add(stats.net, net)
            if net > 0:
                stats.wins += 1
                stats.gross_profit = add(stats.gross_profit, net)
                if stats.largest_win is None or net > stats.largest_win:
                    stats.largest_win = net
            elif net < 0:
                stats.losses += 1
                stats.gross_loss = add(stats.gross_loss, net)
                if stats.largest_loss is None or net < stats.largest_loss:
                    stats.largest_loss = net
            else:
                stats.breakevens += 1
            if r is not None:
                stats.r_count += 1
                stats.r_sum = add(stats.r_sum, r)
                stats.r_squares = add(stats.r_squares, r_square)
            stats.holding_seconds = add(stats.holding_seconds, holding)
            if not stats.reorder and (
                closed_at > stats.last_close
                or (closed_at == stats.last_close and position >= stats.last_position)
            ):
                _path_step(stats, start, net, stats.net)
                stats.last_close, stats.last_position = closed_at, position
            else:
                stats.reorder = True
            self._dirty.add(key)
            closes = self._days.get((*key, day))
            if closes is None:
                self._days[(*key, day)] = [(position, net)]
            else:
                closes.append((position, net))

    @property
    def settled(self) -> bool:
        # recomputing a reordered equity path reads the closes table and changes
        # the in-memory stats: apply must wait for that write
        return not any(self._stats[key].reorder for key in self._dirty)

    def take(self) -> Callable[[sqlite3.Connection], None]:
        closes, self._closes = self._closes, []
        days, self._days = self._days, {}
        dirty, self._dirty = self._dirty, set()
        encoder = msgspec.json.Encoder()
        reordered = [self._stats[key] for key in dirty if self._stats[key].reorder]
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
                self._replay_path(conn, stats)
                rows.append(
                    (stats.currency, stats.kind, stats.value, encoder.encode(stats).decode())
                )
            insert_rows(conn, "performance_stats", ("currency", "kind", "value", "state"), rows)

        return write

    def _replay_path(self, conn: sqlite3.Connection, stats: _Stats) -> None:
        """Recompute a group's equity path from its closes in close-time order."""
        where, params = "currency = ?", [stats.currency]
        if stats.kind != ALL:
            where += f" AND {stats.kind} = ?"  # kind is one of GROUPS, never user text
            params.append(stats.value)
        stats.peak, stats.max_drawdown, stats.max_drawdown_pct = None, _ZERO, None
        stats.streak = stats.longest_losing_streak = 0
        cumulative = _ZERO
        with decimal.localcontext(CONTEXT):
            for position, closed_at, net_text in conn.execute(
                f"SELECT position, closed_at, net FROM performance_closes WHERE {where} "
                "ORDER BY closed_at, position",
                params,
            ):
                net = Decimal(net_text)
                cumulative += net
                _path_step(stats, self.starting_equity, net, cumulative)
                stats.last_close, stats.last_position = closed_at, position
        stats.reorder = False

    # queries

    async def figures(
        self, group_by: str | None = None, *, currency: str | None = None
    ) -> list[Figures]:
        """The figures per currency, or per (group, currency) with ``group_by``."""
        self.ready()
        kind = check_group(group_by)
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
                win_rate=Decimal(s.wins) / s.trades if s.trades else None,
                net=s.net,
                gross_profit=s.gross_profit,
                gross_loss=s.gross_loss,
                profit_factor=s.gross_profit / abs(s.gross_loss) if s.gross_loss else None,
                expectancy=s.net / s.trades if s.trades else None,
                average_win=s.gross_profit / s.wins if s.wins else None,
                average_loss=s.gross_loss / s.losses if s.losses else None,
                largest_win=s.largest_win,
                largest_loss=s.largest_loss,
                average_r=mean_r,
                sqn=sqn,
                starting_equity=self.starting_equity,
                ending_equity=self.starting_equity + s.net,
                max_drawdown=s.max_drawdown,
                max_drawdown_pct=s.max_drawdown_pct,
                sharpe=sharpe,
                sortino=sortino,
                annualization_days=self.annualization_days,
                days=len(values),
                longest_losing_streak=s.longest_losing_streak,
                average_holding_seconds=s.holding_seconds / s.trades if s.trades else None,
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
        (msgspec.json.encode(list(days)),),
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


def _calendar(found: Iterable[str]) -> list[dt.date]:
    days = sorted(found)
    if not days:
        return []
    first, last = dt.date.fromisoformat(days[0]), dt.date.fromisoformat(days[-1])
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def _zero_filled(series: list[tuple[str, Decimal]]) -> list[Decimal]:
    nets = dict(series)
    return [nets.get(day.isoformat(), _ZERO) for day in _calendar(nets)]


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
