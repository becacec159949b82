"""``tunneld exec`` end to end: real control server, real agents, a real ``tunneld run``.

The agents are in-process overlay nodes serving ``AgentServices.dispatch``; the daemon
and ``tunneld exec`` are real processes, so the bytes go exec → Unix socket → daemon →
WireGuard + mux over the relay/UDP → agent → the command, and back.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from tests._agent_support import make_config, poll_pause
from tests._control_support import Harness, running_server
from tests._daemon_support import RUN, daemon_config
from tunneld.agent import AgentServices
from tunneld.daemon._client import DaemonUnavailableError, LocalApiClient
from tunneld.demo import loopback_overlay
from tunneld.net.mux import MuxStream
from tunneld.net.overlay import Overlay

WAIT = 30.0


@dataclass
class World:
    socket: Path
    workspace: Path


def agent_overlay(h: Harness, name: str, token: str, services: AgentServices) -> Overlay:
    async def on_stream(peer: str, service: str, stream: MuxStream) -> None:
        await services.dispatch(service, stream)

    return loopback_overlay(h.info, name, token, on_stream=on_stream)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Unix socket paths are short; pytest's tmp_path may be too long.
    path = Path(tempfile.mkdtemp(prefix="tunneld-exec-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def world(nursery: trio.Nursery, tmp_path: Path, socket_dir: Path) -> AsyncIterator[World]:
    async with running_world(nursery, tmp_path, socket_dir) as world:
        yield world


@asynccontextmanager
async def running_world(
    nursery: trio.Nursery, tmp_path: Path, socket_dir: Path, *, tcp_ports: tuple[int, ...] = ()
) -> AsyncIterator[World]:
    """Control server, agents ``web1`` (exec, ``tcp_ports``) and ``locked`` (no exec), and
    a ``tunneld run`` process whose local API socket is ``World.socket``."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (tmp_path / "control").mkdir()
    async with running_server(nursery, tmp_path / "control", relay=True) as h:
        await h.user("alice")
        for name, allow_exec in (("web1", True), ("locked", False)):
            agent_config = make_config(
                workspace, allow_exec=allow_exec, allowed_tcp_ports=tcp_ports
            )
            services = AgentServices(agent_config, kill_grace=0.5)
            await nursery.start(services.serve)
            overlay = agent_overlay(h, name, await h.token("alice", agent=name), services)
            await nursery.start(overlay.serve)
        token_file = socket_dir / "token"
        token_file.write_text(await h.token("alice") + "\n")
        token_file.chmod(0o600)  # token files must not be group/world-readable
        api_socket = socket_dir / "api.sock"
        config = daemon_config(socket_dir, h.info.url, socket=api_socket, token_file=token_file)
        daemon: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                [*RUN, str(config)],
                check=False,
                stderr=subprocess.DEVNULL,
            )
        )
        try:
            client = LocalApiClient(api_socket)
            with trio.fail_after(WAIT):
                while True:
                    assert daemon.returncode is None, "tunneld run exited early"
                    try:
                        await client.request("GET", "/v0/status")
                        break
                    except DaemonUnavailableError:
                        await poll_pause()
            yield World(api_socket, workspace)
        finally:
            if daemon.returncode is None:
                daemon.send_signal(signal.SIGTERM)
            with trio.fail_after(WAIT):
                await daemon.wait()


async def tunneld_exec(
    world: World, *args: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(WAIT * 2):
        return await trio.run_process(
            [sys.executable, "-m", "tunneld", "exec", "--socket", str(world.socket), *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def test_exec_output_exit_codes_stdin_and_denial(world: World) -> None:
    result = await tunneld_exec(world, "web1", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert result.returncode == 7, result.stderr
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"

    # --cwd, and stdin piped through (not a TTY) in chunks larger than one frame.
    payload = os.urandom(200_000)
    result = await tunneld_exec(
        world, "--cwd", str(world.workspace), "web1", "--", "sh", "-c", "pwd >&2; cat",
        stdin=payload,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload
    assert result.stderr == os.fsencode(str(world.workspace)) + b"\n"

    # Killed by a signal: 128 + N, as a shell reports it.
    result = await tunneld_exec(world, "web1", "--", "sh", "-c", "kill -9 $$")
    assert result.returncode == 128 + signal.SIGKILL

    # The time limit kills it and says so.
    result = await tunneld_exec(world, "--timeout", "0.5s", "web1", "--", "sleep", "30")
    assert result.returncode > 128
    assert b"timed out on web1" in result.stderr

    # The agent refuses exec: a clear error, status 1, nothing on stdout.
    result = await tunneld_exec(world, "locked", "--", "true")
    assert result.returncode == 1
    assert result.stdout == b""
    message = result.stderr.decode()
    assert message.startswith("tunneld: error: exec on locked: "), message
    assert message.rstrip().endswith("(denied)"), message

    # An agent nobody knows: the daemon's error, status 1.
    result = await tunneld_exec(world, "nobody", "--", "true")
    assert result.returncode == 1
    assert result.stderr.decode().startswith("tunneld: error: exec on nobody: "), result.stderr
    assert "unknown_agent" in result.stderr.decode()


async def test_ctrl_c_kills_the_remote_process_group(
    world: World, nursery: trio.Nursery, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {pid_file}; echo started; wait"
    process: trio.Process = await nursery.start(
        functools.partial(
            trio.run_process,
            [sys.executable, "-m", "tunneld", "exec", "--socket", str(world.socket),
             "web1", "--", "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    )  # fmt: skip
    assert process.stdout is not None
    seen = b""
    with trio.fail_after(WAIT):
        while b"started\n" not in seen:
            chunk = await process.stdout.receive_some()
            assert chunk, "tunneld exec ended before the command started"
            seen += chunk
    child = int(pid_file.read_text())
    assert alive(child)
    process.send_signal(signal.SIGINT)
    with trio.fail_after(WAIT):
        await process.wait()
    assert process.returncode is not None
    assert process.returncode > 128
    # The whole group went, the background sleep included.
    with trio.fail_after(WAIT):
        while True:
            if not alive(child):
                break
            await poll_pause()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


async def test_exec_without_a_daemon(socket_dir: Path) -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "tunneld", "exec", "--socket", str(socket_dir / "none.sock"),
         "web1", "--", "true"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.decode().startswith(
        "tunneld: error: the tunneld daemon is not running (no socket at "
    )
