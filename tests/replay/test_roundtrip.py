"""record -> export -> verify --file -> record the export elsewhere -> the same events and views."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from replay.trail import COLUMNS
from tests.replay.ledgers import HISTORY, cli, jsonl, path_of

# Every field the original event carried; recorded_at (and so the hashes) belong to the new ledger.
EVENT_FIELDS = ("position", "stream_id", "version", "event_id", "type", "schema_version",
                "occurred_at", "data", "metadata")  # fmt: skip
VIEWS = (
    ("positions",),
    ("pnl",),
    ("pnl", "--group-by", "symbol"),
    ("performance",),
    ("performance", "--group-by", "strategy"),
    ("performance", "--daily"),
    ("history",),
    ("signals",),
    ("parameters",),
    ("parameters", "--current"),
)


class Trip:
    """One ledger recorded from HISTORY, its export, and a second ledger recorded from that export."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.source = f"sqlite:///{directory / 'source.db'}"
        self.copy = f"sqlite:///{directory / 'copy.db'}"
        self.export = directory / "trail.jsonl"


def run(url: str, *args: str, cwd: Path, input: str | None = None) -> Any:
    result = cli(url, *args, cwd=cwd, input=input)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def records_of(path: Path) -> list[dict[str, Any]]:
    return [line for line in lines_of(path) if "hash" in line and "position" in line]


@pytest.fixture(scope="module")
def trip(tmp_path_factory: pytest.TempPathFactory) -> Trip:
    trip = Trip(tmp_path_factory.mktemp("roundtrip"))
    history = trip.directory / "history.jsonl"
    history.write_text(jsonl(HISTORY))
    assert run(trip.source, "record", str(history), cwd=trip.directory).returncode == 0
    exported = run(trip.source, "export", "-o", str(trip.export), cwd=trip.directory)
    assert exported.returncode == 0, exported.stderr
    recorded = run(trip.copy, "record", str(trip.export), cwd=trip.directory)
    assert recorded.returncode == 0, recorded.stderr
    return trip


def edited(trip: Trip, name: str, change: Any) -> Path:
    """A copy of the export with its lines passed through ``change``."""
    lines = trip.export.read_text().splitlines(keepends=True)
    target = trip.directory / name
    target.write_text("".join(change(lines)))
    return target


def verify_file(trip: Trip, path: Path) -> Any:
    return run(trip.source, "verify", "--file", str(path), cwd=trip.directory)


def test_an_export_verifies_offline(trip: Trip) -> None:
    """`verify --file` re-hashes a fresh export and says ok with its head."""
    result = verify_file(trip, trip.export)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok:") and f"{len(HISTORY)} records" in result.stdout
    report = json.loads(
        run(trip.source, "verify", "--file", str(trip.export), "--json", cwd=trip.directory).stdout
    )
    assert report["ok"] is True and report["head_hash"] == records_of(trip.export)[-1]["hash"]


