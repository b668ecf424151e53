"""Recovery: a killed writer, untrustworthy checkpoints, a cut log, a failing view, other writers.

Every test works on real SQLite files; tampering goes through plain sqlite3,
as an operator or a disk fault would.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import structlog.testing

from ledger import Append, Event, FeeCharged, open_ledger
from ledger.errors import IntegrityError, ProjectionFaulted
from ledger.projection import StateProjection, Step
from ledger.record import Record
from projections import (
    OpenPositions,
    Pnl,
    Signals,
    TradeHistory,
    standard,
)
from tests.projections.books import (
    D,
    assert_same_views,
    closed,
    day,
    fee_charged,
    opened,
    record_all,
    reduced,
    run,
    views,
)
from tests.projections.books import (
    signal as signal_event,
)
from tests.projections.histories import random_history

ROOT = Path(__file__).resolve().parents[2]


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


def history(trades: int = 12, seed: int = 7) -> list[Event]:
    return list(random_history(random.Random(seed), trades))


def connect(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """A plain sqlite3 connection that commits what it is told and then closes."""
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


async def read_log(url: str) -> list[Record]:
    async with open_ledger(url) as book:
        return [record async for record in book.store.read()]


async def rebuilt_views(records: list[Record], target: str) -> dict[str, Any]:
    """The views of a fresh ledger that re-records ``records`` with their event ids."""
    async with open_ledger(target, standard()) as fresh:
        for start in range(0, len(records), 100):
            await fresh.record_batch(
                [Append(r.event, event_id=r.event_id) for r in records[start : start + 100]]
            )
        return await views(fresh)


def discards(logs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (log["event"], log["view"])
        for log in logs
        if log["event"] in ("checkpoint_discarded", "view_rebuilt")
    ]


# a writer killed at a random moment

CHILD = """
import asyncio, logging, random, sys
sys.path.insert(0, {root!r})
import structlog
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
from ledger import open_ledger
from projections import standard
from tests.projections.histories import random_history


async def main(url, acks, seed):
    async with open_ledger(url, standard(), checkpoint_every=50) as book:
        with open(acks, "a") as out:
            for event in random_history(random.Random(seed), 400):
                record = await book.record(event)
                out.write(record.event_id + "\\n")
                out.flush()
        await asyncio.sleep(3600)


asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def acknowledged(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().split("\n")[:-1] if line]


