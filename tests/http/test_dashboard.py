"""The dashboard in a real headless Chromium (Debian's, driven by Playwright; never downloaded)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.http.conftest import PREFIX, ROOT, Recorded, Server, cli

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = ROOT / "docs" / "dashboard.png"


@pytest.fixture(autouse=True)
def chromium_installed() -> None:
    """The browser test runs wherever the suite runs: scripts/install puts chromium there."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail("Debian's chromium is not installed: run scripts/install (as root)")


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        found = driver.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield found
        found.close()


def record(book: Recorded, *lines: dict[str, Any]) -> None:
    """Record event lines with `tradeledger record` in a process of its own."""
    result = cli(book.url, "record", "-", input="".join(json.dumps(line) + "\n" for line in lines))
    assert result.returncode == 0, result.stderr


def test_the_dashboard_shows_the_book_and_follows_another_process_live(
    browser: Any, server: Server, book: Recorded, api: httpx.Client
) -> None:
    """The page loads without console errors or any other origin, shows the open positions,
    PnL, figures and a drawn equity curve, and a trade another process records appears (and
    closes) without a reload; the screenshot the README shows is taken here."""
    # hours after the recorder's latest event, so the trade is the latest to close while
    # the test runs (the recorder's clock moves a simulated minute a quarter second)
    head = api.get(PREFIX + "/health").json()["head_position"]
    (last,) = api.get(PREFIX + "/events", params={"from_position": head, "limit": 1}).json()
    now = dt.datetime.fromisoformat(last["occurred_at"]) + dt.timedelta(hours=6)
    trade_id = f"web-{uuid.uuid4().hex[:6]}"
    opened = {
        "type": "TradeOpened",
        "trade_id": trade_id,
        "symbol": "SOLUSDT",
        "side": "long",
        "quantity": "10",
        "price": "150",
        "currency": "USDT",
        "strategy": "trend",
        "occurred_at": now.isoformat(),
    }
    closed = {
        "type": "TradeClosed",
        "trade_id": trade_id,
        "price": "171.5",
        "reason": "take_profit",
        "occurred_at": (now + dt.timedelta(minutes=5)).isoformat(),
    }
    problems: list[str] = []
    fetched: list[str] = []
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: fetched.append(r.url))
    page.goto(server.base + "/")

    page.wait_for_selector("#equity-line")
    page.wait_for_selector("#live.on")
    assert int(page.get_attribute("#chart", "data-points") or 0) > 50
    assert (page.get_attribute("#equity-line", "d") or "").count("L") > 50
    assert page.locator("#drawdown-area").count() == 1
    shown = page.locator("#positions tbody tr[data-trade-id]").evaluate_all(
        "rows => rows.map(r => r.dataset.tradeId)"
    )
    assert {"hold-BTCUSDT", "hold-DAX"} <= set(shown)
    assert set(page.locator("#pnl .card").evaluate_all("c => c.map(x => x.dataset.currency)")) == {
        "EUR",
        "USDT",
    }
    assert "win rate" in page.inner_text("#performance")
    assert page.locator("#trades tbody tr[data-trade-id]").count() == 10

    record(book, opened)
    page.wait_for_selector(f'#positions tr[data-trade-id="{trade_id}"]', timeout=20_000)
    record(book, closed)
    page.wait_for_selector(f'#trades tr[data-trade-id="{trade_id}"]', timeout=20_000)
    page.wait_for_selector(f'#positions tr[data-trade-id="{trade_id}"]', state="detached")
    row = page.inner_text(f'#trades tr[data-trade-id="{trade_id}"]')
    assert "215" in row and "take_profit" in row  # 10 * (171.5 - 150)
    assert page.locator("#feed li[data-position]").count() > 0

    page.mouse.move(700, 420)  # a point of the curve, for the screenshot's tooltip
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000
    assert problems == []
    # offline: everything it loads comes from the server itself (no CDN, no fonts)
    assert fetched and all(u.startswith((server.base + "/", "data:")) for u in fetched)
    assert api.get(PREFIX + f"/trades/{trade_id}").json()["status"] == "closed"
