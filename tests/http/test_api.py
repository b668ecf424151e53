"""The API against the CLI: the same answers, at the same position of a ledger being written."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.http.conftest import PREFIX, Recorded, Server, cli_json, get, record_history
from tests.replay.ledgers import build, tampered

# API parameter -> CLI option, where the names differ
RENAMED = {"start": "--since", "end": "--until", "stream": "--stream", "type": "--type"}


def options(query: Mapping[str, str]) -> list[str]:
    """The CLI options that ask what ``query`` asks the API."""
    found: list[str] = []
    for name, value in query.items():
        if name == "sort_order":
            found += ["--desc"] if value == "desc" else []
        elif name == "followed":
            found.append("--followed" if value == "true" else "--not-followed")
        elif name in ("daily", "current"):
            found += [f"--{name}"] if value == "true" else []
        else:
            found += [RENAMED.get(name, "--" + name.replace("_", "-")), value]
    return found


def same_as_cli(
    api: httpx.Client, book: Recorded, path: str, command: str, query: Mapping[str, str]
) -> Any:
    """The API's answer to ``query``, checked equal to the CLI's at the position it reflects."""
    body, position = get(api, path, dict(query))
    pinned = (
        []
        if any(k in query for k in ("at_position", "known_at", "as_of"))
        else [
            "--at-position",
            str(position),
        ]
    )
    assert body == cli_json(book.url, command, *options(query), *pinned)
    return body


def test_health_reports_the_store_the_head_the_views_and_the_durability(
    api: httpx.Client, book: Recorded
) -> None:
    """/health says the store answers, where the log and the views stand, and what durable means."""
    response = api.get(PREFIX + "/health")
    assert response.status_code == 200
    health = response.json()
    info = cli_json(book.url, "info")
    assert health["status"] == "ok" and health["reachable"] and health["following"]
    assert health["store"] == info["store"] == "SqliteStore"
    assert health["location"] == info["location"]
    assert health["durability"] == info["durability"]
    assert "synchronous=FULL" in health["durability"]
    assert book.position <= health["views_position"] <= health["head_position"]
    assert health["head_position"] <= info["head_position"]
    assert health["faulted"] == {}


@pytest.mark.parametrize(
    "query", [{}, {"symbol": "DAX"}, {"account": "main"}, {"strategy": "trend"}], ids=str
)
def test_positions_are_the_clis(api: httpx.Client, book: Recorded, query: dict[str, str]) -> None:
    """/positions answers what `positions --json` answers at the same position."""
    same_as_cli(api, book, "/positions", "positions", query)


@pytest.mark.parametrize(
    "query",
    [
        {},
        *({"group_by": g} for g in ("symbol", "strategy", "session", "account", "side")),
        {"currency": "EUR"},
    ],
    ids=str,
)
def test_pnl_is_the_clis(api: httpx.Client, book: Recorded, query: dict[str, str]) -> None:
    """/pnl answers what `pnl --json` answers, grouped and filtered the same way."""
    rows = same_as_cli(api, book, "/pnl", "pnl", query)
    assert rows and all(isinstance(row["net"], str) for row in rows)


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"group_by": "strategy"},
        {"currency": "USDT", "group_by": "side"},
        {"daily": "true"},
        {"daily": "true", "currency": "EUR"},
        {"starting_equity": "10000", "annualization_days": "252"},
        {"starting_equity": "2500.5", "group_by": "symbol"},
    ],
    ids=str,
)
def test_performance_is_the_clis(api: httpx.Client, book: Recorded, query: dict[str, str]) -> None:
    """/performance answers what `performance --json` answers, settings and daily series too."""
    found = same_as_cli(api, book, "/performance", "performance", query)
    assert {row["currency"] for row in found} == (
        {query["currency"]} if "currency" in query else {"EUR", "USDT"}
    )


TRADE_QUERIES = [
    {},
    {"symbol": "BTCUSDT"},
    {"side": "short", "outcome": "loss"},
    {"outcome": "breakeven"},
    {"strategy": "trend", "session": "europe"},
    {"pattern": "flag", "account": "hedge"},
    {"start": "2026-03-04T00:00:00Z", "end": "2026-03-06T12:00:00+01:00"},
    {"by": "opened", "start": "2026-03-05", "limit": "200"},
    {"sort_by": "net", "sort_order": "desc", "limit": "7", "offset": "3"},
    {"sort_by": "r", "limit": "20"},
    {"sort_by": "opened_at", "sort_order": "desc", "limit": "5", "offset": "100"},
    {"limit": "0"},
]


@pytest.mark.parametrize("query", TRADE_QUERIES, ids=str)
def test_trades_are_the_clis_history(
    api: httpx.Client, book: Recorded, query: dict[str, str]
) -> None:
    """/trades filters, sorts and pages as `history --json` does, and counts the same total."""
    page = same_as_cli(api, book, "/trades", "history", query)
    assert page["total"] >= len(page["trades"])
    assert len(page["trades"]) == min(
        int(query.get("limit", 50)), max(page["total"] - int(query.get("offset", 0)), 0)
    )


def test_paging_through_trades_gives_every_trade_once_in_order(
    api: httpx.Client, book: Recorded
) -> None:
    """Pages of one position, walked with offset, add up to the CLI's whole sorted list."""
    at = str(book.position)
    whole = cli_json(
        book.url, "history", "--sort-by", "net", "--desc", "--limit", "100000", "--at-position", at
    )
    walked: list[dict[str, Any]] = []
    offset = 0
    while True:
        page, _ = get(
            api,
            "/trades",
            {
                "sort_by": "net",
                "sort_order": "desc",
                "limit": "25",
                "offset": str(offset),
                "at_position": at,
            },
        )
        assert page["total"] == whole["total"]
        walked += page["trades"]
        offset += 25
        if offset >= page["total"]:
            break
    assert walked == whole["trades"]
    nets = [float(t["net"]) for t in walked]
    assert nets == sorted(nets, reverse=True)


