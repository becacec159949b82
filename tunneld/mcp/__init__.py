"""MCP for tunneld: the registry of tools, resources and prompts (the plugin contract).

:class:`McpServer` serves a :class:`Registry` over Streamable HTTP (docs/mcp.md).
"""

from __future__ import annotations

from tunneld.mcp._registry import (
    DESTRUCTIVE,
    MUTATING,
    READ_ONLY,
    AgentAccess,
    Caller,
    Content,
    DuplicateNameError,
    Prompt,
    PromptArgument,
    Registry,
    RequestChannel,
    Resource,
    ResourceTemplate,
    Tool,
    ToolAnnotations,
    ToolContext,
    ToolError,
    ToolHandler,
    ToolOutput,
    ToolResult,
    open_world,
    validate_tool_name,
)
from tunneld.mcp._server import McpServer
from tunneld.mcp._transport import SCOPE_READ, SCOPE_WRITE

__all__ = [
    "DESTRUCTIVE",
    "MUTATING",
    "READ_ONLY",
    "SCOPE_READ",
    "SCOPE_WRITE",
    "AgentAccess",
    "Caller",
    "Content",
    "DuplicateNameError",
    "McpServer",
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
