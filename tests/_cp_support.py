"""A world for the CLI's end-to-end tests: a real control plane, a real ``tunneld agent``
process and a real ``tunneld run`` daemon, all on loopback."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from tests._agent_support import poll_pause
from tests._control_support import running_server
from tests._daemon_support import RUN, daemon_config
from tunneld.daemon._client import DaemonUnavailableError, LocalApiClient

WAIT = 60.0


@dataclass
class CpWorld:
    socket: Path
    workspace: Path
    agent: trio.Process
    daemon: trio.Process


async def _wait_ready(path: Path, process: trio.Process) -> dict[str, object]:
    with trio.fail_after(WAIT):
        while not await trio.Path(path).exists():
            assert process.returncode is None, "the agent exited before it was ready"
            await poll_pause()
    return dict(json.loads(await trio.Path(path).read_text()))


@asynccontextmanager
async def running_cp_world(
    nursery: trio.Nursery,
    tmp_path: Path,
    socket_dir: Path,
    *,
    agent_name: str = "web1",
    allow_write: bool = True,
    idle_timeout: str = "5m",
    socket_mode: int = 0o600,
) -> AsyncIterator[CpWorld]:
    """Control plane (in this process, real sockets), ``tunneld agent`` serving
    ``tmp_path/workspace`` and ``tunneld run`` with its API socket in ``socket_dir``."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (tmp_path / "control").mkdir()
    async with running_server(nursery, tmp_path / "control", relay=True) as h:
        await h.user("alice")
        agent_token = socket_dir / "agent.token"
        agent_token.write_text(await h.token("alice", agent=agent_name) + "\n")
        agent_token.chmod(0o600)
        agent_config = socket_dir / "agent.toml"
        agent_config.write_text(
            "[agent]\n"
            f'roots = ["{workspace}"]\n'
            f"allow_write = {'true' if allow_write else 'false'}\n"
            f'name = "{agent_name}"\n'
            f'key_file = "{socket_dir / "agent.key"}"\n'
            f'control_url = "{h.info.url}"\n'
            f'token_file = "{agent_token}"\n'
            'udp_listen = "127.0.0.1:0"\n'
        )
        ready_file = socket_dir / "agent.ready"
        agent: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                [sys.executable, "-m", "tunneld", "agent", "--config", str(agent_config),
                 "--ready-file", str(ready_file)],
                check=False,
                stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        token_file = socket_dir / "token"
        token_file.write_text(await h.token("alice") + "\n")
        token_file.chmod(0o600)
        api_socket = socket_dir / "api.sock"
        config = daemon_config(
            socket_dir,
            h.info.url,
            socket=api_socket,
            token_file=token_file,
            mcp_listen="",
            daemon_extra=f'socket_mode = {socket_mode:#o}\nidle_timeout = "{idle_timeout}"\n',
        )
        daemon: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                [*RUN, str(config)],
                check=False,
                stderr=subprocess.DEVNULL,
            )
        )
        try:
            await _wait_ready(ready_file, agent)
            client = LocalApiClient(api_socket)
            with trio.fail_after(WAIT):
                while True:
                    assert daemon.returncode is None, "tunneld run exited early"
                    try:
                        await client.request("GET", "/v0/status")
                        break
                    except DaemonUnavailableError:
                        await poll_pause()
            yield CpWorld(api_socket, workspace, agent, daemon)
        finally:
            for process in (daemon, agent):
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
            with trio.fail_after(WAIT):
                await daemon.wait()
                await agent.wait()


async def tunneld(
    world: CpWorld, command: str, *args: str, stdin: bytes = b"", limit: float = WAIT * 2
) -> subprocess.CompletedProcess[bytes]:
    """Run ``tunneld COMMAND --socket … ARGS`` to completion, output captured."""
    with trio.fail_after(limit):
        return await trio.run_process(
            [sys.executable, "-m", "tunneld", command, "--socket", str(world.socket), *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


# Runs a command and writes its peak resident set size (KiB) to the file named by
# TUNNELD_TEST_RSS_FILE: RUSAGE_CHILDREN of a parent that has no other children.
_MEASURE = (
    "import os, resource, subprocess, sys\n"
    "status = subprocess.call(sys.argv[1:])\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "open(os.environ['TUNNELD_TEST_RSS_FILE'], 'w').write(str(peak))\n"
    "sys.exit(status)\n"
)


async def tunneld_measured(
    world: CpWorld, rss_file: Path, command: str, *args: str, limit: float = WAIT * 2
) -> tuple[subprocess.CompletedProcess[bytes], int]:
    """Like :func:`tunneld`, also returning the command's peak RSS in bytes."""
    with trio.fail_after(limit):
        result = await trio.run_process(
            [sys.executable, "-c", _MEASURE, sys.executable, "-m", "tunneld", command,
             "--socket", str(world.socket), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, "TUNNELD_TEST_RSS_FILE": str(rss_file)},
        )  # fmt: skip
    return result, int(await trio.Path(rss_file).read_text()) * 1024


def cp_command(world: CpWorld, *args: str) -> Sequence[str]:
    return [sys.executable, "-m", "tunneld", "cp", "--socket", str(world.socket), *args]
