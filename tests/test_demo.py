"""`tunneld demo` runs control, an agent and the daemon end to end as a real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from tunneld._mcp_client import McpClientError, McpHttpClient

TIMEOUT = 180  # generous: the machine is shared


def _demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunneld", "demo", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env=env,
    )


def test_demo_check_makes_a_tool_call_and_prints_how_to_connect() -> None:
    result = _demo("--check", "--calls", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for step in ("control plane", "agent", "daemon", "plugins", "tool call", "warm calls"):
        assert f"  {step} " in out
    # The file the agent holds came back through MCP -> daemon -> overlay -> agent.
    assert "This file lives on the demo agent's host" in out
    assert "MCP URL         http://127.0.0.1:" in out
    assert "Authorization: Bearer " in out
    # The Claude Desktop snippet is valid JSON naming an absolute tunneld and the socket.
    start = out.index('{\n  "mcpServers"')
    config = json.JSONDecoder().raw_decode(out[start:])[0]
    server = config["mcpServers"]["tunneld-demo"]
    assert Path(server["command"]).is_absolute()
    assert server["args"][-3:-1] == ["mcp", "--socket"]
    # --check does not linger, and leaves nothing behind.
    assert not Path(server["args"][-1]).parent.exists()
    assert result.stderr == ""


def _read_json_line(process: subprocess.Popen[str]) -> dict[str, Any]:
    assert process.stdout is not None
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        lines.append(process.stdout.readline())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(TIMEOUT)
    assert lines, f"no JSON line; stderr: {_stderr(process)}"
    assert lines[0], f"no JSON line; stderr: {_stderr(process)}"
    report: dict[str, Any] = json.loads(lines[0])
    return report


def _stderr(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        return "(still running)"
    assert process.stderr is not None
    return process.stderr.read()


async def _mcp_checks(report: dict[str, Any]) -> list[str]:
    # Without the token: 401. With it: the same tools the demo listed, and a real call.
    anonymous = McpHttpClient(report["mcp_url"])
    with pytest.raises(McpClientError) as refused:
        await anonymous.initialize()
    assert refused.value.status == 401
    await anonymous.aclose()
    wrong = McpHttpClient(report["mcp_url"], token="not-the-token")
    with pytest.raises(McpClientError) as refused:
        await wrong.initialize()
    assert refused.value.status == 401
    await wrong.aclose()
    async with McpHttpClient(report["mcp_url"], token=report["token"]) as client:
        tools = [t["name"] for t in await client.list_tools()]
        listed = await client.call_tool("list_agents", {})
        assert not listed.get("isError"), listed
        assert "demo-agent" in json.dumps(listed)
        workspace = report["workspace"]
        wrote = await client.call_tool(
            "write_file", {"agent": "demo-agent", "path": f"{workspace}/new.txt", "content": "hi"}
        )
        assert not wrote.get("isError"), wrote
    return tools


def _bridge(socket_path: str) -> list[dict[str, Any]]:
    """`tunneld mcp --socket PATH`, as the Claude Desktop snippet runs it."""
    messages = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]
    result = subprocess.run(
        [sys.executable, "-m", "tunneld", "mcp", "--socket", socket_path],
        input="".join(json.dumps(m) + "\n" for m in messages),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_demo_json_serves_until_sigint_then_removes_its_files() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tunneld", "demo", "--json", "--calls", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        report = _read_json_line(process)
        assert report["ok"] is True
        for key in ("mcp_url", "token", "control_url", "socket_path", "user", "password"):
            assert report[key], key
        assert report["mcp_url"].startswith("http://127.0.0.1:")
        assert report["mcp_url"].endswith("/mcp")
        assert report["control_url"].startswith("http://127.0.0.1:")
        assert report["agents"] == ["demo-agent"]
        assert report["user"] == "demo"
        assert report["tool_call"]["ok"] is True
        assert "demo agent's host" in report["tool_call"]["text"]
        assert report["warm_calls"] == 1
        root = Path(report["socket_path"]).parent
        assert Path(report["socket_path"]).is_socket()
        assert (root / "control" / "control.db").is_file()

        tools = trio.run(_mcp_checks, report)
        assert set(report["tools"]) == set(tools)
        assert (Path(report["workspace"]) / "new.txt").read_text() == "hi"

        answers = _bridge(report["socket_path"])
        listed = next(a for a in answers if a.get("id") == 2)
        assert {t["name"] for t in listed["result"]["tools"]} == set(tools)

        assert process.poll() is None, "the demo stopped on its own"
        process.send_signal(signal.SIGINT)
        assert process.wait(TIMEOUT) == 0, _stderr(process)
        assert not root.exists(), "the demo left its temporary directory behind"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_demo_no_auth_with_a_plugin_serves_without_a_token() -> None:
    # What the MCP conformance suite needs: no token, the fixtures plugin enabled.
    result = _demo("--check", "--json", "--no-auth", "--calls", "0", "--plugin", "conformance")
    assert result.returncode == 0, result.stderr
    assert "warning: --no-auth" in result.stderr
    report = json.loads(result.stdout)
    assert report["token"] is None
    assert report["tool_call"]["ok"] is True
    assert report["warm_calls"] == 0
    assert {"workspace", "conformance"} <= set(report["plugins"])
    assert "test_simple_text" in report["tools"]


def test_demo_text_mode_warns_about_no_auth() -> None:
    result = _demo("--check", "--no-auth", "--calls", "0")
    assert result.returncode == 0, result.stderr
    assert "warning: --no-auth" in result.stderr
    assert "token           none (--no-auth)" in result.stdout


def test_demo_busy_mcp_port_is_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _demo("--check", "--mcp-port", str(port))
    assert result.returncode == 1
    assert f"the MCP port 127.0.0.1:{port} is in use" in result.stderr
    assert "--mcp-port" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_unknown_plugin_is_a_clear_error() -> None:
    result = _demo("--check", "--plugin", "no-such-plugin")
    assert result.returncode == 1
    assert "--plugin no-such-plugin: not installed" in result.stderr


def test_demo_without_the_workspace_plugin_says_how_to_install_it(tmp_path: Path) -> None:
    # The plugin is installed in this venv: hide its entry point from this one process,
    # as if it were not (only the standard library's view of installed packages changes).
    runner = tmp_path / "run.py"
    runner.write_text(
        "import importlib.metadata as m, sys\n"
        "real = m.entry_points\n"
        "def entry_points(**kw):\n"
        "    found = real(**kw)\n"
        "    return m.EntryPoints(e for e in found if e.name != 'workspace')\n"
        "m.entry_points = entry_points\n"
        "from tunneld.cli import main\n"
        "sys.exit(main(['demo', '--check']))\n"
    )
    result = subprocess.run(
        [sys.executable, str(runner)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env={**os.environ},
    )
    assert result.returncode == 1
    assert "pip install -e plugins/tunneld-workspace" in result.stderr


def test_demo_text_mode_prints_status_lines_until_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tunneld", "demo", "--calls", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []

    def read_until_status() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if line.startswith("peers "):
                return

    try:
        reader = threading.Thread(target=read_until_status, daemon=True)
        reader.start()
        reader.join(TIMEOUT)
        status = seen[-1] if seen else ""
        # Not a terminal: one plain line per change, no cursor codes.
        assert status.startswith("peers 1/1 online · path "), "".join(seen)
        assert "tunnels 1 " in status
        assert "calls 1" in status
        assert "\x1b" not in status
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0
        assert "stopped; temporary files removed" in out
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
