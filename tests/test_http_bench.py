"""``tunneld bench http`` runs end to end and reports every case against a baseline."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_http_reports_all_cases() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tunneld", "bench", "http", "--json", "--seconds", "0.05",
         "--connections", "1", "--message", "64"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rows = json.loads(result.stdout)
    assert [row["case"] for row in rows] == [
        "baseline: canned response, no parsing",
        "tunneld.http GET keep-alive",
        "baseline: raw TCP echo",
        "tunneld.http WebSocket echo",
    ]
    assert all(row["per_s"] > 0 and row["p99_us"] >= row["p50_us"] > 0 for row in rows)
    assert rows[0]["vs_baseline"] == 1
