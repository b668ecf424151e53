"""The HTTP tests' world: a ledger file another process keeps recording into,
a real `tradeledger serve` over it on a free loopback port, and the CLI to
hold its answers against.

Live answers move while the recorder writes, so every comparison pins a
position: the API says which one in ``X-Ledger-Position`` and the CLI is asked
``--at-position`` that position.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
RECORDER = Path(__file__).with_name("recorder.py")
PREFIX = "/api/v1"


def _env(**extra: str) -> dict[str, str]:
    """The environment of a child: no ledger URL or token of the caller's, plus ``extra``."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("TRADELEDGER_URL", "TRADELEDGER_API_TOKEN")
    }
    env.update(extra)
    return env


@dataclasses.dataclass
class Recorded:
    """A ledger with a known history that a recorder process goes on writing into."""

    url: str
    directory: Path
    position: int  # the head when the history was complete
    recorded_at: str  # that record's recorded_at
    occurred_at: str  # the simulated clock then
    process: subprocess.Popen[str] | None = None

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def record_history(
    directory: Path, *, trades: int = 150, live_seconds: float = 0.0, pace: float = 0.25
) -> Recorded:
    """Record a history into a new ledger in ``directory``; with ``live_seconds``, keep recording."""
    url = f"sqlite:///{directory / 'bot.db'}"
    process = subprocess.Popen(
        [
            sys.executable,
            str(RECORDER),
            url,
            "--trades",
            str(trades),
            "--pace",
            str(pace),
            "--live-seconds",
            str(live_seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, "the recorder ended before its history was recorded"
    ready = json.loads(line)
    found = Recorded(url, directory, ready["position"], ready["recorded_at"], ready["occurred_at"])
    found.process = process
    if not live_seconds:
        assert process.wait(timeout=30) == 0
        found.stop()
    return found


class Server:
    """A `tradeledger serve` child process; what it prints goes to a log file."""

    def __init__(
        self,
        url: str,
        log: Path,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        verbose: bool = False,
    ) -> None:
        self.url = url
        self.log = log
        self.argv = [
            sys.executable,
            "-m",
            "replay",
            *(["-vv"] if verbose else []),
            "--url",
            url,
            "serve",
            "--port",
            "0",
            *args,
        ]
        self.env = _env(**(env or {}))
        self.process: subprocess.Popen[bytes] | None = None
        self.base = ""

    def start(self, timeout: float = 30.0) -> Server:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"at (http://\S+?:\d+)/", self.output())
            if found:
                self.base = found.group(1)
                return self
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited {self.process.returncode}: {self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"serve did not start: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        """Ctrl-C, as an operator would; the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=60, trust_env=False, **kwargs)


def cli(url: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m replay --url URL ARGS`` to the end."""
    return subprocess.run(
        [sys.executable, "-m", "replay", "--url", url, *args],
        input=input,
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def cli_json(url: str, *args: str) -> Any:
    """The CLI's ``--json`` answer, parsed (JSON Lines become a list)."""
    result = cli(url, *args, "--json")
    assert result.returncode == 0, result.stderr
    text = result.stdout.strip()
    if args and args[0] == "events":
        return [json.loads(line) for line in text.splitlines()]
    return json.loads(text)


def get(client: httpx.Client, path: str, params: Any = None) -> tuple[Any, int]:
    """A 200 answer's JSON and the position it reflects."""
    response = client.get(PREFIX + path, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json(), int(response.headers["x-ledger-position"])


@pytest.fixture(scope="package")
def book(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    """150 trades recorded, and a recorder still writing one event every quarter second."""
    found = record_history(tmp_path_factory.mktemp("http"), live_seconds=600)
    yield found
    found.stop()


@pytest.fixture(scope="package")
def server(book: Recorded) -> Iterator[Server]:
    """`tradeledger serve` over the live ledger, on a free loopback port."""
    found = Server(book.url, book.directory / "serve.log").start()
    yield found
    assert found.stop() == 0, found.output()
    assert "Traceback" not in found.output()


@pytest.fixture(scope="package")
def api(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client
