"""The two MCP servers ``tunneld bench calls`` compares, each run as its own process.

``python -m tunneld.bench._calls_server ours|sdk`` serves one trivial tool, ``echo``
(``{"text": str}`` in, that text out), over Streamable HTTP at
``http://127.0.0.1:PORT/mcp``, prints ``PORT`` on a line once it listens, and serves
until stdin closes (the benchmark holds the pipe; if it dies, the server goes too).

``ours`` is :class:`tunneld.mcp.McpServer` on :class:`tunneld.http.HttpServer` (trio);
``sdk`` is the official ``mcp`` SDK's ``MCPServer`` with its ``streamable_http_app``
under uvicorn (asyncio), as its docs run it. Both keep their default response mode
(SSE for ``tools/call``) and stateful sessions.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

__all__ = ["ECHO_TOOL", "main"]

ECHO_TOOL: Final = "echo"
_ECHO_SCHEMA: Final = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
}


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def _announce(sock: socket.socket) -> None:
    print(sock.getsockname()[1], flush=True)


def _exit_when_stdin_closes(stop: Any) -> None:
    def watch() -> None:
        sys.stdin.read()
        stop()

    threading.Thread(target=watch, daemon=True).start()


def _serve_ours() -> None:
    import trio

    from tunneld.http import HttpServer, Router
    from tunneld.mcp import READ_ONLY, Caller, McpServer, Registry, Tool, ToolContext, ToolResult

    class _NoAgents:
        @asynccontextmanager
        async def open_stream(
            self, agent: str, service: str
        ) -> AsyncIterator[trio.abc.HalfCloseableStream]:
            raise LookupError("the echo server reaches no agents")
            yield  # pragma: no cover

        async def list_agents(self) -> list[Mapping[str, object]]:
            await trio.lowlevel.checkpoint()
            return []

    async def echo(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        await trio.lowlevel.checkpoint()
        return ToolResult.text(str(args["text"]))

    registry = Registry()
    registry.add_tool(
        Tool(
            name=ECHO_TOOL,
            description="Return the text.",
            input_schema=_ECHO_SCHEMA,
            handler=echo,
            annotations=READ_ONLY,
        )
    )

    def agents_for(caller: Caller) -> _NoAgents:
        return _NoAgents()

    async def main() -> None:
        server = McpServer(registry, agents_for)
        router = Router()
        server.mount(router, "/mcp")
        http = HttpServer(router, direct_streams=True)  # as the daemon's MCP listener
        sock = _bound_socket()
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            await nursery.start(http.serve, [listener])
            _announce(sock)
            await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()

    trio.run(main)


def _serve_sdk() -> None:
    import uvicorn
    from mcp.server.mcpserver import MCPServer

    server: Any = MCPServer("bench", log_level="WARNING")

    def echo(text: str) -> str:
        """Return the text."""
        return text

    server.tool(name=ECHO_TOOL)(echo)

    app = server.streamable_http_app()
    sock = _bound_socket()
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    running = uvicorn.Server(config)

    def stop() -> None:
        running.should_exit = True

    _exit_when_stdin_closes(stop)
    started = threading.Event()

    def announce_when_started() -> None:
        while not running.started and not running.should_exit:
            started.wait(0.01)
        _announce(sock)

    threading.Thread(target=announce_when_started, daemon=True).start()
    running.run(sockets=[sock])


def main(argv: list[str]) -> int:
    """Serve the ``ours`` or ``sdk`` echo server; returns the exit status."""
    if argv == ["ours"]:
        _serve_ours()
    elif argv == ["sdk"]:
        _serve_sdk()
    else:
        print("usage: python -m tunneld.bench._calls_server ours|sdk", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
