"""What MCP serves: tools, resources, prompts and completions, with their plugin.

This module is the contract between the MCP server (``tunneld.mcp``), the plugin
manager and plugin authors. A plugin's ``register_tools`` hook calls ``register(Tool(...))``;
the server lists and calls what the :class:`Registry` holds.

Annotations come only from the presets below (:data:`READ_ONLY`, :data:`MUTATING`,
:data:`DESTRUCTIVE`, each optionally :func:`open_world`), so every transport (TCP,
Unix socket, stdio bridge) emits the same four hints for a tool. MCP's defaults when a
hint is absent are the unsafe ones (destructive, open-world), so all four are always sent.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import trio

if TYPE_CHECKING:
    from tunneld.agent.client import AgentClient

__all__ = [
    "DESTRUCTIVE",
    "MUTATING",
    "READ_ONLY",
    "AgentAccess",
    "Caller",
    "Content",
    "DuplicateNameError",
    "Prompt",
    "PromptArgument",
    "Registry",
    "RequestChannel",
    "Resource",
    "ResourceTemplate",
    "Tool",
    "ToolAnnotations",
    "ToolContext",
    "ToolError",
    "ToolHandler",
    "ToolOutput",
    "ToolResult",
    "open_world",
    "validate_tool_name",
]

# MCP 2025-11-25, "Tool names": 1..128 characters of this set.
_TOOL_NAME: Final = re.compile(r"[A-Za-z0-9_.\-]{1,128}")

LogLevel = Literal["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]

Content = Mapping[str, Any]
"""One MCP content block, e.g. ``{"type": "text", "text": "..."}``."""


@dataclass(frozen=True, slots=True)
class ToolAnnotations:
    """The four MCP tool hints. Build them from the presets, not by hand."""

    read_only: bool
    destructive: bool
    idempotent: bool
    open_world: bool

    def to_json(self) -> dict[str, bool]:
        """The ``annotations`` object of ``tools/list``: all four hints, always."""
        return {
            "readOnlyHint": self.read_only,
            "destructiveHint": self.destructive,
            "idempotentHint": self.idempotent,
            "openWorldHint": self.open_world,
        }

    @property
    def writes(self) -> bool:
        """True for mutating and destructive tools (they need the write scope)."""
        return not self.read_only


READ_ONLY: Final = ToolAnnotations(
    read_only=True, destructive=False, idempotent=True, open_world=False
)
"""Reads state and changes nothing (read a file, list a directory)."""

MUTATING: Final = ToolAnnotations(
    read_only=False, destructive=False, idempotent=False, open_world=False
)
"""Changes state additively or reversibly (start a background process, report a task)."""

DESTRUCTIVE: Final = ToolAnnotations(
    read_only=False, destructive=True, idempotent=False, open_world=False
)
"""May overwrite or destroy state (write or edit a file, run an arbitrary command)."""


def open_world(preset: ToolAnnotations) -> ToolAnnotations:
    """``preset`` for a tool that reaches beyond the agent (network, webhooks)."""
    return dataclasses.replace(preset, open_world=True)


def validate_tool_name(name: str) -> str:
    """Return ``name`` if MCP allows it as a tool name, else raise ``ValueError``."""
    if not _TOOL_NAME.fullmatch(name):
        raise ValueError(f"tool name {name!r}: expected 1..128 characters of A-Z a-z 0-9 _ . -")
    return name


class ToolError(Exception):
    """Raised by a tool handler to return an ``isError`` result with this message.

    Any other exception becomes an ``isError`` result too (with the exception type),
    and is logged; neither ever reaches the transport as a protocol error.
    """


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A ``tools/call`` result."""

    content: Sequence[Content] = ()
    structured: Mapping[str, Any] | None = None
    is_error: bool = False

    @classmethod
    def text(cls, text: str, *, structured: Mapping[str, Any] | None = None) -> ToolResult:
        """One text block (plus ``structuredContent`` when the tool has an output schema)."""
        return cls(content=({"type": "text", "text": text},), structured=structured)

    @classmethod
    def error(cls, message: str) -> ToolResult:
        """An ``isError`` result the model can read and act on."""
        return cls(content=({"type": "text", "text": message},), is_error=True)