def test_an_export_verifies_after_its_ledger_is_deleted(tmp_path: Path) -> None:
    """`verify --file` needs no ledger: it still passes once the ledger file is gone, and creates none."""
    url = f"sqlite:///{tmp_path / 'gone.db'}"
    run(url, "record", "-", input=jsonl(HISTORY), cwd=tmp_path)
    export = tmp_path / "trail.jsonl"
    assert run(url, "export", "-o", str(export), cwd=tmp_path).returncode == 0
    for path in tmp_path.glob("gone.db*"):
        path.unlink()
    result = run(url, "verify", "--file", str(export), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not path_of(url).exists()


def test_an_edited_line_in_an_export_is_found_at_its_position(trip: Trip) -> None:
    """`verify --file` exits 1 naming the record whose line was edited."""

    def change(lines: list[str]) -> list[str]:
        row = json.loads(lines[6])  # the header is line 1: this is position 6
        assert row["position"] == 6 and '"price":"110"' in row["data"]
        row["data"] = row["data"].replace('"price":"110"', '"price":"111"')
        return [*lines[:6], json.dumps(row) + "\n", *lines[7:]]

    result = verify_file(trip, edited(trip, "edited.jsonl", change))
    assert result.returncode == 1
    assert "FAILED" in result.stdout and "position 6" in result.stdout


def test_a_removed_last_line_is_found_by_the_trailer(trip: Trip) -> None:
    """`verify --file` exits 1 when the last record line was removed: the trailer no longer matches."""
    result = verify_file(trip, edited(trip, "short.jsonl", lambda ls: [*ls[:-2], ls[-1]]))
    assert result.returncode == 1
    assert "trailer" in result.stdout


def test_a_removed_middle_line_is_found(trip: Trip) -> None:
    """`verify --file` exits 1 naming the gap when a record line in the middle was removed."""
    result = verify_file(trip, edited(trip, "gap.jsonl", lambda ls: [*ls[:5], *ls[6:]]))
    assert result.returncode == 1
    assert "position 5" in result.stdout


def test_an_export_without_its_trailer_fails(trip: Trip) -> None:
    """`verify --file` exits 1 when the export was cut short and has no trailer."""
    result = verify_file(trip, edited(trip, "cut.jsonl", lambda ls: ls[:-1]))
    assert result.returncode == 1
    assert "trailer" in result.stdout


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("binary", b"SQLite format 3\x00\xff\xfe\x00", "not UTF-8 text"),
        (
            "events.jsonl",
            b'{"type": "StopMoved", "trade_id": "t1"}\n',
            "line 1: not a record line: no position",
        ),
        ("array.jsonl", b"[1, 2]\n", "line 1: not a record line: not an object"),
    ],
    ids=["binary", "event-lines", "not-objects"],
)
def test_a_file_that_is_not_an_export_fails_verify_with_one_line(
    trip: Trip, name: str, content: bytes, says: str
) -> None:
    """`verify --file` on a binary file or on lines that are not records exits 1 with one line saying why."""
    path = trip.directory / name
    path.write_bytes(content)
    result = verify_file(trip, path)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert says in result.stderr


def test_a_csv_cut_mid_line_fails_verify_naming_the_line(trip: Trip) -> None:
    """A CSV export cut in the middle of a row fails verify, naming that line and the missing columns."""
    full = trip.directory / "whole.csv"
    run(trip.source, "export", "--format", "csv", "-o", str(full), cwd=trip.directory)
    text = full.read_text()
    cut = trip.directory / "midline.csv"
    cut.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 40])
    result = verify_file(trip, cut)
    assert result.returncode == 1
    lines = text.count("\n")
    assert f"line {lines}: not a record line: no " in result.stderr


def test_a_missing_trailer_is_reported_without_a_position_or_an_anchor(trip: Trip) -> None:
    """The report of an export without its trailer names the trailer, not a position or an anchor."""
    result = verify_file(trip, edited(trip, "notrailer.jsonl", lambda ls: ls[:-1]))
    assert result.returncode == 1
    (failed,) = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert failed.endswith("first bad: the export has no trailer: it may have been cut short")


def test_a_partial_export_verifies_from_its_first_record(trip: Trip) -> None:
    """An export from a later position verifies ok and says it is partial."""
    partial = trip.directory / "partial.jsonl"
    run(trip.source, "export", "--from-position", "5", "-o", str(partial), cwd=trip.directory)
    assert [r["position"] for r in records_of(partial)] == list(range(5, len(HISTORY) + 1))
    result = verify_file(trip, partial)
    assert result.returncode == 0, result.stdout
    assert "partial" in result.stdout


def test_a_csv_export_verifies_and_says_a_cut_tail_would_not_show(trip: Trip) -> None:
    """A CSV export (no trailer) verifies ok, and the report says a cut tail shows only against an anchor, cut or not."""
    full = trip.directory / "trail.csv"
    run(trip.source, "export", "--format", "csv", "-o", str(full), cwd=trip.directory)
    lines = full.read_text().splitlines(keepends=True)
    cut = trip.directory / "cut.csv"
    cut.write_text("".join(lines[:-3]))
    for path, records in ((full, len(HISTORY)), (cut, len(HISTORY) - 3)):
        result = verify_file(trip, path)
        assert result.returncode == 0, result.stdout
        assert f"{records} records" in result.stdout
        assert "no trailer: a cut tail shows only against an anchor" in result.stdout
    report = json.loads(
        run(trip.source, "verify", "--file", str(cut), "--json", cwd=trip.directory).stdout
    )
    assert report["ok"] is True and report["notes"] == [
        "a CSV export has no trailer: a cut tail shows only against an anchor"
    ]