def test_trades_filter_by_currency(api: httpx.Client, book: Recorded) -> None:
    """currency (which the CLI lacks) keeps the trades of that currency and counts them."""
    at = str(book.position)
    every = cli_json(book.url, "history", "--limit", "100000", "--at-position", at)["trades"]
    page, _ = get(api, "/trades", {"currency": "EUR", "limit": "1000", "at_position": at})
    assert page["trades"] == [t for t in every if t["currency"] == "EUR"]
    assert page["total"] == len(page["trades"]) > 0


def test_a_closed_trade_has_its_figures_and_its_whole_trail(
    api: httpx.Client, book: Recorded
) -> None:
    """/trades/{id} of a closed trade: the history row and every record of its stream."""
    at = str(book.position)
    closed = cli_json(book.url, "history", "--sort-by", "net", "--limit", "1", "--at-position", at)[
        "trades"
    ][0]
    detail, position = get(api, f"/trades/{closed['trade_id']}", {"at_position": at})
    assert position == book.position
    assert (
        detail["status"] == "closed" and detail["open"] is None and detail["inconsistent"] is None
    )
    assert detail["closed"] == closed
    trail = cli_json(
        book.url, "events", "--stream", f"trade-{closed['trade_id']}", "--at-position", at
    )
    assert detail["events"] == trail
    assert trail[0]["type"] == "TradeOpened" and trail[-1]["position"] == closed["position"]


def test_a_trade_before_its_close_is_open_with_the_trail_so_far(
    api: httpx.Client, book: Recorded
) -> None:
    """Asked at a position before its close, a closed trade is open, as `positions` showed it."""
    at = str(book.position)
    closed = cli_json(book.url, "history", "--limit", "1", "--at-position", at)["trades"][0]
    before = str(closed["position"] - 1)
    detail, _ = get(api, f"/trades/{closed['trade_id']}", {"at_position": before})
    assert detail["status"] == "open" and detail["closed"] is None
    shown = cli_json(book.url, "positions", "--at-position", before)
    assert detail["open"] == next(p for p in shown if p["trade_id"] == closed["trade_id"])
    assert [e["position"] for e in detail["events"]] == [
        e["position"]
        for e in cli_json(
            book.url, "events", "--stream", f"trade-{closed['trade_id']}", "--at-position", before
        )
    ]


def test_an_open_trade_shows_its_open_state_and_trail(api: httpx.Client, book: Recorded) -> None:
    """/trades/{id} of an open trade: its entry in /positions and its records so far."""
    at = str(book.position)
    shown, _ = get(api, "/positions", {"at_position": at})
    trade = shown[0]
    detail, _ = get(api, f"/trades/{trade['trade_id']}", {"at_position": at})
    assert detail["status"] == "open"
    assert detail["open"] == trade
    assert detail["events"][0]["type"] == "TradeOpened"
    assert all(e["stream_id"] == f"trade-{trade['trade_id']}" for e in detail["events"])