ToolOutput = ToolResult | str | Mapping[str, Any]
"""What a handler may return: a full result, text, or structured content (which needs
an ``output_schema``; the server checks it and adds a JSON text copy)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made the request: the token's subject and scopes, and the transport.

    ``subject`` is ``""`` for an unauthenticated caller (``--no-auth``, or a local
    Unix-socket user whose uid the daemon trusts).
    """

    subject: str = ""
    scopes: frozenset[str] = frozenset()
    transport: Literal["http", "unix", "stdio"] = "http"
    uid: int | None = None


class AgentAccess(Protocol):
    """The agents a caller may reach, through the daemon's shared overlay.

    Implemented by the daemon over its ``TunnelTable``: every stream holds a lease,
    nothing builds a transport. The daemon checks per caller that the agent is allowed.
    """

    def open_stream(
        self, agent: str, service: str
    ) -> AbstractAsyncContextManager[trio.abc.HalfCloseableStream]:
        """A mux stream to ``service`` (``"rpc"``, ``"tcp:22"``) on ``agent``, under a lease.

        Raises ``tunneld.daemon.TunnelError`` (unknown, not permitted, offline,
        unreachable) on entry.
        """
        ...

    async def list_agents(self) -> list[Mapping[str, object]]:
        """The agents this caller may reach: name, owner, online, path."""
        ...


class RequestChannel(Protocol):
    """The MCP request a handler runs for: progress, logs, server→client requests."""

    async def progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Send ``notifications/progress`` if the client asked for progress (else nothing)."""
        ...

    async def log(self, level: LogLevel, data: object, logger: str | None = None) -> None:
        """Send ``notifications/message`` if ``level`` passes the session's ``logging/setLevel``."""
        ...

    async def request(self, method: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
        """A server→client request (``sampling/createMessage``, ``elicitation/create``).

        Sent on the originating POST's SSE stream; raises ``ToolError`` if the client
        lacks the capability or answers with an error.
        """
        ...


@dataclass(slots=True)
class ToolContext:
    """What a tool handler gets besides its arguments.

    Cancellation is trio's: the handler runs in a cancel scope that
    ``notifications/cancelled`` cancels; a client disconnect alone does not.
    """

    caller: Caller
    agents: AgentAccess
    channel: RequestChannel
    plugin: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)

    def open_stream(
        self, agent: str, service: str
    ) -> AbstractAsyncContextManager[trio.abc.HalfCloseableStream]:
        """See :meth:`AgentAccess.open_stream`."""
        return self.agents.open_stream(agent, service)

    def agent_rpc(self, agent: str) -> AbstractAsyncContextManager[Any]:
        """An :class:`~tunneld.agent.client.AgentClient` on an ``rpc`` stream to ``agent``,
        for an ``async with`` block.

        If ``agents`` offers ``agent_rpc(agent)`` itself (the daemon's does: it reuses
        idle rpc streams), that is used; otherwise a fresh stream from ``open_stream``,
        closed at the end.
        """
        own = getattr(self.agents, "agent_rpc", None)
        if own is not None:
            # Handed over as is, not wrapped in another context manager of ours.
            manager: AbstractAsyncContextManager[Any] = own(agent)
            return manager
        return self._fresh_rpc(agent)

    @asynccontextmanager
    async def _fresh_rpc(self, agent: str) -> AsyncIterator[Any]:
        from tunneld.agent.client import AgentClient

        async with self.agents.open_stream(agent, "rpc") as stream:
            client: AgentClient = AgentClient(stream)
            try:
                yield client
            finally:
                with trio.CancelScope(shield=True):
                    await client.aclose()

    async def list_agents(self) -> list[Mapping[str, object]]:
        """See :meth:`AgentAccess.list_agents`."""
        return await self.agents.list_agents()

    async def progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        """See :meth:`RequestChannel.progress`."""
        await self.channel.progress(progress, total, message)

    async def log(self, level: LogLevel, data: object, logger: str | None = None) -> None:
        """See :meth:`RequestChannel.log`."""
        await self.channel.log(level, data, logger)


ToolHandler = Callable[[ToolContext, dict[str, Any]], Awaitable[ToolOutput]]
"""``async def handler(ctx, args) -> ToolOutput``; ``args`` already passed the input schema."""


