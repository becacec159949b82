"""``report_task`` end to end: ``tunneld run`` loads the installed plugin from its entry
point, an MCP client calls the tool over HTTP, and the report lands on a real control
plane; without ``[plugins.report_task]`` the daemon does not offer the tool at all."""

from __future__ import annotations

import functools
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tests._control_support import Harness, running_server
from tests._mcp_client import RawMcpClient
from tests.test_mcp_daemon_e2e import WAIT, daemon_config, short_dir, wait_for_status

pytest.importorskip(
    "tunneld_report_task", reason="install it: pip install -e plugins/tunneld-report-task"
)

__all__ = ["short_dir"]  # the fixture, re-exported for pytest


async def _daemon_tools(
    nursery: trio.Nursery, h: Harness, dir_: Path, extra: str
) -> tuple[list[dict[str, Any]], RawMcpClient, trio.Process, dict[str, Any]]:
    (dir_ / "daemon.token").write_text(await h.token("alice") + "\n")
    (dir_ / "daemon.token").chmod(0o600)
    api_socket = dir_ / "api.sock"
    config = daemon_config(h, dir_, api_socket, extra)
    command = [sys.executable, "-m", "tunneld", "run", "--config", str(config)]
    process: trio.Process = await nursery.start(
        functools.partial(trio.run_process, command, check=False, stderr=subprocess.DEVNULL)
    )
    status = await wait_for_status(api_socket, process)
    url = status["mcp"]["url"]
    client = RawMcpClient(url.removeprefix("http://").removesuffix("/mcp"))
    with trio.fail_after(WAIT):
        await client.initialize()
        listed = await client.request("tools/list")
    return listed["result"]["tools"], client, process, status


async def _stop(process: trio.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(WAIT):
            await process.wait()
    assert process.returncode == 0


async def test_report_task_through_the_daemon_reaches_the_control_plane(
    nursery: trio.Nursery, tmp_path: Path, short_dir: Path
) -> None:
    (tmp_path / "control").mkdir()
    async with running_server(nursery, tmp_path / "control") as h:
        await h.user("alice")
        reporter = short_dir / "reporter.token"
        reporter.write_text(await h.token("alice") + "\n")
        extra = (
            "[plugins.report_task]\n"
            f'control_url = "{h.info.url}"\n'
            f'token_file = "{reporter}"\n'
            'agent = "web1"\n'
        )
        tools, client, process, status = await _daemon_tools(nursery, h, short_dir, extra)
        try:
            assert "report_task" in [p["name"] for p in status["plugins"]["loaded"]]
            tool = next(t for t in tools if t["name"] == "report_task")
            assert tool["annotations"] == {
                "readOnlyHint": False,
                "destructiveHint": False,
                "idempotentHint": False,
                "openWorldHint": True,
                "title": "Report task state",
            }
            with trio.fail_after(WAIT):
                result = await client.call_tool(
                    "report_task", {"state": "working", "summary": "Refactoring the parser"}
                )
                assert result.get("isError") is not True, result
                assert result["structuredContent"]["outcome"] == "delivered"
                # Schema validation happens before the handler: an isError naming the field.
                bad = await client.call_tool("report_task", {"state": "done", "summary": "x"})
                assert bad["isError"] is True
                assert "state" in bad["content"][0]["text"]
        finally:
            await _stop(process)
        code, _, body = await h.get("/api/v1/tasks", await h.token("alice"))
        assert code == 200
        tasks = json.loads(body)["tasks"]
        assert [(t["agent"], t["state"], t["summary"]) for t in tasks] == [
            ("web1", "working", "Refactoring the parser")
        ]


async def test_without_a_reporter_the_daemon_offers_no_report_task(
    nursery: trio.Nursery, tmp_path: Path, short_dir: Path
) -> None:
    (tmp_path / "control").mkdir()
    async with running_server(nursery, tmp_path / "control") as h:
        await h.user("alice")
        tools, client, process, status = await _daemon_tools(nursery, h, short_dir, "")
        try:
            # The plugin loads (it is on by default) but registers nothing.
            assert "report_task" in [p["name"] for p in status["plugins"]["loaded"]]
            assert "report_task" not in [t["name"] for t in tools]
            with trio.fail_after(WAIT):
                answer = await client.request(
                    "tools/call", {"name": "report_task", "arguments": {}}
                )
            assert answer["error"]["code"] == -32602
        finally:
            await _stop(process)
