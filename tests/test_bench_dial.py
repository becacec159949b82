"""``tunneld bench dial`` runs end to end (tiny counts; speed is never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_bench_dial_json_has_the_documented_columns() -> None:
    command = [sys.executable, "-m", "tunneld", "--log-level", "warning", "bench", "dial"]
    out = subprocess.run(
        [*command, "--json", "--calls", "5", "--fresh-calls", "2"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    [row] = json.loads(out)
    for key in ("shared_p50_ms", "shared_p99_ms", "per_call_p50_ms", "per_call_p99_ms"):
        assert row[key] > 0, key
    assert row["shared_p99_ms"] >= row["shared_p50_ms"]
    assert row["ratio_p50"] == pytest.approx(row["per_call_p50_ms"] / row["shared_p50_ms"])
    assert row["calls"] == 5
    assert row["fresh_calls"] == 2
    assert row["shared_path"] in ("direct", "relay")
    assert row["shared_cpu_ms"] > 0
    assert row["per_call_cpu_ms"] > 0