@pytest.mark.parametrize("path", ["/trades/no-such-trade", "/trades/t0001?at_position=1"])
def test_an_unknown_trade_is_404_json(api: httpx.Client, path: str) -> None:
    """A trade the log does not hold (or not yet, at that position) is a 404 with a JSON error."""
    response = api.get(PREFIX + path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == "not_found"


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"symbol": "ETHUSDT"},
        {"followed": "false"},
        {"followed": "true", "strategy": "trend", "limit": "5", "offset": "2"},
        {"session": "asia", "limit": "500"},
    ],
    ids=str,
)
def test_signals_are_the_clis(api: httpx.Client, book: Recorded, query: dict[str, str]) -> None:
    """/signals answers what `signals --json` answers."""
    same_as_cli(api, book, "/signals", "signals", query)


def test_signals_filter_by_time(api: httpx.Client, book: Recorded) -> None:
    """start and end (which the CLI lacks) keep signals with start <= occurred_at < end."""
    at = str(book.position)
    every = cli_json(book.url, "signals", "--limit", "100000", "--at-position", at)["signals"]
    page, _ = get(
        api,
        "/signals",
        {
            "start": "2026-03-04T00:00:00Z",
            "end": "2026-03-05T00:00:00Z",
            "limit": "1000",
            "at_position": at,
        },
    )
    expected = [s for s in every if "2026-03-04" <= s["occurred_at"] < "2026-03-05"]
    assert page["signals"] == expected and page["total"] == len(expected) > 0


@pytest.mark.parametrize(
    "query",
    [{}, {"name": "risk_per_trade"}, {"changed_by": "manual"}, {"current": "true"}],
    ids=str,
)
def test_parameters_are_the_clis(api: httpx.Client, book: Recorded, query: dict[str, str]) -> None:
    """/parameters answers what `parameters --json` answers: the trail, or the current values."""
    assert same_as_cli(api, book, "/parameters", "parameters", query)


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "20"},
        {"stream": "trade-t0005"},
        {"type": "TradeClosed", "limit": "1000"},
        {"from_position": "100", "to_position": "140"},
        {"since": "2026-03-03T00:00:00Z", "until": "2026-03-03T12:00:00Z", "limit": "1000"},
        {"correlation_id": "none-such"},
        {"at_position": "50", "limit": "1000"},
        {"as_of": "2026-03-03T00:00:00Z", "limit": "1000"},
    ],
    ids=str,
)
def test_events_are_the_clis(api: httpx.Client, book: Recorded, query: dict[str, str]) -> None:
    """/events answers what `events --json` answers, every record field and hash included."""
    same_as_cli(api, book, "/events", "events", query)


def test_events_known_at_stops_where_the_ledger_stood(api: httpx.Client, book: Recorded) -> None:
    """known_at cuts the trail where the ledger stood at that recorded time."""
    rows, position = get(api, "/events", {"known_at": book.recorded_at, "limit": "10000"})
    assert position == book.position
    assert [r["position"] for r in rows] == list(range(1, book.position + 1))


