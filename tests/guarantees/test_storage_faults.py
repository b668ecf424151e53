"""Storage faults: a full disk, a read-only filesystem, a damaged WAL, bad checkpoints, foreign and
newer files, a cut log. Each is a typed error or a safe recovery, never silent loss, and at the CLI
a one-line error with exit 1, never a traceback.

The full and read-only disks are real: a small tmpfs mounted for the test
(this needs root, as CI has). Damage is done with plain file and sqlite3
operations, as a disk fault or an operator would.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from ledger import (
    Append,
    IncompatibleStore,
    IntegrityError,
    LedgerError,
    StoreUnavailable,
    open_ledger,
)
from projections import standard
from replay.travel import travel
from replay.verify import verify
from tests.guarantees.harness import answers, connect, raw_log, record_in_child
from tests.lifecycles import opened, random_lifecycle
from tests.replay.ledgers import cli, jsonl, tampered

PAD = {"pad": "x" * 12_000}


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The single human error line of a failed CLI run (JSON log lines aside); no traceback."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    human = [line for line in lines if not line.startswith("{")]
    for line in lines:
        if line.startswith("{"):
            json.loads(line)  # logs and per-line refusals are JSON, one object a line
    assert len(human) == 1, result.stderr
    assert human[0].startswith(("error:", "usage error:", "FAILED")), human[0]
    return human[0]


def history(seed: int = 5, trades: int = 6) -> list[Append]:
    import random

    rng = random.Random(seed)
    events: list[Append] = []
    for n in range(trades):
        events += [Append(e) for e in random_lifecycle(rng, f"t{n}", close=n % 2 == 0)]
    return events


def build(url: str, items: list[Append] | None = None, *, checkpoint_every: int = 5) -> None:
    """Record ``items`` (default: a small history) one call each, with the standard views."""

    async def go() -> None:
        async with open_ledger(url, standard(), checkpoint_every=checkpoint_every) as book:
            for item in items if items is not None else history():
                await book.record_batch([item])

    asyncio.run(go())


async def recovered_and_rebuilt(url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The views a reopening gives, and the views of a fold of the whole log from zero."""
    async with open_ledger(url, standard(), create=False) as book:
        recovered = await answers(book)
        head = (await book.store.head()).position
    async with travel(url, standard(), at_position=head) as cut:
        rebuilt = await answers(cut)
    return recovered, rebuilt


def assert_recovers_exactly(url: str) -> None:
    """Views reopened equal a fold from zero, the chain verifies, and so says the CLI."""
    recovered, rebuilt = asyncio.run(recovered_and_rebuilt(url))
    assert recovered == rebuilt
    report = asyncio.run(verify(url))
    assert report.ok, report.first_bad
    result = cli(url, "verify")
    assert result.returncode == 0 and result.stdout.startswith("ok:"), result.stdout
    assert "Traceback" not in result.stderr


# a full disk and a read-only filesystem, for real


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs mounted for this test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (these tests need root, as CI has): {result.stderr}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; delete it to give the space back."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65_536)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def remount(disk: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(disk)], check=True, capture_output=True)


def test_a_full_disk_refuses_appends_with_store_unavailable_changes_nothing_and_recovers_when_space_returns(
    tiny_disk: Path,
) -> None:
    """With the disk full, record and record_batch raise StoreUnavailable and the log keeps its bytes; freed, the same ledger records again."""
    url = url_of(tiny_disk / "ledger.db")

    async def go() -> Any:
        async with open_ledger(url, standard()) as book:
            for n in range(5):
                await book.record(opened(f"t{n}"))
            before = raw_log(url)
            filler = fill(tiny_disk)
            for n in range(3):
                with pytest.raises(StoreUnavailable, match="full"):
                    await book.record(opened(f"big{n}", metadata=PAD))
            with pytest.raises(StoreUnavailable):
                await book.record_batch([opened("b1", metadata=PAD), opened("b2", metadata=PAD)])
            assert raw_log(url) == before
            filler.unlink()
            return await book.record(opened("big0", metadata=PAD))

    assert asyncio.run(go()).position == 6
    assert_recovers_exactly(url)


def test_a_full_disk_at_the_cli_is_a_clear_error_and_exit_1(
    tiny_disk: Path, tmp_path: Path
) -> None:
    """`tradeledger record` on a full disk says StoreUnavailable in one line, exits 1 and writes nothing; freed, it records."""
    url = url_of(tiny_disk / "ledger.db")
    build(url, [Append(opened("t0"))])
    before = raw_log(url)
    source = tmp_path / "lines.jsonl"
    line = {
        "type": "TradeOpened",
        "symbol": "BTCUSDT",
        "side": "long",
        "quantity": "1",
        "price": "100",
        "currency": "USDT",
        "occurred_at": "2026-01-05T10:00:00Z",
        "metadata": PAD,
    }
    source.write_text(jsonl({**line, "trade_id": f"c{n}"} for n in range(3)))
    filler = fill(tiny_disk)
    assert "StoreUnavailable" in one_line_error(cli(url, "record", str(source)))
    filler.unlink()
    assert raw_log(url) == before
    assert cli(url, "record", str(source)).returncode == 0


