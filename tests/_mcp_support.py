"""Helpers for the MCP server tests: a standalone McpServer on loopback, registries.

``conformance_registry()`` builds the registry the daemon would build with only the
``conformance`` plugin enabled, by calling that plugin's hook functions directly.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

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


# ---- a small HTTP/1.1 client (h11 over trio) that can read SSE incrementally ----

CLIENT_TIMEOUT = 20.0  # generous: the machine is shared; a hang fails instead of blocking


@dataclasses.dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _head(
    port: int, method: str, path: str, headers: Mapping[str, str], body: bytes
) -> h11.Request:
    items = {"host": f"127.0.0.1:{port}", **{k.lower(): v for k, v in headers.items()}}
    if body or method == "POST":
        items["content-length"] = str(len(body))
    return h11.Request(method=method, target=path, headers=list(items.items()))


async def _read_event(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
            continue
        return event


async def http_request(
    port: int,
    method: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | dict[str, Any] | list[Any] = b"",
    path: str = "/mcp",
) -> RawResponse:
    """One request on a fresh connection; the whole response."""
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    with trio.fail_after(CLIENT_TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            conn = h11.Connection(h11.CLIENT)
            data = conn.send(_head(port, method, path, headers or {}, body))
            data += conn.send(h11.Data(data=body)) if body else b""
            data += conn.send(h11.EndOfMessage())
            await stream.send_all(data)
            response = await _read_event(conn, stream)
            if not isinstance(response, h11.Response):
                raise AssertionError(f"expected a response, got {response!r}")
            chunks = []
            while True:
                event = await _read_event(conn, stream)
                if isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
            return RawResponse(
                response.status_code,
                {k.decode().lower(): v.decode() for k, v in response.headers},
                b"".join(chunks),
            )


@dataclasses.dataclass
class SseEvent:
    id: str | None = None
    event: str | None = None
    data: str = ""
    retry: int | None = None
    comment: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


class SseReader:
    """The response to a request answered (perhaps) with SSE, read event by event."""

    def __init__(self, conn: h11.Connection, stream: trio.abc.Stream, response: h11.Response):
        self._conn = conn
        self._stream = stream
        self.status = response.status_code
        self.headers = {k.decode().lower(): v.decode() for k, v in response.headers}
        self._buffer = ""
        self._ended = False

    async def body(self) -> bytes:
        chunks = [self._buffer.encode()]
        while not self._ended:
            event = await _read_event(self._conn, self._stream)
            if isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            else:
                self._ended = True
        return b"".join(chunks)

    async def next(self, *, comments: bool = False) -> SseEvent | None:
        """The next event (``None`` at the end of the stream); comments skipped unless asked."""
        with trio.fail_after(CLIENT_TIMEOUT):
            while True:
                sep = self._buffer.find("\n\n")
                if sep >= 0:
                    block, self._buffer = self._buffer[:sep], self._buffer[sep + 2 :]
                    parsed = _parse_sse_block(block)
                    if parsed.comment is not None and not comments:
                        continue
                    return parsed
                if self._ended:
                    return None
                event = await _read_event(self._conn, self._stream)
                if isinstance(event, h11.Data):
                    self._buffer += bytes(event.data).decode()
                else:
                    self._ended = True

    async def messages(self) -> list[Any]:
        """Every remaining JSON-RPC message until the stream ends."""
        out = []
        while (event := await self.next()) is not None:
            if event.data:
                out.append(event.json())
        return out


def _parse_sse_block(block: str) -> SseEvent:
    event = SseEvent()
    data: list[str] = []
    for line in block.split("\n"):
        if line.startswith(":"):
            event.comment = line[1:].strip()
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "id":
            event.id = value
        elif name == "event":
            event.event = value
        elif name == "retry":
            event.retry = int(value)
    event.data = "\n".join(data)
    return event


@asynccontextmanager
async def open_request(
    port: int,
    method: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | dict[str, Any] = b"",
    path: str = "/mcp",
) -> AsyncIterator[SseReader]:
    """Send a request and yield a reader of its (streamed) response; closing the
    context closes the connection, which is how a client "disconnects"."""
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        data = conn.send(_head(port, method, path, headers or {}, body))
        data += conn.send(h11.Data(data=body)) if body else b""
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)
        with trio.fail_after(CLIENT_TIMEOUT):
            response = await _read_event(conn, stream)
        assert isinstance(response, h11.Response), response
        yield SseReader(conn, stream, response)


ACCEPT_BOTH = "application/json, text/event-stream"


class McpHttpClient:
    """Raw MCP-over-HTTP calls against one server, with a session once initialized."""

    def __init__(self, port: int, *, version: str = "2025-11-25") -> None:
        self.port = port
        self.version = version
        self.session_id: str | None = None
        self.extra_headers: dict[str, str] = {}
        self._next_id = 0

    def headers(self, **extra: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": ACCEPT_BOTH}
        if self.session_id is not None:
            headers["Mcp-Session-Id"] = self.session_id
            headers["MCP-Protocol-Version"] = self.version
        headers.update(self.extra_headers)
        headers.update({k.replace("_", "-"): v for k, v in extra.items()})
        return headers

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def initialize(self, capabilities: dict[str, Any] | None = None) -> RawResponse:
        response = await http_request(
            self.port,
            "POST",
            self.headers(),
            {
                "jsonrpc": "2.0",
                "id": self.new_id(),
                "method": "initialize",
                "params": {
                    "protocolVersion": self.version,
                    "capabilities": capabilities or {},
                    "clientInfo": {"name": "tunneld-tests", "version": "0"},
                },
            },
        )
        assert response.status == 200, response
        self.session_id = response.headers["mcp-session-id"]
        await self.notify("notifications/initialized")
        return response

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> RawResponse:
        body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            body["params"] = params
        return await http_request(self.port, "POST", self.headers(), body)

    async def post(self, body: Any, **headers: str) -> RawResponse:
        return await http_request(self.port, "POST", self.headers(**headers), body)

    async def request(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """A JSON-answered request's whole JSON-RPC response (SSE ones are collected)."""
        body = {"jsonrpc": "2.0", "id": self.new_id(), "method": method, "params": params or {}}
        async with open_request(self.port, "POST", self.headers(), body) as reader:
            assert reader.status == 200, (reader.status, await reader.body())
            if reader.headers["content-type"].startswith("text/event-stream"):
                messages = await reader.messages()
                return next(m for m in messages if m.get("id") == body["id"])
            return json.loads(await reader.body())

    def call_body(self, name: str, arguments: dict[str, Any], **meta: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"name": name, "arguments": arguments}
        if meta:
            params["_meta"] = meta
        return {"jsonrpc": "2.0", "id": self.new_id(), "method": "tools/call", "params": params}


