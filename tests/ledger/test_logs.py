"""The library's log events: the application's structlog setup decides; unconfigured, only warnings and up, on stderr."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BOT = """
import asyncio, datetime as dt, sys
from decimal import Decimal
{configure}
from ledger import InvalidEvent, TradeOpened, TradeReduced, open_ledger

async def main() -> None:
    at = dt.datetime(2026, 1, 5, 12, tzinfo=dt.UTC)
    async with open_ledger(sys.argv[1]) as book:
        await book.record(TradeOpened(
            trade_id="t1", symbol="BTCUSDT", currency="USDT", side="long", quantity=Decimal("1"),
            price=Decimal("100"), fill_id="f0", occurred_at=at,
        ))
        try:
            await book.record(TradeReduced(
                trade_id="t1", quantity=Decimal("5"), price=Decimal("101"), fill_id="f1",
                occurred_at=at,
            ))
        except InvalidEvent:
            pass

asyncio.run(main())
"""

CONFIGURED = """
import logging, structlog
structlog.configure(
    processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
    wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
)
"""


def run_bot(tmp_path: Path, configure: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "bot.py"
    script.write_text(textwrap.dedent(BOT.format(configure=configure)))
    return subprocess.run(
        [sys.executable, str(script), f"sqlite:///{tmp_path / 'bot.db'}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_a_library_user_who_configured_no_logging_gets_nothing_on_stdout_and_no_debug_or_info(
    tmp_path: Path,
) -> None:
    """With structlog left unconfigured, an append and a refusal print nothing: stdout stays the bot's own."""
    result = run_bot(tmp_path, configure="")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == ""


def test_an_application_that_configured_structlog_gets_the_append_and_refusal_events(
    tmp_path: Path,
) -> None:
    """With structlog configured by the application, each append group is a debug event and a refusal an info event."""
    result = run_bot(tmp_path, configure=CONFIGURED)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert {(e["event"], e["level"]) for e in events} == {
        ("append_group", "debug"),
        ("refused", "info"),
    }
    (refused,) = [e for e in events if e["event"] == "refused"]
    assert refused["error"] == "InvalidEvent"