CUTS = {
    "at_position": lambda book: str(book.position // 2),
    "known_at": lambda book: book.recorded_at,
    "as_of": lambda book: "2026-03-05T12:00:00Z",
}


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize(
    ("path", "command"),
    [
        ("/positions", "positions"),
        ("/pnl", "pnl"),
        ("/performance", "performance"),
        ("/trades", "history"),
        ("/signals", "signals"),
        ("/parameters", "parameters"),
    ],
)
def test_every_query_takes_every_cut_as_the_cli_does(
    api: httpx.Client, book: Recorded, path: str, command: str, cut: str
) -> None:
    """at_position, known_at and as_of answer what the CLI's --at-position, --known-at, --as-of do."""
    value = CUTS[cut](book)
    same_as_cli(api, book, path, command, {cut: value})
    _, position = get(api, path, {cut: value})
    if cut == "at_position":
        assert position == book.position // 2
    elif cut == "known_at":
        assert position == book.position


def test_performance_settings_apply_under_a_cut(api: httpx.Client, book: Recorded) -> None:
    """starting_equity and annualization_days combine with a cut, as in the CLI."""
    same_as_cli(
        api,
        book,
        "/performance",
        "performance",
        {
            "at_position": str(book.position // 3),
            "starting_equity": "5000",
            "annualization_days": "252",
        },
    )


def test_verify_is_the_clis_report(api: httpx.Client, book: Recorded) -> None:
    """/verify re-hashes the log and reports as `verify --json` does."""
    report, position = get(api, "/verify")
    assert report["ok"] is True and report["first_bad"] is None and report["problems"] == []
    assert report["records"] == report["head_position"] == position >= book.position
    expected = cli_json(book.url, "verify")
    assert set(report) == set(expected)
    assert expected["ok"] is True and expected["records"] >= report["records"]


# refusals


@pytest.mark.parametrize(
    ("path", "query", "parameter"),
    [
        ("/trades", {"limit": "-1"}, "limit"),
        ("/trades", {"limit": "1001"}, "limit"),
        ("/trades", {"limit": "ten"}, "limit"),
        ("/trades", {"offset": "1.5"}, "offset"),
        ("/trades", {"sort_by": "price"}, "sort_by"),
        ("/trades", {"sort_order": "up"}, "sort_order"),
        ("/trades", {"side": "flat"}, "side"),
        ("/trades", {"outcome": "draw"}, "outcome"),
        ("/trades", {"start": "yesterday"}, "start"),
        ("/trades", {"end": "2026-13-01"}, "end"),
        ("/trades", {"symbol": ""}, "symbol"),
        ("/trades", [("symbol", "A"), ("symbol", "B")], "symbol"),
        ("/pnl", {"group_by": "colour"}, "group_by"),
        ("/performance", {"starting_equity": "abc"}, "starting_equity"),
        ("/performance", {"starting_equity": "1e400"}, "starting_equity"),
        ("/performance", {"starting_equity": "-74"}, "starting_equity"),
        ("/performance", {"annualization_days": "0"}, "annualization_days"),
        ("/performance", {"daily": "yes"}, "daily"),
        ("/positions", {"at_position": "-3"}, "at_position"),
        ("/positions", {"as_of": "soon"}, "as_of"),
        ("/positions", {"colour": "red"}, "colour"),
        ("/positions", {"at_position": "3", "as_of": "2026-03-03"}, "at_position"),
        ("/trades/t0001", {"known_at": "2026-03-03", "as_of": "2026-03-03"}, "known_at"),
        ("/signals", {"followed": "maybe"}, "followed"),
        ("/parameters", {"changed_by": "robot"}, "changed_by"),
        ("/events", {"from_position": "0"}, "from_position"),
        ("/events", {"limit": "0"}, "limit"),
        ("/events", {"type": ""}, "type"),
        ("/verify", {"deep": "true"}, "deep"),
        ("/stream", {"from": "0"}, "from"),
    ],
    ids=lambda v: str(v),
)
def test_invalid_parameters_get_a_400_naming_the_parameter(
    api: httpx.Client, path: str, query: Any, parameter: str
) -> None:
    """A bad, unknown, repeated or conflicting parameter is a 400 whose JSON names it; no traceback."""
    response = api.get(PREFIX + path, params=query)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()
    assert error["parameter"] == parameter
    assert error["error"] in (
        "invalid_parameter",
        "unknown_parameter",
        "repeated_parameter",
        "conflicting_parameters",
    )
    assert parameter in error["message"] and "Traceback" not in response.text


def test_a_bad_last_event_id_is_a_400_naming_the_header(api: httpx.Client) -> None:
    """The stream refuses a Last-Event-ID that is not a position."""
    response = api.get(PREFIX + "/stream", headers={"Last-Event-ID": "abc"})
    assert response.status_code == 400
    assert response.json()["parameter"] == "Last-Event-ID"


@pytest.mark.parametrize(
    "path", ["/api/v1/nothing", "/api/v2/positions", "/dashboard/secret.txt", "/favicon.ico"]
)
def test_unknown_paths_are_404_json(api: httpx.Client, path: str) -> None:
    """Anything that is not there is a JSON 404."""
    response = api.get(path)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/positions"),
        ("PUT", "/api/v1/trades/t0001"),
        ("DELETE", "/api/v1/trades/t0001"),
        ("PATCH", "/api/v1/parameters"),
        ("POST", "/api/v1/events"),
        ("POST", "/"),
    ],
)
def test_nothing_but_get_is_allowed(api: httpx.Client, method: str, path: str) -> None:
    """Read-only by construction: every other method is a JSON 405 that allows GET."""
    response = api.request(method, path, json={"type": "TradeOpened"})
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
    assert "GET" in response.headers["allow"]


