"""The ``tradeledger`` command, run as a real subprocess on real ledger files."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import json
import os
import select
import sqlite3
import stat
import subprocess
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ledger import ParameterChanged, open_ledger
from replay.anchor import Anchor, new_key
from replay.trail import COLUMNS
from tests.replay.ledgers import HISTORY, build, cli, jsonl, path_of, tradeledger

COMMANDS = (
    "record",
    "positions",
    "pnl",
    "performance",
    "history",
    "signals",
    "parameters",
    "events",
    "verify",
    "anchor",
    "export",
    "rebuild",
    "tail",
    "info",
)
PROBE_TIME = dt.datetime(2026, 1, 5, 9, tzinfo=dt.UTC)
QUERIES = ("positions", "pnl", "performance", "history", "signals", "parameters")
EMPTY_BOOK: dict[str, Any] = {
    "positions": [],
    "pnl": [],
    "performance": [],
    "history": {"trades": [], "total": 0},
    "signals": {"signals": [], "total": 0},
    "parameters": [],
}


class Recorded:
    """The shared ledger: HISTORY recorded through ``tradeledger record FILE``."""

    def __init__(self, url: str, directory: Path, result: subprocess.CompletedProcess[str]):
        self.url = url
        self.directory = directory
        self.result = result
        self._live: dict[str, Any] = {}

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return cli(self.url, *args, input=input, cwd=self.directory)

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        return json.loads(result.stdout)

    def live(self, command: str) -> Any:
        """The live views' --json answer of ``command``, asked once per module."""
        if command not in self._live:
            self._live[command] = self.json(command)
        return self._live[command]

    def json_lines(self, *args: str) -> list[dict[str, Any]]:
        result = self.run(*args)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    directory = tmp_path_factory.mktemp("cli")
    source = directory / "history.jsonl"
    source.write_text(jsonl(HISTORY))
    url = f"sqlite:///{directory / 'ledger.db'}"
    return Recorded(url, directory, cli(url, "record", str(source), cwd=directory))