@pytest.mark.parametrize("attempt", range(3))
def test_a_writer_killed_at_a_random_moment_loses_no_acknowledged_event_and_recovers_exact_views(
    tmp_path: Path, attempt: int
) -> None:
    """After SIGKILL mid-run, every acknowledged event is in the log and the reopened views equal a rebuild from zero."""
    rng = random.Random()
    seed, threshold = rng.randrange(10**6), rng.randint(60, 1500)
    script = tmp_path / "writer.py"
    script.write_text(CHILD.format(root=str(ROOT)))
    acks = tmp_path / "acks.txt"
    ledger_file = tmp_path / "ledger.db"
    child = subprocess.Popen(
        [sys.executable, str(script), url_of(ledger_file), str(acks), str(seed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while len(acknowledged(acks)) < threshold:
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            assert time.monotonic() < deadline, "the writer is too slow"
            time.sleep(0.002)
        time.sleep(rng.random() * 0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stderr is not None:
            child.stderr.close()
    acked = acknowledged(acks)
    context = f"seed={seed} threshold={threshold} acked={len(acked)}"

    async def go() -> None:
        with structlog.testing.capture_logs() as logs:
            async with open_ledger(url_of(ledger_file), standard()) as book:
                after_crash = await views(book)
                records = [record async for record in book.store.read()]
                await book.runner.rebuild()
                assert_same_views(await views(book), after_crash, context)
        assert not discards(logs), context
        assert set(acked) <= {r.event_id for r in records}, context
        assert len(records) >= len(acked) > 0
        fresh = await rebuilt_views(records, url_of(tmp_path / "fresh.db"))
        assert_same_views(fresh, after_crash, context)

    run(go())
    with connect(ledger_file) as conn:
        positions = [p for (p,) in conn.execute("SELECT position FROM checkpoints")]
    assert positions, f"no checkpoint was taken before the kill: {context}"


# checkpoints that must not be trusted


def record_then_close(url: str, events: list[Event], projections: list[Any] | None = None) -> None:
    async def go() -> None:
        async with open_ledger(url, standard() if projections is None else projections) as book:
            await record_all(book, events)

    run(go())


def reopen(url: str, projections: list[Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The views after reopening with ``projections``, and the warnings logged."""

    async def go() -> dict[str, Any]:
        async with open_ledger(url, projections) as book:
            return await views(book)

    with structlog.testing.capture_logs() as logs:
        found = run(go())
    return found, logs


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A closed ledger file holding a history, and the views of a fresh rebuild of it."""
    path = tmp_path / "ledger.db"
    events = history()
    record_then_close(url_of(path), events)
    expected = run(rebuilt_views(run(read_log(url_of(path))), url_of(tmp_path / "fresh.db")))
    yield path, expected


def test_an_intact_ledger_reopens_from_its_checkpoints_without_discarding_any(
    recorded: tuple[Path, dict[str, Any]],
) -> None:
    """Reopening an untouched ledger uses every checkpoint and view as stored and gives the same views."""
    path, expected = recorded
    found, logs = reopen(url_of(path), standard())
    assert discards(logs) == []
    assert_same_views(found, expected)


def test_a_checkpoint_of_another_version_is_discarded_and_rebuilt(
    recorded: tuple[Path, dict[str, Any]],
) -> None:
    """A state view whose version changed (same name) ignores the old checkpoint and rebuilds it."""

    class PnlV2(Pnl):
        version = 2

    class OpenPositionsV2(OpenPositions):
        version = 2

    path, expected = recorded
    projections = standard()
    projections[0], projections[1] = OpenPositionsV2(), PnlV2()
    found, logs = reopen(url_of(path), projections)
    assert sorted(discards(logs)) == [
        ("checkpoint_discarded", "open_positions"),
        ("checkpoint_discarded", "pnl"),
    ]
    assert_same_views(found, expected)


def test_a_view_with_other_settings_is_rebuilt_not_trusted(
    recorded: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Performance with starting equity 1000 rebuilds over the default's rows and reports from 1000."""
    path, _ = recorded
    found, logs = reopen(url_of(path), standard(starting_equity=D(1000)))
    assert discards(logs) == [("view_rebuilt", "performance")]

    async def fresh() -> dict[str, Any]:
        async with open_ledger(
            url_of(tmp_path / "other.db"), standard(starting_equity=D(1000))
        ) as book:
            for record in run_log:
                await book.record(record.event, event_id=record.event_id)
            return await views(book)

    run_log = run(read_log(url_of(path)))
    expected = run(fresh())
    assert_same_views(found, expected)
    assert all(f.starting_equity == D(1000) for f in found["performance/None"])
    # and back to the default settings: rebuilt again
    again, logs = reopen(url_of(path), standard())
    assert discards(logs) == [("view_rebuilt", "performance")]
    assert all(f.starting_equity == 0 for f in again["performance/None"])


def test_equal_settings_written_differently_keep_the_views(
    recorded: tuple[Path, dict[str, Any]],
) -> None:
    """Starting equity 0.00 is the default's 0: the stored views are kept, not rebuilt."""
    path, _ = recorded
    _, logs = reopen(url_of(path), standard(starting_equity=D("0.00")))
    assert discards(logs) == []


def test_a_checkpoint_whose_state_changed_without_its_digest_is_discarded(
    recorded: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Another valid Pnl snapshot put in place of the checkpoint's state fails its digest and is rebuilt."""
    path, expected = recorded
    other = tmp_path / "other.db"
    record_then_close(url_of(other), history()[:10])
    with connect(other) as conn:
        (blob,) = conn.execute("SELECT state FROM checkpoints WHERE name = 'pnl'").fetchone()
    with connect(path) as conn:
        (state,) = conn.execute("SELECT state FROM checkpoints WHERE name = 'pnl'").fetchone()
        assert blob != state
        conn.execute("UPDATE checkpoints SET state = ? WHERE name = 'pnl'", (blob,))
    found, logs = reopen(url_of(path), standard())
    assert discards(logs) == [("checkpoint_discarded", "pnl")]
    assert_same_views(found, expected)


def test_a_checkpoint_that_does_not_decode_is_discarded_even_with_a_matching_digest(
    recorded: tuple[Path, dict[str, Any]],
) -> None:
    """Garbage bytes with their own correct digest are rejected on restore and the view rebuilt."""
    path, expected = recorded
    blob = b"\x93not a snapshot"
    with connect(path) as conn:
        conn.execute(
            "UPDATE checkpoints SET state = ?, digest = ? WHERE name = 'open_positions'",
            (blob, hashlib.sha256(blob).hexdigest()),
        )
    found, logs = reopen(url_of(path), standard())
    assert discards(logs) == [("checkpoint_discarded", "open_positions")]
    assert_same_views(found, expected)


def test_a_checkpoint_whose_hash_is_no_longer_the_logs_is_discarded(
    recorded: tuple[Path, dict[str, Any]],
) -> None:
    """A checkpoint naming a hash the log does not have at its position is rebuilt from zero."""
    path, expected = recorded
    with connect(path) as conn:
        conn.execute("UPDATE checkpoints SET hash = ? WHERE name = 'pnl'", ("ab" * 32,))
    found, logs = reopen(url_of(path), standard())
    assert discards(logs) == [("checkpoint_discarded", "pnl")]
    assert_same_views(found, expected)


def test_a_table_view_whose_hash_is_no_longer_the_logs_is_rebuilt(
    recorded: tuple[Path, dict[str, Any]],
) -> None:
    """Trade history rows stored against a hash the log does not have are thrown away and rebuilt."""
    path, expected = recorded
    with connect(path) as conn:
        conn.execute(
            "DELETE FROM trade_history WHERE rowid IN (SELECT rowid FROM trade_history LIMIT 2)"
        )
        conn.execute(
            "UPDATE projection_positions SET hash = ? WHERE name = 'trade_history'", ("cd" * 32,)
        )
    found, logs = reopen(url_of(path), standard())
    assert discards(logs) == [("view_rebuilt", "trade_history")]
    assert_same_views(found, expected)


def test_a_table_view_whose_stored_figures_do_not_decode_is_rebuilt_not_fatal(
    tmp_path: Path,
) -> None:
    """A damaged performance_stats row: the ledger opens, warns, and rebuilds that view to the exact figures."""
    url = url_of(tmp_path / "ledger.db")
    events = history(6)

    async def go() -> None:
        async with open_ledger(url, standard()) as book:
            records = [await book.record(event) for event in events]
        with contextlib.closing(sqlite3.connect(tmp_path / "ledger.db")) as conn, conn:
            conn.execute("UPDATE performance_stats SET state = '{\"currency\": 1}'")
        with structlog.testing.capture_logs() as logs:
            async with open_ledger(url, standard()) as book:
                found = await views(book)
        assert any(log["event"] == "view_rebuilt" and log["view"] == "performance" for log in logs)
        assert_same_views(found, await rebuilt_views(records, url_of(tmp_path / "fresh.db")))

    run(go())


def test_a_checkpoint_moved_to_another_position_is_discarded(
    recorded: tuple[Path, dict[str, Any]],
) -> None:
    """A checkpoint relabelled to an earlier position no longer matches the log's hash there."""
    path, expected = recorded
    with connect(path) as conn:
        conn.execute("UPDATE checkpoints SET position = position - 3 WHERE name = 'pnl'")
    found, logs = reopen(url_of(path), standard())
    assert discards(logs) == [("checkpoint_discarded", "pnl")]
    assert_same_views(found, expected)


def cut_tail(path: Path, keep: int) -> None:
    """Remove every record after ``keep``, past the append-only triggers, as an attacker could."""
    with connect(path) as conn:
        conn.execute("DROP TRIGGER records_no_delete")
        conn.execute("DELETE FROM records WHERE position > ?", (keep,))


def test_a_log_shorter_than_its_checkpoints_refuses_to_open(
    recorded: tuple[Path, dict[str, Any]],
) -> None:
    """Cutting records off the tail below the checkpoints' position raises IntegrityError on open."""
    path, _ = recorded
    with connect(path) as conn:
        (head,) = conn.execute("SELECT max(position) FROM records").fetchone()
    cut_tail(path, head - 3)

    async def go() -> None:
        async with open_ledger(url_of(path), standard()):
            pass

    with pytest.raises(IntegrityError):
        run(go())


def test_a_log_shorter_than_a_table_views_position_refuses_to_open(
    recorded: tuple[Path, dict[str, Any]],
) -> None:
    """With no state checkpoints left, a table view built past the log's end still raises IntegrityError."""
    path, _ = recorded
    with connect(path) as conn:
        (head,) = conn.execute("SELECT max(position) FROM records").fetchone()
        conn.execute("DELETE FROM checkpoints")
    cut_tail(path, head - 2)

    async def go() -> None:
        async with open_ledger(url_of(path), [TradeHistory()]):
            pass

    with pytest.raises(IntegrityError):
        run(go())


# a view that raises


class Fragile(StateProjection):
    """Counts trade events; raises on every FeeCharged while ``broken``."""

    name = "fragile"
    broken: ClassVar[bool] = True

    def __init__(self) -> None:
        self.count = 0

    def apply(self, step: Step) -> None:
        if isinstance(step.event, FeeCharged) and type(self).broken:
            raise RuntimeError("cannot count fees")
        if step.after is not None:
            self.count += 1

    def reset(self) -> None:
        self.count = 0

    def snapshot(self) -> bytes:
        return str(self.count).encode()

    def restore(self, data: bytes) -> None:
        self.count = int(data)

    def seen(self) -> int:
        self.ready()
        return self.count


FAULTY_BOOK: list[Event] = [
    opened("a", 2, 100),
    fee_charged("a", "0.5"),
    reduced("a", 1, 110),
    closed("a", 120),
    opened("b", 1, 50, occurred_at=day(1)),
]


def test_a_view_that_raises_is_faulted_while_the_append_and_the_other_views_stand(
    tmp_path: Path,
) -> None:
    """record() returns for the event the view fails on; that view's query raises ProjectionFaulted, the others are exact."""
    url = url_of(tmp_path / "ledger.db")

    async def go() -> None:
        with structlog.testing.capture_logs() as logs:
            async with open_ledger(url, [*standard(), Fragile()]) as book:
                records = [await book.record(event) for event in FAULTY_BOOK]
                assert [r.position for r in records] == [1, 2, 3, 4, 5]
                with pytest.raises(ProjectionFaulted):
                    book.view(Fragile).seen()
                found = await views(book)
        assert [log["view"] for log in logs if log["event"] == "projection_faulted"] == ["fragile"]
        assert_same_views(found, await rebuilt_views(records, url_of(tmp_path / "fresh.db")))
        assert [t.trade_id for t in found["history"].trades] == ["a"]
        assert found["pnl/None"][0].fees == D("0.5")

    run(go())


def test_a_faulted_view_stays_faulted_across_a_reopen_and_a_rebuild_clears_a_passing_fault(
    tmp_path: Path,
) -> None:
    """A deterministic failure faults the view again on reopen; once the cause is gone, rebuild() makes it sound and exact."""
    url = url_of(tmp_path / "ledger.db")

    async def go() -> None:
        async with open_ledger(url, [*standard(), Fragile()]) as book:
            await record_all(book, FAULTY_BOOK)
        async with open_ledger(url, [*standard(), Fragile()]) as book:
            with pytest.raises(ProjectionFaulted):
                book.view(Fragile).seen()
            Fragile.broken = False
            try:
                await book.runner.rebuild()
                assert book.view(Fragile).seen() == 5
            finally:
                Fragile.broken = True

    run(go())


def test_a_table_view_that_raises_is_faulted_and_fails_its_queries(tmp_path: Path) -> None:
    """A Signals view raising on one signal fails its queries loudly while the trade views stay exact."""

    class Picky(Signals):
        def apply(self, step: Step) -> None:
            if getattr(step.event, "signal_id", None) == "s2":
                raise ValueError("cannot store s2")
            super().apply(step)

    url = url_of(tmp_path / "ledger.db")
    events = [signal_event("s1"), signal_event("s2", occurred_at=day(0, 11, 30)), *FAULTY_BOOK]

    async def go() -> None:
        projections = [p for p in standard() if not isinstance(p, Signals)]
        async with open_ledger(url, [*projections, Picky()]) as book:
            await record_all(book, events)
            with pytest.raises(ProjectionFaulted):
                await book.view(Picky).signals()
            history_page = await book.view(TradeHistory).trades()
            assert [t.trade_id for t in history_page.trades] == ["a"]
            assert history_page.trades[0].net == D(30) - D("0.5")

    run(go())


def test_a_table_view_whose_write_raises_is_faulted_alone_and_every_append_returns(
    tmp_path: Path,
) -> None:
    """A table view's own bug at write time (not a database error): record() still returns the durable record, that view alone is faulted, the other tables keep every row, and a follower keeps following."""

    class Stubborn(Signals):
        def take(self) -> Any:
            write = super().take()

            def refuse(conn: sqlite3.Connection) -> None:
                write(conn)
                if conn.execute("SELECT count(*) FROM signals").fetchone()[0] > 1:
                    raise ValueError("cannot format the second signal")

            return refuse

    url = url_of(tmp_path / "ledger.db")
    events = [signal_event("s1"), signal_event("s2", occurred_at=day(0, 11, 30)), *FAULTY_BOOK]

    async def go() -> None:
        projections = [p for p in standard() if not isinstance(p, Signals)]
        async with open_ledger(url, [*projections, Stubborn()], follow=True) as follower:
            async with open_ledger(url) as writer:
                await record_all(writer, events[:2])
            async with open_ledger(url, [TradeHistory(), Stubborn()]) as book:
                records = [await book.record(event) for event in events[2:]]
                assert [r.position for r in records] == [3, 4, 5, 6, 7]
                history_page = await book.view(TradeHistory).trades()
                assert [t.trade_id for t in history_page.trades] == ["a"]
            deadline = time.monotonic() + 5
            while follower.runner.position < 7 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert follower.runner.position == 7  # the follower outlived the fault
            with pytest.raises(ProjectionFaulted):
                await follower.view(Stubborn).signals()
            assert follower.view(OpenPositions).positions()[0].trade_id == "b"

    run(go())


# other writers


def test_refresh_brings_in_records_appended_by_another_ledger_on_the_same_file(
    tmp_path: Path,
) -> None:
    """A second ledger's appends show in the first's views after refresh(), exactly as a rebuild would."""
    url = url_of(tmp_path / "ledger.db")
    events = history(8)
    half = len(events) // 2

    async def go() -> None:
        async with open_ledger(url, standard()) as reader:
            await record_all(reader, events[:half])
            before = await views(reader)
            async with open_ledger(url) as writer:
                await record_all(writer, events[half:])
            assert_same_views(await views(reader), before)
            await reader.refresh()
            after = await views(reader)
            records = [record async for record in reader.store.read()]
            assert len(records) == len(events)
            assert_same_views(after, await rebuilt_views(records, url_of(tmp_path / "fresh.db")))
            assert after != before

    run(go())


def test_a_following_ledger_picks_up_another_writers_records_by_itself(tmp_path: Path) -> None:
    """With follow=True the views include another ledger's appends within two seconds, no refresh() called."""
    url = url_of(tmp_path / "ledger.db")

    async def go() -> None:
        async with open_ledger(url, standard(), follow=True) as follower:
            async with open_ledger(url) as writer:
                await record_all(writer, [opened("a", 2, 100), closed("a", 107)])
            deadline = time.monotonic() + 2
            trades: list[Any] = []
            while time.monotonic() < deadline:
                trades = (await follower.view(TradeHistory).trades()).trades
                if trades:
                    break
                await asyncio.sleep(0.02)
            assert [(t.trade_id, t.net) for t in trades] == [("a", D(14))]
            (row,) = follower.view(Pnl).totals()
            assert row.net == D(14)
            assert follower.view(OpenPositions).positions() == []

    run(go())
