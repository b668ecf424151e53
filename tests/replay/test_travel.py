"""Time travel: each cut of the log gives the views a ledger holding only that cut would give.

The ledger is written with a fake clock, so every record's ``recorded_at`` is
known. Its history has a late fill (t1's reduce occurred before records that
were already in the log) and a skewed one (t5's reduce claims to have occurred
before t5 was opened).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import projections
from ledger import Event, LedgerError, open_ledger
from ledger.book import Append
from projections import OpenPositions, Pnl
from replay import travel
from tests.replay.ledgers import Clock, appends, cli, views_of, without_positions

DAY = dt.datetime(2026, 2, 2, tzinfo=dt.UTC)


def at(hour: int, minute: int, second: int = 0) -> dt.datetime:
    return DAY.replace(hour=hour, minute=minute, second=second)


def iso(moment: dt.datetime) -> str:
    return moment.isoformat()


# (event line, occurred_at, recorded_at); entries sharing a recorded_at are one batch.
TIMELINE: list[tuple[dict[str, Any], dt.datetime, dt.datetime]] = [
    (
        {"type": "ParameterChanged", "name": "risk", "new_value": "0.5", "changed_by": "manual"},
        at(9, 0),
        at(9, 0, 1),
    ),
    (
        {"type": "SignalEmitted", "signal_id": "s1", "symbol": "BTCUSDT", "side": "long"},
        at(9, 10),
        at(9, 10, 1),
    ),
    (
        {
            "type": "TradeOpened",
            "trade_id": "t1",
            "symbol": "BTCUSDT",
            "side": "long",
            "quantity": "2",
            "price": "100",
            "currency": "USDT",
            "stop_price": "90",
            "signal_id": "s1",
            "fee": "0.2",
        },
        at(9, 20),
        at(9, 20, 1),
    ),
    (
        {
            "type": "TradeOpened",
            "trade_id": "t2",
            "symbol": "ETHUSDT",
            "side": "short",
            "quantity": "10",
            "price": "50",
            "currency": "USDT",
        },
        at(9, 30),
        at(9, 30, 1),
    ),
    (
        {"type": "StopMoved", "trade_id": "t1", "stop_price": "95"},
        at(9, 40),
        at(9, 40, 1),
    ),
    # the late fill: it occurred at 09:25 but reached the ledger at 09:50
    (
        {
            "type": "TradeReduced",
            "trade_id": "t1",
            "quantity": "1",
            "price": "110",
            "fill_id": "f1",
        },
        at(9, 25),
        at(9, 50),
    ),
    (
        {"type": "TradeClosed", "trade_id": "t2", "price": "48", "reason": "take_profit"},
        at(10, 0),
        at(10, 0, 1),
    ),
    (
        {
            "type": "TradeOpened",
            "trade_id": "t5",
            "symbol": "SOLUSDT",
            "side": "long",
            "quantity": "1",
            "price": "300",
            "currency": "USDT",
        },
        at(10, 30),
        at(10, 30, 1),
    ),
    # the executor's clock was skewed: this reduce "occurred" before t5 was opened
    (
        {
            "type": "TradeReduced",
            "trade_id": "t5",
            "quantity": "0.5",
            "price": "310",
            "fill_id": "f1",
        },
        at(10, 20),
        at(10, 40, 1),
    ),
    (
        {"type": "TradeClosed", "trade_id": "t1", "price": "120", "reason": "manual"},
        at(11, 0),
        at(11, 0, 1),
    ),
    (
        {
            "type": "ParameterChanged",
            "name": "risk",
            "new_value": "0.75",
            "old_value": "0.5",
            "changed_by": "learning_agent",
        },
        at(11, 10),
        at(11, 10, 1),
    ),
    (
        {
            "type": "TradeOpened",
            "trade_id": "t6",
            "symbol": "BTCUSDT",
            "side": "short",
            "quantity": "3",
            "price": "120",
            "currency": "USDT",
        },
        at(11, 20),
        at(11, 30),
    ),
    (
        {"type": "FundingApplied", "trade_id": "t6", "amount": "0.3"},
        at(11, 25),
        at(11, 30),
    ),
    (
        {"type": "TradeClosed", "trade_id": "t6", "price": "110", "reason": "signal"},
        at(12, 0),
        at(12, 0, 1),
    ),
]
COUNT = len(TIMELINE)


def items() -> list[Append]:
    lines = [{**line, "occurred_at": iso(occurred)} for line, occurred, _ in TIMELINE]
    return appends(lines)


def record_timeline(url: str) -> None:
    """Record TIMELINE with the clock at each entry's recorded_at, batching equal ones."""

    async def go() -> None:
        clock = Clock(TIMELINE[0][2])
        every = items()
        async with open_ledger(url, projections.standard(), clock=clock) as book:
            i = 0
            while i < COUNT:
                j = i
                while j < COUNT and TIMELINE[j][2] == TIMELINE[i][2]:
                    j += 1
                clock.now = TIMELINE[i][2]
                await book.record_batch(every[i:j])
                i = j

    asyncio.run(go())


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('travel') / 'ledger.db'}"
    record_timeline(url)
    return url