def acks(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def head(url: str) -> tuple[int, str]:
    found = cli(url, "info", "--json")
    assert found.returncode == 0, found.stderr
    facts = json.loads(found.stdout)
    return facts["head_position"], facts["head_hash"]


def floats_in(value: Any) -> list[Any]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [f for v in value.values() for f in floats_in(v)]
    if isinstance(value, list):
        return [f for v in value for f in floats_in(v)]
    return []


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout


# record


def test_record_prints_one_json_line_per_durable_event(recorded: Recorded) -> None:
    """`record FILE` prints, per event, its line, position, stream, version, event id and hash."""
    assert recorded.result.returncode == 0, recorded.result.stderr
    found = acks(recorded.result)
    assert [a["line"] for a in found] == list(range(1, len(HISTORY) + 1))
    assert [a["position"] for a in found] == list(range(1, len(HISTORY) + 1))
    for ack in found:
        assert {"line", "position", "stream_id", "version", "event_id", "hash"} <= ack.keys()
        assert len(ack["hash"]) == 64 and int(ack["hash"], 16) >= 0
    assert found[3]["stream_id"] == "trade-t1" and found[3]["version"] == 1
    assert found[6]["stream_id"] == "trade-t1" and found[6]["version"] == 4
    assert found[12]["event_id"] == "param-2"
    stored = recorded.json_lines("events", "--json")
    assert [(r["position"], r["hash"]) for r in stored] == [
        (a["position"], a["hash"]) for a in found
    ]


def test_record_from_stdin_gives_the_same_idempotency_keys(
    recorded: Recorded, tmp_path: Path
) -> None:
    """`record -` reads stdin; events with a natural key get the same event id as from a file."""
    url = f"sqlite:///{tmp_path / 'stdin.db'}"
    result = cli(url, "record", "-", input=jsonl(HISTORY), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    from_stdin = acks(result)
    from_file = acks(recorded.result)
    assert len(from_stdin) == len(HISTORY)
    # a stop, target or parameter change without event_id has no natural key: a random id
    keyed = [
        i
        for i, line in enumerate(HISTORY)
        if "event_id" in line
        or line["type"] not in ("ParameterChanged", "StopMoved", "TargetMoved")
    ]
    assert len(keyed) == 11
    assert [from_stdin[i]["event_id"] for i in keyed] == [from_file[i]["event_id"] for i in keyed]
    assert from_stdin[4]["event_id"] != from_file[4]["event_id"]
    assert [a["stream_id"] for a in from_stdin] == [a["stream_id"] for a in from_file]


def test_record_reports_bad_lines_by_number_and_writes_none_of_them(tmp_path: Path) -> None:
    """Bad lines go to stderr with their number and reason, exit 1; only the good lines are recorded."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    lines = [
        json.dumps(HISTORY[3]),  # 1: opens t1
        "{not json",  # 2
        json.dumps({"type": "Nope", "occurred_at": "2026-01-05T09:00:00Z"}),  # 3
        json.dumps(  # 4: the rules refuse it
            {
                "type": "TradeReduced",
                "trade_id": "ghost",
                "quantity": "1",
                "price": "1",
                "occurred_at": "2026-01-05T09:00:00Z",
            }
        ),
        json.dumps({**HISTORY[5], "quantity": "-1"}),  # 5: bad field
        json.dumps(HISTORY[4]),  # 6: moves t1's stop
    ]
    result = cli(url, "record", "-", input="\n".join(lines) + "\n", cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 1
    assert [(a["line"], a["position"]) for a in acks(result)] == [(1, 1), (6, 2)]
    bad = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert [b["line"] for b in bad] == [2, 3, 4, 5]
    assert all(b["reason"] for b in bad)
    assert "ghost" in bad[2]["reason"]
    assert bad[3].get("field") == "quantity"
    assert result.stderr.splitlines()[-1] == "error: 4 line(s) refused; the others are recorded"
    stored = [json.loads(line) for line in cli(url, "events", "--json").stdout.splitlines()]
    assert [r["type"] for r in stored] == ["TradeOpened", "StopMoved"]


def test_record_from_a_pipe_acknowledges_each_line_while_the_pipe_stays_open(
    tmp_path: Path,
) -> None:
    """`bot | tradeledger record -`: a line is recorded and acknowledged as it comes, not at EOF."""
    url = f"sqlite:///{tmp_path / 'pipe.db'}"
    env = {k: v for k, v in os.environ.items() if k != "TRADELEDGER_URL"}
    argv = [*tradeledger(), "--url", url, "record", "-"]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    with subprocess.Popen(argv, **pipes, text=True, env=env, cwd=tmp_path) as process:
        assert process.stdin is not None and process.stdout is not None
        acks = []
        for number, event in enumerate(HISTORY[:3], start=1):
            process.stdin.write(json.dumps(event) + "\n")
            process.stdin.flush()
            # the acknowledgement comes while stdin is still open
            readable, _, _ = select.select([process.stdout], [], [], 30)
            assert readable, f"no acknowledgement of line {number} while the pipe is open"
            acks.append(json.loads(process.stdout.readline()))
        process.stdin.close()
        assert process.wait(timeout=30) == 0
    assert [(a["line"], a["position"]) for a in acks] == [(1, 1), (2, 2), (3, 3)]


def test_record_counts_blank_lines_in_line_numbers(tmp_path: Path) -> None:
    """Blank lines are skipped but counted, so acknowledgements name the file's own line numbers."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    text = json.dumps(HISTORY[0]) + "\n\n   \n" + json.dumps(HISTORY[1]) + "\n"
    result = cli(url, "record", "-", input=text, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [(a["line"], a["position"]) for a in acks(result)] == [(1, 1), (4, 2)]


def test_atomic_record_with_one_unparsable_line_writes_nothing(tmp_path: Path) -> None:
    """`record --atomic`: one bad line among good ones writes nothing at all and exits 1."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    build(url, HISTORY[:4], standard=False)
    before = head(url)
    text = jsonl(HISTORY[4:7]) + '{"type": "StopMoved", "trade_id": "t1"}\n'
    result = cli(url, "record", "--atomic", "-", input=text, cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 1
    assert result.stdout == ""
    assert '"line":4' in result.stderr.replace(" ", "")
    assert head(url) == before


def test_atomic_record_refused_by_the_rules_writes_nothing_and_names_each_bad_line(
    tmp_path: Path,
) -> None:
    """`record --atomic`: lines the trade rules or the field rules refuse are each reported by number; nothing is written, exit 1."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    build(url, HISTORY[:4], standard=False)
    before = head(url)
    overdrawn = {**HISTORY[5], "quantity": "5", "fill_id": "f9"}  # more than the 2 open
    assert "price" in HISTORY[6]
    negative = {**HISTORY[6], "price": "-1"}
    text = jsonl([HISTORY[4], overdrawn, negative])
    result = cli(url, "record", "--atomic", "-", input=text, cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 1
    assert result.stdout == ""
    reports = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert [(r["line"], r["error"]) for r in reports] == [(2, "InvalidEvent"), (3, "InvalidEvent")]
    assert "2 bad line(s)" in result.stderr
    assert head(url) == before


def test_atomic_record_takes_a_line_repeated_in_the_batch_as_a_retry(tmp_path: Path) -> None:
    """`record --atomic` with the same signal twice records it once and acknowledges both lines with its record."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    text = jsonl([HISTORY[0], HISTORY[1], HISTORY[1]])
    result = cli(url, "record", "--atomic", "-", input=text, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [(a["line"], a["position"]) for a in acks(result)] == [(1, 1), (2, 2), (3, 2)]


def test_atomic_record_of_good_lines_writes_them_all(tmp_path: Path) -> None:
    """`record --atomic` with only good lines records every one and acknowledges each."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    result = cli(url, "record", "--atomic", "-", input=jsonl(HISTORY), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [a["position"] for a in acks(result)] == list(range(1, len(HISTORY) + 1))
    assert head(url)[0] == len(HISTORY)
    exported = cli(url, "export", cwd=tmp_path).stdout  # every line with its event id
    again = cli(url, "record", "--atomic", "-", input=exported, cwd=tmp_path)
    assert again.returncode == 0, again.stderr  # retries, each returning its first record
    assert [(a["position"], a["hash"]) for a in acks(again)] == [
        (a["position"], a["hash"]) for a in acks(result)
    ]


# query commands


def test_positions_lists_the_open_trades(recorded: Recorded) -> None:
    """`positions --json` lists the open trades with quantity, entry and target as strings."""
    found = recorded.json("positions")
    assert [p["trade_id"] for p in found] == ["t3", "t4"]
    t3 = found[0]
    assert t3["quantity"] == "1" and t3["average_entry"] == "200"
    assert t3["stop_price"] == "190" and t3["target_price"] == "230"
    assert t3["realized_net"] == "0"


def test_positions_filters_by_symbol(recorded: Recorded) -> None:
    """`positions --symbol` keeps only that symbol's open trades."""
    assert [p["trade_id"] for p in recorded.json("positions", "--symbol", "SOLUSDT")] == ["t4"]


def test_positions_prints_a_table_for_people(recorded: Recorded) -> None:
    """`positions` without --json prints a table naming each open trade."""
    result = recorded.run("positions")
    assert result.returncode == 0, result.stderr
    assert "t3" in result.stdout and "t4" in result.stdout and "SOLUSDT" in result.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout)


def test_pnl_totals_per_currency(recorded: Recorded) -> None:
    """`pnl --json` gives gross, fees, funding and net per currency, exactly."""
    (row,) = recorded.json("pnl")
    assert row["currency"] == "USDT"
    assert (row["gross"], row["fees"], row["funding"], row["net"]) == ("10", "2.5", "-1", "6.5")
    assert row["closed_trades"] == 2


def test_pnl_groups_by_symbol(recorded: Recorded) -> None:
    """`pnl --group-by symbol` gives one row per symbol with realized figures."""
    rows = {r["group"]: r for r in recorded.json("pnl", "--group-by", "symbol")}
    assert Decimal(rows["BTCUSDT"]["net"]) == Decimal("28.5")
    assert Decimal(rows["ETHUSDT"]["net"]) == Decimal("-22")
    assert rows["ETHUSDT"]["group_by"] == "symbol"


def test_performance_figures(recorded: Recorded) -> None:
    """`performance --json` counts wins and losses and sums the net of closed trades."""
    (figures,) = recorded.json("performance")
    assert (figures["trades"], figures["wins"], figures["losses"]) == (2, 1, 1)
    assert Decimal(figures["win_rate"]) == Decimal("0.5")
    assert Decimal(figures["net"]) == Decimal("6.5")
    assert Decimal(figures["average_r"]) == (Decimal("1.425") + Decimal("-22") / 50) / 2


def test_performance_groups_by_strategy(recorded: Recorded) -> None:
    """`performance --group-by strategy` gives figures per strategy."""
    found = {f["group"]: f for f in recorded.json("performance", "--group-by", "strategy")}
    assert set(found) == {"trend", "meanrev"}
    assert Decimal(found["trend"]["net"]) == Decimal("28.5")
    assert Decimal(found["meanrev"]["net"]) == Decimal("-22")


def test_performance_daily_series_is_zero_filled(recorded: Recorded) -> None:
    """`performance --daily` lists every day from the first to the last close, zero-filled."""
    days = recorded.json("performance", "--daily")
    assert [d["day"] for d in days] == ["2026-01-05", "2026-01-06", "2026-01-07"]
    assert [Decimal(d["net"]) for d in days] == [Decimal("28.5"), 0, Decimal("-22")]
    assert [d["trades"] for d in days] == [1, 0, 1]


def test_performance_starting_equity_shapes_equity_and_drawdown(recorded: Recorded) -> None:
    """`performance --starting-equity` seeds the equity curve and the drawdown fraction."""
    (figures,) = recorded.json("performance", "--starting-equity", "1000")
    assert Decimal(figures["starting_equity"]) == 1000
    assert Decimal(figures["ending_equity"]) == Decimal("1006.5")
    assert Decimal(figures["max_drawdown"]) == 22
    fraction = Decimal(figures["max_drawdown_pct"])
    assert abs(fraction - Decimal(22) / Decimal("1028.5")) < Decimal("1e-25")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), ["t1", "t2"]),
        (("--sort-by", "net", "--desc"), ["t1", "t2"]),
        (("--sort-by", "net"), ["t2", "t1"]),
        (("--desc",), ["t2", "t1"]),
        (("--limit", "1"), ["t1"]),
        (("--limit", "1", "--offset", "1"), ["t2"]),
        (("--symbol", "ETHUSDT"), ["t2"]),
        (("--side", "long"), ["t1"]),
        (("--outcome", "win"), ["t1"]),
        (("--strategy", "meanrev"), ["t2"]),
        (("--since", "2026-01-06T00:00:00Z"), ["t2"]),
        (("--until", "2026-01-06T00:00:00Z"), ["t1"]),
    ],
)
def test_history_filters_sorts_and_pages(
    recorded: Recorded, args: tuple[str, ...], expected: list[str]
) -> None:
    """`history` filters, sorts and pages closed trades; the total counts every match."""
    page = recorded.json("history", *args)
    assert [t["trade_id"] for t in page["trades"]] == expected
    if "--limit" not in args:
        assert page["total"] == len(expected)
    else:
        assert page["total"] == 2


