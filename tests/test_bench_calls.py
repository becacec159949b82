"""``tunneld bench calls`` runs end to end (tiny counts; speed is never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

COMMAND = [sys.executable, "-m", "tunneld", "--log-level", "warning", "bench", "calls"]


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_bench_calls_json_rows_have_the_documented_shape() -> None:
    result = _bench("--json", "--calls", "4", "--per-call-calls", "2", "--concurrency", "1,3")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    modes = ("shared", "per_call", "our_server", "sdk_server")
    assert [(row["mode"], row["concurrency"]) for row in rows] == [
        (mode, level) for mode in modes for level in (1, 3)
    ]
    for row in rows:
        assert set(row) == {"mode", "concurrency", "calls_per_s", "p50_ms", "p99_ms"}
        assert row["calls_per_s"] > 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]


def test_bench_calls_table_shows_both_ratios() -> None:
    result = _bench(
        "--calls", "3", "--per-call-calls", "1", "--concurrency", "2", "--modes",
        "shared,per_call,our_server,sdk_server",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "shared / per_call calls/s: c=2 " in result.stdout
    assert "our_server / sdk_server calls/s: c=2 " in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--modes", "shared,bogus"), "argument --modes: unknown bogus"),
        (("--calls", "0"), "argument --calls: must be at least 1, got 0"),
        (("--concurrency", "1,x"), "argument --concurrency: expected numbers like 1,10,100"),
    ],
)
def test_bench_calls_bad_options_are_refused(args: tuple[str, ...], message: str) -> None:
    result = _bench(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bench_calls_server_rounds_give_one_median_row_per_level() -> None:
    result = _bench(
        "--calls", "3", "--concurrency", "1,2", "--modes", "our_server", "--server-rounds", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = result.stdout.split("\n\n")[1]
    rows = [line.split() for line in table.splitlines() if line.startswith("our_server ")]
    assert [row[1] for row in rows] == ["1", "2"]
    assert "each row is the median of 3 rounds per level" in result.stdout
    assert "our_server CPU ms per call (server process): c=1 " in result.stdout


@pytest.mark.parametrize(
    ("layout", "parts"),
    [
        (("--processes",), ("client ", "daemon ", "agent ", "control ")),
        ((), ("all parties ",)),
    ],
)
def test_bench_calls_pair_one_notes_cpu_per_call_for_its_layout(
    layout: tuple[str, ...], parts: tuple[str, ...]
) -> None:
    result = _bench(
        "--calls", "3", "--per-call-calls", "1", "--concurrency", "1", "--modes",
        "shared,per_call", *layout,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for mode in ("shared", "per_call"):
        [line] = [n for n in result.stdout.splitlines() if n.startswith(f"{mode} CPU ms per call")]
        for part in parts:
            assert part in line, line
    own = "each run in their own process" in result.stdout
    assert own is bool(layout)
