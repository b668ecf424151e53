"""Security: unforgeable anchors, owner-only files, no secret in any log or error, no terminal
control sequence smuggled into human output.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import unicodedata
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
import redis
import structlog.testing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import LedgerError, ParameterChanged, open_ledger
from projections import standard
from replay.anchor import Anchor, check_signature, key_id, load_private_key, new_key, sign
from tests.guarantees.harness import ROOT, child_env
from tests.lifecycles import T0, closed, opened, signal
from tests.replay.ledgers import cli, jsonl
from tests.servers import RedisServer, free_port

PASSWORD = "hunter2-Xq9-correct-horse"
NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


# anchors


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Ed25519PrivateKey, Ed25519PrivateKey]:
    """The writer's key and an attacker's own key."""
    private, _ = new_key(tmp_path / "writer.key")
    return load_private_key(private), Ed25519PrivateKey.generate()


def test_an_anchor_verifies_only_with_the_public_half_of_the_key_that_signed_it(
    keys: tuple[Ed25519PrivateKey, Ed25519PrivateKey],
) -> None:
    """A signed anchor checks with its own public key and fails with any other."""
    writer, attacker = keys
    anchor = sign("ledger-1", 42, "ab" * 32, writer, NOW)
    assert check_signature(anchor, writer.public_key())
    assert not check_signature(anchor, attacker.public_key())


@pytest.mark.parametrize(
    "change",
    [
        {"position": 43},
        {"hash": "cd" * 32},
        {"ledger_id": "ledger-2"},
        {"signed_at": "2027-01-01T00:00:00.000000Z"},
    ],
)
def test_changing_any_signed_field_of_an_anchor_breaks_its_signature(
    keys: tuple[Ed25519PrivateKey, Ed25519PrivateKey], change: dict[str, object]
) -> None:
    """An anchor moved to another position, hash, ledger or time no longer verifies."""
    writer, _ = keys
    anchor = sign("ledger-1", 42, "ab" * 32, writer, NOW)
    assert not check_signature(msgspec.structs.replace(anchor, **change), writer.public_key())


def test_an_attacker_with_only_the_public_key_cannot_make_an_anchor_that_verifies(
    keys: tuple[Ed25519PrivateKey, Ed25519PrivateKey],
) -> None:
    """Signing with another key under the writer's key id, reusing a signature, or random bytes: none verifies."""
    writer, attacker = keys
    public = writer.public_key()
    genuine = sign("ledger-1", 42, "ab" * 32, writer, NOW)
    forged = msgspec.structs.replace(
        sign("ledger-1", 99, "ef" * 32, attacker, NOW), key_id=key_id(public)
    )
    replayed = msgspec.structs.replace(genuine, position=99, hash="ef" * 32)
    random_bytes = msgspec.structs.replace(
        genuine, position=99, signature=base64.b64encode(os.urandom(64)).decode()
    )
    for candidate in (forged, replayed, random_bytes):
        assert not check_signature(candidate, public)
    for garbage in ("", "not base64!", base64.b64encode(b"short").decode()):
        assert not check_signature(msgspec.structs.replace(genuine, signature=garbage), public)


