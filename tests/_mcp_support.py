"""Helpers for the MCP tests.

A standalone McpServer on loopback and registries (``conformance_registry()`` builds the
registry the daemon would build with only the ``conformance`` plugin enabled, by calling
that plugin's hook functions directly), and a small Streamable HTTP MCP client on trio
(h11), for tests that need many calls: the official SDK clients are used where a real
host's behaviour matters; this one is for load (hundreds of concurrent calls in one
session) and for reading raw statuses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import h11
import trio

from tunneld.daemon._mcp_bridge import SseDecoder
from tunneld.http import HttpLimits, HttpServer, Router
from tunneld.mcp import Caller, McpServer, Registry

ROOT = Path(__file__).resolve().parent.parent


def _import_conformance() -> Any:
    try:
        import tunneld_conformance
    except ImportError:
        # Not pip-installed (e.g. a bare checkout): import it from the source tree.
        sys.path.insert(0, str(ROOT / "plugins" / "tunneld-conformance"))
        import tunneld_conformance
    return tunneld_conformance


def registry_from_plugin(
    module: Any, name: str, config: Mapping[str, Any] | None = None
) -> Registry:
    """What the plugin manager builds from one plugin module's hooks."""
    registry = Registry()
    cfg = dict(config or {})
    if hasattr(module, "register_tools"):
        module.register_tools(
            lambda tool: registry.add_tool(dataclasses.replace(tool, plugin=name)), cfg
        )
    if hasattr(module, "register_resources"):
        module.register_resources(
            lambda res: registry.add_resource(dataclasses.replace(res, plugin=name)), cfg
        )
    if hasattr(module, "register_prompts"):
        module.register_prompts(
            lambda prompt: registry.add_prompt(dataclasses.replace(prompt, plugin=name)), cfg
        )
    return registry


def conformance_registry() -> Registry:
    return registry_from_plugin(_import_conformance(), "conformance")


class NoAgents:
    """AgentAccess for servers whose tools never reach an agent."""

    def open_stream(
        self, agent: str, service: str
    ) -> AbstractAsyncContextManager[trio.abc.HalfCloseableStream]:
        raise LookupError(f"no agents in this test server (asked for {agent}/{service})")

    async def list_agents(self) -> list[Mapping[str, object]]:
        return []


def no_agents(caller: Caller) -> NoAgents:
    return NoAgents()


@dataclasses.dataclass
class Served:
    server: McpServer
    http: HttpServer
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


@asynccontextmanager
async def serve_mcp(
    registry: Registry,
    *,
    agents_for: Callable[[Caller], Any] = no_agents,
    host: str = "127.0.0.1",
    port: int = 0,
    **kwargs: Any,
) -> AsyncIterator[Served]:
    """An McpServer mounted at /mcp on an HttpServer on ``host``; cancelled on exit."""
    server = McpServer(registry, agents_for, **kwargs)
    router = Router()
    server.mount(router)
    http = HttpServer(router, limits=HttpLimits(max_body_bytes=8 * 1024 * 1024))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        bound = await nursery.start(http.serve_tcp, host, port)
        yield Served(server, http, int(bound[1]))
        nursery.cancel_scope.cancel()


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
