"""`tunneld demo` runs the system end to end as a real process."""

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


def test_demo_json_reports_agent_calls_through_the_overlay() -> None:
    result = _demo("--json", "--calls", "3")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["first_path"] == "relay"
    assert report["exec_output"].startswith("Linux")
    assert report["calls"] == 3
    assert report["warm_stream_p50_ms"] > 0
    assert report["control_url"].startswith("http://127.0.0.1:")


def test_demo_text_walks_through_each_step_quietly() -> None:
    result = _demo("--calls", "2")
    assert result.returncode == 0, result.stderr
    for step in ("control plane", "agent", "tunnel", "exec", "read_file", "shared tunnel"):
        assert f"  {step} " in result.stdout
    assert "direct UDP 127.0.0.1:" in result.stdout
    # Component logs stay quiet unless asked for (--log-level info).
    assert result.stderr == ""
