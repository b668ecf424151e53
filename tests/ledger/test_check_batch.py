"""check_batch: what record_batch would refuse, item by item, with nothing written."""

from __future__ import annotations

import asyncio
from typing import Any

from ledger import Append, ConcurrencyError, IdempotencyConflict, InvalidEvent, open_ledger
from tests.lifecycles import closed, opened, stop_moved


def test_check_batch_names_each_refusal_by_the_store_rules_and_writes_nothing(
    sqlite_url: str,
) -> None:
    """Each item gets its refusal or None: a retry passes, a changed payload under a used id, a stale expected version and a move after the close are refused; the log is unchanged."""

    async def body() -> tuple[list[Any], int]:
        async with open_ledger(sqlite_url) as book:
            await book.record(opened("t1"), event_id="open-1")
            answers = await book.check_batch(
                [
                    Append(opened("t1"), event_id="open-1"),  # a retry
                    Append(opened("t2"), event_id="open-1"),  # the id, another payload
                    Append(stop_moved("t1"), expected_version=5),
                    closed("t1"),
                    stop_moved("t1"),  # after the close above
                ]
            )
            return answers, (await book.store.head()).position

    answers, head = asyncio.run(body())
    assert [type(a).__name__ if a else None for a in answers] == [
        None,
        IdempotencyConflict.__name__,
        ConcurrencyError.__name__,
        None,
        InvalidEvent.__name__,
    ]
    assert head == 1
