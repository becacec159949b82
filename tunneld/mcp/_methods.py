"""MCP methods: what each request does, independent of HTTP.

:class:`Methods` answers one request (``dispatch``) given an :class:`Exchange` (who
asks, in which session/revision, through which channel) and the current
:class:`~tunneld.mcp._catalog.Catalog`. Protocol errors are raised as
:class:`~tunneld.mcp._jsonrpc.McpError`; tool failures are ``isError`` results.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import jsonschema.exceptions

from tunneld.log import get_logger
from tunneld.mcp._catalog import Catalog, SchemaViolation, paginate
from tunneld.mcp._channel import LOG_LEVELS, Channel
from tunneld.mcp._jsonrpc import (
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    RESOURCE_NOT_FOUND,
    McpError,
    encode,
)
from tunneld.mcp._registry import (
    AgentAccess,
    Caller,
    Prompt,
    Resource,
    ResourceTemplate,
    Tool,
    ToolContext,
    ToolError,
    ToolResult,
)
from tunneld.mcp._session import MAX_SUBSCRIPTIONS, Session

__all__ = [
    "HANDSHAKE_VERSIONS",
    "LATEST_HANDSHAKE_VERSION",
    "MODERN_VERSIONS",
    "Exchange",
    "Methods",
    "ServerInfo",
]

log = get_logger(__name__)

_T = TypeVar("_T")

HANDSHAKE_VERSIONS: Final[tuple[str, ...]] = ("2025-03-26", "2025-06-18", "2025-11-25")
"""Revisions negotiated by ``initialize`` (sessions), oldest first."""
LATEST_HANDSHAKE_VERSION: Final = HANDSHAKE_VERSIONS[-1]
MODERN_VERSIONS: Final[tuple[str, ...]] = ("2026-07-28",)
"""Stateless revisions: version and capabilities travel in every request's ``_meta``."""

META_PROTOCOL_VERSION: Final = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_INFO: Final = "io.modelcontextprotocol/clientInfo"
META_CLIENT_CAPABILITIES: Final = "io.modelcontextprotocol/clientCapabilities"
META_LOG_LEVEL: Final = "io.modelcontextprotocol/logLevel"
META_SERVER_INFO: Final = "io.modelcontextprotocol/serverInfo"

_COMPLETION_LIMIT: Final = 100  # MCP: at most 100 values per completion response


@dataclass(frozen=True, slots=True)
class ServerInfo:
    name: str
    version: str
    instructions: str
    page_size: int


@dataclass(slots=True)
class Exchange:
    """One request being served: caller, session (``None`` when stateless), channel."""

    caller: Caller
    agents: AgentAccess
    session: Session | None
    protocol_version: str
    channel: Channel
    client_capabilities: Mapping[str, Any]

    @property
    def modern(self) -> bool:
        return self.protocol_version in MODERN_VERSIONS