def test_tables_say_when_there_is_nothing_to_show(recorded: Recorded) -> None:
    """A history page past the end and performance before any close say so, instead of a wrong range or nothing."""
    page = recorded.run("history", "--offset", "5000", "--limit", "3")
    assert page.returncode == 0, page.stderr
    assert "Closed trades none past 5000 of 2" in page.stdout
    empty = recorded.run("performance", "--at-position", "0")
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.strip() == "no closed trades"


def test_history_carries_every_figure_of_a_trade(recorded: Recorded) -> None:
    """`history --json` gives each closed trade's figures exactly, as strings."""
    t1 = recorded.json("history", "--symbol", "BTCUSDT")["trades"][0]
    assert t1["net"] == "28.5" and t1["fees"] == "1.5" and t1["gross"] == "30"
    assert Decimal(t1["r"]) == Decimal("1.425")
    assert t1["outcome"] == "win" and t1["close_reason"] == "take_profit"
    assert t1["average_exit"] == "115" and t1["signal_id"] == "s1"


@pytest.mark.parametrize(
    ("args", "expected"),
    [((), ["s1", "s2"]), (("--followed",), ["s1"]), (("--not-followed",), ["s2"])],
)
def test_signals_filter_by_whether_a_trade_followed(
    recorded: Recorded, args: tuple[str, ...], expected: list[str]
) -> None:
    """`signals --followed/--not-followed` keeps signals that did / did not lead to a trade."""
    page = recorded.json("signals", *args)
    assert [s["signal_id"] for s in page["signals"]] == expected
    assert page["total"] == len(expected)
    links = {s["signal_id"]: s["trade_id"] for s in page["signals"]}
    assert links.get("s1", "t1") == "t1" and links.get("s2") is None


