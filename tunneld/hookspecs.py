"""The hooks a tunneld plugin can implement (pluggy project name ``tunneld``).

A plugin is a module or package named in the ``tunneld`` entry-point group::

    [project.entry-points.tunneld]
    my_tools = "my_tools"

It implements any of the hooks below with :data:`hookimpl`. Each hook is called once
per plugin, with that plugin's own ``[plugins.NAME]`` config table as ``config``; a
plugin validates it itself and raises ``ValueError`` with a message naming the key.
A plugin that fails to import or raises in a hook is reported with its name and
skipped (or fails start-up when ``[plugins] strict = true``). See docs/plugins.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pluggy

from tunneld.mcp import Prompt, Resource, ResourceTemplate, Tool

__all__ = [
    "PROJECT",
    "hookimpl",
    "hookspec",
    "register_prompts",
    "register_resources",
    "register_tools",
    "shutdown",
    "startup",
]

PROJECT = "tunneld"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_tools(register: Callable[[Tool], None], config: Mapping[str, Any]) -> None:
    """Register MCP tools by calling ``register(Tool(...))`` once per tool.

    Called at start-up and on every reload. Register nothing for a tool whose
    dependencies ``config`` does not provide (the tool must then not appear at all).
    A name already registered by another plugin is an error naming both plugins.
    """


@hookspec
def register_resources(
    register: Callable[[Resource | ResourceTemplate], None], config: Mapping[str, Any]
) -> None:
    """Register MCP resources and resource templates by calling ``register(...)``."""


@hookspec
def register_prompts(register: Callable[[Prompt], None], config: Mapping[str, Any]) -> None:
    """Register MCP prompts by calling ``register(Prompt(...))``."""


@hookspec
def startup(config: Mapping[str, Any]) -> Awaitable[None] | None:
    """Called once when the daemon starts serving (and after a reload re-enables the plugin).

    May be ``async def``: the daemon awaits it. Open long-lived clients here.
    """


@hookspec
def shutdown(config: Mapping[str, Any]) -> Awaitable[None] | None:
    """Called once when the daemon stops (or a reload disables the plugin); may be async.

    Runs under a shielded scope with a short deadline: close what ``startup`` opened.
    """
