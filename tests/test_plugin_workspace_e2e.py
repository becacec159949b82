"""The workspace plugin end to end: the official ``mcp`` SDK client talks to `tunneld run`
(which loads the installed plugin by default), and the calls ride the daemon's overlay to
a real `tunneld agent` process, with a real control plane, all on loopback.

Checks what only the whole chain shows, in the SDK's legacy (2025-11-25 sessions) and
auto (2026-07-28 stateless) modes: the annotations hosts see, progress reaching the
client, an ``isError`` result for an agent error, and that cancelling a call from the
client kills the command (and its child) on the agent.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from tunneld_workspace import Settings, build_tools

from tests._agent_support import poll_pause
from tests._control_support import Harness, running_server
from tests._daemon_support import RUN, daemon_config
from tests._mcp_client import in_asyncio_thread
from tunneld.daemon._client import ApiError, DaemonUnavailableError, LocalApiClient

WAIT = 30.0


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 108 bytes: keep them out of pytest's deep tmp.
    path = Path(tempfile.mkdtemp(prefix="tunneld-ws-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _wait_for_file(path: Path, process: trio.Process) -> None:
    with trio.fail_after(WAIT):
        while not await trio.Path(path).exists():
            assert process.returncode is None, "the process exited before it was ready"
            await trio.sleep(0.05)


@asynccontextmanager
async def _process(
    nursery: trio.Nursery, argv: list[str], ready: Path | None = None
) -> AsyncIterator[trio.Process]:
    process: trio.Process = await nursery.start(
        functools.partial(trio.run_process, argv, check=False, stderr=subprocess.DEVNULL)
    )
    try:
        if ready is not None:
            await _wait_for_file(ready, process)
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        with trio.fail_after(WAIT):
            await process.wait()


@asynccontextmanager
async def _agent(
    nursery: trio.Nursery, h: Harness, tmp: Path, workspace: Path
) -> AsyncIterator[trio.Process]:
    token_file = tmp / "web1.token"
    token_file.write_text(await h.token("alice", agent="web1") + "\n")
    token_file.chmod(0o600)  # nodes refuse token files others can read
    config = tmp / "web1.toml"
    config.write_text(
        "[agent]\n"
        f'roots = ["{workspace}"]\n'
        "allow_exec = true\n"
        "allow_write = true\n"
        'name = "web1"\n'
        f'key_file = "{tmp / "web1.key"}"\n'
        f'control_url = "{h.info.url}"\n'
        f'token_file = "{token_file}"\n'
        'udp_listen = "127.0.0.1:0"\n'
    )
    ready = tmp / "web1.ready"
    argv = [sys.executable, "-m", "tunneld", "agent", "--config", str(config)]
    async with _process(nursery, [*argv, "--ready-file", str(ready)], ready) as process:
        yield process


async def _status(socket: Path, process: trio.Process) -> dict[str, Any]:
    """The daemon's status once its coordinator session and relay are up.

    A tunnel asked for while the coordinator session is still opening can miss the
    agent's node (seen under load), so tool calls start after both are connected.
    """
    client = LocalApiClient(socket)
    with trio.fail_after(WAIT):
        while True:
            assert process.returncode is None, "the daemon exited before it was ready"
            try:
                status = await client.request("GET", "/v0/status")
            except (DaemonUnavailableError, ApiError, OSError):
                status = None
            if isinstance(status, dict):
                node = status["node"]
                if node["coordinator"] == node["relay"] == "connected":
                    return status
            await poll_pause()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def _session(url: str, workspace: Path, mode: str) -> dict[str, Any]:
    from mcp import Client

    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    pid_file = workspace / f"pids-{mode}"
    async with Client(url, mode=mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        run = await client.call_tool(
            "execute_command",
            {"agent": "web1", "command": "echo one; sleep 1.6; echo two >&2"},
            progress_callback=on_progress,
        )
        read = await client.call_tool("read_file", {"agent": "web1", "path": "notes.txt"})
        bad_edit = await client.call_tool(
            "edit_files",
            {"agent": "web1", "edits": [{"path": "notes.txt", "search": "zzz", "replace": "y"}]},
        )
        invalid = await client.call_tool("check_port", {"agent": "web1", "port": 0})
        # Cancel a running command from the client once it has written its pids.
        script = f"echo $$ > {pid_file}.tmp; sleep 300 & echo $! >> {pid_file}.tmp; "
        script += f"mv {pid_file}.tmp {pid_file}; wait"
        call = asyncio.ensure_future(
            client.call_tool("execute_command", {"agent": "web1", "command": script})
        )
        for _ in range(int(WAIT / 0.05)):
            if pid_file.exists() or call.done():
                break
            await asyncio.sleep(0.05)
        assert not call.done(), call.result()
        call.cancel()
        try:
            await call
        except asyncio.CancelledError:
            pass
        after = await client.call_tool("execute_command", {"agent": "web1", "argv": ["true"]})
        return {
            "tools": {
                name: tool.annotations.model_dump(by_alias=True, exclude_none=True)
                for name, tool in tools.items()
            },
            "run": run.structured_content,
            "run_error": run.is_error,
            "progress": progress,
            "read": [c.text for c in read.content if c.type == "text"],
            "bad_edit_error": bad_edit.is_error,
            "bad_edit": [c.text for c in bad_edit.content if c.type == "text"],
            "invalid_error": invalid.is_error,
            "after": after.structured_content,
        }


async def test_sdk_client_uses_the_workspace_tools_through_the_daemon(
    nursery: trio.Nursery, tmp_path: Path, short_dir: Path
) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("remote notes\n")
    (tmp_path / "control").mkdir()
    async with running_server(nursery, tmp_path / "control", relay=True) as h:
        await h.user("alice")
        token_file = short_dir / "daemon.token"
        token_file.write_text(await h.token("alice") + "\n")
        token_file.chmod(0o600)
        api_socket = short_dir / "api.sock"
        config = daemon_config(
            short_dir,
            h.info.url,
            socket=api_socket,
            token_file=token_file,
            extra='[plugins.workspace]\nmax_output = "16KiB"\n',
        )
        daemon = [*RUN, str(config)]
        async with (
            _agent(nursery, h, short_dir, workspace),
            _process(nursery, daemon) as process,
        ):
            status = await _status(api_socket, process)
            assert "workspace" in [p["name"] for p in status["plugins"]["loaded"]]
            url = status["mcp"]["url"]
            expected = {
                t.name: {**t.annotations.to_json(), "title": t.title}
                for t in build_tools(Settings())
            }
            # legacy: the 2025-11-25 session protocol (cancel = notifications/cancelled);
            # auto: the stateless 2026-07-28 revision (cancel = the POST is aborted).
            for mode in ("legacy", "auto"):
                with trio.fail_after(WAIT * 3):
                    result = await in_asyncio_thread(
                        functools.partial(_session, url, workspace, mode)
                    )
                assert {n: result["tools"][n] for n in expected} == expected, mode
                assert not result["run_error"], mode
                assert result["run"]["exit_code"] == 0, mode
                assert result["run"]["stdout"] == "one\n", mode
                assert result["run"]["stderr"] == "two\n", mode
                assert result["progress"], f"{mode}: no progress notification reached the client"
                assert result["read"] == ["remote notes\n"], mode
                assert result["bad_edit_error"], mode
                assert result["bad_edit"] == [
                    "edit_files: no file was changed:\n"
                    "notes.txt: edits[0]: search string not found: 'zzz'"
                ], mode
                assert result["invalid_error"], mode  # port 0: refused by the input schema
                assert result["after"]["exit_code"] == 0, mode
                # The cancelled command and the child it started are gone on the agent host.
                pids = [int(p) for p in (workspace / f"pids-{mode}").read_text().split()]
                assert len(pids) == 2, mode
                with trio.fail_after(WAIT):
                    while any(_alive(p) for p in pids):
                        await poll_pause()

            status = await LocalApiClient(api_socket).request("GET", "/v0/status")
            assert isinstance(status, dict)
            assert [t["agent"] for t in status["tunnels"]] == ["web1"]  # one shared tunnel
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(WAIT):
                await process.wait()
            assert process.returncode == 0
