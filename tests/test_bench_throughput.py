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
        [*command, "--mb", "0.2", "--relay-mb", "0.1", "--repeat", "1"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    rows = json.loads(out)
    assert [row["path"] for row in rows] == ["direct", "relay"]
    # Each path's ceiling is measured with the packets that path sends: over the
    # relay 63 KiB datagrams; on the direct path what path MTU discovery found
    # (loopback carries the largest UDP datagram; without don't-fragment, 1,200).
    largest = mux_size_for(65535) if sys.platform.startswith("linux") else 1200
    assert rows[0]["packet_bytes"] == largest + HEADER_SIZE
    assert rows[1]["packet_bytes"] == RELAY_DATAGRAM_SIZE + HEADER_SIZE
    for row in rows:
        assert row["mb_per_s"] > 0
        assert row["ceiling_mb_per_s"] > 0
        assert row["fraction"] == row["mb_per_s"] / row["ceiling_mb_per_s"]


def test_bench_throughput_paths_relay_only_reports_cpu_per_process() -> None:
    command = [sys.executable, "-m", "tunneld", "bench", "throughput", "--json"]
    out = subprocess.run(
        [*command, "--paths", "relay", "--relay-mb", "0.2", "--repeat", "3"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    rows = json.loads(out.stdout)
    assert [row["path"] for row in rows] == ["relay"]
    row = rows[0]
    assert row["packet_bytes"] == RELAY_DATAGRAM_SIZE + HEADER_SIZE
    # Three transfers; the row is the median one.
    runs = row["runs_mb_per_s"]
    assert len(runs) == 3
    assert row["mb_per_s"] == sorted(runs)[1]
    if sys.platform.startswith("linux"):
        parts = [row[f"cpu_ms_per_mb_{role}"] for role in ("control", "agent", "client")]
        assert all(part >= 0 for part in parts)
        assert row["cpu_ms_per_mb"] == sum(parts)
    # The peers' stdin readers never crash the interpreter at exit.
    assert "Fatal Python error" not in out.stderr


def test_bench_throughput_rejects_a_repeat_below_one() -> None:
    command = [sys.executable, "-m", "tunneld", "bench", "throughput", "--repeat", "0"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "--repeat: expected at least 1" in out.stderr


def test_bench_throughput_rejects_unknown_paths() -> None:
    command = [sys.executable, "-m", "tunneld", "bench", "throughput", "--paths", "udp"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "--paths" in out.stderr
