"""The local API over a real Unix socket: curl and raw clients, other uids, real bytes."""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.lowlevel
from _daemon_support import FakeOverlay

from tunneld.daemon import (
    DaemonRunningError,
    LocalApi,
    TunnelTable,
    UnknownAgentError,
    open_api_listener,
)
from tunneld.http import DirectSocketStream

NOBODY = 65534
WRITE_GID = 4242  # a group nobody is not in, unless a test adds it
CURL = shutil.which("curl")
TIMEOUT = 10.0
# The body shape the real daemon sends (AgentListing.to_json), served as is.
AGENTS: dict[str, object] = {
    "agents": [
        {
            "name": "web1",
            "owner": "alice",
            "id": "n1",
            "online": True,
            "last_seen": 1700000000.0,
            "handshake": True,
            "path": "direct",
            "rtt": 0.0125,
            "tunnel": {"state": "active", "leases": 1},
            "stale": False,
        },
        {
            "name": "web2",
            "owner": "alice",
            "id": "n2",
            "online": False,
            "last_seen": None,
            "handshake": False,
            "path": None,
            "rtt": None,
            "tunnel": None,
            "stale": False,
        },
    ],
    "source": "control",
    "stale": False,
    "error": None,
    "as_of": 1700000000.0,
}

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="running clients as other uids needs root")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl not installed")


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are 0700, and clients run as nobody too.
    path = Path(tempfile.mkdtemp(prefix="tunneld-api-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def echo_handler(stream: trio.SocketStream) -> None:
    try:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
        await stream.send_eof()
    except trio.BrokenResourceError:
        pass


class NowaitStream(trio.abc.HalfCloseableStream):
    """A real TCP stream that also offers the overlay mux stream's optional
    non-waiting calls (``send_nowait``, ``close_nowait``), which the dial pipe uses
    when present; each takes part of what it is given, to exercise both paths."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = DirectSocketStream.take_over(inner)
        self.sent_nowait = 0
        self.closed_nowait = False

    def send_nowait(self, data: bytes | bytearray) -> int:
        try:
            taken = self.inner.socket.send(data[: max(1, len(data) // 2)])
        except BlockingIOError:
            return 0
        self.sent_nowait += taken
        return taken

    def close_nowait(self) -> None:
        self.closed_nowait = True
        if self.inner.socket.fileno() >= 0:
            trio.lowlevel.notify_closing(self.inner.socket)
            self.inner.socket.close()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        raise AssertionError("the dial pipe closes a stream with close_nowait")


@dataclass
class Daemon:
    path: Path
    api: LocalApi
    table: TunnelTable
    backend: FakeOverlay
    events: list[Mapping[str, object]]
    nowait: list[NowaitStream]
    reloads: int = 0


@pytest.fixture
async def daemon(socket_dir: Path, nursery: trio.Nursery) -> Daemon:
    [echo] = await nursery.start(
        functools.partial(trio.serve_tcp, echo_handler, 0, host="127.0.0.1")
    )
    echo_port = echo.socket.getsockname()[1]
    backend = FakeOverlay(connect_delay=0.01)
    backend.errors["ghost"] = UnknownAgentError("no agent named 'ghost'")
    table = TunnelTable(backend, idle_timeout=60)
    await nursery.start(table.run)
    opened: list[tuple[str, str]] = []
    nowait: list[NowaitStream] = []

    async def open_stream(peer: str, service: str) -> trio.abc.HalfCloseableStream:
        opened.append((peer, service))
        if service == "echo-nowait":
            nowait.append(NowaitStream(await trio.open_tcp_stream("127.0.0.1", echo_port)))
            return nowait[-1]
        if service != "echo":
            raise ConnectionRefusedError(f"nothing listens on {service}")
        return await trio.open_tcp_stream("127.0.0.1", echo_port)

    events: list[Mapping[str, object]] = [
        {"event": "tunnel.up", "agent": "web1"},
        {"event": "tunnel.down", "agent": "web1", "reason": "idle"},
    ]

    async def event_source() -> AsyncIterator[Mapping[str, object]]:
        for event in events:
            yield event
            await trio.lowlevel.checkpoint()

    state: dict[str, int] = {"reloads": 0}

    async def reload() -> Mapping[str, object]:
        state["reloads"] += 1
        return {"reloaded": True, "count": state["reloads"]}

    api = LocalApi(
        tunnels=table,
        open_stream=open_stream,
        status=lambda: {"version": "test", "node": "laptop"},
        agents=lambda: AGENTS,
        events=event_source,
        reload=reload,
        write_group=WRITE_GID,
        claim_timeout=0.5,
    )
    path = socket_dir / "tunneld.sock"
    listener = await open_api_listener(path, mode=0o666, group=WRITE_GID)
    await nursery.start(api.serve, [listener])
    return Daemon(path, api, table, backend, events, nowait)


async def curl(daemon: Daemon, path: str, *args: str, **kwargs: object) -> tuple[int, object]:
    assert CURL is not None
    url = f"http://localhost{path}"
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [CURL, "-sS", "--unix-socket", str(daemon.path), "-w", "\n%{http_code}", *args, url],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            **kwargs,  # type: ignore[arg-type]
        )
    assert result.returncode == 0, result.stderr
    body, _, code = result.stdout.decode().rpartition("\n")
    if "\n" in body.strip():  # NDJSON: the caller parses the lines
        return int(code), body
    return int(code), json.loads(body) if body.startswith(("{", "[")) else body


@needs_curl
async def test_status_and_agents(daemon: Daemon) -> None:
    async with daemon.table.acquire("web1"):
        code, body = await curl(daemon, "/v0/status")
    assert code == 200
    assert body == {
        "version": "test",
        "node": "laptop",
        "tunnels": [
            {
                "agent": "web1",
                "peer": "peer-web1",
                "state": "active",
                "leases": 1,
                "idle_seconds": None,
                "idle_deadline_seconds": None,
            }
        ],
    }
    code, body = await curl(daemon, "/v0/agents")
    assert (code, body) == (200, AGENTS)


@needs_curl
async def test_watch_streams_ndjson(daemon: Daemon) -> None:
    code, body = await curl(daemon, "/v0/watch")
    assert code == 200
    assert isinstance(body, str)
    assert [json.loads(line) for line in body.splitlines()] == daemon.events


@needs_curl
@needs_root
async def test_non_member_reads_but_cannot_write(daemon: Daemon) -> None:
    code, body = await curl(daemon, "/v0/status", user=NOBODY, group=NOBODY, extra_groups=[])
    assert code == 200
    code, body = await curl(
        daemon, "/v0/reload", "-X", "POST", user=NOBODY, group=NOBODY, extra_groups=[]
    )
    assert code == 403
    assert isinstance(body, dict)
    assert body["error"]["code"] == "read_only"
    assert f"uid {NOBODY} may only read" in body["error"]["message"]
    code, body = await curl(
        daemon,
        "/v0/dial",
        "-X",
        "POST",
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: tunneld-stream",
        "-H",
        "Tunneld-Agent: web1",
        "-H",
        "Tunneld-Service: echo",
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
    )
    assert code == 403
    assert isinstance(body, dict)
    assert body["error"]["code"] == "read_only"
    assert daemon.backend.calls == []  # refused before any tunnel was made


@needs_curl
@needs_root
async def test_group_members_and_root_may_write(daemon: Daemon) -> None:
    code, body = await curl(
        daemon, "/v0/reload", "-X", "POST", user=NOBODY, group=NOBODY, extra_groups=[WRITE_GID]
    )
    assert (code, body) == (200, {"reloaded": True, "count": 1})
    code, body = await curl(
        daemon, "/v0/reload", "-X", "POST", user=NOBODY, group=WRITE_GID, extra_groups=[]
    )
    assert (code, body) == (200, {"reloaded": True, "count": 2})
    code, body = await curl(daemon, "/v0/reload", "-X", "POST")
    assert (code, body) == (200, {"reloaded": True, "count": 3})


@needs_curl
@pytest.mark.parametrize("header", ["Origin: http://evil.example", "Referer: http://x/"])
async def test_browser_requests_refused(daemon: Daemon, header: str) -> None:
    for path in ("/v0/status", "/v0/agents"):
        code, body = await curl(daemon, path, "-H", header)
        assert code == 403
        assert isinstance(body, dict)
        assert body["error"]["code"] == "browser_request"
    code, body = await curl(daemon, "/v0/reload", "-X", "POST", "-H", header)
    assert code == 403


async def connect(daemon: Daemon) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.connect(str(daemon.path))
    return trio.SocketStream(sock)


async def read_head(stream: trio.SocketStream) -> tuple[bytes, bytes]:
    """The response head, and whatever body bytes followed it."""
    buffer = b""
    with trio.fail_after(TIMEOUT):
        while b"\r\n\r\n" not in buffer:
            data = await stream.receive_some(65536)
            if not data:
                break
            buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head, rest


async def read_to_eof(stream: trio.abc.Stream, initial: bytes = b"") -> bytes:
    buffer = initial
    with trio.fail_after(TIMEOUT):
        while data := await stream.receive_some(65536):
            buffer += data
    return buffer


async def echo_through(stream: trio.abc.HalfCloseableStream, rest: bytes, payload: bytes) -> bytes:
    """Send ``payload`` and EOF while reading the echo to EOF (``rest``: bytes read
    after the head)."""

    async def send() -> None:
        await stream.send_all(payload)
        await stream.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        return await read_to_eof(stream, rest)


def dial_request(agent: str | None = "web1", service: str | None = "echo") -> bytes:
    lines = [
        "POST /v0/dial HTTP/1.1",
        "Host: localhost",
        "Connection: Upgrade",
        "Upgrade: tunneld-stream",
        "Content-Length: 0",
    ]
    if agent is not None:
        lines.append(f"Tunneld-Agent: {agent}")
    if service is not None:
        lines.append(f"Tunneld-Service: {service}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def wait_released(table: TunnelTable, agent: str) -> None:
    with trio.fail_after(TIMEOUT):
        while table.leases(agent):  # noqa: ASYNC110 (polls state the table owns)
            await trio.sleep(0.01)


async def test_dial_pipes_bytes_to_service(daemon: Daemon) -> None:
    stream = await connect(daemon)
    payload = os.urandom(300_000)
    await stream.send_all(dial_request())
    head, rest = await read_head(stream)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"upgrade: tunneld-stream" in head.lower()
    assert daemon.table.leases("web1") == 1
    assert await echo_through(stream, rest, payload) == payload
    await stream.aclose()
    await wait_released(daemon.table, "web1")
    assert daemon.backend.count("add") == 1


async def test_dial_uses_the_remote_streams_non_waiting_calls(daemon: Daemon) -> None:
    # The overlay's mux stream offers send_nowait/close_nowait; the pipe uses them.
    stream = await connect(daemon)
    payload = os.urandom(300_000)
    await stream.send_all(dial_request(service="echo-nowait"))
    head, rest = await read_head(stream)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert await echo_through(stream, rest, payload) == payload
    await stream.aclose()
    await wait_released(daemon.table, "web1")
    [remote] = daemon.nowait
    assert 0 < remote.sent_nowait < len(payload)  # and send_all took the rest
    assert remote.closed_nowait


async def test_client_disconnect_mid_stream_releases_lease(daemon: Daemon) -> None:
    stream = await connect(daemon)
    await stream.send_all(dial_request())
    head, _ = await read_head(stream)
    assert head.startswith(b"HTTP/1.1 101 ")
    await stream.send_all(b"x" * 100_000)
    assert daemon.table.leases("web1") == 1
    # Gone without a goodbye: RST instead of FIN.
    stream.socket.setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
    )
    await stream.aclose()
    await wait_released(daemon.table, "web1")
    # The tunnel idles (not removed at once): closing a stream never tears it down.
    assert daemon.table.tunnels()[0].state.value == "idle"


async def test_client_gone_before_the_101_releases_lease(daemon: Daemon) -> None:
    daemon.backend.connect_delay = 0.5
    stream = await connect(daemon)
    await stream.send_all(dial_request())
    await trio.sleep(0.1)  # the daemon is still setting up the tunnel
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()
    # The connect finishes, the 101 cannot go out, the unclaimed dial is dropped.
    with trio.fail_after(TIMEOUT):
        while not (tunnels := daemon.table.tunnels()) or tunnels[0].state.value != "idle":  # noqa: ASYNC110
            await trio.sleep(0.05)
    assert daemon.table.leases("web1") == 0
    assert not daemon.api._dials


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (dial_request(agent=None), 400, "missing_header"),
        (dial_request(service=None), 400, "missing_header"),
        (dial_request(agent="ghost"), 404, "unknown_agent"),
        (dial_request(service="ssh"), 502, "service_unavailable"),
        (dial_request().replace(b"Upgrade: tunneld-stream\r\n", b""), 426, None),
        (b"GET /v0/status HTTP/1.1\r\nHost: x\r\nOrigin: null\r\n\r\n", 403, "browser_request"),
        (b"NONSENSE\r\n\r\n", 400, None),
        (b"GET /v0/nothing HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not_found"),
        (b"DELETE /v0/status HTTP/1.1\r\nHost: x\r\n\r\n", 405, None),
    ],
)
async def test_refused_requests(
    daemon: Daemon, request_bytes: bytes, status: int, code: str | None
) -> None:
    stream = await connect(daemon)
    await stream.send_all(request_bytes)
    head, rest = await read_head(stream)
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
    if code is not None:
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
        )
        with trio.fail_after(TIMEOUT):
            while len(rest) < length:
                rest += await stream.receive_some(65536)
        error = json.loads(rest[:length])["error"]
        assert error["code"] == code
        assert error["message"]
    await stream.aclose()
    assert daemon.table.leases("web1") == 0
    assert daemon.table.leases("ghost") == 0


async def test_stale_socket_replaced_live_one_kept(socket_dir: Path, daemon: Daemon) -> None:
    stale = socket_dir / "stale.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(stale))
    sock.close()  # the file stays, nobody listens: a crashed daemon's leftover
    listener = await open_api_listener(stale)
    assert (stale.stat().st_mode & 0o777) == 0o660
    await listener.aclose()
    with pytest.raises(DaemonRunningError, match="already serving"):
        await open_api_listener(daemon.path)
    assert daemon.path.exists()
    (socket_dir / "plain").write_text("not a socket")
    with pytest.raises(FileExistsError):
        await open_api_listener(socket_dir / "plain")


async def tunneld_cli(
    *args: str, stdin: bytes = b"", **kwargs: object
) -> trio.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process(
            [sys.executable, "-m", "tunneld", *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            **kwargs,  # type: ignore[arg-type]
        )


async def test_cli_status_and_agents(daemon: Daemon) -> None:
    async with daemon.table.acquire("web1"):
        result = await tunneld_cli("status", "--socket", str(daemon.path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert "node: laptop" in lines
    assert lines[-2].split() == ["AGENT", "STATE", "LEASES", "IDLE", "PEER"]
    assert lines[-1].split() == ["web1", "active", "1", "-", "peer-web1"]
    result = await tunneld_cli("status", "--json", "--socket", str(daemon.path))
    assert json.loads(result.stdout)["tunnels"][0]["state"] == "idle"
    result = await tunneld_cli("agents", "--socket", str(daemon.path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0].split() == ["NAME", "OWNER", "ONLINE", "LAST", "SEEN", "PATH", "RTT", "TUNNEL"]
    assert lines[1].split() == [
        "web1",
        "alice",
        "yes",
        "now",
        "direct",
        "12.5ms",
        "active,",
        "1",
        "lease",
    ]
    assert lines[2].split()[:4] == ["web2", "alice", "no", "-"]
    assert b"warning" not in result.stderr
    result = await tunneld_cli("agents", "--json", "--socket", str(daemon.path))
    assert json.loads(result.stdout) == AGENTS


async def test_cli_dial_pipes_stdin_stdout(daemon: Daemon) -> None:
    payload = os.urandom(200_000)
    result = await tunneld_cli("dial", "--socket", str(daemon.path), "web1", "echo", stdin=payload)
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload
    await wait_released(daemon.table, "web1")


async def test_cli_dial_errors(daemon: Daemon, socket_dir: Path) -> None:
    result = await tunneld_cli("dial", "--socket", str(daemon.path), "ghost", "22")
    assert result.returncode == 1
    assert result.stderr.decode().strip() == (
        "tunneld: error: dial ghost:22: no agent named 'ghost' (unknown_agent)"
    )
    missing = socket_dir / "nope.sock"
    result = await tunneld_cli("status", "--socket", str(missing))
    assert result.returncode == 1
    assert f"not running (no socket at {missing})" in result.stderr.decode()


@needs_root
async def test_cli_dial_without_permission(daemon: Daemon) -> None:
    try:
        await trio.run_process([sys.executable, "-c", "import tunneld"], user=NOBODY)
    except (PermissionError, subprocess.CalledProcessError):
        pytest.skip("this Python or the checkout is not readable by nobody")
    result = await tunneld_cli(
        "dial",
        "--socket",
        str(daemon.path),
        "web1",
        "echo",
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        env={**os.environ, "HOME": "/"},
    )
    assert result.returncode == 1
    assert "permission denied: uid 65534 may only read" in result.stderr.decode()
    assert daemon.backend.calls == []
