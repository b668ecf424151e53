"""verify finds every kind of tampering with a ledger file, at the position where it happened.

Each test builds a real ledger (HISTORY, with the standard views so that
checkpoints exist), closes it, alters the file with plain sqlite3 after
dropping the append-only triggers, and runs ``replay.verify`` (or the CLI).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import LedgerError, SignalEmitted, open_ledger
from ledger.chain import record_hash, timestamp
from ledger.codec import encode_data
from replay import Anchor, Report, verify
from replay.anchor import new_key, sign
from replay.trail import COLUMNS
from tests.replay.ledgers import HISTORY, build, cli, path_of, tampered

LAST = len(HISTORY)
KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()


@pytest.fixture
def url(sqlite_url: str) -> str:
    """A closed ledger holding HISTORY, with checkpoints at its head."""
    build(sqlite_url)
    return sqlite_url


def run_verify(url: str, *anchors: Anchor) -> Report:
    return asyncio.run(verify(url, anchors=[(a, KEY.public_key()) for a in anchors]))


def anchor_of(url: str, key: Ed25519PrivateKey = KEY, position: int | None = None) -> Anchor:
    """An anchor of the ledger's head (or of ``position``) signed with ``key``."""

    async def go() -> Anchor:
        async with open_ledger(url, create=False) as book:
            store = book.store
            head = await store.head()
            at = head.position if position is None else position
            found = await store.record_at(at)
            assert found is not None
            return sign(await store.ledger_id(), at, found.hash, key, book.clock())

    return asyncio.run(go())