def test_parameters_trail_and_current_values(recorded: Recorded) -> None:
    """`parameters` lists changes in log order; --name filters; --current gives the latest values."""
    changes = recorded.json("parameters")
    assert [(c["new_value"], c["old_value"], c["changed_by"]) for c in changes] == [
        ("0.5", None, "manual"),
        ("0.75", "0.5", "learning_agent"),
    ]
    assert len(recorded.json("parameters", "--name", "risk_pct")) == 2
    assert recorded.json("parameters", "--name", "leverage") == []
    assert recorded.json("parameters", "--current") == {"risk_pct": "0.75"}


@pytest.mark.parametrize(
    ("args", "positions"),
    [
        ((), list(range(1, 15))),
        (("--stream", "trade-t1"), [4, 5, 6, 7]),
        (("--stream", "parameters"), [1, 13]),
        (("--type", "TradeClosed"), [7, 10]),
        (("--correlation-id", "c1"), [4, 5, 6, 7]),
        (("--correlation-id", "c2"), [8]),
        (("--from-position", "3", "--to-position", "5"), [3, 4, 5]),
        (("--from-position", "12"), [12, 13, 14]),
        (("--stream", "trade-t1", "--from-position", "6"), [6, 7]),
        (("--limit", "2"), [1, 2]),
        (("--at-position", "3"), [1, 2, 3]),
        (("--as-of", "2026-01-05T09:30:00Z"), [1, 2, 3, 4]),
    ],
)
def test_events_filters(recorded: Recorded, args: tuple[str, ...], positions: list[int]) -> None:
    """`events` filters the raw trail by stream, type, correlation id, positions and cuts."""
    found = recorded.json_lines("events", "--json", *args)
    assert [r["position"] for r in found] == positions
    for row in found:
        assert set(row) == set(COLUMNS)


