"""list_agents and check_port."""

from __future__ import annotations

from typing import Any, Final

from tunneld.mcp import ToolContext, ToolResult
from tunneld_workspace._errors import agent_rpc
from tunneld_workspace._settings import AGENT_PROPERTY

__all__ = [
    "CHECK_PORT_INPUT",
    "CHECK_PORT_OUTPUT",
    "LIST_AGENTS_INPUT",
    "LIST_AGENTS_OUTPUT",
    "check_port",
    "list_agents",
]

LIST_AGENTS_INPUT: Final = {"type": "object", "properties": {}, "additionalProperties": False}

LIST_AGENTS_OUTPUT: Final = {
    "type": "object",
    "properties": {
        "agents": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "required": ["name"],
            },
        }
    },
    "required": ["agents"],
    "additionalProperties": False,
}

CHECK_PORT_INPUT: Final = {
    "type": "object",
    "properties": {
        "agent": AGENT_PROPERTY,
        "port": {
            "type": "integer",
            "minimum": 1,
            "maximum": 65535,
            "description": "TCP port number on the agent host.",
        },
    },
    "required": ["agent", "port"],
    "additionalProperties": False,
}

CHECK_PORT_OUTPUT: Final = {
    "type": "object",
    "properties": {
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "listening": {"type": "boolean"},
        "addresses": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["port", "listening", "addresses"],
    "additionalProperties": False,
}


def _json_safe(value: object) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return str(value)


async def list_agents(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    """The agents this caller may reach, with what the daemon knows of each."""
    agents = [_json_safe(dict(a)) for a in await ctx.list_agents()]
    agents = [a for a in agents if isinstance(a.get("name"), str)]
    if not agents:
        text = "No agents are reachable for this caller."
        return ToolResult.text(text, structured={"agents": []})
    lines = []
    for a in agents:
        details = ", ".join(f"{k}: {v}" for k, v in a.items() if k != "name" and v is not None)
        lines.append(f"{a['name']}" + (f" ({details})" if details else ""))
    return ToolResult.text("\n".join(lines), structured={"agents": agents})


async def check_port(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    """Whether a TCP port is listening on the agent host (no connection is made)."""
    agent, port = str(args["agent"]), int(args["port"])
    async with agent_rpc(ctx, agent, "check_port") as client:
        status = await client.check_port(port)
    if status.listening:
        text = f"TCP port {port} on {agent} is listening on {', '.join(status.addresses)}."
    else:
        text = f"Nothing is listening on TCP port {port} on {agent}."
    if status.method == "connect":
        text += " (Checked by connecting to loopback only: this host has no /proc.)"
    structured = {"port": port, "listening": status.listening, "addresses": list(status.addresses)}
    return ToolResult.text(text, structured=structured)