def rows(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    cursor = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM records ORDER BY position")
    return [dict(zip(COLUMNS, row, strict=True)) for row in cursor]


def insert(conn: sqlite3.Connection, row: dict[str, Any]) -> None:
    marks = ", ".join("?" * len(COLUMNS))
    conn.execute(
        f"INSERT INTO records ({', '.join(COLUMNS)}) VALUES ({marks})",
        [row[c] for c in COLUMNS],
    )


def hash_of(row: dict[str, Any], prev_hash: str) -> str:
    return record_hash(
        prev_hash,
        row["position"],
        row["stream_id"],
        row["version"],
        row["event_id"],
        row["type"],
        row["schema_version"],
        dt.datetime.fromisoformat(row["occurred_at"]),
        dt.datetime.fromisoformat(row["recorded_at"]),
        row["data"],
        row["metadata"],
    )


def first_bad(report: Report) -> int | None:
    assert not report.ok
    assert report.first_bad is not None
    return report.first_bad.position


def test_a_clean_ledger_verifies_with_its_anchor(url: str) -> None:
    """An untouched ledger verifies ok, with its checkpoints and its anchor."""
    report = run_verify(url, anchor_of(url))
    assert report.ok, report.problems
    assert (report.records, report.head_position) == (LAST, LAST)
    assert report.checkpoints > 0 and report.anchors == 1
    assert report.first_bad is None and report.problems == []


def test_verify_refuses_a_missing_ledger_and_creates_none(sqlite_url: str) -> None:
    """verify on a ledger file that does not exist raises and leaves no file behind."""
    with pytest.raises(LedgerError):
        run_verify(sqlite_url)
    assert not path_of(sqlite_url).exists()


def test_a_changed_byte_in_data_is_found_at_its_record(url: str) -> None:
    """One byte changed in a record's data breaks the hash at that record."""
    with tampered(url) as conn:
        (data,) = conn.execute("SELECT data FROM records WHERE position = 6").fetchone()
        assert '"price":"110"' in data
        conn.execute(
            "UPDATE records SET data = ? WHERE position = 6",
            (data.replace('"price":"110"', '"price":"111"'),),
        )
    report = run_verify(url)
    assert first_bad(report) == 6
    assert "hash" in report.first_bad.reason  # type: ignore[union-attr]


def test_a_changed_byte_in_metadata_is_found_at_its_record(url: str) -> None:
    """One byte changed in a record's metadata breaks the hash at that record."""
    with tampered(url) as conn:
        (metadata,) = conn.execute("SELECT metadata FROM records WHERE position = 5").fetchone()
        assert '"c1"' in metadata
        conn.execute(
            "UPDATE records SET metadata = ? WHERE position = 5",
            (metadata.replace('"c1"', '"c9"'),),
        )
    assert first_bad(run_verify(url)) == 5


def test_a_changed_byte_in_occurred_at_is_found_at_its_record(url: str) -> None:
    """One digit changed in a record's occurred_at column breaks the hash at that record."""
    with tampered(url) as conn:
        (occurred,) = conn.execute("SELECT occurred_at FROM records WHERE position = 9").fetchone()
        assert occurred.startswith("2026-01-06T16:00")
        conn.execute(
            "UPDATE records SET occurred_at = ? WHERE position = 9",
            (occurred.replace("T16:00", "T16:01"),),
        )
    assert first_bad(run_verify(url)) == 9


def test_a_record_deleted_in_the_middle_is_found_at_its_position(url: str) -> None:
    """A record removed from the middle leaves a gap named at the missing position."""
    with tampered(url) as conn:
        conn.execute("DELETE FROM records WHERE position = 7")
    report = run_verify(url)
    assert first_bad(report) == 7
    assert "missing" in report.first_bad.reason  # type: ignore[union-attr]


def test_an_inserted_record_breaks_the_chain_right_after_it(url: str) -> None:
    """A forged record slipped in at 5, hashed onto 4, breaks the link to the record after it."""
    with tampered(url) as conn:
        for position in range(LAST, 4, -1):  # from the end, so positions never clash
            conn.execute(
                "UPDATE records SET position = ? WHERE position = ?", (position + 1, position)
            )
        before = conn.execute("SELECT hash, recorded_at FROM records WHERE position = 4").fetchone()
        event = SignalEmitted(
            signal_id="forged",
            symbol="BTCUSDT",
            side="long",
            occurred_at=dt.datetime(2026, 1, 5, 9, 45, tzinfo=dt.UTC),
        )
        forged: dict[str, Any] = {
            "position": 5,
            "stream_id": "signal-forged",
            "version": 1,
            "event_id": "forged",
            "type": "SignalEmitted",
            "schema_version": 1,
            "occurred_at": timestamp(event.occurred_at),
            "recorded_at": before[1],
            "data": encode_data(event),
            "metadata": "{}",
            "prev_hash": before[0],
        }
        forged["hash"] = hash_of(forged, before[0])
        insert(conn, forged)
    report = run_verify(url)
    assert report.records == LAST + 1
    assert first_bad(report) == 6


def test_two_swapped_records_are_found_at_the_first_of_them(url: str) -> None:
    """Two records that swapped places (every column but position) break the chain at the first."""
    with tampered(url) as conn:
        found = {row["position"]: row for row in rows(conn)}
        conn.execute("DELETE FROM records WHERE position IN (3, 8)")
        insert(conn, {**found[8], "position": 3})
        insert(conn, {**found[3], "position": 8})
    report = run_verify(url)
    assert report.records == LAST
    assert first_bad(report) == 3


def test_a_cut_tail_is_found_against_a_checkpoint(url: str) -> None:
    """A log cut shorter than its checkpoints fails verify just past its new end."""
    with tampered(url) as conn:
        (checkpointed,) = conn.execute("SELECT max(position) FROM checkpoints").fetchone()
        assert checkpointed == LAST
        conn.execute("DELETE FROM records WHERE position > 11")
    report = run_verify(url)
    assert report.head_position == 11
    assert first_bad(report) == 12
    assert "checkpoint" in report.first_bad.reason  # type: ignore[union-attr]


def test_a_cut_tail_is_found_against_an_anchor(url: str) -> None:
    """With its checkpoints gone too, a cut tail passes the chain check but fails against an anchor."""
    anchor = anchor_of(url)
    with tampered(url) as conn:
        conn.execute("DELETE FROM records WHERE position > 11")
        conn.execute("DELETE FROM checkpoints")
    assert run_verify(url).ok  # the chain alone cannot tell
    report = run_verify(url, anchor)
    assert first_bad(report) == 12
    assert "anchor" in report.first_bad.reason  # type: ignore[union-attr]


def rewrite_chain(url: str) -> None:
    """Change t1's entry price, then re-hash every record and checkpoint consistently."""
    with tampered(url) as conn:
        conn.execute(
            'UPDATE records SET data = replace(data, \'"price":"100"\', \'"price":"101"\') '
            "WHERE position = 4"
        )
        prev = "00" * 32
        hashes: dict[int, str] = {}
        for row in rows(conn):
            digest = hash_of(row, prev)
            conn.execute(
                "UPDATE records SET prev_hash = ?, hash = ? WHERE position = ?",
                (prev, digest, row["position"]),
            )
            hashes[row["position"]] = prev = digest
        for name, position in conn.execute("SELECT name, position FROM checkpoints").fetchall():
            conn.execute("UPDATE checkpoints SET hash = ? WHERE name = ?", (hashes[position], name))


def test_a_consistently_rewritten_chain_is_caught_only_by_the_anchor(url: str) -> None:
    """A chain rewritten and re-hashed end to end passes verify alone and fails against the anchor."""
    anchor = anchor_of(url)
    rewrite_chain(url)
    alone = run_verify(url)
    assert alone.ok, alone.problems
    assert alone.head_hash != anchor.hash
    report = run_verify(url, anchor)
    assert first_bad(report) == LAST
    assert "rewritten" in report.first_bad.reason  # type: ignore[union-attr]


def test_an_anchor_in_the_middle_catches_a_rewrite_at_its_position(url: str) -> None:
    """An anchor signed at an earlier position catches a rewrite at that position."""
    anchor = anchor_of(url, position=10)
    rewrite_chain(url)
    assert first_bad(run_verify(url, anchor)) == 10


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda a: msgspec.structs.replace(a, position=a.position - 1), id="position"),
        pytest.param(lambda a: msgspec.structs.replace(a, hash="ab" * 32), id="hash"),
        pytest.param(
            lambda a: msgspec.structs.replace(a, signed_at="2030-01-01T00:00:00.000000Z"),
            id="signed_at",
        ),
        pytest.param(
            lambda a: sign(a.ledger_id, a.position, a.hash, OTHER_KEY, dt.datetime.now(dt.UTC)),
            id="other-key",
        ),
        pytest.param(
            lambda a: sign("another-ledger", a.position, a.hash, KEY, dt.datetime.now(dt.UTC)),
            id="other-ledger",
        ),
    ],
)
def test_a_forged_anchor_fails(url: str, forge: Any) -> None:
    """An anchor edited after signing, signed by another key, or for another ledger fails verify."""
    genuine = anchor_of(url)
    assert run_verify(url, genuine).ok
    report = run_verify(url, forge(genuine))
    assert not report.ok
    assert report.first_bad is not None
    assert "anchor" in report.first_bad.reason


