"""sd_notify against a real datagram socket; socket activation with a really passed fd."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from tunneld.daemon import Notifier, listen_fds, watchdog_interval


def drain(sock: socket.socket) -> list[bytes]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096))
        except BlockingIOError:
            return messages


@pytest.fixture
def notify_socket(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setblocking(False)
    return sock


def test_notify_messages_on_path_socket(notify_socket: socket.socket, tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    assert notifier.enabled
    assert notifier.ready("serving 2 listeners")
    assert notifier.status("3 tunnels")
    assert notifier.reloading()
    assert notifier.stopping()
    assert notifier.watchdog()
    ready, status, reloading, stopping, watchdog = drain(notify_socket)
    assert ready == b"READY=1\nSTATUS=serving 2 listeners"
    assert status == b"STATUS=3 tunnels"
    first, second = reloading.split(b"\n")
    assert first == b"RELOADING=1"
    assert second.startswith(b"MONOTONIC_USEC=")
    assert int(second.split(b"=")[1]) > 0
    assert stopping == b"STOPPING=1"
    assert watchdog == b"WATCHDOG=1"
    with pytest.raises(ValueError, match="newline"):
        notifier.status("two\nlines")


def test_notify_abstract_socket() -> None:
    name = f"tunneld-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(100) == b"READY=1"


def test_notify_without_socket_is_noop(tmp_path: Path) -> None:
    assert not Notifier({}).ready()
    assert not Notifier({}).enabled
    # A manager that went away: logged, not raised.
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).ready()


def test_watchdog_interval_parsing() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None
    mine = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 0.5


async def test_watchdog_pings_at_half_interval(
    notify_socket: socket.socket, tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "2000000"})
    async with trio.open_nursery() as nursery:
        interval = await nursery.start(notifier.run_watchdog)
        assert interval == 1.0
        await trio.sleep(3.5)
        nursery.cancel_scope.cancel()
    assert drain(notify_socket) == [b"WATCHDOG=1"] * 4


async def test_watchdog_disabled_returns() -> None:
    async with trio.open_nursery() as nursery:
        assert await nursery.start(Notifier({}).run_watchdog) is None


_CHILD = textwrap.dedent(
    """
    import os, sys, trio
    from tunneld.daemon import listen_fds

    async def main():
        activated = listen_fds()
        assert "LISTEN_FDS" not in os.environ
        print(",".join(a.name for a in activated), flush=True)
        for item in activated:
            stream = await item.listener.accept()
            await stream.send_all(b"hello from " + item.name.encode())
            await stream.aclose()

    trio.run(main)
    """
)


def test_listen_fds_in_activated_process() -> None:
    listeners = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        listeners.append(sock)
    fds = [s.fileno() for s in listeners]
    # LISTEN_PID must be the child's own pid: the shell sets it, then execs in place.
    script = f'LISTEN_PID=$$ exec "$PYTHON" -c "$CHILD" 3<&{fds[0]} 4<&{fds[1]}'
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "CHILD": _CHILD,
        "LISTEN_FDS": "2",
        "LISTEN_FDNAMES": "api:metrics",
    }
    child = subprocess.Popen(
        ["bash", "-c", script], pass_fds=fds, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "api,metrics"
        for sock, name in zip(listeners, ("api", "metrics"), strict=True):
            with socket.create_connection(sock.getsockname(), timeout=10) as client:
                assert client.recv(100) == b"hello from " + name.encode()
        assert child.wait(timeout=20) == 0
    finally:
        child.kill()
        child.wait()
        for sock in listeners:
            sock.close()


def test_listen_fds_ignores_other_pid_and_rejects_garbage() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    assert listen_fds(env) == []
    assert env == {}  # unset like sd_listen_fds(1)
    with pytest.raises(ValueError, match="LISTEN_FDS='x' is not a number"):
        listen_fds({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "x"})
    assert listen_fds({}) == []
