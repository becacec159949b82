"""tunneld-workspace: MCP tools that work on agent hosts over the daemon's shared overlay.

Tools: list_agents, execute_command (foreground with live progress, or background),
list_processes, process_output, signal_process, read_file, write_file, edit_files,
list_directory, check_port. Each call speaks on one ``rpc`` stream to the agent under a
tunnel lease (``ToolContext.agent_rpc``; the daemon reuses idle ones); nothing here
builds a transport. Annotations and why: README.md. Config: ``[plugins.workspace]``
(:func:`parse_settings`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, Final

from tunneld.hookspecs import hookimpl
from tunneld.mcp import DESTRUCTIVE, READ_ONLY, Tool, ToolContext, ToolOutput, open_world
from tunneld_workspace._exec import (
    EXECUTE_COMMAND_INPUT,
    EXECUTE_COMMAND_OUTPUT,
    LIST_PROCESSES_INPUT,
    LIST_PROCESSES_OUTPUT,
    PROCESS_OUTPUT_INPUT,
    PROCESS_OUTPUT_OUTPUT,
    SIGNAL_PROCESS_INPUT,
    execute_command,
    list_processes,
    process_output,
    signal_process,
)
from tunneld_workspace._files import (
    EDIT_FILES_INPUT,
    EDIT_FILES_OUTPUT,
    LIST_DIRECTORY_INPUT,
    LIST_DIRECTORY_OUTPUT,
    READ_FILE_INPUT,
    READ_FILE_OUTPUT,
    WRITE_FILE_INPUT,
    edit_files,
    list_directory,
    read_file,
    write_file,
)
from tunneld_workspace._host import (
    CHECK_PORT_INPUT,
    CHECK_PORT_OUTPUT,
    LIST_AGENTS_INPUT,
    LIST_AGENTS_OUTPUT,
    check_port,
    list_agents,
)
from tunneld_workspace._settings import Settings, parse_settings

__all__ = ["ENABLED_BY_DEFAULT", "Settings", "build_tools", "parse_settings", "register_tools"]

ENABLED_BY_DEFAULT: Final = True

Handler = Callable[[ToolContext, dict[str, Any]], Awaitable[ToolOutput]]


def build_tools(settings: Settings) -> list[Tool]:
    """The plugin's tools, configured by ``settings`` (see README.md for the annotations)."""
    run: Handler = partial(execute_command, settings=settings)
    return [
        Tool(
            name="list_agents",
            title="List agents",
            description="List the agents (remote hosts) you may use, with their state.",
            input_schema=LIST_AGENTS_INPUT,
            output_schema=LIST_AGENTS_OUTPUT,
            handler=list_agents,
            annotations=READ_ONLY,
        ),
        Tool(
            name="execute_command",
            title="Execute a command",
            description=(
                "Run a command on an agent: a shell command line (command) or a program and "
                "its arguments (argv), in workdir, with optional timeout, env and stdin. "
                "Returns exit code, stdout and stderr (very long output keeps its start and "
                "end). Output is streamed as log notifications while it runs. With "
                "background=true it returns a process id at once; use process_output, "
                "list_processes and signal_process. Cancelling the call kills the command "
                "and everything it started."
            ),
            input_schema=EXECUTE_COMMAND_INPUT,
            output_schema=EXECUTE_COMMAND_OUTPUT,
            handler=run,
            annotations=open_world(DESTRUCTIVE),
        ),
        Tool(
            name="list_processes",
            title="List background processes",
            description="List an agent's background processes (running and recently finished).",
            input_schema=LIST_PROCESSES_INPUT,
            output_schema=LIST_PROCESSES_OUTPUT,
            handler=list_processes,
            annotations=READ_ONLY,
        ),
        Tool(
            name="process_output",
            title="Read background process output",
            description=(
                "Read a background process's combined stdout and stderr from a byte offset "
                "(0, then next_offset); optionally wait a few seconds for new output. Also "
                "says whether it is still running and how it ended."
            ),
            input_schema=PROCESS_OUTPUT_INPUT,
            output_schema=PROCESS_OUTPUT_OUTPUT,
            handler=process_output,
            annotations=READ_ONLY,
        ),
        Tool(
            name="signal_process",
            title="Signal a background process",
            description=(
                "Send a signal (default TERM; KILL to force) to a background process and "
                "everything it started."
            ),
            input_schema=SIGNAL_PROCESS_INPUT,
            handler=signal_process,
            annotations=DESTRUCTIVE,
        ),
        Tool(
            name="read_file",
            title="Read a file",
            description=(
                "Read a file on an agent, from offset for up to limit bytes: UTF-8 text as "
                "is, binary data as base64 (images also as an image). Long files are read "
                "in pages: continue at next_offset."
            ),
            input_schema=READ_FILE_INPUT,
            output_schema=READ_FILE_OUTPUT,
            handler=read_file,
            annotations=READ_ONLY,
        ),
        Tool(
            name="write_file",
            title="Write a file",
            description=(
                "Create or replace a file on an agent with the given content, atomically "
                "(readers see the old or the new file, never a mix); optional octal mode. "
                "The parent directory must exist."
            ),
            input_schema=WRITE_FILE_INPUT,
            handler=write_file,
            annotations=DESTRUCTIVE,
        ),
        Tool(
            name="edit_files",
            title="Edit files",
            description=(
                "Apply exact search/replace edits to one or more text files on an agent, in "
                "order. Every search string must occur exactly once; if any edit does not "
                "apply, no file is changed and the error names the file and the search "
                "string."
            ),
            input_schema=EDIT_FILES_INPUT,
            output_schema=EDIT_FILES_OUTPUT,
            handler=edit_files,
            annotations=DESTRUCTIVE,
        ),
        Tool(
            name="list_directory",
            title="List a directory",
            description=(
                "List a directory on an agent: type, permissions, size, modification time "
                "and name of each entry (symlinks are shown, not followed)."
            ),
            input_schema=LIST_DIRECTORY_INPUT,
            output_schema=LIST_DIRECTORY_OUTPUT,
            handler=list_directory,
            annotations=READ_ONLY,
        ),
        Tool(
            name="check_port",
            title="Check a port",
            description=(
                "Tell whether something is listening on a TCP port on the agent host, and "
                "on which addresses (e.g. after starting a server). Makes no connection."
            ),
            input_schema=CHECK_PORT_INPUT,
            output_schema=CHECK_PORT_OUTPUT,
            handler=check_port,
            annotations=READ_ONLY,
        ),
    ]


@hookimpl
def register_tools(register: Callable[[Tool], None], config: Mapping[str, Any]) -> None:
    """Register every workspace tool; ``config`` is ``[plugins.workspace]``.

    Raises:
        ValueError: a bad ``[plugins.workspace]`` key or value (the message names it).
    """
    for tool in build_tools(parse_settings(config)):
        register(tool)
