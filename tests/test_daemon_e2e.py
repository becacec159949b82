"""End to end: a real control server, a real agent node, the daemon and its local API.

A local client dials an agent's service through the daemon's Unix socket; the bytes
cross the overlay (WireGuard + mux over the DERP relay or UDP) to the agent's
service and back. The lease is released when the client closes, and the tunnel
idles out after ``idle_timeout``.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path

import pytest
import trio

from tests._control_support import Harness, running_server
from tests._daemon_support import RUN, daemon_config
from tunneld.config import DaemonConfig, Duration
from tunneld.daemon import Daemon, Notifier, open_api_listener
from tunneld.daemon._client import ApiError, LocalApiClient
from tunneld.keys import generate_private_key
from tunneld.net.mux import MuxStream
from tunneld.net.overlay import Overlay, OverlayConfig

WAIT = 20.0


async def echo_service(peer: str, service: str, stream: MuxStream) -> None:
    async with stream:
        if service == "echo":
            while data := await stream.receive_some():
                await stream.send_all(data)
            await stream.send_eof()


def make_overlay(h: Harness, name: str, token: str, *, serve: bool) -> Overlay:
    config = OverlayConfig(
        name=name,
        private_key=generate_private_key(),
        coordinate_url=h.info.coordinate_url,
        derp_url=h.info.derp_url,
        udp_host="127.0.0.1",
    )

    async def token_provider() -> str:
        return token

    return Overlay(config, token_provider, on_stream=echo_service if serve else None)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tunneld-e2e-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def world(
    nursery: trio.Nursery, tmp_path: Path, socket_dir: Path
) -> AsyncIterator[tuple[Daemon, Path, socket.socket]]:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(socket_dir / "notify"))
    notify.setblocking(False)
    async with running_server(nursery, tmp_path, relay=True) as h:
        await h.user("alice")
        agent = make_overlay(h, "web1", await h.token("alice", agent="web1"), serve=True)
        await nursery.start(agent.serve)
        laptop = make_overlay(h, "laptop", await h.token("alice"), serve=False)
        settings = DaemonConfig(socket_group="", idle_timeout=Duration(1.0))
        daemon = Daemon(
            laptop,
            settings,
            notifier=Notifier({"NOTIFY_SOCKET": str(socket_dir / "notify")}),
            reload_settings=lambda: DaemonConfig(socket_group="", idle_timeout=Duration(2.0)),
        )
        path = socket_dir / "tunneld.sock"
        listener = await open_api_listener(path, mode=0o600)
        with trio.CancelScope() as scope:
            await nursery.start(daemon.run, [listener])
            try:
                yield daemon, path, notify
            finally:
                scope.cancel()
    notify.close()


async def test_dial_through_the_daemon_to_an_agent(
    world: tuple[Daemon, Path, socket.socket], nursery: trio.Nursery
) -> None:
    daemon, path, notify = world
    assert notify.recv(4096).startswith(b"READY=1\nSTATUS=serving the local API")
    client = LocalApiClient(path)
    events: list[dict[str, object]] = []
    watching = trio.Event()
    removed = trio.Event()

    async def watch() -> None:
        async with aclosing(client.watch()) as stream:
            async for event in stream:
                events.append(event)
                if event["event"] == "watch.started":
                    watching.set()
                if event["event"] == "tunnel.removed":
                    removed.set()
                    return

    nursery.start_soon(watch)
    with trio.fail_after(WAIT):
        await watching.wait()
    payload = os.urandom(300_000)
    with trio.fail_after(WAIT):
        stream = await client.dial("web1", "echo")
        assert daemon.tunnels.leases("web1") == 1
        received = bytearray()

        async def send() -> None:
            await stream.send_all(payload)
            await stream.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            while data := await stream.receive_some(65536):
                received += data
        await stream.aclose()
    assert bytes(received) == payload

    status = await client.request("GET", "/v0/status")
    assert isinstance(status, dict)
    [peer] = status["node"]["peers"]
    assert peer["name"] == "web1"
    assert peer["handshake"] is True
    agents = await client.request("GET", "/v0/agents")
    assert isinstance(agents, dict)
    assert [a["name"] for a in agents["agents"]] == ["web1"]

    # Closing the stream releases the lease; the tunnel idles out after 1 s.
    with trio.fail_after(WAIT):
        await removed.wait()
    assert daemon.tunnels.tunnels() == []
    assert [e["event"] for e in events] == ["watch.started", "tunnel.up", "tunnel.removed"]
    assert events[1]["agent"] == "web1"
    assert events[2]["reason"] == "idle"


async def test_unknown_agent_and_reload(world: tuple[Daemon, Path, socket.socket]) -> None:
    daemon, path, _notify = world
    client = LocalApiClient(path)
    with trio.fail_after(WAIT), pytest.raises(ApiError) as info:
        await client.dial("nobody-here", "echo")
    assert info.value.code == "unknown_agent"
    assert info.value.status == 404
    assert daemon.tunnels.tunnels() == []
    assert await client.request("POST", "/v0/reload") == {"reloaded": True}
    assert daemon.tunnels.idle_timeout == 2.0


async def test_cli_status_against_running_daemon(
    world: tuple[Daemon, Path, socket.socket],
) -> None:
    _daemon, path, _notify = world
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "tunneld", "status", "--json", "--socket", str(path)],
            capture_stdout=True,
            capture_stderr=True,
        )
    status = json.loads(result.stdout)
    assert status["node"]["name"] == "laptop"
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "tunneld", "status", "--socket", str(path)],
            capture_stdout=True,
            capture_stderr=True,
        )
    lines = result.stdout.decode().splitlines()
    assert "name: laptop" in lines
    assert any(line.startswith("coordinator: ") for line in lines)
    assert lines[-1] == "tunnels: none"
    assert status["node"]["coordinator"] in ("connected", "connecting")


async def recv_notify(notify: socket.socket, wanted: bytes) -> list[bytes]:
    """Datagrams from the notify socket until one contains ``wanted``."""
    seen: list[bytes] = []
    sock = trio.socket.from_stdlib_socket(notify)
    with trio.fail_after(WAIT):
        while True:
            message = await sock.recv(4096)
            seen.append(message)
            if wanted in message:
                return seen


@pytest.mark.parametrize("activated", [False, True], ids=["own-socket", "socket-activated"])
async def test_tunneld_run_process(
    nursery: trio.Nursery, tmp_path: Path, socket_dir: Path, activated: bool
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(socket_dir / "notify"))
    async with running_server(nursery, tmp_path, relay=True) as h:
        await h.user("alice")
        agent = make_overlay(h, "web1", await h.token("alice", agent="web1"), serve=True)
        await nursery.start(agent.serve)
        token_file = socket_dir / "token"
        token_file.write_text(await h.token("alice") + "\n")
        token_file.chmod(0o600)  # token files must not be group/world-readable
        control_url = h.info.coordinate_url.replace("ws://", "http://").removesuffix(
            "/api/v1/coordinate"
        )
        api_socket = socket_dir / "api.sock"
        config = daemon_config(socket_dir, control_url, socket=api_socket, token_file=token_file)
        env = {**os.environ, "NOTIFY_SOCKET": str(socket_dir / "notify")}
        command = [*RUN, str(config)]
        pass_fds: tuple[int, ...] = ()
        if activated:
            # As systemd does: the socket is bound by someone else and passed as fd 3,
            # with LISTEN_PID naming the daemon (bash sets it, then execs in place).
            passed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            passed.bind(str(api_socket))
            passed.listen()
            pass_fds = (passed.fileno(),)
            env |= {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "api", "COMMAND": shlex.join(command)}
            command = ["bash", "-c", f"LISTEN_PID=$$ exec $COMMAND 3<&{passed.fileno()}"]
        process = await nursery.start(
            functools.partial(
                trio.run_process,
                command,
                env=env,
                check=False,
                stderr=subprocess.DEVNULL,
                pass_fds=pass_fds,
            )
        )
        if activated:
            passed.close()
        try:
            await recv_notify(notify, b"READY=1")
            assert (socket_dir / "daemon.key").stat().st_mode & 0o777 == 0o600
            payload = os.urandom(100_000)
            with trio.fail_after(WAIT * 2):
                dial = await trio.run_process(
                    [
                        sys.executable,
                        "-m",
                        "tunneld",
                        "dial",
                        "--socket",
                        str(api_socket),
                        "web1",
                        "echo",
                    ],
                    stdin=payload,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            assert dial.returncode == 0, dial.stderr
            assert dial.stdout == payload
            # A stream open across SIGHUP keeps working: reload never drops streams.
            with trio.fail_after(WAIT):
                held = await LocalApiClient(api_socket).dial("web1", "echo")
                await held.send_all(b"before reload")
                assert await _receive_exactly(held, 13) == b"before reload"
            process.send_signal(signal.SIGHUP)
            seen = await recv_notify(notify, b"READY=1")
            assert any(m.startswith(b"RELOADING=1") for m in seen)
            with trio.fail_after(WAIT):
                await held.send_all(b"after reload")
                assert await _receive_exactly(held, 12) == b"after reload"
                await held.aclose()
            process.send_signal(signal.SIGTERM)
            await recv_notify(notify, b"STOPPING=1")
            with trio.fail_after(WAIT):
                await process.wait()
            assert process.returncode == 0
        finally:
            if process.returncode is None:
                process.kill()
            notify.close()


async def _receive_exactly(stream: trio.abc.Stream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk, "stream ended early"
        data += chunk
    return data