@dataclass(frozen=True, slots=True)
class Tool:
    """One MCP tool. ``plugin`` is filled in by the plugin manager."""

    name: str
    description: str
    input_schema: Mapping[str, Any]
    handler: ToolHandler
    annotations: ToolAnnotations
    title: str | None = None
    output_schema: Mapping[str, Any] | None = None
    plugin: str = ""

    def __post_init__(self) -> None:
        validate_tool_name(self.name)
        if self.input_schema.get("type") != "object":
            raise ValueError(f'tool {self.name}: input_schema must have "type": "object"')

    def to_json(self) -> dict[str, Any]:
        """The tool's entry in ``tools/list``."""
        entry: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "inputSchema": dict(self.input_schema),
            "annotations": {
                **self.annotations.to_json(),
                **({"title": self.title} if self.title else {}),
            },
        }
        if self.title:
            entry["title"] = self.title
        if self.output_schema is not None:
            entry["outputSchema"] = dict(self.output_schema)
        return entry


@dataclass(frozen=True, slots=True)
class Resource:
    """A fixed resource; ``read(ctx)`` returns text (``str``) or a blob (``bytes``)."""

    uri: str
    name: str
    read: Callable[[ToolContext], Awaitable[str | bytes]]
    description: str = ""
    mime_type: str = "text/plain"
    title: str | None = None
    plugin: str = ""


@dataclass(frozen=True, slots=True)
class ResourceTemplate:
    """An RFC 6570 level-1 template (``test://template/{id}/data``); ``read(ctx, params)``."""

    uri_template: str
    name: str
    read: Callable[[ToolContext, dict[str, str]], Awaitable[str | bytes]]
    description: str = ""
    mime_type: str = "text/plain"
    title: str | None = None
    complete: Callable[[str, str], Awaitable[list[str]]] | None = None
    """``complete(argument, prefix)`` for ``completion/complete`` on this template."""
    plugin: str = ""


@dataclass(frozen=True, slots=True)
class PromptArgument:
    name: str
    description: str = ""
    required: bool = False


@dataclass(frozen=True, slots=True)
class Prompt:
    """A prompt; ``render(ctx, args)`` returns MCP ``PromptMessage`` objects."""

    name: str
    render: Callable[[ToolContext, dict[str, str]], Awaitable[Sequence[Mapping[str, Any]]]]
    description: str = ""
    title: str | None = None
    arguments: Sequence[PromptArgument] = ()
    complete: Callable[[str, str], Awaitable[list[str]]] | None = None
    """``complete(argument, prefix)`` for ``completion/complete`` on this prompt."""
    plugin: str = ""


class DuplicateNameError(ValueError):
    """Two plugins registered the same tool, resource or prompt name."""


class Registry:
    """Everything MCP serves, keyed by name/URI, each entry tagged with its plugin.

    Built anew on every (re)load; the server swaps the whole registry and sends
    ``notifications/tools/list_changed``.
    """

    def __init__(self) -> None:
        self.tools: dict[str, Tool] = {}
        self.resources: dict[str, Resource] = {}
        self.templates: dict[str, ResourceTemplate] = {}
        self.prompts: dict[str, Prompt] = {}

    @staticmethod
    def _add(table: dict[str, Any], key: str, entry: Any, kind: str) -> None:
        if key in table:
            first = table[key].plugin or "(built in)"
            second = entry.plugin or "(built in)"
            raise DuplicateNameError(
                f"{kind} {key!r} is registered by both plugin {first!r} and plugin {second!r}"
            )
        table[key] = entry

    def add_tool(self, tool: Tool) -> None:
        """Add ``tool``; raises :class:`DuplicateNameError` naming both plugins."""
        self._add(self.tools, tool.name, tool, "tool")

    def add_resource(self, resource: Resource | ResourceTemplate) -> None:
        """Add a resource or template; raises :class:`DuplicateNameError`."""
        if isinstance(resource, ResourceTemplate):
            self._add(self.templates, resource.uri_template, resource, "resource template")
        else:
            self._add(self.resources, resource.uri, resource, "resource")

    def add_prompt(self, prompt: Prompt) -> None:
        """Add ``prompt``; raises :class:`DuplicateNameError` naming both plugins."""
        self._add(self.prompts, prompt.name, prompt, "prompt")

    def restrict_tools(self, allowed: Sequence[str]) -> None:
        """Keep only the tools named in ``allowed`` (``[mcp] allowed_tools``; empty = all)."""
        if allowed:
            keep = set(allowed)
            self.tools = {name: tool for name, tool in self.tools.items() if name in keep}

    def __iter__(self) -> Iterator[Tool]:
        return iter(self.tools.values())
