"""Fail points: each named point kills, stalls or fails the write path on demand, and costs nothing when off.

Kills run in child processes (``tests.guarantees.harness.RECORDER``); stalls and
errors run in this process against real SQLite files and a real redis-server.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from ledger import OutcomeUnknown, Pending, StoreUnavailable, open_ledger
from ledger.events import natural_event_id
from ledger.failpoints import ENV, POINTS, FailPoints
from projections import standard
from tests.guarantees.harness import (
    ROOT,
    child_env,
    raw_checkpoints,
    raw_log,
    record_in_child,
)
from tests.lifecycles import opened
from tests.servers import RedisServer

SQLITE_APPEND_POINTS = ("after_begin", "after_insert", "before_commit", "after_commit")
REDIS_APPEND_POINTS = ("before_commit", "after_commit")
KILLED = -signal.SIGKILL


def ids(*trades: str) -> list[str]:
    return [natural_event_id(opened(t)) or "" for t in trades]


def event_ids(url: str) -> list[str]:
    async def go() -> list[str]:
        async with open_ledger(url, create=False) as book:
            return [r.event_id async for r in book.store.read()]

    return asyncio.run(go())


# the switch


@pytest.mark.parametrize(
    "spec",
    [
        "nowhere=kill",
        "after_commit=explode",
        "after_commit=kill@0",
        "after_commit=kill@x",
        "after_commit=sleep",
        "after_commit=sleep:-1",
        "after_commit=kill:2",
        "after_commit=sleep:fast",
    ],
)
def test_a_misspelled_fail_point_is_refused_with_a_value_error(spec: str) -> None:
    """A spec naming an unknown point or a malformed action raises ValueError at open, not silently nothing."""
    with pytest.raises(ValueError, match="fail point"):
        FailPoints(spec)


def test_every_named_point_accepts_every_action() -> None:
    """kill, kill@N, sleep:S, sleep:S@N, error and error@N parse for every point."""
    for point in sorted(POINTS):
        for action in ("kill", "kill@3", "sleep:0.1", "sleep:0.1@2", "error", "error@4"):
            assert FailPoints(f"{point}={action}")


def test_the_issue_names_a_point_for_every_stage_of_the_write_path() -> None:
    """The points are exactly begin, insert, before and after commit, after the answer,
    checkpoint write and spool drain."""
    assert (
        frozenset(
            {
                "after_begin",
                "after_insert",
                "before_commit",
                "after_commit",
                "after_answer",
                "checkpoint_write",
                "spool_drain",
            }
        )
        == POINTS
    )


def test_without_the_environment_variable_no_point_is_on_and_passing_one_costs_a_dict_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With TRADELEDGER_FAILPOINTS unset, from_env() is empty and a million passes take well under a second."""
    monkeypatch.delenv(ENV, raising=False)
    points = FailPoints.from_env()
    assert not points
    names = sorted(POINTS) * 166_667
    started = time.perf_counter()
    for name in names:
        points.hit(name)
    elapsed = time.perf_counter() - started
    assert all(points.hits(name) == 0 for name in POINTS)
    assert elapsed < 1.0, f"{len(names)} passes took {elapsed:.2f}s"


def test_sleep_at_n_stalls_only_the_nth_pass() -> None:
    """sleep:S@N stalls the Nth pass by S seconds and no other."""
    points = FailPoints("after_commit=sleep:0.2@2")
    times = []
    for _ in range(3):
        started = time.perf_counter()
        points.hit("after_commit")
        times.append(time.perf_counter() - started)
    assert times[1] >= 0.2
    assert times[0] < 0.1 and times[2] < 0.1


def test_error_at_n_raises_os_error_at_the_nth_pass_only() -> None:
    """error@2 passes once, raises OSError at the second pass, then passes again."""
    points = FailPoints("after_insert=error@2")
    points.hit("after_insert")
    with pytest.raises(OSError, match="after_insert"):
        points.hit("after_insert")
    points.hit("after_insert")


# kill: SQLite


@pytest.mark.parametrize("point", SQLITE_APPEND_POINTS)
def test_a_sqlite_writer_killed_at_each_append_point_keeps_exactly_what_it_committed(
    sqlite_url: str, point: str
) -> None:
    """Killed at the second pass of a point, the child dies by SIGKILL; the log holds the first event, and the second only if it was committed."""
    code, acked, stderr = record_in_child(sqlite_url, 5, failpoints=f"{point}=kill@2")
    assert code == KILLED, stderr
    assert acked == ids("t0")
    committed = ["t0", "t1"] if point == "after_commit" else ["t0"]
    assert event_ids(sqlite_url) == ids(*committed)