def test_a_filtered_export_verifies_and_says_only_each_records_hash_was_checked(
    trip: Trip,
) -> None:
    """An export filtered by type verifies ok and says the links between its records were not checked."""
    opens = trip.directory / "opens.jsonl"
    run(trip.source, "export", "--type", "TradeOpened", "-o", str(opens), cwd=trip.directory)
    assert {r["type"] for r in records_of(opens)} == {"TradeOpened"}
    result = verify_file(trip, opens)
    assert result.returncode == 0, result.stdout
    assert "a filtered export: each record's own hash checked" in result.stdout
    assert "partial" not in result.stdout
    whole = json.loads(
        run(trip.source, "verify", "--file", str(trip.export), "--json", cwd=trip.directory).stdout
    )
    assert whole["notes"] == []


def test_a_re_recorded_export_gives_the_same_events(trip: Trip) -> None:
    """An export recorded into a new ledger exports again with the same events, field for field."""
    again = trip.directory / "again.jsonl"
    assert run(trip.copy, "export", "-o", str(again), cwd=trip.directory).returncode == 0
    first, second = records_of(trip.export), records_of(again)
    assert len(first) == len(second) == len(HISTORY)
    for before, after in zip(first, second, strict=True):
        assert {f: after[f] for f in EVENT_FIELDS} == {f: before[f] for f in EVENT_FIELDS}
    assert lines_of(again)[0]["ledger_id"] != lines_of(trip.export)[0]["ledger_id"]


@pytest.mark.parametrize("view", VIEWS, ids=" ".join)
def test_a_re_recorded_export_gives_the_same_views(trip: Trip, view: tuple[str, ...]) -> None:
    """An export recorded into a new ledger gives the same answer from every view."""
    answers = []
    for url in (trip.source, trip.copy):
        result = run(url, *view, "--json", cwd=trip.directory)
        assert result.returncode == 0, result.stderr
        answers.append(json.loads(result.stdout))
    assert answers[0] == answers[1]
    assert answers[0] not in ([], {}, {"trades": [], "total": 0})


def test_re_recording_an_export_into_its_own_ledger_changes_nothing(trip: Trip) -> None:
    """Recording an export into the ledger it came from returns the first records; the head stays."""
    before = json.loads(run(trip.source, "info", "--json", cwd=trip.directory).stdout)
    result = run(trip.source, "record", str(trip.export), cwd=trip.directory)
    assert result.returncode == 0, result.stderr
    acks = [json.loads(line) for line in result.stdout.splitlines()]
    exported = records_of(trip.export)
    assert [(a["position"], a["hash"]) for a in acks] == [
        (r["position"], r["hash"]) for r in exported
    ]
    after = json.loads(run(trip.source, "info", "--json", cwd=trip.directory).stdout)
    assert (after["head_position"], after["head_hash"]) == (
        before["head_position"],
        before["head_hash"],
    )


def test_a_csv_export_has_a_header_and_one_row_per_record(trip: Trip) -> None:
    """A CSV export has the column header and one row per record, equal to the JSON Lines export."""
    result = run(trip.source, "export", "--format", "csv", cwd=trip.directory)
    assert result.returncode == 0, result.stderr
    reader = csv.DictReader(io.StringIO(result.stdout))
    assert tuple(reader.fieldnames or ()) == COLUMNS
    rows = list(reader)
    exported = records_of(trip.export)
    assert len(rows) == len(exported) == len(HISTORY)
    for row, record in zip(rows, exported, strict=True):
        assert row == {k: str(v) for k, v in record.items()}


def test_a_csv_export_records_into_a_new_ledger_with_the_same_events(
    trip: Trip, tmp_path: Path
) -> None:
    """A CSV export's rows, as record lines, re-record into a new ledger with the same events."""
    result = run(trip.source, "export", "--format", "csv", cwd=trip.directory)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    url = f"sqlite:///{tmp_path / 'csv.db'}"
    recorded = run(url, "record", "-", input=jsonl(rows), cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    again = tmp_path / "again.jsonl"
    run(url, "export", "-o", str(again), cwd=tmp_path)
    assert [{f: r[f] for f in EVENT_FIELDS} for r in records_of(again)] == [
        {f: r[f] for f in EVENT_FIELDS} for r in records_of(trip.export)
    ]


def test_an_export_copied_elsewhere_still_verifies(trip: Trip, tmp_path: Path) -> None:
    """An export is self-contained: a copy in another directory verifies with no ledger around."""
    copy = tmp_path / "elsewhere.jsonl"
    shutil.copy(trip.export, copy)
    result = run(f"sqlite:///{tmp_path / 'none.db'}", "verify", "--file", str(copy), cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert not (tmp_path / "none.db").exists()