def test_a_ledger_on_a_read_only_filesystem_is_refused_untouched_and_opens_again_once_writable(
    tiny_disk: Path,
) -> None:
    """Reopened on a read-only filesystem, the ledger raises StoreUnavailable (and the CLI exits 1) without a byte changed; writable again, it records."""
    url = url_of(tiny_disk / "ledger.db")
    build(url)
    files = {p.name: p.read_bytes() for p in tiny_disk.iterdir()}
    remount(tiny_disk, "ro")
    try:

        async def attempt() -> None:
            async with open_ledger(url, standard()) as book:
                await book.record(opened("late"))

        with pytest.raises(StoreUnavailable):
            asyncio.run(attempt())
        for command in (["positions"], ["verify"], ["record", "-"]):
            line = one_line_error(cli(url, *command, input=""))
            assert "StoreUnavailable" in line and str(tiny_disk) in line
        assert {p.name: p.read_bytes() for p in tiny_disk.iterdir()} == files
    finally:
        remount(tiny_disk, "rw")

    async def later() -> Any:
        async with open_ledger(url, standard()) as book:
            return await book.record(opened("late"))

    assert asyncio.run(later()).position == len(history()) + 1
    assert_recovers_exactly(url)


# a damaged WAL


def killed_with_a_wal(directory: Path) -> tuple[str, list[str], list[tuple[Any, ...]]]:
    """A ledger whose writer was SIGKILLed right after its 10th commit, WAL left behind.

    Returns its URL, the acknowledged event ids and the rows a clean reader finds.
    """
    url = url_of(directory / "ledger.db")
    code, acked, stderr = record_in_child(url, 20, failpoints="after_commit=kill@10")
    assert code < 0, stderr
    assert (directory / "ledger.db-wal").stat().st_size > 0
    pristine = directory / "pristine"
    pristine.mkdir()
    for suffix in ("", "-wal"):
        shutil.copy(directory / f"ledger.db{suffix}", pristine / f"ledger.db{suffix}")
    rows = raw_log(url_of(pristine / "ledger.db"))
    assert len(rows) == 10 and len(acked) == 9
    return url, acked, rows


def log_ids(url: str) -> list[str]:
    return [row[3] for row in raw_log(url)]


def test_garbage_after_the_last_wal_frame_is_ignored_and_every_committed_record_stays(
    tmp_path: Path,
) -> None:
    """Random bytes appended to the WAL of a killed writer: the ledger opens with all ten records, verifies, and recovers its views."""
    url, _, rows = killed_with_a_wal(tmp_path)
    with open(tmp_path / "ledger.db-wal", "ab") as wal:
        wal.write(os.urandom(10_000))
    assert raw_log(url) == rows
    assert_recovers_exactly(url)


def test_a_wal_cut_inside_its_last_frame_drops_only_that_unacknowledged_transaction(
    tmp_path: Path,
) -> None:
    """The WAL truncated mid-frame loses the last commit (never acknowledged) and nothing else; the rest verifies."""
    url, acked, rows = killed_with_a_wal(tmp_path)
    wal = tmp_path / "ledger.db-wal"
    os.truncate(wal, wal.stat().st_size - 100)
    found = raw_log(url)
    assert found == rows[:9]
    assert log_ids(url) == acked
    assert_recovers_exactly(url)