# ---- `tunneld run --plugin conformance` with a real control plane ----


@pytest.fixture
def conformance_plugin_installed() -> None:
    """Skip unless the conformance plugin is installed (the daemon finds entry points)."""
    names = {ep.name for ep in importlib.metadata.entry_points(group="tunneld")}
    if "conformance" not in names:
        pytest.skip(
            "the conformance plugin is not installed: pip install -e plugins/tunneld-conformance"
        )


@asynccontextmanager
async def conformance_daemon(
    nursery: trio.Nursery, tmp_path: Path, short_dir: Path
) -> AsyncIterator[str]:
    """A control plane and ``tunneld run --plugin conformance``; yields the MCP URL.

    ``short_dir`` holds the Unix socket (paths are limited to 108 bytes).
    """
    from tests._control_support import running_server
    from tests._daemon_support import RUN, daemon_config
    from tests._plugin_support import DISABLE_DEFAULT_ON
    from tunneld.daemon._client import ApiError, DaemonUnavailableError, LocalApiClient

    (tmp_path / "control").mkdir()
    async with running_server(nursery, tmp_path / "control") as h:
        await h.user("alice")
        token_file = short_dir / "daemon.token"
        token_file.write_text(await h.token("alice") + "\n")
        token_file.chmod(0o600)
        socket = short_dir / "api.sock"
        config = daemon_config(
            short_dir, h.info.url, socket=socket, token_file=token_file, extra=DISABLE_DEFAULT_ON
        )
        command = [*RUN, str(config), "--plugin", "conformance"]
        process: trio.Process = await nursery.start(
            functools.partial(trio.run_process, command, check=False, stderr=subprocess.DEVNULL)
        )
        try:
            client = LocalApiClient(socket)
            with trio.fail_after(60):
                while True:
                    assert process.returncode is None, "the daemon exited before it was ready"
                    try:
                        status = await client.request("GET", "/v0/status")
                    except (DaemonUnavailableError, ApiError, OSError):
                        status = None
                    # The local API answers before the MCP listener is up: wait for both.
                    if isinstance(status, dict) and (status.get("mcp") or {}).get("url"):
                        break
                    await trio.sleep(0.1)
            assert isinstance(status, dict)
            assert [p["name"] for p in status["plugins"]["loaded"]] == ["conformance"]
            yield str(status["mcp"]["url"])
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            with trio.fail_after(30):
                await process.wait()
