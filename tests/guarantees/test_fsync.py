"""Durability is a flush, not the page cache: the writer fsyncs the ledger before every acknowledgement.

A SIGKILL leaves the operating system's cache intact, so the crash harness
cannot tell ``synchronous=FULL`` from ``OFF``. Here a child records events one
call each under ``strace -f -y -e trace=fsync,fdatasync,write`` and writes
``ACK <id>`` to its stdout after each ``record`` returned; the trace must show
a completed fsync or fdatasync of the ledger file or its WAL between every two
acknowledgements. A child that writes SQLite with ``synchronous=OFF`` shows the
check can fail. strace is installed by ``scripts/install``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.guarantees.harness import RECORDER, ROOT, child_env

EVENTS = 12

UNSYNCED = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode = WAL")
conn.execute("PRAGMA synchronous = OFF")
conn.execute("CREATE TABLE records (position INTEGER PRIMARY KEY, data TEXT)")
os.write(1, b"OPEN\\n")
for n in range(int(sys.argv[2])):
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO records (data) VALUES (?)", (str(n),))
    conn.execute("COMMIT")
    os.write(1, f"ACK {n}\\n".encode())
"""

_CALL = re.compile(r"^(?P<pid>\d+)\s+(?P<rest>.*)$")


def traced(tmp_path: Path, code: str, *args: str) -> tuple[list[str], str]:
    """Run ``python -c code args`` under strace; return the trace lines and the child's stdout."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is not installed: run scripts/install (apt-get install strace)")
    trace = tmp_path / "trace.txt"
    result = subprocess.run(
        [
            strace,
            "-f",
            "-y",
            "-s",
            "80",
            "-e",
            "trace=fsync,fdatasync,write",
            "-o",
            str(trace),
            sys.executable,
            "-c",
            code,
            *args,
        ],
        capture_output=True,
        env=child_env(),
        timeout=120,
        check=False,
    )
    if "PTRACE" in result.stderr.decode() or not trace.exists():
        pytest.fail(
            "strace could not trace the child (ptrace is restricted here: run as root or set "
            f"kernel.yama.ptrace_scope=0): {result.stderr.decode()[-500:]}"
        )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return trace.read_text().splitlines(), result.stdout.decode()


def flushes_between_acks(lines: list[str], ledger: Path) -> list[int]:
    """For every ACK, how many flushes of ``ledger`` (or its WAL) completed since the last mark.

    The first interval starts at OPEN. A call strace split across threads
    (``<unfinished ...>`` then ``<... resumed>``) counts when it completes.
    """
    names = (str(ledger), f"{ledger}-wal")
    pending: dict[str, bool] = {}
    counts: list[int] = []
    since = 0
    opened = False
    for line in lines:
        found = _CALL.match(line)
        if found is None:
            continue
        pid, rest = found["pid"], found["rest"]
        if rest.startswith(("fsync(", "fdatasync(")):
            target = re.search(r"\(\d+<([^>]*)>", rest)
            ours = target is not None and target.group(1) in names
            if "<unfinished" in rest:
                pending[pid] = ours
                continue
            if ours and " = 0" in rest:
                since += 1
        elif re.match(r"<\.\.\. f(data)?sync resumed>", rest):
            if pending.pop(pid, False) and " = 0" in rest:
                since += 1
        elif rest.startswith("write(1<") and '"OPEN\\n"' in rest:
            opened, since = True, 0
        elif rest.startswith("write(1<") and '"ACK ' in rest and opened:
            counts.append(since)
            since = 0
    return counts


def test_every_acknowledged_event_was_flushed_to_the_ledger_file_before_record_returned(
    tmp_path: Path,
) -> None:
    """Twelve single-event records: each acknowledgement follows at least one completed fsync of the ledger or its WAL."""
    ledger = tmp_path / "ledger.db"
    code = RECORDER.format(root=str(ROOT))
    lines, stdout = traced(tmp_path, code, f"sqlite:///{ledger}", str(EVENTS), "1000", "1")
    assert stdout.count("ACK ") == EVENTS, stdout
    counts = flushes_between_acks(lines, ledger)
    assert len(counts) == EVENTS, counts
    assert all(n >= 1 for n in counts), f"flushes before each acknowledgement: {counts}"


def test_the_flush_count_finds_nothing_when_sqlite_is_told_not_to_flush(tmp_path: Path) -> None:
    """A writer with synchronous=OFF acknowledges with no flush in between: the check above would fail it."""
    ledger = tmp_path / "unsynced.db"
    lines, stdout = traced(tmp_path, UNSYNCED, str(ledger), str(EVENTS))
    assert stdout.count("ACK ") == EVENTS
    assert flushes_between_acks(lines, ledger) == [0] * EVENTS
