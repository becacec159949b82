"""Helpers for the MCP server tests: a standalone McpServer on loopback, registries.

``conformance_registry()`` builds the registry the daemon would build with only the
``conformance`` plugin enabled, by calling that plugin's hook functions directly.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

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