def cut_views(url: str, **cut: Any) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The views, position and inconsistent trades of one cut."""

    async def go() -> tuple[dict[str, Any], int, dict[str, str]]:
        async with travel(url, projections.standard(), **cut) as found:
            return await views_of(found), found.position, dict(found.inconsistent)

    return asyncio.run(go())


def ledger_views(url: str, events: list[Append]) -> dict[str, Any]:
    """The live views of a fresh ledger holding exactly ``events``."""

    async def go() -> dict[str, Any]:
        async with open_ledger(url, projections.standard()) as book:
            if events:
                await book.record_batch(events)
            return await views_of(book)

    return asyncio.run(go())


def test_the_timeline_was_recorded_at_the_fake_clocks_times(url: str) -> None:
    """Every record's recorded_at is the fake clock's time when it was appended."""

    async def go() -> list[dt.datetime]:
        async with open_ledger(url, create=False) as book:
            return [r.recorded_at async for r in book.store.read(1)]

    assert asyncio.run(go()) == [recorded for _, _, recorded in TIMELINE]


def test_a_position_cut_equals_a_ledger_holding_only_the_first_n_events(
    url: str, tmp_path: Path
) -> None:
    """at_position=N gives exactly the views of a fresh ledger holding the first N events."""
    every = items()

    async def grow() -> list[dict[str, Any]]:
        found = []
        async with open_ledger(
            f"sqlite:///{tmp_path / 'fresh.db'}", projections.standard()
        ) as book:
            found.append(await views_of(book))
            for item in every:
                await book.record(item.event, event_id=item.event_id, metadata=item.metadata)
                found.append(await views_of(book))
        return found

    fresh = asyncio.run(grow())
    for n in range(COUNT + 1):
        views, position, inconsistent = cut_views(url, at_position=n)
        assert position == n
        assert inconsistent == {}
        assert views == fresh[n], f"at_position={n}"
    assert fresh[3] != fresh[4] != fresh[6]  # the cuts really differ


@pytest.mark.parametrize(
    ("moment", "known"),
    [
        (at(8, 0), 0),
        (at(9, 0, 1), 1),
        (at(9, 45), 5),
        (at(9, 49, 59), 5),
        (at(9, 50), 6),
        (at(10, 40, 1), 9),
        (at(11, 29, 59), 11),
        (at(11, 30), 13),
        (at(13, 30, 0).astimezone(dt.timezone(dt.timedelta(hours=2))), 14),
        (at(12, 30).astimezone(dt.timezone(dt.timedelta(hours=-5))), 14),
        (at(11, 0).astimezone(dt.timezone(dt.timedelta(hours=3))), 9),
    ],
)
def test_a_known_at_cut_equals_the_position_cut_of_what_was_recorded_by_then(
    url: str, moment: dt.datetime, known: int
) -> None:
    """known_at=T gives the views at the position of the last record recorded at or before T."""
    assert known == sum(1 for _, _, recorded in TIMELINE if recorded <= moment)
    views, position, inconsistent = cut_views(url, known_at=moment)
    assert position == known
    assert inconsistent == {}
    assert views == cut_views(url, at_position=known)[0]


@pytest.mark.parametrize(
    "moment",
    [at(8, 0), at(9, 15), at(9, 20), at(9, 35), at(10, 5), at(10, 45), at(11, 27), at(13, 0)],
)
def test_an_event_time_cut_equals_a_ledger_of_the_events_that_had_occurred(
    url: str, tmp_path: Path, moment: dt.datetime
) -> None:
    """as_of=T gives the views of a fresh ledger holding, in log order, the events that occurred by T."""
    included = [
        item for item, (_, occurred, _) in zip(items(), TIMELINE, strict=True) if occurred <= moment
    ]
    views, position, inconsistent = cut_views(url, as_of=moment)
    assert inconsistent == {}
    last = max((i + 1 for i, (_, o, _) in enumerate(TIMELINE) if o <= moment), default=0)
    assert position == last
    expected = ledger_views(f"sqlite:///{tmp_path / 'fresh.db'}", included)
    assert without_positions(views) == without_positions(expected)


def test_a_late_fill_shows_in_event_time_but_not_in_what_was_known_then(url: str) -> None:
    """A fill that occurred at 09:25 but arrived at 09:50 is in as_of=09:35, not in known_at=09:45."""
    as_of, _, _ = cut_views(url, as_of=at(9, 35))
    known, _, _ = cut_views(url, known_at=at(9, 45))
    later, _, _ = cut_views(url, known_at=at(9, 50))

    def t1(views: dict[str, Any]) -> dict[str, Any]:
        found: list[dict[str, Any]] = [p for p in views["positions"] if p["trade_id"] == "t1"]
        assert len(found) == 1
        return found[0]

    assert t1(as_of)["quantity"] == Decimal(1) and t1(as_of)["gross"] == Decimal(10)
    assert t1(known)["quantity"] == Decimal(2) and t1(known)["gross"] == Decimal(0)
    assert t1(known)["stop_price"] == Decimal(95)  # known by 09:45, occurred after 09:35
    assert "stop_price" in t1(as_of) and t1(as_of)["stop_price"] == Decimal(90)
    assert t1(later)["quantity"] == Decimal(1)


def test_an_impossible_event_time_cut_is_reported_inconsistent(url: str) -> None:
    """as_of between a skewed reduce and its trade's open reports the trade as inconsistent, not fixed."""
    moment = at(10, 25)  # after t5's reduce "occurred" (10:20), before t5 was opened (10:30)

    async def go() -> tuple[dict[str, str], list[str], list[Any]]:
        async with travel(url, projections.standard(), as_of=moment) as cut:
            open_ids = [p.trade_id for p in cut.view(OpenPositions).positions()]
            return dict(cut.inconsistent), open_ids, cut.view(Pnl).totals("symbol")

    inconsistent, open_ids, pnl = asyncio.run(go())
    assert set(inconsistent) == {"t5"}
    assert "TradeReduced" in inconsistent["t5"] and "position 9" in inconsistent["t5"]
    assert open_ids == ["t1"]
    assert "SOLUSDT" not in {row.group for row in pnl}