def test_a_wal_frame_damaged_in_the_middle_leaves_a_consistent_prefix_of_the_log(
    tmp_path: Path,
) -> None:
    """A flipped byte mid-WAL makes SQLite ignore that frame and all after it: the log is a dense, verifying prefix, never a hole."""
    url, _, rows = killed_with_a_wal(tmp_path)
    wal = tmp_path / "ledger.db-wal"
    data = bytearray(wal.read_bytes())
    frame = 24 + 4096
    frames = (len(data) - 32) // frame
    data[32 + (frames // 2) * frame + 500] ^= 0xFF
    wal.write_bytes(bytes(data))
    found = raw_log(url)
    assert 0 < len(found) < len(rows)
    assert found == rows[: len(found)]
    assert_recovers_exactly(url)


# checkpoints and views that must not be trusted


UNDECODABLE = b"\xc1\xc1\xc1"
DAMAGE = {
    "digest": (
        "UPDATE checkpoints SET state = CAST(X'00' || state AS BLOB) WHERE name = 'pnl'",
        (),
    ),
    "text-in-state": ("UPDATE checkpoints SET state = X'00' || state WHERE name = 'pnl'", ()),
    "position": ("UPDATE checkpoints SET position = 'x' WHERE name = 'pnl'", ()),
    "undecodable": (
        "UPDATE checkpoints SET state = ?, digest = ? WHERE name = 'pnl'",
        (UNDECODABLE, hashlib.sha256(UNDECODABLE).hexdigest()),
    ),
    "hash": (
        "UPDATE checkpoints SET hash = '00' || substr(hash, 3) WHERE name = 'open_positions'",
        (),
    ),
    "identity": ("UPDATE checkpoints SET identity = 'pnl/v999/{}' WHERE name = 'pnl'", ()),
    "table-view-hash": (
        "UPDATE projection_positions SET hash = '00' || substr(hash, 3) "
        "WHERE name = 'trade_history'",
        (),
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_checkpoint_is_discarded_with_a_warning_and_its_view_rebuilt(
    tmp_path: Path, damage: str
) -> None:
    """A checkpoint (or table-view position) that fails its checks is logged, discarded and rebuilt: the views equal a fold from zero, also at the CLI."""
    url = url_of(tmp_path / "ledger.db")
    build(url)
    sql, params = DAMAGE[damage]
    with connect(url) as conn:
        assert conn.execute(sql, params).rowcount == 1
    with structlog.testing.capture_logs() as logs:
        recovered, rebuilt = asyncio.run(recovered_and_rebuilt(url))
    assert recovered == rebuilt
    assert {log["event"] for log in logs} & {
        "checkpoint_discarded",
        "checkpoint_unreadable",
        "view_rebuilt",
    }
    result = cli(url, "positions", "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert len(json.loads(result.stdout)) == len(recovered["positions"])


# foreign, damaged, newer and cut files


def other_application(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.close()


def notes(path: Path) -> None:
    path.write_bytes(b"these are my trading notes, not a database\n" * 100)


@pytest.mark.parametrize("make", [other_application, notes], ids=["sqlite-app", "text"])
def test_a_file_that_is_not_a_ledger_is_refused_as_incompatible_and_left_as_it_was(
    tmp_path: Path, make: Any
) -> None:
    """Another application's SQLite file or a text file raises IncompatibleStore (CLI: one line, exit 1) and keeps its bytes."""
    path = tmp_path / "other.db"
    make(path)
    before = path.read_bytes()
    with pytest.raises(IncompatibleStore):
        build(url_of(path), [Append(opened("t1"))])
    for command in (["positions"], ["verify"], ["record", "-"], ["info"]):
        assert "IncompatibleStore" in one_line_error(cli(url_of(path), *command, input=""))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_a_damaged_ledger_file_is_an_integrity_error_not_a_stranger(tmp_path: Path) -> None:
    """A ledger file cut in half raises IntegrityError naming the damage (CLI: one line, exit 1)."""
    url = url_of(tmp_path / "ledger.db")
    build(url, [Append(opened(f"t{n}", metadata=PAD)) for n in range(40)])
    path = tmp_path / "ledger.db"
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(IntegrityError, match="damaged"):
        asyncio.run(recovered_and_rebuilt(url))
    for command in (["positions"], ["verify"], ["export"]):
        assert "IntegrityError" in one_line_error(cli(url, *command))


def test_a_ledger_from_a_newer_tradeledger_is_refused_as_incompatible(tmp_path: Path) -> None:
    """A ledger whose schema is newer than this code raises IncompatibleStore asking for an upgrade (CLI: one line, exit 1) and is left as it was."""
    url = url_of(tmp_path / "ledger.db")
    build(url)
    with connect(url) as conn:
        conn.execute("PRAGMA user_version = 99")
    before = (tmp_path / "ledger.db").read_bytes()
    with pytest.raises(IncompatibleStore, match="upgrade"):
        build(url, [])
    for command in (["positions"], ["record", "-"], ["verify"]):
        line = one_line_error(cli(url, *command, input=""))
        assert "IncompatibleStore" in line and "upgrade" in line
    assert (tmp_path / "ledger.db").read_bytes() == before


def test_a_log_shorter_than_its_newest_checkpoint_is_an_integrity_error(tmp_path: Path) -> None:
    """Records cut from the tail under a checkpoint: opening with views raises IntegrityError, the CLI says so in one line, verify names the cut."""
    url = url_of(tmp_path / "ledger.db")
    build(url)
    with tampered(url) as conn:
        (head,) = conn.execute("SELECT max(position) FROM records").fetchone()
        conn.execute("DELETE FROM records WHERE position > ?", (head - 3,))
    with pytest.raises(IntegrityError, match="removed from the tail"):
        asyncio.run(recovered_and_rebuilt(url))
    assert "IntegrityError" in one_line_error(cli(url, "positions"))
    report = cli(url, "verify")
    assert report.returncode == 1 and "Traceback" not in report.stderr
    assert report.stdout.startswith("FAILED") and "tail was cut" in report.stdout.splitlines()[0]


def test_every_storage_error_is_a_ledger_error(tmp_path: Path) -> None:
    """A ledger path in a missing directory raises StoreUnavailable (a LedgerError), and the CLI says so in one line."""
    url = url_of(tmp_path / "missing" / "ledger.db")
    with pytest.raises(LedgerError):
        build(url, [Append(opened("t1"))])
    assert "StoreUnavailable" in one_line_error(cli(url, "record", "-", input=""))
