"""``tunneld bench throughput`` runs end to end (tiny sizes; speed is never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_throughput_json_has_both_paths_and_the_ceiling() -> None:
    command = [sys.executable, "-m", "tunneld", "bench", "throughput", "--json"]
    out = subprocess.run(
        [*command, "--mb", "0.2", "--relay-mb", "0.1"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    rows = json.loads(out)
    assert [row["path"] for row in rows] == ["direct", "relay"]
    # Each path's ceiling is measured with the packets that path sends.
    assert rows[0]["packet_bytes"] < rows[1]["packet_bytes"]
    for row in rows:
        assert row["mb_per_s"] > 0
        assert row["ceiling_mb_per_s"] > 0
        assert row["fraction"] == row["mb_per_s"] / row["ceiling_mb_per_s"]
