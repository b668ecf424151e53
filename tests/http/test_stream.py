"""The live stream: Server-Sent Events of each record as it becomes durable."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from tests.http.conftest import PREFIX, Recorded, Server, cli, cli_json, get, record_history


def sse(lines: Iterator[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(id, record) of each event in an SSE line stream; comments and retry lines skipped."""
    event: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in event:
                yield int(event["id"]), json.loads(event["data"])
            event = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            event[field] = value.removeprefix(" ")


def read(
    client: httpx.Client,
    count: int,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> list[tuple[int, dict[str, Any]]]:
    with client.stream("GET", PREFIX + "/stream", params=params, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        found = []
        for item in sse(response.iter_lines()):
            found.append(item)
            if len(found) == count:
                break
        return found


def test_the_stream_sends_the_log_from_a_position(api: httpx.Client, book: Recorded) -> None:
    """from=N sends record N on, each with its position as id and every field as data."""
    events = read(api, 5, {"from": "1", "limit": "5"})
    assert [i for i, _ in events] == [1, 2, 3, 4, 5]
    assert [r for _, r in events] == cli_json(book.url, "events", "--to-position", "5")


def test_last_event_id_resumes_after_that_position(api: httpx.Client) -> None:
    """A reconnecting EventSource's Last-Event-ID wins over from: the stream resumes after it."""
    events = read(api, 3, {"from": "1", "limit": "3"}, {"Last-Event-ID": "10"})
    assert [i for i, _ in events] == [11, 12, 13]


def test_the_stream_ends_after_its_limit(api: httpx.Client) -> None:
    """limit closes the stream after that many records."""
    with api.stream("GET", PREFIX + "/stream", params={"from": "3", "limit": "2"}) as response:
        assert [i for i, _ in sse(response.iter_lines())] == [3, 4]


def test_a_record_another_process_appends_is_pushed_once_durable(
    api: httpx.Client, book: Recorded
) -> None:
    """A record written by another process arrives on an open stream, in order with the
    recorder's, and once it has arrived the views already include it."""
    name = f"stream_test_{uuid.uuid4().hex[:8]}"
    line = json.dumps(
        {
            "type": "ParameterChanged",
            "name": name,
            "new_value": "1",
            "changed_by": "manual",
            "occurred_at": "2026-03-20T00:00:00Z",
        }
    )
    with api.stream("GET", PREFIX + "/stream") as response:
        lines = response.iter_lines()
        assert next(lines) == "retry: 2000"
        recorded = cli(book.url, "record", "-", input=line)
        assert recorded.returncode == 0, recorded.stderr
        position = json.loads(recorded.stdout)["position"]
        seen: list[int] = []
        deadline = time.monotonic() + 30
        for number, record in sse(lines):
            seen.append(number)
            if record["event_id"] == json.loads(recorded.stdout)["event_id"]:
                break
            assert time.monotonic() < deadline, "the record never came"
    assert seen[-1] == position
    assert seen == list(range(seen[0], position + 1))
    current, at = get(api, "/parameters", {"current": "true"})
    assert at >= position and current[name] == "1"


def test_an_open_stream_does_not_hold_up_shutdown(tmp_path: Path) -> None:
    """Ctrl-C ends open event streams and the server exits promptly and cleanly."""
    quiet = record_history(tmp_path, trades=5)
    server = Server(quiet.url, tmp_path / "serve.log").start()
    with server.client() as client, client.stream("GET", PREFIX + "/stream") as response:
        lines = response.iter_lines()
        assert next(lines) == "retry: 2000"
        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 5
        assert list(lines) == [""]  # the stream ended with the server
    assert "Traceback" not in server.output()