def test_a_sqlite_writer_killed_while_writing_a_checkpoint_keeps_every_record_and_no_half_checkpoint(
    sqlite_url: str,
) -> None:
    """Killed inside the first checkpoint's transaction, the log keeps every acknowledged event and no checkpoint row exists."""
    code, acked, stderr = record_in_child(
        sqlite_url, 6, failpoints="checkpoint_write=kill@1", checkpoint_every=3
    )
    assert code == KILLED, stderr
    assert len(acked) >= 3
    assert set(acked) <= set(event_ids(sqlite_url))
    assert raw_checkpoints(sqlite_url) == []


# kill: Redis


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server these tests may kill and restart."""
    server = RedisServer(tmp_path_factory.mktemp("own-redis"))
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("point", REDIS_APPEND_POINTS)
def test_a_redis_writer_killed_at_each_append_point_keeps_exactly_what_it_committed(
    redis_url: str, point: str
) -> None:
    """Killed at the second pass, the Redis log holds the first event, and the second only when its script ran."""
    code, acked, stderr = record_in_child(redis_url, 5, failpoints=f"{point}=kill@2")
    assert code == KILLED, stderr
    assert acked == ids("t0")
    committed = ["t0", "t1"] if point == "after_commit" else ["t0"]
    assert event_ids(redis_url) == ids(*committed)


def test_a_redis_writer_killed_while_writing_a_checkpoint_keeps_every_record(
    redis_url: str,
) -> None:
    """Killed before the first checkpoint reaches Redis, the log keeps every acknowledged event and holds no checkpoint."""
    code, acked, stderr = record_in_child(
        redis_url, 6, failpoints="checkpoint_write=kill@1", checkpoint_every=3
    )
    assert code == KILLED, stderr
    assert len(acked) >= 3
    assert set(acked) <= set(event_ids(redis_url))
    assert raw_checkpoints(redis_url) == []


SPOOLER = """
import asyncio, logging, os, sys
sys.path.insert(0, {root!r})
import structlog
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
from ledger import open_ledger
from tests.lifecycles import opened

async def main(url, mode):
    async with open_ledger(url, timeout=0.5) as book:
        os.write(1, b"OPEN\\n")
        if mode == "spool":
            sys.stdin.readline()  # the test stops redis-server
            for n in range(3):
                pending = await book.record(opened(f"t{{n}}"))
                os.write(1, f"{{type(pending).__name__}}\\n".encode())
        while book.store.counts()[0]:
            await asyncio.sleep(0.05)
        os.write(1, b"DRAINED\\n")
        await asyncio.sleep(30)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def spooler(url: str, mode: str, failpoints: str | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", SPOOLER.format(root=str(ROOT)), url, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(failpoints),
    )


def reap(child: subprocess.Popen[bytes]) -> int:
    if child.poll() is None:
        child.kill()
    code = child.wait()
    for stream in (child.stdin, child.stdout, child.stderr):
        if stream is not None:
            stream.close()
    return code


@pytest.mark.parametrize("point", ["spool_drain=kill@2", "after_commit=kill@1"])
def test_a_bot_killed_while_draining_its_spool_loses_and_duplicates_nothing(
    own_redis: RedisServer, tmp_path: Path, point: str
) -> None:
    """Killed before (spool_drain) or after (after_commit) a spooled batch reaches Redis, a reopened ledger drains the rest: each event once."""
    url = own_redis.url(tmp_path, spool=str(tmp_path / "spool.db"))
    first = spooler(url, "spool")
    assert first.stdin is not None and first.stdout is not None and first.stderr is not None
    try:
        assert first.stdout.readline() == b"OPEN\n", first.stderr.read()
        own_redis.kill()
        first.stdin.write(b"go\n")
        first.stdin.flush()
        spooled = [first.stdout.readline() for _ in range(3)]
        assert spooled == [b"Pending\n"] * 3, first.stderr.read()
    finally:
        reap(first)  # SIGKILL with three batches in the spool
        own_redis.start()
    second = spooler(url, "drain", point)
    try:
        assert second.wait(timeout=30) == KILLED
        assert second.stdout is not None
        assert b"DRAINED" not in second.stdout.read()
    finally:
        reap(second)
    assert len(event_ids(url.split("&spool=")[0])) == 1

    async def drain() -> list[str]:
        async with open_ledger(url, timeout=2) as book:
            store: Any = book.store
            deadline = time.monotonic() + 20
            while store.counts()[0] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert store.counts() == (0, 0)
            return [r.event_id async for r in store.read()]

    assert asyncio.run(drain()) == ids("t0", "t1", "t2")


