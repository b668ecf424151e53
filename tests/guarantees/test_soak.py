"""Soak: 16 producers, a tailing process and a verifying process; nothing lost, nothing twice.

CI runs the quick soak (20,000 events); the README reports the 1,000,000-event
run of ``scripts/soak.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.guarantees.harness import ROOT

SCRIPT = ROOT / "scripts" / "soak.py"


def soak(tmp_path: Path, *args: str, timeout: float) -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    summary = [line for line in result.stdout.splitlines() if line.startswith("soak ")]
    assert summary, result.stdout + result.stderr
    found = dict(re.findall(r"(\w+)=(\S+)", summary[-1]))
    assert result.returncode == 0, summary[-1] + result.stderr
    return found


def test_a_quick_soak_loses_nothing_duplicates_nothing_and_verifies_while_tailed(
    tmp_path: Path,
) -> None:
    """20,000 events from 16 producers: the tail saw every position once, every verify passed, the log holds exactly the acknowledged ids."""
    found = soak(tmp_path, "--quick", timeout=150)
    assert found["result"] == "ok"
    assert found["acknowledged"] == found["head"] == found["tail_seen"] == "20000"
    assert found["lost"] == found["duplicated"] == found["tail_duplicates"] == "0"
    assert found["final_verify"] == "ok" and int(found["verify_runs"]) >= 2


@pytest.mark.slow
def test_a_soak_of_two_hundred_thousand_events_on_redis_loses_nothing(tmp_path: Path) -> None:
    """200,000 events on Redis from 16 producers, tailed and verified: nothing lost or twice."""
    found = soak(tmp_path, "--events", "200000", "--backend", "redis", timeout=3600)
    assert found["result"] == "ok"
