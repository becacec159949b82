"""A small Streamable HTTP MCP client on trio (h11), for tests that need many calls.

The official SDK clients are used where a real host's behaviour matters; this one is
for load (hundreds of concurrent calls in one session) and for reading raw statuses.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import h11
import trio

from tunneld.daemon._mcp_bridge import SseDecoder

PROTOCOL_VERSION = "2025-11-25"
T = TypeVar("T")


@dataclass
class McpAnswer:
    status: int
    headers: dict[str, str]
    messages: list[dict[str, Any]] = field(default_factory=list)
    body: bytes = b""


async def _connect(target: str | Path) -> trio.abc.Stream:
    if not isinstance(target, str):
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.connect(str(target))
        return trio.SocketStream(sock)
    host, _, port = str(target).rpartition(":")
    return await trio.open_tcp_stream(host, int(port))


class RawMcpClient:
    """One MCP session over POSTs, each on its own connection (so calls run in parallel).

    ``target`` is ``"HOST:PORT"`` (TCP) or a socket ``Path``; ``path`` the endpoint.
    """

    def __init__(
        self,
        target: str | Path,
        path: str = "/mcp",
        *,
        connect: Callable[[], Awaitable[trio.abc.Stream]] | None = None,
    ) -> None:
        self.target = target
        self._connect = connect
        self.path = path
        self.session_id: str | None = None
        self._next_id = 0

    async def post(
        self, message: dict[str, Any], *, headers: dict[str, str] | None = None
    ) -> McpAnswer:
        body = json.dumps(message).encode()
        all_headers = {
            "Host": "127.0.0.1",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "Connection": "close",
        }
        if self.session_id is not None:
            all_headers["Mcp-Session-Id"] = self.session_id
            all_headers["MCP-Protocol-Version"] = PROTOCOL_VERSION
        all_headers.update(headers or {})
        stream = await (self._connect() if self._connect else _connect(self.target))
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            request = h11.Request(
                method="POST", target=self.path, headers=list(all_headers.items())
            )
            await stream.send_all(
                conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
            )
            answer = McpAnswer(0, {})
            raw = bytearray()
            decoder = SseDecoder()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                if isinstance(event, h11.Response):
                    answer.status = event.status_code
                    answer.headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    raw += event.data
                    if answer.headers.get("content-type", "").startswith("text/event-stream"):
                        for sse in decoder.feed(bytes(event.data)):
                            if sse.data.strip():
                                answer.messages.append(json.loads(sse.data))
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
            answer.body = bytes(raw)
            if answer.headers.get("content-type", "").startswith("application/json") and raw:
                answer.messages.append(json.loads(raw))
            return answer

    async def initialize(self) -> dict[str, Any]:
        answer = await self.post(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": PROTOCOL_VERSION,
                    "capabilities": {},
                    "clientInfo": {"name": "tunneld-tests", "version": "0"},
                },
            }
        )
        assert answer.status == 200, answer.body
        self.session_id = answer.headers["mcp-session-id"]
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return answer.messages[-1]

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON-RPC response (``result`` or ``error``) to one request."""
        self._next_id += 1
        request_id = self._next_id
        answer = await self.post(
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}
        )
        responses = [m for m in answer.messages if m.get("id") == request_id and "method" not in m]
        assert responses, f"no response to {method}: HTTP {answer.status} {answer.body[:300]!r}"
        return responses[-1]

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        response = await self.request("tools/call", {"name": name, "arguments": arguments})
        assert "result" in response, response
        result: dict[str, Any] = response["result"]
        return result


def _connect_as(uid: int, gid: int, path: str) -> socket.socket:
    # SO_PEERCRED records who called connect(): do that in a child that became ``uid``
    # and hand the connected socket back (SCM_RIGHTS). The child runs no Python code
    # beyond these calls, so forking a threaded process is safe enough here.
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(path)
            socket.send_fds(child, [b"x"], [conn.fileno()])
        finally:
            os._exit(0)
    try:
        _, fds, _, _ = socket.recv_fds(parent, 1, 1)
    finally:
        os.waitpid(pid, 0)
        parent.close()
        child.close()
    return socket.socket(fileno=fds[0])


def connector_as(uid: int, gid: int, path: Path) -> Callable[[], Awaitable[trio.abc.Stream]]:
    """Connect to the Unix socket ``path`` as user ``uid`` (needs root)."""

    async def connect() -> trio.abc.Stream:
        sock = await trio.to_thread.run_sync(_connect_as, uid, gid, str(path))
        return trio.SocketStream(trio.socket.from_stdlib_socket(sock))

    return connect


async def in_asyncio_thread(main: Callable[[], Awaitable[T]]) -> T:
    """Run an asyncio coroutine function (the official SDK client) in a worker thread."""
    result: list[T] = []

    def run() -> None:
        result.append(asyncio.run(main()))  # type: ignore[arg-type]

    await trio.to_thread.run_sync(run, abandon_on_cancel=True)
    return result[0]


__all__ = ["McpAnswer", "RawMcpClient", "connector_as", "in_asyncio_thread"]
