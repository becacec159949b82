"""``tunneld bench throughput`` runs end to end (tiny sizes; speed is never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from tunneld.net.overlay import HEADER_SIZE, RELAY_DATAGRAM_SIZE
from tunneld.net.overlay._pmtu import mux_size_for


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
    # Each path's ceiling is measured with the packets that path sends: over the
    # relay 48 KiB datagrams; on the direct path what path MTU discovery found
    # (loopback carries the largest UDP datagram; without don't-fragment, 1,200).
    largest = mux_size_for(65535) if sys.platform.startswith("linux") else 1200
    assert rows[0]["packet_bytes"] == largest + HEADER_SIZE
    assert rows[1]["packet_bytes"] == RELAY_DATAGRAM_SIZE + HEADER_SIZE
    for row in rows:
        assert row["mb_per_s"] > 0
        assert row["ceiling_mb_per_s"] > 0
        assert row["fraction"] == row["mb_per_s"] / row["ceiling_mb_per_s"]
