"""``tunneld bench mux`` runs end to end (tiny sizes; speed is never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_mux_json_has_the_documented_columns() -> None:
    command = [sys.executable, "-m", "tunneld", "bench", "mux", "--json"]
    out = subprocess.run(
        [*command, "--seconds", "0.5", "--core-mb", "0.5"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    rows = json.loads(out)
    goodput = [row for row in rows if row["test"] == "sim goodput"]
    assert {(row["loss"], row["rtt_ms"]) for row in goodput} == {
        (loss, rtt) for loss in (0.0, 0.01, 0.05) for rtt in (10, 50)
    }
    assert all(0 < row["goodput_fraction"] <= 1.0 for row in goodput)
    (core,) = (row for row in rows if row["test"] == "pure core")
    assert core["mb_per_s"] > 0
    assert core["ceiling_mb_per_s"] > 0
    # Every grid point for both controllers, the default (bbr) first; reno_bound kept.
    assert [row["cc"] for row in goodput] == ["bbr"] * 6 + ["newreno"] * 6
    assert all("reno_bound" in row for row in goodput)
