"""`tunneld demo` runs the built pieces end to end as a real process."""

from __future__ import annotations

import json
import subprocess
import sys


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunneld", "demo", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_demo_json_reports_a_handshake_and_ping_replies_through_the_relay() -> None:
    result = _demo("--json", "--pings", "3")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["ping_replies"] == 3
    assert report["handshake_ms"] > 0
    assert report["reflexive_address"].startswith("127.0.0.1:")
    assert report["control_url"].startswith("http://127.0.0.1:")


def test_demo_text_walks_through_each_step_quietly() -> None:
    result = _demo()
    assert result.returncode == 0, result.stderr
    for step in ("control plane", "coordinator", "relay", "handshake", "5/5 ICMP echo replies"):
        assert step in result.stdout
    # Component logs stay quiet unless asked for (--log-level info).
    assert "http.request" not in result.stderr