# the same through the CLI


def cli_anchor(url: str, directory: Path) -> tuple[Path, Path]:
    """A key pair and an anchors file from `tradeledger anchor`."""
    key = directory / "ledger.key"
    new_key(key)
    signed = cli(url, "anchor", "--key", str(key), cwd=directory)
    assert signed.returncode == 0, signed.stderr
    anchors = directory / "anchors.jsonl"
    anchors.write_text(signed.stdout)
    return anchors, Path(f"{key}.pub")


def test_cli_verify_fails_a_rewritten_chain_only_with_the_anchor(url: str, tmp_path: Path) -> None:
    """`verify` exits 0 on a consistently rewritten chain, and 1 with `--anchor`."""
    anchors, public = cli_anchor(url, tmp_path)
    rewrite_chain(url)
    alone = cli(url, "verify", cwd=tmp_path)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    checked = cli(
        url, "verify", "--anchor", str(anchors), "--public-key", str(public), "--json", cwd=tmp_path
    )
    assert "Traceback" not in checked.stderr
    assert checked.returncode == 1
    report = json.loads(checked.stdout)
    assert report["ok"] is False and report["first_bad"]["position"] == LAST


def test_cli_verify_fails_a_cut_tail(url: str, tmp_path: Path) -> None:
    """`verify` exits 1 naming the position after the new end when the tail was cut."""
    with tampered(url) as conn:
        conn.execute("DELETE FROM records WHERE position > 12")
    result = cli(url, "verify", cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert result.returncode == 1
    assert "position 13" in result.stdout


def test_cli_anchor_refuses_to_sign_a_log_that_fails_verify(url: str, tmp_path: Path) -> None:
    """`anchor` on an altered log exits 1 naming the first bad position and prints no anchor line."""
    key = tmp_path / "ledger.key"
    new_key(key)
    with tampered(url) as conn:
        conn.execute('UPDATE records SET metadata = \'{"note":"x"}\' WHERE position = 7')
    result = cli(url, "anchor", "--key", str(key), cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert result.returncode == 1
    assert result.stdout == ""
    assert "not signing" in result.stderr and "position 7" in result.stderr


def test_cli_verify_fails_a_forged_anchor(url: str, tmp_path: Path) -> None:
    """`verify --anchor` exits 1 when the anchor line was edited after signing."""
    anchors, public = cli_anchor(url, tmp_path)
    line = json.loads(anchors.read_text())
    line["position"] -= 1
    anchors.write_text(json.dumps(line) + "\n")
    result = cli(url, "verify", "--anchor", str(anchors), "--public-key", str(public), cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert result.returncode == 1
    assert "FAILED" in result.stdout and "anchor" in result.stdout


def test_a_deleted_head_is_found_at_position_1_not_taken_for_a_partial_export(url: str) -> None:
    """The first records removed: a ledger (unlike an export) starts at position 1 from the genesis hash, even where an anchor of the head still matches."""
    head = anchor_of(url)
    with tampered(url) as conn:
        conn.execute("DELETE FROM records WHERE position <= 3")
    report = run_verify(url, head)
    assert not report.ok
    assert first_bad(report) == 1
    assert "missing" in report.first_bad.reason  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "rewrite",
    [
        lambda text: text.replace("T16:00:00.000000Z", "T17:00:00.000000+01:00"),  # same instant
        lambda text: text.replace(".000000Z", ""),  # naive: local time on the reader's machine
    ],
    ids=["offset", "naive"],
)
def test_other_bytes_for_the_same_stored_instant_are_found(url: str, rewrite: Any) -> None:
    """The chain hashes the stored text of a time: the same instant written another way is tampering too."""
    with tampered(url) as conn:
        (occurred,) = conn.execute("SELECT occurred_at FROM records WHERE position = 9").fetchone()
        conn.execute("UPDATE records SET occurred_at = ? WHERE position = 9", (rewrite(occurred),))
    assert first_bad(run_verify(url)) == 9


def test_a_hash_that_is_not_hex_is_a_finding_not_a_usage_error(url: str, tmp_path: Path) -> None:
    """`verify` names the record whose hash column holds something other than hex, and exits 1."""
    with tampered(url) as conn:
        conn.execute("UPDATE records SET hash = 'not hex' WHERE position = 4")
        conn.execute("UPDATE records SET prev_hash = 'not hex' WHERE position = 5")
    result = cli(url, "verify", "--json", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["first_bad"]["position"] == 4
    assert any("not a hex digest" in p["reason"] for p in report["problems"])


def test_verify_on_an_empty_file_says_it_is_no_ledger_and_leaves_it_empty(
    tmp_path: Path,
) -> None:
    """A ledger file truncated to nothing is not an empty ledger that verifies."""
    empty = tmp_path / "empty.db"
    empty.touch()
    result = cli(f"sqlite:///{empty}", "verify", cwd=tmp_path)
    assert result.returncode == 1
    assert "no ledger" in result.stderr
    assert empty.stat().st_size == 0


def test_verify_and_export_read_while_another_process_holds_the_write_lock(
    url: str, tmp_path: Path
) -> None:
    """Reading commands take no write lock on a current ledger: an open writer transaction does not stop them."""
    holder = sqlite3.connect(path_of(url), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        verified = cli(url, "verify", cwd=tmp_path)
        exported = cli(url, "export", "-o", str(tmp_path / "trail.jsonl"), cwd=tmp_path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert verified.returncode == 0, verified.stderr
    assert exported.returncode == 0, exported.stderr


def test_export_refuses_to_write_over_the_ledger_itself(url: str, tmp_path: Path) -> None:
    """`export -o` naming the ledger's own file is a usage error, and the ledger still verifies."""
    result = cli(url, "export", "-o", str(path_of(url)), cwd=tmp_path)
    assert result.returncode == 2
    assert "own file" in result.stderr
    assert run_verify(url).ok


def test_importing_an_export_refuses_a_line_altered_after_the_export(
    url: str, tmp_path: Path
) -> None:
    """`record` of an export checks each record line against its hash: an edited price is refused, not recorded."""
    trail = tmp_path / "trail.jsonl"
    assert cli(url, "export", "-o", str(trail), cwd=tmp_path).returncode == 0
    lines = trail.read_text().splitlines()
    row = json.loads(lines[6])
    data = json.loads(row["data"])
    key = next(k for k in ("price", "stop_price", "quantity", "amount") if k in data)
    data[key] = "111.11"
    row["data"] = json.dumps(data, separators=(",", ":"), sort_keys=True)
    lines[6] = json.dumps(row)
    trail.write_text("\n".join(lines) + "\n")
    result = cli(f"sqlite:///{tmp_path / 'copy.db'}", "record", str(trail), cwd=tmp_path)
    assert result.returncode == 1
    assert '"rule":"hash"' in result.stderr.replace(" ", "")