def test_a_loopback_server_refuses_other_host_names(api: httpx.Client) -> None:
    """Without a token, only loopback host names are answered (no DNS rebinding)."""
    response = api.get(PREFIX + "/health", headers={"Host": "evil.example:8080"})
    assert response.status_code == 400
    assert response.json()["parameter"] == "Host"
    assert api.get(PREFIX + "/health", headers={"Host": "localhost"}).status_code == 200


def test_answers_carry_security_headers(api: httpx.Client) -> None:
    """Every answer forbids sniffing, framing and caching."""
    for path in ("/", PREFIX + "/positions", PREFIX + "/nothing"):
        response = api.get(path)
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert api.get(PREFIX + "/positions").headers["cache-control"] == "no-store"


def test_the_openapi_schema_lists_every_endpoint(api: httpx.Client) -> None:
    """The served OpenAPI document names every endpoint of the issue, each a GET."""
    document = api.get(PREFIX + "/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {
        PREFIX + p
        for p in (
            "/positions",
            "/pnl",
            "/performance",
            "/trades",
            "/trades/{trade_id}",
            "/signals",
            "/parameters",
            "/events",
            "/verify",
            "/health",
            "/stream",
            "/openapi.json",
        )
    }
    assert all(set(item) == {"get"} for item in document["paths"].values())
    names = {p["name"] for p in document["paths"][PREFIX + "/trades"]["get"]["parameters"]}
    assert {"start", "end", "symbol", "side", "strategy", "session", "pattern", "outcome"} <= names
    assert {"limit", "offset", "sort_by", "sort_order", "at_position", "known_at", "as_of"} <= names


def test_the_server_writes_nothing_to_the_ledger(tmp_path: Path) -> None:
    """Every endpoint, live and cut, leaves the ledger file's contents exactly as they were."""
    quiet = record_history(tmp_path, trades=40)
    path = quiet.url.removeprefix("sqlite:///")

    def contents() -> list[str]:
        with sqlite3.connect(path) as conn:
            return list(conn.iterdump())

    before = contents()
    server = Server(quiet.url, tmp_path / "serve.log").start()
    try:
        with server.client() as client:
            for target in (
                "/",
                PREFIX + "/health",
                PREFIX + "/positions",
                PREFIX + "/pnl?group_by=symbol",
                PREFIX + "/performance?starting_equity=100",
                PREFIX + "/performance?daily=true&at_position=30",
                PREFIX + "/trades?as_of=2026-03-03",
                PREFIX + "/trades/t0001",
                PREFIX + "/signals?known_at=2030-01-01",
                PREFIX + "/parameters?current=true",
                PREFIX + "/events?limit=10000",
                PREFIX + "/verify",
                PREFIX + "/stream?from=1&limit=3",
            ):
                assert client.get(target).status_code == 200, target
                assert client.post(target).status_code == 405
    finally:
        assert server.stop() == 0
    assert contents() == before


@pytest.mark.parametrize(
    "moment", ["0001-01-01T00:01:00+00:02", "9999-12-31T23:59:00-00:30"], ids=["first", "last"]
)
def test_a_time_at_the_edge_of_the_calendar_is_a_cut_before_or_after_everything(
    api: httpx.Client, moment: str
) -> None:
    """A valid ISO time that overflows once in UTC cuts before (or after) every record, not a 400."""
    response = api.get(PREFIX + "/parameters", params={"known_at": moment})
    assert response.status_code == 200, response.text
    if moment.startswith("0001"):
        assert response.json() == []


def test_verify_finds_tampering_below_a_head_that_did_not_move(tmp_path: Path) -> None:
    """A record edited in place (the head unchanged) fails the next /verify: no report outlives the request that asked."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    build(url)
    server = Server(url, tmp_path / "serve.log").start()
    try:
        with server.client() as client:
            first, _ = get(client, "/verify")
            with tampered(url) as conn:
                conn.execute("UPDATE records SET data = replace(data, '0', '9') WHERE position = 6")
            second, _ = get(client, "/verify")
    finally:
        assert server.stop() == 0, server.output()
    assert first["ok"] is True
    assert second["ok"] is False and second["first_bad"]["position"] == 6