def test_verify_at_the_cli_rejects_a_forged_anchor_and_exits_1(tmp_path: Path) -> None:
    """`verify --anchor` with an anchor signed by another key fails with 'forged or altered'."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert cli(url, "record", "-", input=jsonl([opened_line("t1")])).returncode == 0
    assert cli(None, "anchor", "--new-key", str(tmp_path / "writer.key")).returncode == 0
    genuine = Anchor.parse(cli(url, "anchor", "--key", str(tmp_path / "writer.key")).stdout)
    attacker = Ed25519PrivateKey.generate()
    forged = sign(genuine.ledger_id, genuine.position, genuine.hash, attacker, NOW)
    forged = msgspec.structs.replace(forged, key_id=genuine.key_id)
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_bytes(msgspec.json.encode(forged) + b"\n")
    result = cli(
        url, "verify", "--anchor", str(anchors), "--public-key", str(tmp_path / "writer.key.pub")
    )
    assert result.returncode == 1
    assert "forged or altered" in result.stdout
    anchors.write_bytes(msgspec.json.encode(genuine) + b"\n")
    again = cli(
        url, "verify", "--anchor", str(anchors), "--public-key", str(tmp_path / "writer.key.pub")
    )
    assert again.returncode == 0, again.stdout


# owner-only files


def opened_line(trade_id: str, **fields: object) -> dict[str, object]:
    return {
        "type": "TradeOpened",
        "trade_id": trade_id,
        "symbol": "BTCUSDT",
        "side": "long",
        "quantity": "1",
        "price": "100",
        "currency": "USDT",
        "occurred_at": "2026-01-05T10:00:00Z",
        **fields,
    }


MODES = """
import asyncio, json, os, stat, sys
sys.path.insert(0, {root!r})
os.umask(0)
from ledger import open_ledger
from projections import standard
from replay.anchor import new_key
from tests.lifecycles import opened