def test_the_trade_is_consistent_again_once_its_open_is_in_the_cut(url: str) -> None:
    """as_of after both the skewed reduce and the open folds t5 normally."""
    views, _, inconsistent = cut_views(url, as_of=at(10, 35))
    assert inconsistent == {}
    (t5,) = [p for p in views["positions"] if p["trade_id"] == "t5"]
    assert t5["quantity"] == Decimal("0.5")


@pytest.mark.parametrize("command", ["positions", "pnl", "performance", "history"])
def test_the_cli_warns_of_an_inconsistent_event_time_cut(
    url: str, tmp_path: Path, command: str
) -> None:
    """A query with --as-of at an impossible cut prints an "inconsistent" line naming the trade."""
    result = cli(url, command, "--as-of", iso(at(10, 25)), cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "inconsistent" in line]
    assert len(warnings) == 1 and "t5" in warnings[0]


def test_the_cli_does_not_warn_at_a_consistent_cut(url: str, tmp_path: Path) -> None:
    """A query with --as-of at a consistent cut prints no "inconsistent" line."""
    result = cli(url, "positions", "--as-of", iso(at(10, 35)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "inconsistent" not in result.stderr


def test_the_cli_known_at_cut_matches_the_library(url: str, tmp_path: Path) -> None:
    """`events --known-at T` lists exactly the records recorded at or before T."""
    result = cli(url, "events", "--known-at", iso(at(10, 40, 1)), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["position"] for line in result.stdout.splitlines()] == list(
        range(1, 10)
    )


@pytest.mark.parametrize(
    "cut",
    [
        {},
        {"at_position": 1, "as_of": at(9, 0)},
        {"known_at": dt.datetime(2026, 2, 2, 9, 0)},
        {"as_of": dt.datetime(2026, 2, 2, 9, 0)},
        {"at_position": -1},
    ],
    ids=["none", "two", "naive-known-at", "naive-as-of", "negative"],
)
def test_a_cut_must_be_exactly_one_well_formed_moment(url: str, cut: dict[str, Any]) -> None:
    """travel refuses no cut, two cuts, a naive time or a negative position."""
    with pytest.raises(ValueError):
        travel(url, projections.standard(), **cut)


def test_travel_refuses_a_missing_ledger_and_creates_none(tmp_path: Path) -> None:
    """travel on a ledger file that does not exist raises and leaves no file behind."""
    missing = tmp_path / "missing.db"

    async def go() -> None:
        async with travel(f"sqlite:///{missing}", projections.standard(), at_position=1):
            pass

    with pytest.raises(LedgerError):
        asyncio.run(go())
    assert not missing.exists()


def test_event_classes_are_what_the_timeline_records() -> None:
    """The timeline parses into events of the types its lines name."""
    assert [type(item.event).__name__ for item in items()] == [
        line["type"] for line, _, _ in TIMELINE
    ]
    assert all(isinstance(item.event, Event) for item in items())
