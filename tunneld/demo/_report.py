"""What ``tunneld demo`` prints: how to connect MCP hosts, and the live status line."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Final, TextIO

import trio

from tunneld.demo._embedded import Demo, DemoInfo

__all__ = ["claude_desktop_config", "connect_text", "show_status", "tunneld_command"]

STATUS_INTERVAL: Final = 1.0


def tunneld_command() -> list[str]:
    """The absolute command that runs this tunneld: its script, else ``python -m tunneld``."""
    script = Path(sys.executable).parent / "tunneld"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("tunneld")
    if found:
        return [str(Path(found).resolve())]
    return [sys.executable, "-m", "tunneld"]


def claude_desktop_config(info: DemoInfo) -> dict[str, object]:
    """A ``claude_desktop_config.json`` entry: ``tunneld mcp`` over stdio to the socket."""
    command = tunneld_command()
    return {
        "mcpServers": {
            "tunneld-demo": {
                "command": command[0],
                "args": [*command[1:], "mcp", "--socket", str(info.socket_path)],
            }
        }
    }


def connect_text(info: DemoInfo) -> str:
    """The block that tells a person how to point MCP hosts at the demo."""
    auth = f"Authorization: Bearer {info.token}" if info.token else None
    lines = [
        f"MCP URL         {info.mcp_url}",
        f"token           {info.token}" if info.token else "token           none (--no-auth)",
        f"dashboard       {info.control_url}/ (log in as {info.user} / {info.password})",
        f"socket          {info.socket_path}",
        "",
        "Claude Desktop (claude_desktop_config.json; `tunneld mcp` bridges stdio to the socket):",
        json.dumps(claude_desktop_config(info), indent=2),
        "",
        "MCP Inspector (npx @modelcontextprotocol/inspector): Transport Type 'Streamable HTTP',",
        f"  URL {info.mcp_url}" + (f", header {auth}" if auth else ""),
        f"  or: npx @modelcontextprotocol/inspector --cli {info.mcp_url} --transport http"
        " --method tools/list" + (f" --header '{auth}'" if auth else ""),
    ]
    return "\n".join(lines)


async def show_status(
    demo: Demo,
    out: TextIO,
    *,
    tty: bool,
    interval: float = STATUS_INTERVAL,
) -> None:
    """Redraw the status line every ``interval`` seconds until cancelled.

    On a terminal the line is redrawn in place; otherwise a line is printed only when
    it changes (logs stay short). Cancellation ends the line with a newline.
    """
    last = ""
    try:
        while True:
            line = demo.status().line()
            if tty:
                out.write(f"\r\x1b[2K{line}")
                out.flush()
            elif line != last:
                out.write(f"{line}\n")
                out.flush()
            last = line
            await trio.sleep(interval)
    finally:
        if tty and last:
            out.write("\n")
            out.flush()
