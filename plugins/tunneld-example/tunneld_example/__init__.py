"""An example tunneld plugin: two agent tools, a resource and a prompt.

The complete, runnable example of ``docs/plugins.md``. Every hook of
:mod:`tunneld.hookspecs` is implemented once, so this file doubles as a template.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tunneld.agent.client import AgentError
from tunneld.config import parse_byte_size
from tunneld.hookspecs import hookimpl
from tunneld.mcp import (
    READ_ONLY,
    Prompt,
    PromptArgument,
    Resource,
    ResourceTemplate,
    Tool,
    ToolContext,
    ToolError,
    ToolOutput,
)

__all__ = ["ENABLED_BY_DEFAULT", "Settings", "parse_settings"]

# Opt-in: loads only with [plugins] enable = ["example"] or `tunneld run --plugin example`.
ENABLED_BY_DEFAULT = False

_AGENT = {"type": "string", "minLength": 1, "description": "agent name (see list_agents)"}
_PATH = {"type": "string", "minLength": 1, "description": "path on the agent, within its roots"}


class Settings:
    """``[plugins.example]``, validated: ``page_size`` (size) and ``max_pages`` (int)."""

    def __init__(self, page_size: int = 64 * 1024, max_pages: int = 64) -> None:
        self.page_size = page_size
        self.max_pages = max_pages


def parse_settings(config: Mapping[str, Any]) -> Settings:
    """Check ``[plugins.example]``; raises ``ValueError`` naming the bad key."""
    unknown = set(config) - {"page_size", "max_pages"}
    if unknown:
        raise ValueError(
            f"[plugins.example]: unknown key(s) {', '.join(sorted(unknown))};"
            " known: page_size, max_pages"
        )
    settings = Settings()
    if "page_size" in config:
        value = config["page_size"]
        try:
            settings.page_size = parse_byte_size(value).bytes
        except (ValueError, TypeError):
            raise ValueError(
                f'[plugins.example].page_size: expected a size like "64KiB", got {value!r}'
            ) from None
        if not 1 <= settings.page_size <= 4 * 2**20:
            raise ValueError('[plugins.example].page_size: expected 1 byte to "4MiB"')
    if "max_pages" in config:
        value = config["max_pages"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"[plugins.example].max_pages: expected an integer >= 1, got {value!r}"
            )
        settings.max_pages = value
    return settings


async def stat_file(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    """``example_stat``: one agent call on a stream under the agent's tunnel lease."""
    async with ctx.agent_rpc(args["agent"]) as agent:
        try:
            info = await agent.stat(args["path"])
        except AgentError as exc:
            # The model reads this and can fix the path: an isError result, not a crash.
            raise ToolError(f"{args['agent']}: {exc.message}") from None
    return {"path": info.path, "type": info.type, "size": info.size, "mtime": info.mtime}


async def count_lines(ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
    """``example_count_lines``: pages through a file, reporting progress per page."""
    settings = parse_settings(ctx.config)
    lines = 0
    offset = 0
    async with ctx.agent_rpc(args["agent"]) as agent:
        for _ in range(settings.max_pages):
            try:
                page = await agent.read_file(args["path"], offset, settings.page_size)
            except AgentError as exc:
                raise ToolError(f"{args['agent']}: {exc.message}") from None
            lines += page.data.count(b"\n")
            offset += len(page.data)
            await ctx.progress(offset, page.size, f"read {offset} of {page.size} bytes")
            if page.eof:
                break
        else:
            raise ToolError(
                f"{args['path']} is larger than max_pages x page_size;"
                " raise [plugins.example].max_pages"
            )
    await ctx.log("info", {"counted": args["path"], "lines": lines}, logger="example")
    return f"{lines} lines in {args['path']} on {args['agent']}"


@hookimpl
def register_tools(register: Callable[[Tool], None], config: Mapping[str, Any]) -> None:
    parse_settings(config)  # a bad [plugins.example] table fails here, with its key
    register(
        Tool(
            name="example_stat",
            title="Stat a file on an agent",
            description="Type, size and modification time of a file on an agent.",
            input_schema={
                "type": "object",
                "properties": {"agent": _AGENT, "path": _PATH},
                "required": ["agent", "path"],
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "type": {"type": "string", "enum": ["file", "dir", "symlink", "other"]},
                    "size": {"type": "integer"},
                    "mtime": {"type": "number"},
                },
                "required": ["path", "type", "size", "mtime"],
            },
            handler=stat_file,
            annotations=READ_ONLY,
        )
    )
    register(
        Tool(
            name="example_count_lines",
            title="Count lines of a file on an agent",
            description="Number of newline characters in a text file on an agent.",
            input_schema={
                "type": "object",
                "properties": {"agent": _AGENT, "path": _PATH},
                "required": ["agent", "path"],
                "additionalProperties": False,
            },
            handler=count_lines,
            annotations=READ_ONLY,
        )
    )


async def _about(ctx: ToolContext) -> str:
    agents = await ctx.list_agents()
    names = ", ".join(str(a.get("name")) for a in agents) or "none"
    return f"tunneld example plugin; agents you may reach: {names}\n"


@hookimpl
def register_resources(
    register: Callable[[Resource | ResourceTemplate], None], config: Mapping[str, Any]
) -> None:
    register(
        Resource(
            uri="example://about",
            name="about",
            title="About the example plugin",
            description="What this plugin is, and the agents the caller may reach.",
            read=_about,
        )
    )


async def _review(ctx: ToolContext, args: dict[str, str]) -> Sequence[Mapping[str, Any]]:
    text = (
        f"Use example_stat and example_count_lines on agent {args['agent']!r} to describe"
        f" the file {args['path']!r}: its type, size and number of lines."
    )
    return [{"role": "user", "content": {"type": "text", "text": text}}]


@hookimpl
def register_prompts(register: Callable[[Prompt], None], config: Mapping[str, Any]) -> None:
    register(
        Prompt(
            name="example_describe_file",
            title="Describe a file on an agent",
            description="Asks the model to describe a file with the example tools.",
            arguments=(
                PromptArgument("agent", "agent name", required=True),
                PromptArgument("path", "file path on the agent", required=True),
            ),
            render=_review,
        )
    )


@hookimpl
async def startup(config: Mapping[str, Any]) -> None:
    # Nothing long-lived to open here; a real plugin would start its client or queue.
    parse_settings(config)


@hookimpl
async def shutdown(config: Mapping[str, Any]) -> None:
    # Runs shielded, under a deadline: close what startup opened.
    return None