# stall and error, in this process


def test_a_stall_before_commit_past_the_timeout_raises_outcome_unknown_and_the_retry_returns_the_record(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """before_commit=sleep:0.5@2 with a 0.2 s timeout: the second record raises OutcomeUnknown, its retry returns the one record."""
    monkeypatch.setenv(ENV, "before_commit=sleep:0.5@2")

    async def go() -> tuple[list[Any], list[str]]:
        async with open_ledger(sqlite_url, timeout=0.2) as book:
            first = await book.record(opened("t0"))
            with pytest.raises(OutcomeUnknown):
                await book.record(opened("t1"))
            await asyncio.sleep(0.5)
            again = await book.record(opened("t1"))
            return [first, again], [r.event_id async for r in book.store.read()]

    records, logged = asyncio.run(go())
    assert [r.position for r in records] == [1, 2]
    assert logged == ids("t0", "t1")


def test_a_redis_stall_at_before_commit_delays_exactly_that_append(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Redis, before_commit=sleep:0.4@2 holds the second append back by the stall and no other."""
    monkeypatch.setenv(ENV, "before_commit=sleep:0.4@2")

    async def go() -> list[float]:
        took = []
        async with open_ledger(redis_url) as book:
            for n in range(3):
                started = time.perf_counter()
                await book.record(opened(f"t{n}"))
                took.append(time.perf_counter() - started)
        return took

    took = asyncio.run(go())
    assert took[1] >= 0.4
    assert took[0] < 0.4 and took[2] < 0.4
    assert event_ids(redis_url) == ids("t0", "t1", "t2")


def test_a_sent_append_to_a_paused_redis_is_outcome_unknown_and_its_retry_returns_the_landed_record(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    """redis-server stopped (SIGSTOP) while an append is sent: OutcomeUnknown; resumed, the write lands and the retry returns it once."""
    url = own_redis.url(tmp_path)
    assert own_redis.process is not None
    server = own_redis.process

    async def go() -> tuple[list[Any], list[str]]:
        async with open_ledger(url, timeout=0.3) as book:
            first = await book.record(opened("t0"))
            server.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(OutcomeUnknown):
                    await book.record(opened("t1"))
            finally:
                server.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 10
            while True:  # the breaker may refuse for a moment after the failure
                try:
                    again = await book.record(opened("t1"))
                    break
                except StoreUnavailable:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.1)
            return [first, again], [r.event_id async for r in book.store.read()]

    records, logged = asyncio.run(go())
    assert [r.position for r in records] == [1, 2]
    assert logged == ids("t0", "t1")


@pytest.mark.parametrize("point", ["after_begin", "after_insert", "before_commit"])
def test_an_error_before_the_commit_raises_store_unavailable_writes_nothing_and_the_next_append_works(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """error@2 at a point before COMMIT: StoreUnavailable, the log as before, and the next record lands at position 2."""
    monkeypatch.setenv(ENV, f"{point}=error@2")

    async def go() -> Any:
        async with open_ledger(sqlite_url, standard()) as book:
            await book.record(opened("t0"))
            before = raw_log(sqlite_url)
            with pytest.raises(StoreUnavailable):
                await book.record(opened("t1"))
            assert raw_log(sqlite_url) == before
            return await book.record(opened("t1"))

    assert asyncio.run(go()).position == 2


def test_an_error_after_the_commit_raises_outcome_unknown_and_the_writer_keeps_serving(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """after_commit=error@1: the committed caller hears OutcomeUnknown, its retry returns the record, later appends work."""
    monkeypatch.setenv(ENV, "after_commit=error@1")

    async def go() -> list[Any]:
        async with open_ledger(sqlite_url, timeout=2) as book:
            with pytest.raises(OutcomeUnknown):
                await book.record(opened("t0"))
            return [await book.record(opened("t0")), await book.record(opened("t1"))]

    assert [r.position for r in asyncio.run(go())] == [1, 2]


def test_a_failed_checkpoint_write_is_logged_and_never_fails_the_append(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """checkpoint_write=error@1: every record returns, checkpoint_failed is logged, and a later checkpoint is saved."""
    monkeypatch.setenv(ENV, "checkpoint_write=error@1")

    async def go() -> None:
        async with open_ledger(sqlite_url, standard(), checkpoint_every=2) as book:
            for n in range(4):
                assert not isinstance(await book.record(opened(f"t{n}")), Pending)

    with structlog.testing.capture_logs() as logs:
        asyncio.run(go())
    assert "checkpoint_failed" in [log["event"] for log in logs]
    assert {row[2] for row in raw_checkpoints(sqlite_url)} == {4}
