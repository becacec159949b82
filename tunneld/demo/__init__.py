"""``tunneld demo``: the whole system on loopback, with nothing to configure.

It starts a real control plane (coordinator, DERP relay, STUN; SQLite in a temporary
directory) with a user who has a password (for the dashboard) and tokens, an agent
serving a temporary workspace, and the daemon (``tunneld.daemon.Daemon``) with its
plugins and MCP server, all in one process on loopback ports it picks. Then it makes
one real MCP tool call over HTTP to the daemon (``initialize``, ``tools/list``, the
workspace plugin's ``read_file`` on the agent), which rides the daemon's one overlay,
and prints how to connect MCP hosts. It keeps running with a live status line until
Ctrl-C, then stops everything and removes the temporary directory.
"""

from __future__ import annotations

from tunneld.demo._embedded import (
    AGENT,
    DAEMON,
    USER,
    Demo,
    DemoError,
    DemoInfo,
    DemoOptions,
    DemoStatus,
    ToolCall,
    check_plugins,
    embedded_demo,
    loopback_overlay,
    wait_joined,
)
from tunneld.demo._report import claude_desktop_config, connect_text, show_status, tunneld_command

__all__ = [
    "AGENT",
    "DAEMON",
    "USER",
    "Demo",
    "DemoError",
    "DemoInfo",
    "DemoOptions",
    "DemoStatus",
    "ToolCall",
    "check_plugins",
    "claude_desktop_config",
    "connect_text",
    "embedded_demo",
    "loopback_overlay",
    "show_status",
    "tunneld_command",
    "wait_joined",
]
