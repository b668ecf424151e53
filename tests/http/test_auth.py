"""Safety of `serve`: loopback by default, a bearer token anywhere else, the token never logged."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.http.conftest import PREFIX, ROOT, Recorded, Server, _env, record_history


def serve(url: str, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    """`tradeledger serve` that is expected to refuse to start."""
    return subprocess.run(
        [sys.executable, "-m", "replay", "--url", url, "serve", *args],
        capture_output=True,
        text=True,
        env=_env(**({"TRADELEDGER_API_TOKEN": token} if token is not None else {})),
        cwd=ROOT,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """A small ledger nobody writes to."""
    return record_history(tmp_path_factory.mktemp("auth"), trades=10)


TOKEN = secrets.token_hex(24)


@pytest.fixture(scope="module")
def exposed(quiet: Recorded) -> Iterator[Server]:
    """`serve --host 0.0.0.0` with a token, logging every request (-vv); reached via 127.0.0.1."""
    server = Server(
        quiet.url,
        quiet.directory / "exposed.log",
        args=("--host", "0.0.0.0"),
        env={"TRADELEDGER_API_TOKEN": TOKEN},
        verbose=True,
    ).start()
    server.base = server.base.replace("0.0.0.0", "127.0.0.1")
    yield server
    assert server.stop() == 0


def test_a_non_loopback_bind_without_a_token_is_refused(quiet: Recorded) -> None:
    """Binding to any other address than loopback needs TRADELEDGER_API_TOKEN: exit 2, one line."""
    result = serve(quiet.url, "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert "TRADELEDGER_API_TOKEN" in result.stderr and "Traceback" not in result.stderr


def test_a_weak_token_is_refused_without_echoing_it(quiet: Recorded) -> None:
    """A short token is a usage error, and the message does not repeat it."""
    result = serve(quiet.url, "--host", "0.0.0.0", "--port", "0", token="hunter2")
    assert result.returncode == 2
    assert "hunter2" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", PREFIX + "/health"),
        ("GET", PREFIX + "/positions"),
        ("GET", PREFIX + "/openapi.json"),
        ("GET", PREFIX + "/stream?from=1"),
        ("GET", PREFIX + "/no-such-thing"),
        ("POST", PREFIX + "/positions"),
    ],
)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", TOKEN],
)
def test_every_request_without_the_token_gets_401(
    exposed: Server, method: str, path: str, authorization: str | None
) -> None:
    """No header, a wrong token or another scheme: 401 with a JSON error, whatever the path."""
    headers = {"Authorization": authorization} if authorization else {}
    with exposed.client() as client:
        response = client.request(method, path, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_the_token_opens_every_endpoint(exposed: Server, quiet: Recorded) -> None:
    """With the right bearer token the API and the dashboard answer; the schema says so."""
    with exposed.client(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        assert client.get(PREFIX + "/health").json()["head_position"] == quiet.position
        assert client.get("/").status_code == 200
        assert client.get(PREFIX + "/positions").status_code == 200
        document = client.get(PREFIX + "/openapi.json").json()
        assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert "401" in document["paths"][PREFIX + "/trades"]["get"]["responses"]
        # any host name is fine here: the token, not the name, is the guard
        assert client.get(PREFIX + "/health", headers={"Host": "ledger.example"}).status_code == 200


def test_the_token_never_appears_in_the_logs(exposed: Server) -> None:
    """Requests are logged (method, path, status), the token and the Authorization header never."""
    with exposed.client(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        client.get(PREFIX + "/positions")
    with exposed.client(headers={"Authorization": f"Bearer {TOKEN[:-1]}"}) as client:
        client.get(PREFIX + "/positions")
    log = exposed.output()
    assert '"path": "/api/v1/positions"' in log or "path=/api/v1/positions" in log
    assert TOKEN not in log and TOKEN[:-1] not in log
    assert "Bearer" not in log


def test_a_port_in_use_fails_with_one_line(quiet: Recorded) -> None:
    """Another listener on the port: exit 1 with one line, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = serve(quiet.url, "--port", str(taken.getsockname()[1]))
    assert result.returncode == 1
    assert "cannot listen" in result.stderr and "Traceback" not in result.stderr


def test_a_missing_ledger_fails_with_one_line_and_creates_nothing(tmp_path: Path) -> None:
    """serve never creates a ledger: a missing file is exit 1 with one line."""
    missing = tmp_path / "missing.db"
    result = serve(f"sqlite:///{missing}", "--port", "0")
    assert result.returncode == 1
    assert "missing.db" in result.stderr and "Traceback" not in result.stderr
    assert not missing.exists()


def test_serve_has_help_with_an_example() -> None:
    """`tradeledger serve --help` shows the options and an example; the group lists serve."""
    result = subprocess.run(
        [sys.executable, "-m", "replay", "serve", "--help"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0
    assert "Example" in result.stdout and "--host" in result.stdout and "--port" in result.stdout
    listing = subprocess.run(
        [sys.executable, "-m", "replay", "--help"],
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )
    assert "serve" in listing.stdout


def test_the_client_cannot_reach_the_exposed_server_without_the_header(exposed: Server) -> None:
    """Even the health check is closed to a client without the token."""
    assert httpx.get(exposed.base + PREFIX + "/health", trust_env=False).status_code == 401