def test_events_escapes_terminal_control_characters(tmp_path: Path) -> None:
    """Terminal control characters in metadata never reach the terminal raw in `events` output."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    evil = {**HISTORY[0], "metadata": {"c": "\u009b2J", "n": "\u001b[31mX"}}
    build(url, [evil], standard=False)
    result = cli(url, "events", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ParameterChanged" in result.stdout
    assert "31mX" in result.stdout
    assert "\x1b" not in result.stdout and "\x9b" not in result.stdout


def test_json_outputs_carry_decimals_as_strings(recorded: Recorded) -> None:
    """No --json output carries a float: every Decimal is a string."""
    outputs = [
        recorded.json("positions"),
        recorded.json("pnl"),
        recorded.json("pnl", "--group-by", "side"),
        recorded.json("performance", "--starting-equity", "1000"),
        recorded.json("performance", "--daily"),
        recorded.json("history"),
        recorded.json("signals"),
    ]
    assert floats_in(outputs) == []
    assert isinstance(outputs[1][0]["net"], str)
    assert isinstance(outputs[5]["trades"][0]["holding_seconds"], str)


# cuts on every query command


@pytest.mark.parametrize("command", QUERIES)
@pytest.mark.parametrize(
    "cut",
    [("--at-position", "0"), ("--as-of", "2000-01-01T00:00:00Z"), ("--known-at", "2000-01-01")],
)
def test_query_commands_take_every_cut(
    recorded: Recorded, command: str, cut: tuple[str, str]
) -> None:
    """Every query command takes --at-position, --as-of and --known-at; before the log, the book is empty."""
    assert recorded.json(command, *cut) == EMPTY_BOOK[command]


@pytest.mark.parametrize("command", QUERIES)
@pytest.mark.parametrize(
    "cut", [("--at-position", "14"), ("--as-of", "2100-01-01"), ("--known-at", "2100-01-01")]
)
def test_a_cut_after_the_head_equals_the_live_book(
    recorded: Recorded, command: str, cut: tuple[str, str]
) -> None:
    """A cut at or after the head gives exactly the live views' answer."""
    assert recorded.json(command, *cut) == recorded.live(command)


def test_a_position_cut_shows_the_book_as_it_stood(recorded: Recorded) -> None:
    """`--at-position 5`: t1 still open with its moved stop, nothing realized but the entry fee."""
    (t1,) = recorded.json("positions", "--at-position", "5")
    assert (t1["trade_id"], t1["quantity"], t1["stop_price"]) == ("t1", "2", "95")
    (row,) = recorded.json("pnl", "--at-position", "5")
    assert Decimal(row["net"]) == Decimal("-0.5") and row["closed_trades"] == 0


def test_an_event_time_cut_shows_the_book_as_events_had_occurred(recorded: Recorded) -> None:
    """`--as-of` the end of 2026-01-05: only t1 is closed and no parameter change after it shows."""
    moment = "2026-01-05T23:59:59+00:00"
    assert [t["trade_id"] for t in recorded.json("history", "--as-of", moment)["trades"]] == ["t1"]
    assert recorded.json("parameters", "--as-of", moment, "--current") == {"risk_pct": "0.5"}
    assert recorded.json("signals", "--as-of", "2026-01-05T09:01:00Z")["total"] == 1


def test_performance_settings_apply_under_a_cut(recorded: Recorded) -> None:
    """`performance --starting-equity` with a cut folds the cut with that equity."""
    (figures,) = recorded.json("performance", "--at-position", "7", "--starting-equity", "100")
    assert Decimal(figures["ending_equity"]) == Decimal("128.5")
    assert figures["trades"] == 1


# verify, anchor


def test_verify_passes_a_clean_ledger(recorded: Recorded) -> None:
    """`verify` exits 0 on an untouched ledger and says ok with the head."""
    result = recorded.run("verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok:")
    report = recorded.json("verify")
    assert report["ok"] is True and report["records"] == len(HISTORY)
    assert report["first_bad"] is None


