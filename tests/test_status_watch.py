"""``tunneld status --watch``: the view's rendering, and a real daemon watched live."""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests._agent_support import poll_pause
from tests._cp_support import WAIT, running_cp_world, tunneld
from tunneld.cli._status_watch import LineReporter, render_view, watch_status
from tunneld.daemon._client import LocalApiClient
from tunneld.http import open_unix_listener

STATUS = {
    "version": "0.1",
    "node": {
        "name": "laptop",
        "coordinator": "connected",
        "relay": "connected",
        "udp": "127.0.0.1:4000",
        "peers": [
            {
                "name": "web1",
                "owner": "alice",
                "online": True,
                "handshake": True,
                "path": "direct",
                "direct_endpoint": "127.0.0.1:5000",
                "rtt": 0.0012,
                "streams": 1,
            }
        ],
    },
    "tunnels": [
        {"agent": "web1", "peer": "web1", "state": "active", "leases": 1, "idle_seconds": None},
        {
            "agent": "db1",
            "peer": "db1",
            "state": "idle",
            "leases": 0,
            "idle_seconds": 10.0,
            "idle_deadline_seconds": 290.0,
        },
    ],
}


def test_render_view_shows_peers_paths_tunnels_and_deadlines() -> None:
    lines = render_view(
        STATUS, [(0.0, {"event": "tunnel.up", "agent": "web1"})], now=0.0, interval=2.0
    )
    text = "\n".join(lines)
    assert "every 2s, Ctrl-C quits" in lines[0]
    assert "node laptop   coordinator: connected   relay: connected" in text
    peer = next(line for line in lines if line.startswith("alice/web1"))
    assert "direct 127.0.0.1:5000" in peer
    assert "1.2ms" in peer
    web1 = next(line for line in lines if line.startswith("web1 "))
    assert web1.split()[:3] == ["web1", "active", "1"]
    db1 = next(line for line in lines if line.startswith("db1 "))
    assert "removed in 290s" in db1
    assert lines[-1].endswith("tunnel.up agent=web1")
    empty = render_view(
        {"node": {"name": "x"}, "tunnels": []}, [], now=0.0, interval=1, error="gone"
    )
    assert "daemon unreachable: gone" in empty
    assert "peers: none" in empty
    assert "tunnels: none" in empty
    # A malformed answer does not crash the view.
    assert render_view({"node": 5, "tunnels": "x"}, [], now=0.0, interval=1)


def test_line_reporter_prints_changes_only() -> None:
    reporter = LineReporter()
    first = reporter.changes(STATUS)
    assert first[0] == "node laptop coordinator=connected relay=connected"
    assert "peer alice/web1 online=yes handshake=yes path=direct 127.0.0.1:5000" in first[1]
    assert "tunnel web1 state=active leases=1 peer=web1" in first
    assert "tunnel db1 state=idle leases=0 peer=db1 idle_deadline=290s" in first
    # RTT and counters alone are not changes.
    moved = {**STATUS, "node": {**STATUS["node"]}}  # type: ignore[dict-item]
    moved["node"]["peers"] = [{**STATUS["node"]["peers"][0], "rtt": 0.5}]  # type: ignore[index]
    assert reporter.changes(moved) == []
    gone = {**STATUS, "tunnels": [STATUS["tunnels"][0]]}  # type: ignore[index]
    assert reporter.changes(gone) == ["tunnel db1 gone"]


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tunneld-watch-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def read_until(stream: trio.abc.ReceiveStream, wanted: str, seen: list[str]) -> None:
    """Read lines into ``seen`` until one contains ``wanted``."""
    buffer = "".join(seen[-1:]) if seen and not seen[-1].endswith("\n") else ""
    with trio.fail_after(WAIT):
        while not any(wanted in line for line in seen):
            chunk = await stream.receive_some()
            assert chunk, f"output ended before {wanted!r}: {seen!r}"
            buffer += chunk.decode()
            *complete, buffer = buffer.split("\n")
            seen.extend(complete)


