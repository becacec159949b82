"""The MCP server facade: registry in, Streamable HTTP endpoint out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import trio

import tunneld
from tunneld.http import Request, Router
from tunneld.log import get_logger
from tunneld.mcp._catalog import Catalog
from tunneld.mcp._jsonrpc import notification_message
from tunneld.mcp._methods import Methods, ServerInfo
from tunneld.mcp._registry import AgentAccess, Caller, Registry
from tunneld.mcp._session import SessionStore
from tunneld.mcp._transport import JSON_WINDOW_SECONDS, Transport, TransportOptions

__all__ = ["McpServer"]

log = get_logger(__name__)


class McpServer:
    """An MCP server (Streamable HTTP) serving a :class:`Registry`.

    ``agents_for(caller)`` gives the overlay access a tool call runs with.
    ``authenticate(request)`` returns the :class:`Caller` or raises
    ``tunneld.http.HttpError`` (401 with ``WWW-Authenticate``); without it every
    caller is anonymous and scopes are not enforced. ``allowed_hosts`` and
    ``allowed_origins`` extend the loopback names always accepted in ``Host`` and
    ``Origin`` (DNS-rebinding guard). Request bodies over ``max_request_bytes`` get 413;
    sessions idle for ``session_idle_timeout`` seconds expire (then 404). A
    ``tools/call`` whose result is ready within ``json_window`` seconds, having sent
    nothing on its stream, is answered with JSON; otherwise (and always with 0) with
    SSE.

    Call :meth:`mount` to add the endpoint to a router and start :meth:`run` with
    ``nursery.start``: requests are served by tasks of that nursery.
    """

    def __init__(
        self,
        registry: Registry,
        agents_for: Callable[[Caller], AgentAccess],
        *,
        name: str = "tunneld",
        version: str = tunneld.__version__,
        instructions: str = "",
        authenticate: Callable[[Request], Awaitable[Caller]] | None = None,
        resource_metadata_url: str | None = None,
        allowed_origins: Sequence[str] = (),
        allowed_hosts: Sequence[str] = (),
        max_request_bytes: int = 4 * 1024 * 1024,
        session_idle_timeout: float = 3600.0,
        plugin_configs: Mapping[str, Mapping[str, Any]] | None = None,
        page_size: int = 100,
        request_timeout: float = 600.0,
        json_window: float = JSON_WINDOW_SECONDS,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self._generation = 0
        self._catalog = Catalog(registry, plugin_configs, self._generation)
        self._methods = Methods(ServerInfo(name, version, instructions, page_size))
        self._sessions = SessionStore(idle_timeout=session_idle_timeout)
        self._nursery: trio.Nursery | None = None
        self.max_request_bytes = max_request_bytes
        self._transport = Transport(
            options=TransportOptions(
                authenticate=authenticate,
                resource_metadata_url=resource_metadata_url,
                allowed_origins=tuple(allowed_origins),
                allowed_hosts=tuple(allowed_hosts),
                request_timeout=request_timeout,
                json_window=json_window,
            ),
            methods=self._methods,
            sessions=self._sessions,
            catalog=lambda: self._catalog,
            agents_for=agents_for,
            nursery=lambda: self._nursery,
        )

    @property
    def registry(self) -> Registry:
        """The registry being served."""
        return self._catalog.registry

    @property
    def sessions(self) -> int:
        """Live sessions."""
        return len(self._sessions)

    @property
    def calls(self) -> int:
        """Tool calls served since start (known tools, whatever the outcome)."""
        return self._methods.calls

    def mount(self, router: Router, path: str = "/mcp") -> None:
        """Serve the endpoint at ``path``: POST, GET, DELETE and OPTIONS (others: 405)."""
        for method in ("POST", "GET", "DELETE", "OPTIONS"):
            router.route(
                method,
                path,
                self._transport.handle,
                max_body_bytes=self.max_request_bytes if method == "POST" else 0,
            )

    def set_registry(
        self, registry: Registry, plugin_configs: Mapping[str, Mapping[str, Any]] | None = None
    ) -> None:
        """Serve ``registry`` from now on and tell live sessions what changed.

        In-flight calls finish against the registry they started with. Sends
        ``notifications/tools/list_changed`` (and the resources/prompts ones to
        sessions that were offered those) on each session's GET stream.
        """
        old = self._catalog.registry
        self._generation += 1
        self._catalog = Catalog(registry, plugin_configs, self._generation)
        log.info("mcp.registry_swapped", tools=len(registry.tools), sessions=len(self._sessions))
        self._transport.broadcast(notification_message("notifications/tools/list_changed"))
        if (old.resources, old.templates) != (registry.resources, registry.templates):
            self._transport.broadcast(
                notification_message("notifications/resources/list_changed"),
                capability="resources",
            )
        if old.prompts != registry.prompts:
            self._transport.broadcast(
                notification_message("notifications/prompts/list_changed"), capability="prompts"
            )

    def resource_updated(self, uri: str) -> None:
        """Send ``notifications/resources/updated`` to the sessions subscribed to ``uri``."""
        message = notification_message("notifications/resources/updated", {"uri": uri})
        self._transport.broadcast(message, subscribed=uri)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve requests' tasks and expire idle sessions until cancelled.

        Start with ``nursery.start(server.run)``. On cancel every session ends (its
        in-flight calls are cancelled) and the method returns.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                interval = max(1.0, min(30.0, self._sessions.idle_timeout / 4))
                while True:
                    await trio.sleep(interval)
                    expired = self._sessions.expire(trio.current_time())
                    if expired:
                        log.info("mcp.sessions_expired", count=len(expired))
        finally:
            self._nursery = None
            self._sessions.close_all()
