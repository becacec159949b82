"""Turning agent and tunnel failures into ``ToolError`` messages a model can act on.

Every message names the tool, the agent and what went wrong, with a hint where the fix
is clear (a path outside the roots, a feature the agent's config turns off). No
tracebacks and nothing from the token or the transport internals reaches the message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Final

import trio

from tunneld.agent.client import AgentClient, AgentError
from tunneld.daemon import TunnelError
from tunneld.log import get_logger
from tunneld.mcp import ToolContext, ToolError
from tunneld.proto.agentrpc import RemoteProtocolError

__all__ = ["agent_rpc", "describe_agent_error"]

log = get_logger(__name__)

_HINTS: Final = {
    "path_outside_roots": "paths must lie inside the agent's configured roots ([agent].roots)",
    "denied": "the agent's configuration does not allow this",
    "ambiguous_edit": "include more surrounding text so the search string is unique",
    "search_not_found": "read the file again and copy the text exactly, whitespace included",
    "too_many_processes": "signal or wait for a background process to finish first",
    "no_such_process": "list_processes shows the agent's current background processes",
}


def describe_agent_error(
    tool: str, agent: str, exc: AgentError, hints: Mapping[str, str] | None = None
) -> str:
    """``"TOOL on agent 'A' failed (code): message; hint"``; ``hints`` override per code."""
    message = f"{tool} on agent {agent!r} failed ({exc.code}): {exc.message}"
    if exc.code == "invalid_request" and "unknown op" in exc.message:
        return f"{message}; the agent is too old for {tool}: upgrade tunneld on it"
    hint = (hints or {}).get(exc.code) or _HINTS.get(exc.code)
    return f"{message}; {hint}" if hint else message


@asynccontextmanager
async def agent_rpc(
    ctx: ToolContext, agent: str, tool: str, hints: Mapping[str, str] | None = None
) -> AsyncIterator[AgentClient]:
    """``ctx.agent_rpc(agent)``, with every failure raised as a ``ToolError``.

    Raises:
        ToolError: the tunnel could not be had (unknown, not permitted, offline,
            unreachable agent), the agent refused the request, answered nonsense, or the
            stream broke. ``ToolError`` raised inside the block passes through.

    Cancellation: leaving the block closes the rpc stream (under a shield), which makes
    the agent kill a foreground command still running on it.
    """
    try:
        async with ctx.agent_rpc(agent) as client:
            yield client
    except ToolError:
        raise
    except TunnelError as exc:
        raise ToolError(
            f"{tool}: cannot reach agent {agent!r} ({exc.code}): {exc.message}"
        ) from None
    except AgentError as exc:
        raise ToolError(describe_agent_error(tool, agent, exc, hints)) from None
    except RemoteProtocolError as exc:
        log.warning("workspace.agent_protocol_error", tool=tool, agent=agent, reason=exc.reason)
        raise ToolError(f"{tool}: agent {agent!r} sent a malformed answer: {exc.reason}") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise ToolError(
            f"{tool}: the connection to agent {agent!r} broke during the call; "
            "the agent may have restarted: try again"
        ) from None