def _str_param(params: Mapping[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str):
        raise McpError(INVALID_PARAMS, f"Invalid params: {name!r} must be a string")
    return value


def capabilities(catalog: Catalog) -> dict[str, Any]:
    """What this server offers, honestly: only kinds the registry actually has."""
    caps: dict[str, Any] = {"tools": {"listChanged": True}, "logging": {}}
    registry = catalog.registry
    if registry.resources or registry.templates:
        caps["resources"] = {"listChanged": True, "subscribe": True}
    if registry.prompts:
        caps["prompts"] = {"listChanged": True}
    if catalog.has_completions:
        caps["completions"] = {}
    return caps


def _content_for(uri: str, mime_type: str, value: str | bytes) -> dict[str, Any]:
    if isinstance(value, bytes):
        return {"uri": uri, "mimeType": mime_type, "blob": base64.b64encode(value).decode()}
    return {"uri": uri, "mimeType": mime_type, "text": value}


class Methods:
    """The MCP method table."""

    def __init__(self, info: ServerInfo) -> None:
        self.info = info
        self.calls = 0
        self._table: dict[str, Callable[[Exchange, Catalog, dict[str, Any]], Awaitable[Any]]] = {
            "ping": self._ping,
            "server/discover": self._discover,
            "logging/setLevel": self._set_level,
            "tools/list": self._tools_list,
            "tools/call": self._tools_call,
            "resources/list": self._resources_list,
            "resources/templates/list": self._templates_list,
            "resources/read": self._resources_read,
            "resources/subscribe": self._subscribe,
            "resources/unsubscribe": self._unsubscribe,
            "prompts/list": self._prompts_list,
            "prompts/get": self._prompts_get,
            "completion/complete": self._complete,
        }

    def knows(self, method: str) -> bool:
        return method in self._table

    def initialize_result(self, catalog: Catalog, version: str) -> dict[str, Any]:
        result: dict[str, Any] = {
            "protocolVersion": version,
            "capabilities": capabilities(catalog),
            "serverInfo": {"name": self.info.name, "version": self.info.version},
        }
        if self.info.instructions:
            result["instructions"] = self.info.instructions
        return result

    async def dispatch(
        self, ex: Exchange, catalog: Catalog, method: str, params: dict[str, Any]
    ) -> dict[str, Any]:
        """The result of ``method``; raises :class:`McpError` for protocol errors.

        Cancellation: propagates (the transport sends no response for it).
        """
        handler = self._table.get(method)
        if handler is None or (method == "server/discover" and not ex.modern):
            raise McpError(METHOD_NOT_FOUND, f"Method not found: {method}")
        if ex.modern and method in (
            "logging/setLevel",
            "resources/subscribe",
            "resources/unsubscribe",
        ):
            raise McpError(
                METHOD_NOT_FOUND,
                f"Method not found: {method} (not in revision {ex.protocol_version})",
            )
        result: dict[str, Any] = await handler(ex, catalog, params)
        if ex.modern:
            # 2026-07-28: every result names its type; list results carry cache hints.
            result.setdefault("resultType", "complete")
            if method.endswith("/list") or method == "server/discover":
                result.setdefault("ttlMs", 0)
                result.setdefault("cacheScope", "private")
        return result

    # ---- lifecycle and utilities ----

    async def _ping(self, ex: Exchange, catalog: Catalog, params: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def _discover(
        self, ex: Exchange, catalog: Catalog, params: dict[str, Any]
    ) -> dict[str, Any]:
        result: dict[str, Any] = {
            "supportedVersions": [*HANDSHAKE_VERSIONS, *MODERN_VERSIONS],
            "capabilities": {k: v for k, v in capabilities(catalog).items() if k != "logging"},
            "_meta": {META_SERVER_INFO: {"name": self.info.name, "version": self.info.version}},
        }
        if self.info.instructions:
            result["instructions"] = self.info.instructions
        return result

    async def _set_level(
        self, ex: Exchange, catalog: Catalog, params: dict[str, Any]
    ) -> dict[str, Any]:
        level = params.get("level")
        if level not in LOG_LEVELS:
            raise McpError(
                INVALID_PARAMS, f"Invalid params: level must be one of {', '.join(LOG_LEVELS)}"
            )
        assert ex.session is not None
        ex.session.log_level = str(level)
        return {}

    # ---- tools ----

    async def _tools_list(
        self, ex: Exchange, catalog: Catalog, params: dict[str, Any]
    ) -> dict[str, Any]:
        tools = list(catalog.registry.tools.values())
        return self._listing("tools", tools, params, catalog, Tool.to_json)

    def _listing(
        self,
        key: str,
        items: Sequence[_T],
        params: dict[str, Any],
        catalog: Catalog,
        entry: Callable[[_T], dict[str, Any]],
    ) -> dict[str, Any]:
        """A ``*/list`` result: the page ``params`` asks for, as ``key``, and its cursor."""
        page, cursor = paginate(items, params, catalog.generation, self.info.page_size)
        result: dict[str, Any] = {key: [entry(item) for item in page]}
        if cursor is not None:
            result["nextCursor"] = cursor
        return result

    def context(self, ex: Exchange, catalog: Catalog, plugin: str) -> ToolContext:
        return ToolContext(
            ex.caller,
            ex.agents,
            channel=ex.channel,
            plugin=plugin,
            config=catalog.config_for(plugin),
        )

    async def _tools_call(
        self, ex: Exchange, catalog: Catalog, params: dict[str, Any]
    ) -> dict[str, Any]:
        name = _str_param(params, "name")
        tool = catalog.registry.tools.get(name)
        if tool is None:
            raise McpError(INVALID_PARAMS, f"Unknown tool: {name}")
        arguments = params.get("arguments", {})
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise McpError(INVALID_PARAMS, "Invalid params: 'arguments' must be an object")
        self.calls += 1
        result = await self.call_tool(ex, catalog, tool, arguments)
        return result

    async def call_tool(
        self, ex: Exchange, catalog: Catalog, tool: Tool, arguments: dict[str, Any]
    ) -> dict[str, Any]:
        """Validate, run and shape one tool call; never raises for tool failures.

        Cancellation (``notifications/cancelled``) propagates out of the handler.
        """
        try:
            catalog.validate_arguments(tool, arguments)
        except SchemaViolation as exc:
            return _error_result(str(exc))
        except jsonschema.exceptions.SchemaError as exc:
            log.error("mcp.tool_schema_invalid", tool=tool.name, plugin=tool.plugin)
            return _error_result(f"Tool {tool.name} has an invalid input schema: {exc.message}")
        ctx = self.context(ex, catalog, tool.plugin)
        try:
            output = await tool.handler(ctx, arguments)
        except ToolError as exc:
            return _error_result(str(exc) or f"Tool {tool.name} failed")
        except Exception as exc:
            log.exception("mcp.tool_failed", tool=tool.name, plugin=tool.plugin)
            return _error_result(f"Tool {tool.name} failed: {type(exc).__name__}: {exc}")
        try:
            return self._shape(catalog, tool, output)
        except SchemaViolation as exc:
            return _error_result(str(exc))
        except (TypeError, ValueError) as exc:
            log.error("mcp.tool_bad_output", tool=tool.name, plugin=tool.plugin, error=str(exc))
            return _error_result(f"Tool {tool.name} returned an unusable result: {exc}")

    def _shape(self, catalog: Catalog, tool: Tool, output: object) -> dict[str, Any]:
        if isinstance(output, str):
            output = ToolResult.text(output)
        elif isinstance(output, Mapping):
            structured = dict(output)
            output = ToolResult(
                content=({"type": "text", "text": encode(structured)},), structured=structured
            )
        if not isinstance(output, ToolResult):
            raise TypeError(f"expected ToolResult, str or a mapping, got {type(output).__name__}")
        result: dict[str, Any] = {"content": [dict(block) for block in output.content]}
        if output.structured is not None:
            structured = dict(output.structured)
            if tool.output_schema is not None and not output.is_error:
                catalog.validate_output(tool, structured)
            result["structuredContent"] = structured
            if not result["content"]:
                # Backwards compatibility (MCP "Structured Content"): a text copy too.
                result["content"] = [{"type": "text", "text": encode(structured)}]
        elif tool.output_schema is not None and not output.is_error:
            raise SchemaViolation(
                f"Tool {tool.name} declares an output schema but returned no structured content"
            )
        if output.is_error:
            result["isError"] = True
        # Fail here (→ isError) rather than while writing the response.
        encode(result)
        return result

    # ---- resources ----

    async def _resources_list(
        self, ex: Exchange, catalog: Catalog, params: dict[str, Any]
    ) -> dict[str, Any]:
        resources = list(catalog.registry.resources.values())
        return self._listing("resources", resources, params, catalog, _resource_entry)

    async def _templates_list(
        self, ex: Exchange, catalog: Catalog, params: dict[str, Any]
    ) -> dict[str, Any]:
        templates = list(catalog.registry.templates.values())
        return self._listing("resourceTemplates", templates, params, catalog, _template_entry)

    async def _resources_read(
        self, ex: Exchange, catalog: Catalog, params: dict[str, Any]
    ) -> dict[str, Any]:
        uri = _str_param(params, "uri")
        resource = catalog.registry.resources.get(uri)
        if resource is not None:
            ctx = self.context(ex, catalog, resource.plugin)
            value = await self._read(resource.read(ctx), uri)
            return {"contents": [_content_for(uri, resource.mime_type, value)]}
        matched = catalog.match_template(uri)
        if matched is None:
            raise McpError(RESOURCE_NOT_FOUND, f"Resource not found: {uri}", {"uri": uri})
        template, variables = matched
        ctx = self.context(ex, catalog, template.plugin)
        value = await self._read(template.read(ctx, variables), uri)
        return {"contents": [_content_for(uri, template.mime_type, value)]}

    async def _read(self, pending: Awaitable[str | bytes], uri: str) -> str | bytes:
        try:
            value = await pending
        except ToolError as exc:
            raise McpError(RESOURCE_NOT_FOUND, f"Resource {uri}: {exc}", {"uri": uri}) from None
        except McpError:
            raise
        except Exception as exc:
            log.exception("mcp.resource_failed", uri=uri)
            raise McpError(
                -32603, f"Reading {uri} failed: {type(exc).__name__}", {"uri": uri}
            ) from None
        if not isinstance(value, str | bytes):
            raise McpError(-32603, f"Reading {uri} returned {type(value).__name__}, not str/bytes")
        return value

    async def _subscribe(
        self, ex: Exchange, catalog: Catalog, params: dict[str, Any]
    ) -> dict[str, Any]:
        uri = _str_param(params, "uri")
        assert ex.session is not None
        subscriptions = ex.session.subscriptions
        if uri not in subscriptions and len(subscriptions) >= MAX_SUBSCRIPTIONS:
            raise McpError(
                INVALID_PARAMS, f"At most {MAX_SUBSCRIPTIONS} resource subscriptions per session"
            )
        subscriptions.add(uri)
        return {}

    async def _unsubscribe(
        self, ex: Exchange, catalog: Catalog, params: dict[str, Any]
    ) -> dict[str, Any]:
        uri = _str_param(params, "uri")
        assert ex.session is not None
        ex.session.subscriptions.discard(uri)
        return {}

    # ---- prompts ----

    async def _prompts_list(
        self, ex: Exchange, catalog: Catalog, params: dict[str, Any]
    ) -> dict[str, Any]:
        prompts = list(catalog.registry.prompts.values())
        return self._listing("prompts", prompts, params, catalog, _prompt_entry)

    async def _prompts_get(
        self, ex: Exchange, catalog: Catalog, params: dict[str, Any]
    ) -> dict[str, Any]:
        name = _str_param(params, "name")
        prompt = catalog.registry.prompts.get(name)
        if prompt is None:
            raise McpError(INVALID_PARAMS, f"Unknown prompt: {name}")
        raw = params.get("arguments") or {}
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            raise McpError(INVALID_PARAMS, "Invalid params: 'arguments' must map names to strings")
        missing = [a.name for a in prompt.arguments if a.required and a.name not in raw]
        if missing:
            raise McpError(
                INVALID_PARAMS,
                f"Invalid params: prompt {name} needs argument(s) {', '.join(missing)}",
            )
        ctx = self.context(ex, catalog, prompt.plugin)
        try:
            messages: Sequence[Mapping[str, Any]] = await prompt.render(ctx, dict(raw))
        except ToolError as exc:
            raise McpError(INVALID_PARAMS, f"Prompt {name}: {exc}") from None
        except Exception as exc:
            log.exception("mcp.prompt_failed", prompt=name, plugin=prompt.plugin)
            raise McpError(-32603, f"Prompt {name} failed: {type(exc).__name__}") from None
        result: dict[str, Any] = {"messages": [dict(m) for m in messages]}
        if prompt.description:
            result["description"] = prompt.description
        return result

    # ---- completion ----

    async def _complete(
        self, ex: Exchange, catalog: Catalog, params: dict[str, Any]
    ) -> dict[str, Any]:
        ref = params.get("ref")
        argument = params.get("argument")
        if not isinstance(ref, dict) or not isinstance(argument, dict):
            raise McpError(INVALID_PARAMS, "Invalid params: 'ref' and 'argument' must be objects")
        arg_name = _str_param(argument, "name")
        prefix = argument.get("value", "")
        if not isinstance(prefix, str):
            raise McpError(INVALID_PARAMS, "Invalid params: argument.value must be a string")
        complete: Callable[[str, str], Awaitable[list[str]]] | None
        if ref.get("type") == "ref/prompt":
            name = _str_param(ref, "name")
            prompt = catalog.registry.prompts.get(name)
            if prompt is None:
                raise McpError(INVALID_PARAMS, f"Unknown prompt: {name}")
            complete = prompt.complete
        elif ref.get("type") == "ref/resource":
            uri = _str_param(ref, "uri")
            template = catalog.registry.templates.get(uri)
            if template is None and uri not in catalog.registry.resources:
                raise McpError(RESOURCE_NOT_FOUND, f"Resource not found: {uri}", {"uri": uri})
            complete = template.complete if template is not None else None
        else:
            raise McpError(
                INVALID_PARAMS, "Invalid params: ref.type must be 'ref/prompt' or 'ref/resource'"
            )
        values: list[str] = []
        if complete is not None:
            try:
                values = [str(v) for v in await complete(arg_name, prefix)]
            except Exception as exc:
                log.exception("mcp.complete_failed")
                raise McpError(-32603, f"Completion failed: {type(exc).__name__}") from None
        return {
            "completion": {
                "values": values[:_COMPLETION_LIMIT],
                "total": len(values),
                "hasMore": len(values) > _COMPLETION_LIMIT,
            }
        }


def _described(entry: dict[str, Any], item: Resource | ResourceTemplate) -> dict[str, Any]:
    if item.description:
        entry["description"] = item.description
    if item.title:
        entry["title"] = item.title
    return entry


def _resource_entry(res: Resource) -> dict[str, Any]:
    return _described({"uri": res.uri, "name": res.name, "mimeType": res.mime_type}, res)


def _template_entry(tpl: ResourceTemplate) -> dict[str, Any]:
    entry = {"uriTemplate": tpl.uri_template, "name": tpl.name, "mimeType": tpl.mime_type}
    return _described(entry, tpl)


def _prompt_entry(prompt: Prompt) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": prompt.name}
    if prompt.title:
        entry["title"] = prompt.title
    if prompt.description:
        entry["description"] = prompt.description
    if prompt.arguments:
        entry["arguments"] = [
            {
                "name": arg.name,
                **({"description": arg.description} if arg.description else {}),
                "required": arg.required,
            }
            for arg in prompt.arguments
        ]
    return entry


def _error_result(message: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": message}], "isError": True}
