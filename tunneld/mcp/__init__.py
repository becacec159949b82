"""MCP for tunneld: the registry of tools, resources and prompts (the plugin contract).

The Streamable HTTP server and the stdio bridge are built on top of this.
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
