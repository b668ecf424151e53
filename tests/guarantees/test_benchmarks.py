"""The benchmarks keep working: CI runs the short version of each.

Speed is never asserted here (the machine is shared and noisy; the README
reports the full runs as ratios measured in one run). What is asserted is
that each script measures every scenario it names and reports each ratio.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.guarantees.harness import ROOT


def bench(name: str, *args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), "--quick", "--json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def trailing_json(output: str) -> Any:
    """The JSON document that ends the output (after the tables)."""
    start = min(i for i in (output.find("\n{"), output.find("\n[")) if i >= 0)
    return json.loads(output[start:])


def test_bench_append_measures_every_scenario_and_its_ratios(tmp_path: Path) -> None:
    found = trailing_json(bench("bench_append.py", "--dir", str(tmp_path)))
    scenarios = [r["scenario"][0] for r in found["results"]]
    assert scenarios == ["a", "b", "c", "d", "d", "e"]
    assert all(r["per_second"] > 0 and r["events"] == 500 for r in found["results"])
    assert set(found["ratios"]) == {"a/c", "b/c", "e/c"}
    assert found["round_trip_us"] > 0


def test_bench_append_runs_every_thread_on_the_one_cpu_it_is_given(tmp_path: Path) -> None:
    cpu = max(os.sched_getaffinity(0))
    found = trailing_json(bench("bench_append.py", "--dir", str(tmp_path), "--cpu", str(cpu)))
    assert found["cpus"] == [cpu]
    refused = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_append.py"), "--cpu", "100000"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2 and "cannot run on CPU 100000" in refused.stderr


def test_bench_redis_measures_every_scenario_and_both_ratios() -> None:
    """It starts its own redis-server (appendfsync always), as it does outside CI."""
    found = trailing_json(bench("bench_redis.py"))
    scenarios = [r["scenario"].split()[0] for r in found["results"]]
    assert scenarios[:4] == ["a", "b", "c", "d"]
    assert all(r["per_second"] > 0 for r in found["results"])
    assert {"a/d", "b/a"} <= set(found["ratios"])


def test_bench_replay_rebuilds_reads_and_opens_at_both_sizes(tmp_path: Path) -> None:
    """The larger quick size (50,006 records) takes the two-process rebuild."""
    output = bench("bench_replay.py", "--dir", str(tmp_path))
    found = json.loads(output.strip().splitlines()[-1])
    assert [r["size"] for r in found] == [20_000, 50_006]
    for size in found:
        assert size["rebuild"]["events"] == size["size"] and size["rebuild"]["rate"] > 0
        assert size["ceiling"]["events"] == size["size"]
        assert size["open"]["tail"] == 1000