async def test_watch_shows_a_tunnel_come_and_go_and_exits_on_sigint(
    nursery: trio.Nursery, tmp_path: Path, socket_dir: Path
) -> None:
    async with running_cp_world(nursery, tmp_path, socket_dir, idle_timeout="2s") as world:
        process: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                [sys.executable, "-m", "tunneld", "status", "--watch", "--interval", "0.5",
                 "--socket", str(world.socket)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                check=False,
            )
        )  # fmt: skip
        assert process.stdout is not None
        seen: list[str] = []
        await read_until(process.stdout, "node laptop coordinator=", seen)
        (world.workspace / "f.txt").write_text("through the tunnel")
        result = await tunneld(world, "cp", "web1:f.txt", "-")
        assert result.stdout == b"through the tunnel"
        await read_until(process.stdout, "event tunnel.up agent=web1", seen)
        await read_until(process.stdout, "peer alice/web1 online=yes handshake=yes", seen)
        # Idle after the copy, then removed after idle_timeout (2 s).
        await read_until(process.stdout, "event tunnel.removed agent=web1", seen)
        await read_until(process.stdout, "tunnel web1 gone", seen)
        assert any("tunnel web1 state=" in line for line in seen), seen
        process.send_signal(signal.SIGINT)
        with trio.fail_after(WAIT):
            await process.wait()
        assert process.returncode == 0
        assert process.stderr is not None
        assert await process.stderr.receive_some() == b""  # no traceback

        # On a terminal: the view is drawn in place (cursor home + clear) and the cursor
        # comes back when SIGTERM ends it.
        master, slave = os.openpty()
        try:
            process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    [sys.executable, "-m", "tunneld", "status", "--watch", "--interval", "0.3",
                     "--socket", str(world.socket)],
                    stdout=slave,
                    stderr=subprocess.DEVNULL,
                    check=False,
                )
            )  # fmt: skip
            os.close(slave)
            slave = -1
            screen = b""
            with trio.fail_after(WAIT):
                while screen.count(b"\x1b[H\x1b[2J") < 2:
                    screen += await trio.to_thread.run_sync(os.read, master, 65536)
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(WAIT):
                await process.wait()
            assert process.returncode == 0
            rest = b""
            while True:
                try:
                    chunk = await trio.to_thread.run_sync(os.read, master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                rest += chunk
        finally:
            os.close(master)
            if slave >= 0:
                os.close(slave)
        text = screen.decode()
        assert text.startswith("\x1b[?25l")
        assert "node laptop   coordinator: " in text
        assert "peers: none" in text  # the tunnel idled out above: nothing left
        assert "tunnels: none" in text
        assert (screen + rest).endswith(b"\x1b[?25h")


async def test_watch_without_a_daemon_and_bad_interval(socket_dir: Path) -> None:
    base = [sys.executable, "-m", "tunneld", "status", "--watch"]
    result = await trio.run_process(
        [*base, "--socket", str(socket_dir / "none.sock")],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.decode().startswith("tunneld: error: the tunneld daemon is not running")
    result = await trio.run_process(
        [*base, "--interval", "0"], capture_stdout=True, capture_stderr=True, check=False
    )
    assert result.returncode == 2
    assert "expected 0.2 to 3600 seconds" in result.stderr.decode()


async def test_a_daemon_that_goes_away_is_shown_and_retried(
    nursery: trio.Nursery, socket_dir: Path
) -> None:
    """A watch cut mid-response and a daemon that stops answering: lines, no crash."""
    path = socket_dir / "fake.sock"
    listener = await open_unix_listener(path, mode=0o600)
    down = trio.Event()
    body = json.dumps(STATUS).encode()

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await stream.receive_some()
                if not chunk:
                    return
                head += chunk
            if down.is_set():
                return  # closed without an answer
            if head.startswith(b"GET /v0/watch"):
                line = b'{"event":"tunnel.up","agent":"web1"}\n'
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + b"%x\r\n%s\r\n" % (len(line), line)
                    + b"ff\r\n{partial"  # cut inside a chunk
                )
                return
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )

    await nursery.start(trio.serve_listeners, handle, [listener])
    out = io.StringIO()

    async def go_down() -> None:
        with trio.fail_after(WAIT):
            while True:
                if "event tunnel.up" in out.getvalue():
                    break
                await poll_pause()
        down.set()

    nursery.start_soon(go_down)
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as inner:
            inner.start_soon(
                functools.partial(watch_status, LocalApiClient(path), out, interval=0.2, tty=False)
            )
            while True:
                if "daemon unreachable" in out.getvalue():
                    break
                await poll_pause()
            inner.cancel_scope.cancel()
    text = out.getvalue()
    assert "node laptop coordinator=connected relay=connected" in text
    assert "event tunnel.up agent=web1" in text
    assert "daemon unreachable" in text