def test_verify_fails_a_tampered_ledger_naming_the_position(tmp_path: Path) -> None:
    """`verify` exits 1 and names the first bad position when a record was altered."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    build(url)
    conn = sqlite3.connect(path_of(url))
    conn.execute("DROP TRIGGER records_no_update")
    conn.execute("UPDATE records SET data = replace(data, '\"110\"', '\"111\"') WHERE position = 6")
    conn.commit()
    conn.close()
    result = cli(url, "verify", cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 1
    assert "FAILED" in result.stdout and "position 6" in result.stdout
    report = json.loads(cli(url, "verify", "--json", cwd=tmp_path).stdout)
    assert report["ok"] is False and report["first_bad"]["position"] == 6


def test_anchor_writes_a_key_pair_signs_the_head_and_verifies(tmp_path: Path) -> None:
    """`anchor --new-key` writes an owner-only key; `anchor --key` prints one signed line that verifies."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    build(url)
    key = tmp_path / "ledger.key"
    made = cli(url, "anchor", "--new-key", str(key), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert key.exists() and Path(f"{key}.pub").exists()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes()
    assert b"PUBLIC KEY" in Path(f"{key}.pub").read_bytes()

    signed = cli(url, "anchor", "--key", str(key), cwd=tmp_path)
    assert signed.returncode == 0, signed.stderr
    (line,) = signed.stdout.splitlines()
    anchor = Anchor.parse(line)
    assert (anchor.position, anchor.hash) == head(url)
    assert anchor.ledger_id == json.loads(cli(url, "info", "--json").stdout)["ledger_id"]

    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(line + "\n")
    verified = cli(
        url, "verify", "--anchor", str(anchors), "--public-key", f"{key}.pub", cwd=tmp_path
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "1 anchor(s)" in verified.stdout


def test_anchor_never_overwrites_a_key(tmp_path: Path) -> None:
    """`anchor --new-key` on an existing path is a usage error that leaves the key alone."""
    key = tmp_path / "ledger.key"
    new_key(key)
    before = key.read_bytes()
    result = cli(f"sqlite:///{tmp_path / 'l.db'}", "anchor", "--new-key", str(key), cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 2
    assert key.read_bytes() == before


def test_anchor_new_key_in_a_missing_directory_fails_without_a_traceback(tmp_path: Path) -> None:
    """`anchor --new-key` where the key cannot be written exits 1 with one line, no traceback."""
    target = tmp_path / "no" / "such" / "dir" / "ledger.key"
    result = cli(f"sqlite:///{tmp_path / 'l.db'}", "anchor", "--new-key", str(target), cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1


# export, rebuild, tail, info


def test_export_jsonl_to_a_file(recorded: Recorded, tmp_path: Path) -> None:
    """`export -o FILE` writes a header, one line per record with every field, and a trailer."""
    out = tmp_path / "trail.jsonl"
    result = recorded.run("export", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert f"exported {len(HISTORY)} records" in result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    header, records, trailer = lines[0], lines[1:-1], lines[-1]
    assert header["tradeledger_export"] == 1 and header["ledger_id"]
    assert [r["position"] for r in records] == list(range(1, len(HISTORY) + 1))
    assert all(set(r) == set(COLUMNS) for r in records)
    assert trailer["trailer"]["records"] == len(HISTORY)
    assert trailer["trailer"]["last_hash"] == records[-1]["hash"]
    assert json.loads(records[3]["metadata"])["correlation_id"] == "c1"


def test_export_csv_to_stdout(recorded: Recorded) -> None:
    """`export --format csv` prints a header and one row per record, data kept as JSON text."""
    result = recorded.run("export", "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert result.stdout.splitlines()[0] == ",".join(COLUMNS)
    assert [int(r["position"]) for r in rows] == list(range(1, len(HISTORY) + 1))
    assert json.loads(rows[3]["data"])["trade_id"] == "t1"


def test_export_filters_by_stream(recorded: Recorded) -> None:
    """`export --stream` writes only that stream's records, and the trailer counts them."""
    result = recorded.run("export", "--stream", "trade-t2")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["position"] for r in lines[1:-1]] == [8, 9, 10]
    assert lines[-1]["trailer"]["records"] == 3


def test_rebuild_restores_a_damaged_view(tmp_path: Path) -> None:
    """`rebuild` refolds every view from position 1: lost read-model rows come back."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    build(url)
    conn = sqlite3.connect(path_of(url))
    conn.execute("DELETE FROM trade_history")
    conn.commit()
    conn.close()
    stale = json.loads(cli(url, "history", "--json").stdout)
    assert stale["total"] == 0  # the read model trusts its stored position
    result = cli(url, "rebuild", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"rebuilt every view to position {len(HISTORY)}" in result.stdout
    rebuilt = json.loads(cli(url, "history", "--json").stdout)
    assert [t["trade_id"] for t in rebuilt["trades"]] == ["t1", "t2"]


def test_rebuild_refuses_a_log_whose_tail_was_cut_and_keeps_the_evidence(tmp_path: Path) -> None:
    """`rebuild` on a log shorter than its checkpoints exits 1 and leaves them, so verify still reports the cut."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    build(url)
    conn = sqlite3.connect(path_of(url))
    conn.execute("DROP TRIGGER records_no_delete")
    conn.execute("DELETE FROM records WHERE position > 12")
    conn.commit()
    saved = conn.execute("SELECT name, position, hash FROM checkpoints ORDER BY name").fetchall()
    conn.close()
    assert saved and all(position > 12 for _, position, _ in saved)
    result = cli(url, "rebuild", cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert result.returncode == 1
    assert "removed from the tail" in result.stderr and "verify" in result.stderr
    conn = sqlite3.connect(path_of(url))
    after = conn.execute("SELECT name, position, hash FROM checkpoints ORDER BY name").fetchall()
    conn.close()
    assert after == saved
    verified = cli(url, "verify", cwd=tmp_path)
    assert verified.returncode == 1 and "the tail was cut" in verified.stdout


def test_tail_from_a_position_stops_after_the_limit(recorded: Recorded) -> None:
    """`tail --from-position N --limit K` prints K records from N, then exits 0."""
    found = recorded.json_lines("tail", "--from-position", "12", "--limit", "3", "--json")
    assert [r["position"] for r in found] == [12, 13, 14]
    assert found[-1]["type"] == "TradeOpened"


def test_tail_prints_records_another_process_appends(tmp_path: Path) -> None:
    """`tail --limit 2` follows the head and prints records a second process appends later."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    build(url, HISTORY[:3], standard=False)
    env = {k: v for k, v in os.environ.items() if k != "TRADELEDGER_URL"}
    follower = subprocess.Popen(
        [*tradeledger(), "--url", url, "tail", "--limit", "2", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    appended = 0

    async def append_one() -> None:
        nonlocal appended
        appended += 1
        async with open_ledger(url) as book:
            await book.record(
                ParameterChanged(
                    name="tail_probe",
                    new_value=appended,
                    changed_by="manual",
                    occurred_at=PROBE_TIME,
                ),
                event_id=f"probe-{appended}",
            )

    try:
        deadline = time.monotonic() + 30
        while follower.poll() is None and time.monotonic() < deadline:
            asyncio.run(append_one())
            with contextlib.suppress(subprocess.TimeoutExpired):
                follower.wait(timeout=0.3)
        out, err = follower.communicate(timeout=10)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0, err
    found = [json.loads(line) for line in out.splitlines()]
    assert len(found) == 2
    assert found[0]["position"] > 3 and found[1]["position"] == found[0]["position"] + 1
    assert {r["type"] for r in found} == {"ParameterChanged"}
    assert found[1]["position"] <= 3 + appended


def test_tail_prints_lines_for_people(recorded: Recorded) -> None:
    """`tail` without --json prints one line per record with its position and type."""
    result = recorded.run("tail", "--from-position", "14", "--limit", "1")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.split()[0] == "14" and "TradeOpened" in line and "trade-t4" in line


def test_info_json_shape(recorded: Recorded) -> None:
    """`info --json` gives the head, the durability, counts by type and checkpoint positions."""
    recorded.json("positions")  # a query closes with its checkpoints saved
    facts = recorded.json("info")
    assert facts["head_position"] == len(HISTORY)
    assert facts["head_hash"] == acks(recorded.result)[-1]["hash"]
    assert "synchronous=FULL" in facts["durability"]
    assert facts["events_by_type"] == {
        "FundingApplied": 1,
        "ParameterChanged": 2,
        "SignalEmitted": 2,
        "StopMoved": 1,
        "TargetMoved": 1,
        "TradeClosed": 2,
        "TradeOpened": 4,
        "TradeReduced": 1,
    }
    assert {"open_positions", "pnl"} <= set(facts["checkpoints"])
    assert set(facts["checkpoints"].values()) == {len(HISTORY)}


def test_info_prints_a_table_for_people(recorded: Recorded) -> None:
    """`info` without --json prints the head and the event counts."""
    result = recorded.run("info")
    assert result.returncode == 0, result.stderr
    assert "head_position" in result.stdout and "events: TradeOpened" in result.stdout


# exit codes


@pytest.mark.parametrize(
    "args",
    [
        ("positions", "--bogus"),
        ("positions", "--at-position", "abc"),
        ("pnl", "--at-position", "-1"),
        ("history", "--as-of", "yesterday"),
        ("history", "--known-at", "soon"),
        ("history", "--since", "garbage"),
        ("history", "--sort-by", "price"),
        ("pnl", "--as-of", "2026-01-05", "--at-position", "3"),
        ("pnl", "--group-by", "colour"),
        ("performance", "--starting-equity", "abc"),
        ("performance", "--annualization-days", "0"),
        ("events", "--from-position", "0"),
        ("export", "--format", "xml"),
        ("anchor",),
        ("record", "no-such-file.jsonl"),
        ("no-such-command",),
    ],
    ids=" ".join,
)
def test_usage_errors_exit_2_without_a_traceback(recorded: Recorded, args: tuple[str, ...]) -> None:
    """Unknown options, bad option values and conflicting options exit 2, never with a traceback."""
    result = recorded.run(*args)
    no_traceback(result)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip()


def test_anchor_without_public_key_is_a_usage_error(recorded: Recorded) -> None:
    """`verify --anchor` without `--public-key` exits 2."""
    anchors = recorded.directory / "history.jsonl"  # any existing file
    result = recorded.run("verify", "--anchor", str(anchors))
    no_traceback(result)
    assert result.returncode == 2
    assert "--public-key" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("positions",),
        ("pnl",),
        ("performance",),
        ("performance", "--starting-equity", "5"),
        ("history",),
        ("signals",),
        ("parameters",),
        ("positions", "--at-position", "3"),
        ("history", "--as-of", "2026-01-05"),
        ("events",),
        ("info",),
        ("export",),
        ("tail", "--limit", "1"),
        ("rebuild",),
        ("anchor", "--key", "KEY"),
        ("verify",),
    ],
    ids=" ".join,
)
def test_a_missing_ledger_is_one_error_line_exit_1(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Commands on a ledger file that does not exist exit 1 with one line and create nothing."""
    if "KEY" in args:
        new_key(tmp_path / "k")
        args = tuple(str(tmp_path / "k") if a == "KEY" else a for a in args)
    missing = tmp_path / "missing.db"
    result = cli(f"sqlite:///{missing}", *args, cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "missing.db" in result.stderr
    assert not missing.exists()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqlite:///DIR/l.db?timeout=1", "the sqlite URL takes no options, not 'timeout=1'"),
        (
            "redis://127.0.0.1:1/0?ledger=x&spoll=DIR/spool.db",
            "unknown option(s) in the redis URL: spoll;",
        ),
    ],
    ids=["sqlite", "redis"],
)
def test_a_url_with_an_unknown_option_is_a_usage_error_that_creates_nothing(
    tmp_path: Path, url: str, says: str
) -> None:
    """A misspelt URL option (a spool that would not be used, say) is refused up front, exit 2, not ignored."""
    result = cli(url.replace("DIR", str(tmp_path)), "info", cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 2
    assert says in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_redis_py_url_options_still_reach_the_client(tmp_path: Path) -> None:
    """redis-py's own URL options (socket_timeout) pass the check: an unreachable server is exit 1, not a usage error."""
    url = f"redis://127.0.0.1:1/0?ledger=x&views={tmp_path / 'v.db'}&socket_timeout=0.5"
    result = cli(url, "info", cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 1
    assert "StoreUnavailable" in result.stderr


def test_a_bad_anchor_file_is_refused_with_exit_1(recorded: Recorded, tmp_path: Path) -> None:
    """`verify --anchor` with a file that holds no anchor (garbage, empty, blank lines) exits 1 with one line, never ok."""
    key = tmp_path / "k"
    new_key(key)
    for name, text in (("bad.jsonl", "{not an anchor}\n"), ("empty.jsonl", ""), ("blank", "\n\n")):
        bad = tmp_path / name
        bad.write_text(text)
        result = recorded.run("verify", "--anchor", str(bad), "--public-key", f"{key}.pub")
        no_traceback(result)
        assert result.returncode == 1, name
        assert len(result.stderr.strip().splitlines()) == 1
        assert "ok:" not in result.stdout


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_help_with_an_example(command: str | None) -> None:
    """`--help` of the command group and of every command exits 0 and shows an example."""
    result = cli(None, *([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    assert "Example" in result.stdout