async def main(url, directory):
    new_key(os.path.join(directory, "writer.key"))
    async with open_ledger(url, standard(), checkpoint_every=1) as book:
        for n in range(3):
            await book.record(opened(f"t{{n}}"))
        await book.checkpoint()
        modes = {{name: stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode)
                 for name in sorted(os.listdir(directory))}}
    print(json.dumps(modes))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def modes_with_umask_zero(url: str, directory: Path) -> dict[str, int]:
    """The mode of every file in ``directory`` while a ledger there is open, made under umask 0."""
    result = subprocess.run(
        [sys.executable, "-c", MODES.format(root=str(ROOT)), url, str(directory)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    modes: dict[str, int] = json.loads(result.stdout.splitlines()[-1])
    return modes


def test_ledger_files_and_key_files_are_owner_only_even_under_a_permissive_umask(
    tmp_path: Path,
) -> None:
    """Under umask 0 the ledger file, its -wal and -shm, and the private key are created 0600."""
    modes = modes_with_umask_zero(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path)
    expected = {"ledger.db", "ledger.db-wal", "ledger.db-shm", "writer.key"}
    assert expected <= modes.keys()
    assert {name: modes[name] for name in expected} == dict.fromkeys(expected, 0o600)
    assert not [name for name, mode in modes.items() if name != "writer.key.pub" and mode & 0o077]


def test_redis_read_model_and_spool_files_are_owner_only_even_under_a_permissive_umask(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Under umask 0 the local read-model file and the spool (and their -wal, -shm, and the spool's -drain lock) are created 0600."""
    url = redis_server.url(tmp_path, name="modes", spool=str(tmp_path / "spool.db"))
    modes = modes_with_umask_zero(url, tmp_path)
    assert {"modes.views.db", "spool.db"} <= modes.keys()
    assert [name for name in modes if name.startswith("spool.db-drain-")]
    group_or_world = {n: oct(m) for n, m in modes.items() if n != "writer.key.pub" and m & 0o077}
    assert group_or_world == {}


# secrets in logs and errors


class PasswordRedis(RedisServer):
    """A redis-server that requires a password."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, extra=("--requirepass", PASSWORD))

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=PASSWORD, socket_timeout=2)

    def secret_url(self, tmp_path: Path, password: str = PASSWORD) -> str:
        name = f"sec{free_port()}"
        views = tmp_path / f"{name}.views.db"
        return f"redis://:{password}@127.0.0.1:{self.port}/0?ledger={name}&views={views}"


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PasswordRedis]:
    server = PasswordRedis(tmp_path_factory.mktemp("locked-redis"))
    server.start()
    yield server
    server.stop()


def assert_no_secret(text: str, url: str, *secrets: str) -> None:
    for secret in (url, PASSWORD, *secrets):
        assert secret not in text, f"{secret!r} leaked: {text[-800:]}"


def test_no_log_line_or_error_of_the_library_shows_the_redis_password_or_url(
    locked_redis: PasswordRedis, tmp_path: Path
) -> None:
    """Opening, recording, a wrong password and a dead server: every log event and error message is free of the password and the URL."""
    url = locked_redis.secret_url(tmp_path)
    wrong = locked_redis.secret_url(tmp_path, password="wrong-" + PASSWORD)
    seen: list[str] = []

    async def go() -> None:
        async with open_ledger(url, standard(), timeout=1) as book:
            await book.record(opened("t1"))
        for bad in (wrong, url.replace(f":{locked_redis.port}/", ":notaport/")):
            try:
                async with open_ledger(bad, timeout=1):
                    pass
            except (LedgerError, ValueError) as e:
                seen.append(f"{type(e).__name__}: {e}")
        locked_redis.kill()
        try:
            try:
                async with open_ledger(url, timeout=1):
                    pass
            except LedgerError as e:
                seen.append(f"{type(e).__name__}: {e}")
        finally:
            locked_redis.start()

    with structlog.testing.capture_logs() as logs:
        asyncio.run(go())
    assert len(seen) == 3, seen
    assert_no_secret(json.dumps(logs, default=str) + "\n".join(seen), url, wrong)


def test_no_cli_output_shows_the_redis_password_or_url_even_at_debug_level(
    locked_redis: PasswordRedis, tmp_path: Path
) -> None:
    """Every command, -vv, against the right password, a wrong one and a stopped server: no password, no URL in stdout or stderr."""
    url = locked_redis.secret_url(tmp_path)
    wrong = locked_redis.secret_url(tmp_path, password="wrong-" + PASSWORD)
    record = cli(url, "-vv", "record", "-", input=jsonl([opened_line("t1")]))
    assert record.returncode == 0, record.stderr
    outputs = [record]
    for target in (url, wrong):
        for command in (["info"], ["positions"], ["verify"], ["events"], ["record", "-"]):
            outputs.append(cli(target, "-vv", *command, input=""))
    assert [r.returncode for r in outputs[-5:]] == [1] * 5
    locked_redis.kill()
    try:
        outputs += [cli(url, "-vv", c, input="") for c in ("info", "record")]
    finally:
        locked_redis.start()
    outputs.append(cli("mysql://admin:" + PASSWORD + "@db.example/prod", "positions"))
    for result in outputs:
        assert "Traceback" not in result.stderr
        assert_no_secret(result.stdout + result.stderr, url, wrong)


def test_a_damaged_private_key_file_is_refused_without_echoing_the_key(tmp_path: Path) -> None:
    """`anchor --key` with a truncated PEM exits 1 and no part of the key body is printed."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert cli(url, "record", "-", input=jsonl([opened_line("t1")])).returncode == 0
    private, _ = new_key(tmp_path / "writer.key")
    pem = private.read_text().splitlines()
    body = pem[1]
    private.write_text("\n".join([pem[0], body[: len(body) // 2], pem[-1]]) + "\n")
    result = cli(url, "-vv", "anchor", "--key", str(private))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    for piece in (body, body[: len(body) // 2], body[:16]):
        assert piece not in result.stdout + result.stderr


# terminal control characters


SMUGGLED = "\x1b[2J\x1b]0;pwned\x07\x9b31m\r\x08\x7f\u202e"


def controls(text: str) -> list[str]:
    """Control and format characters a terminal might obey (newlines aside)."""
    return sorted({c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf")})


def test_metadata_and_free_text_cannot_put_control_characters_in_human_cli_output(
    tmp_path: Path,
) -> None:
    """Metadata, parameter values and refused lines full of escape sequences come out escaped from every human command."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"

    async def go() -> None:
        async with open_ledger(url, standard()) as book:
            await book.record(signal("s1", metadata={"note": SMUGGLED, SMUGGLED: 1}))
            await book.record(opened("t1", metadata={"note": SMUGGLED}))
            await book.record(opened("t2", metadata={"nested": [SMUGGLED]}))
            await book.record(
                closed("t1", price=Decimal("110"), metadata={"why": SMUGGLED}), event_id="c1"
            )
            await book.record(
                ParameterChanged(
                    name="mode",
                    new_value=SMUGGLED,
                    old_value=SMUGGLED,
                    changed_by="manual",
                    occurred_at=T0,
                    metadata={"x": SMUGGLED},
                )
            )

    asyncio.run(go())
    bad_lines = jsonl(
        [
            opened_line("t9", side=SMUGGLED),
            opened_line(SMUGGLED),
            {"type": SMUGGLED},
            opened_line("t8", metadata={"k": SMUGGLED}, currency=SMUGGLED),
        ]
    )
    results = [
        cli(url, "-v", "record", "-", input=bad_lines),
        cli(url, "tail", "--from-position", "1", "--limit", "5"),
    ]
    for command in (
        "positions",
        "pnl",
        "performance",
        "history",
        "signals",
        "parameters",
        "events",
        "verify",
        "info",
    ):
        results.append(cli(url, "-v", command))
    results.append(cli(url, "parameters", "--current"))
    for result in results:
        assert "Traceback" not in result.stderr
        found = controls(result.stdout + result.stderr)
        assert found == [], f"{result.args[3:]}: {found!r} in {result.stdout + result.stderr!r}"
    parameters = results[2 + 5]
    assert parameters.returncode == 0 and "\\x1b[2J" in parameters.stdout  # shown, not obeyed


# the CLI's last line of defence


async def failing(error: BaseException) -> None:
    raise error


@pytest.mark.parametrize(
    ("error", "code", "shown"),
    [
        (
            RuntimeError("boom"),
            1,
            "error: unexpected RuntimeError: boom (run with -vv for details)",
        ),
        (
            LedgerError(f"redis://:{PASSWORD}@db:6379/0 refused"),
            1,
            "error: LedgerError: redis://***@db:6379/0 refused",
        ),
        (
            ValueError(f"bad URL rediss://admin:{PASSWORD}@x/0"),
            2,
            "usage error: bad URL rediss://***@x/0",
        ),
        (
            LedgerError("evil \x1b[2J\x9b31m name"),
            1,
            "error: LedgerError: evil \\x1b[2J\\x9b31m name",
        ),
        (
            OSError(28, "No space left on device", "/data/ledger.db"),
            1,
            "error: No space left on device: /data/ledger.db",
        ),
    ],
)
def test_every_failure_at_the_cli_is_one_clean_line_with_its_exit_code(
    capsys: pytest.CaptureFixture[str], error: BaseException, code: int, shown: str
) -> None:
    """The CLI's runner turns any exception into one line on stderr, password masked, control characters escaped, and the right exit code."""
    from replay.cli import _run

    with pytest.raises(SystemExit) as exit_info:
        _run(failing(error))
    assert exit_info.value.code == code
    captured = capsys.readouterr()
    assert captured.err == shown + "\n"
    assert PASSWORD not in captured.err and "Traceback" not in captured.err


def test_log_lines_of_the_cli_mask_passwords_and_escape_control_characters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With the CLI's logging, a log value holding a URL with a password or an escape sequence comes out masked and escaped."""
    from replay.cli import _configure_logging

    try:
        _configure_logging(0)
        structlog.get_logger("tradeledger").warning(
            "store_fault", address=f"redis://:{PASSWORD}@db:6379/0", reason="\x1b[2Jgone"
        )
        line = json.loads(capsys.readouterr().err)
    finally:
        structlog.reset_defaults()
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    assert line["address"] == "redis://***@db:6379/0"
    assert line["reason"] == "\\x1b[2Jgone"
