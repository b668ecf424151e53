"""What the API says when the book cannot answer plainly: inconsistent cuts, faulted views, bugs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger import ProjectionFaulted
from replay.http import Book, create_app
from tests.http.conftest import PREFIX, Server, cli, record_history

SKEWED = [
    {
        "type": "TradeOpened",
        "trade_id": "skew/1",
        "symbol": "BTCUSDT",
        "side": "long",
        "quantity": "2",
        "price": "100",
        "currency": "USDT",
        "occurred_at": "2026-03-02T12:00:00Z",
    },
    # the executor's clock was skewed: this reduce "occurred" before the open
    {
        "type": "TradeReduced",
        "trade_id": "skew/1",
        "quantity": "1",
        "price": "110",
        "occurred_at": "2026-03-02T11:00:00Z",
    },
]


def test_a_trade_an_event_time_cut_cannot_fold_is_reported_not_fixed(tmp_path: Path) -> None:
    """as_of between a skewed reduce and its open names the trade in X-Ledger-Inconsistent and
    in its detail, as the CLI warns; a later as_of folds it (a slash in its id is fine)."""
    quiet = record_history(tmp_path, trades=3)
    recorded = cli(quiet.url, "record", "-", input="".join(json.dumps(x) + "\n" for x in SKEWED))
    assert recorded.returncode == 0, recorded.stderr
    server = Server(quiet.url, tmp_path / "serve.log").start()
    try:
        with server.client() as client:
            cut = {"as_of": "2026-03-02T11:30:00Z"}
            response = client.get(PREFIX + "/positions", params=cut)
            assert response.status_code == 200
            reasons = json.loads(response.headers["x-ledger-inconsistent"])
            assert list(reasons) == ["skew/1"] and "TradeReduced" in reasons["skew/1"]
            expected = cli(quiet.url, "positions", "--as-of", cut["as_of"], "--json")
            assert response.json() == json.loads(expected.stdout)
            assert "inconsistent at this cut: trade skew/1" in expected.stderr

            detail = client.get(PREFIX + "/trades/skew/1", params=cut).json()
            assert detail["status"] == "inconsistent" and detail["open"] is None
            assert detail["inconsistent"] == reasons["skew/1"]
            assert [e["type"] for e in detail["events"]] == ["TradeReduced"]

            later = client.get(PREFIX + "/trades/skew/1", params={"as_of": "2026-03-02T13:00:00Z"})
            assert "x-ledger-inconsistent" not in later.headers
            assert later.json()["status"] == "open"
            assert later.json()["open"]["quantity"] == "1"
    finally:
        assert server.stop() == 0


def answer_with(url: str, failure: Exception, path: str) -> httpx.Response:
    """The app's answer to ``path`` when every view lookup raises ``failure`` (in-process)."""

    async def go() -> httpx.Response:
        async with Book(url) as book:
            app = create_app(book)

            def broken(cls: Any) -> Any:
                raise failure

            book.runner.view = broken  # type: ignore[method-assign]
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                return await c.get(path)

    return asyncio.run(go())


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> str:
    return record_history(tmp_path_factory.mktemp("errors"), trades=3).url


def test_an_unexpected_failure_is_a_json_500_that_tells_nothing(small: str) -> None:
    """A bug is a 500 with a JSON error and neither its message nor a traceback."""
    response = answer_with(small, RuntimeError("secret internals"), PREFIX + "/positions")
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal",
        "message": "the server failed; its log says why",
    }
    assert "secret" not in response.text and "Traceback" not in response.text


def test_a_faulted_view_is_a_503_naming_it(small: str) -> None:
    """A view that failed is a 503 that says so, until it is rebuilt."""
    failure = ProjectionFaulted("pnl is faulted (boom); rebuild it")
    response = answer_with(small, failure, PREFIX + "/pnl")
    assert response.status_code == 503
    assert response.json()["error"] == "view_faulted"
    assert "rebuild" in response.json()["message"]
