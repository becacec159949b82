"""execute_command and the background-process tools (list, output, signal)."""

from __future__ import annotations

import shlex
import signal
from collections.abc import Mapping, Sequence
from typing import Any, Final

import trio

from tunneld.agent.client import AgentClient
from tunneld.mcp import ToolContext, ToolError, ToolResult
from tunneld.proto.agentrpc import Exit, Stderr, Stdout
from tunneld_workspace._errors import agent_rpc
from tunneld_workspace._output import BoundedOutput, complete_utf8_prefix, decode_text
from tunneld_workspace._settings import AGENT_PROPERTY, Settings

__all__ = [
    "EXECUTE_COMMAND_INPUT",
    "EXECUTE_COMMAND_OUTPUT",
    "LIST_PROCESSES_INPUT",
    "LIST_PROCESSES_OUTPUT",
    "PROCESS_OUTPUT_INPUT",
    "PROCESS_OUTPUT_OUTPUT",
    "SIGNALS",
    "SIGNAL_PROCESS_INPUT",
    "execute_command",
    "list_processes",
    "process_output",
    "signal_process",
]

# Output of a running command sent live as log notifications, per stream and interval;
# the full (bounded) output is in the result anyway.
_LIVE_CHUNK: Final = 8192
_PROCESS_OUTPUT_DEFAULT: Final = 64 * 1024
_PROCESS_OUTPUT_MAX: Final = 4 * 2**20
_WAIT_MAX: Final = 60.0
_POLL_INTERVAL: Final = 0.2
SIGNALS: Final = ("TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2", "STOP", "CONT")

EXECUTE_COMMAND_INPUT: Final = {
    "type": "object",
    "properties": {
        "agent": AGENT_PROPERTY,
        "command": {
            "type": "string",
            "minLength": 1,
            "maxLength": 65536,
            "description": "A shell command line, run with /bin/sh -c. Give this or argv.",
        },
        "argv": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "maxItems": 4096,
            "description": "A program and its arguments, run without a shell. Give this or "
            "command.",
        },
        "workdir": {
            "type": "string",
            "minLength": 1,
            "maxLength": 4096,
            "description": "Working directory (inside the agent's roots; default: the first root).",
        },
        "timeout": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 86400,
            "description": (
                "Seconds before the command's whole process group is killed (default and "
                "maximum: the agent's exec_timeout; a background process has none unless given)."
            ),
        },
        "env": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "propertyNames": {"pattern": "^[^=\\u0000]+$"},
            "maxProperties": 256,
            "description": "Environment variables added to the agent's environment.",
        },
        "stdin": {
            "type": "string",
            "maxLength": 4194304,
            "description": "Text fed to the command's standard input (then closed).",
        },
        "background": {
            "type": "boolean",
            "default": False,
            "description": (
                "Start the command in the background and return its process id at once; "
                "read its output with process_output, stop it with signal_process."
            ),
        },
    },
    "required": ["agent"],
    "additionalProperties": False,
}

EXECUTE_COMMAND_OUTPUT: Final = {
    "type": "object",
    "properties": {
        "background": {"type": "boolean"},
        "process_id": {"type": "string"},
        "exit_code": {"type": ["integer", "null"]},
        "signal": {"type": ["integer", "null"]},
        "timed_out": {"type": "boolean"},
        "stdout": {"type": "string"},
        "stderr": {"type": "string"},
        "stdout_bytes": {"type": "integer", "minimum": 0},
        "stderr_bytes": {"type": "integer", "minimum": 0},
        "truncated": {"type": "boolean"},
        "duration_s": {"type": "number", "minimum": 0},
    },
    "required": ["background"],
    "additionalProperties": False,
}

LIST_PROCESSES_INPUT: Final = {
    "type": "object",
    "properties": {"agent": AGENT_PROPERTY},
    "required": ["agent"],
    "additionalProperties": False,
}

_PROCESS: Final = {
    "type": "object",
    "properties": {
        "process_id": {"type": "string"},
        "pid": {"type": "integer"},
        "command": {"type": "string"},
        "running": {"type": "boolean"},
        "exit_code": {"type": ["integer", "null"]},
        "signal": {"type": ["integer", "null"]},
        "timed_out": {"type": "boolean"},
        "output_bytes": {"type": "integer", "minimum": 0},
    },
    "required": ["process_id", "pid", "command", "running", "exit_code", "signal"],
}

LIST_PROCESSES_OUTPUT: Final = {
    "type": "object",
    "properties": {"processes": {"type": "array", "items": _PROCESS}},
    "required": ["processes"],
    "additionalProperties": False,
}

_PROCESS_ID: Final = {
    "type": "string",
    "minLength": 1,
    "maxLength": 64,
    "description": "A background process id from execute_command or list_processes (e.g. p3).",
}

PROCESS_OUTPUT_INPUT: Final = {
    "type": "object",
    "properties": {
        "agent": AGENT_PROPERTY,
        "process_id": _PROCESS_ID,
        "offset": {
            "type": "integer",
            "minimum": 0,
            "default": 0,
            "description": "Byte offset to read from: 0, or next_offset of the previous call.",
        },
        "limit": {
            "type": "integer",
            "minimum": 1,
            "maximum": _PROCESS_OUTPUT_MAX,
            "default": _PROCESS_OUTPUT_DEFAULT,
            "description": "At most this many bytes.",
        },
        "wait": {
            "type": "number",
            "minimum": 0,
            "maximum": _WAIT_MAX,
            "default": 0,
            "description": (
                "Seconds to wait for new output or for the process to exit when there is "
                "nothing new yet."
            ),
        },
    },
    "required": ["agent", "process_id"],
    "additionalProperties": False,
}

PROCESS_OUTPUT_OUTPUT: Final = {
    "type": "object",
    "properties": {
        "process_id": {"type": "string"},
        "offset": {"type": "integer", "minimum": 0},
        "next_offset": {"type": "integer", "minimum": 0},
        "dropped": {"type": "integer", "minimum": 0},
        "output": {"type": "string"},
        "running": {"type": "boolean"},
        "exit_code": {"type": ["integer", "null"]},
        "signal": {"type": ["integer", "null"]},
        "timed_out": {"type": "boolean"},
    },
    "required": ["process_id", "offset", "next_offset", "output", "running"],
    "additionalProperties": False,
}

SIGNAL_PROCESS_INPUT: Final = {
    "type": "object",
    "properties": {
        "agent": AGENT_PROPERTY,
        "process_id": _PROCESS_ID,
        "signal": {
            "type": "string",
            "enum": list(SIGNALS),
            "default": "TERM",
            "description": "TERM asks it to stop, KILL forces it; sent to its whole process group.",
        },
    },
    "required": ["agent", "process_id"],
    "additionalProperties": False,
}


def _status(code: int | None, sig: int | None, timed_out: bool) -> str:
    if timed_out:
        return f"timed out; its process group was killed (signal {_signal_name(sig)})"
    if sig is not None:
        return f"killed by signal {_signal_name(sig)}"
    return f"exit code {code}"


def _signal_name(number: int | None) -> str:
    if number is None:
        return "?"
    try:
        return f"{signal.Signals(number).name} ({number})"
    except ValueError:
        return str(number)


class _Live:
    """Progress and live output of a running command, sent at most once per interval."""

    def __init__(self, ctx: ToolContext, agent: str, timeout: float | None) -> None:
        self.ctx = ctx
        self.agent = agent
        self.timeout = timeout
        self.started = trio.current_time()
        self.bytes = 0
        self.pending: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self.skipped: dict[str, int] = {"stdout": 0, "stderr": 0}

    def add(self, stream: str, data: bytes) -> None:
        self.bytes += len(data)
        buffer = self.pending[stream]
        room = _LIVE_CHUNK - len(buffer)
        buffer += data[: max(room, 0)]
        self.skipped[stream] += max(len(data) - max(room, 0), 0)

    async def report(self) -> None:
        elapsed = trio.current_time() - self.started
        await self.ctx.progress(
            round(elapsed, 1),
            self.timeout,
            f"running for {elapsed:.0f} s; {self.bytes} bytes of output",
        )
        await self.flush()

    async def flush(self) -> None:
        for stream, buffer in self.pending.items():
            if not buffer and not self.skipped[stream]:
                continue
            keep = complete_utf8_prefix(bytes(buffer))
            if not keep and not self.skipped[stream]:
                continue  # only the start of a character so far: it goes out with the rest
            text = decode_text(bytes(buffer[:keep]))
            if self.skipped[stream]:
                text += f"\n[... {self.skipped[stream]} bytes not shown live ...]\n"
            data = {"agent": self.agent, "stream": stream, "text": text}
            await self.ctx.log("info", data, "execute_command")
            del buffer[:keep]
            self.skipped[stream] = 0


def _command(args: Mapping[str, Any]) -> tuple[list[str] | None, str | None, str]:
    command = args.get("command")
    argv = args.get("argv")
    if (command is None) == (argv is None):
        raise ToolError(
            "execute_command: give exactly one of 'command' (a shell command line) "
            "or 'argv' (a program and its arguments)"
        )
    if argv is not None:
        return list(argv), None, shlex.join(argv)
    return None, str(command), str(command)


async def execute_command(ctx: ToolContext, args: dict[str, Any], settings: Settings) -> ToolResult:
    """Run a command on the agent (see the tool description).

    Cancellation: cancelling the call closes the rpc stream, and the agent kills the
    command's whole process group.
    """
    agent = str(args["agent"])
    argv, shell, shown = _command(args)
    stdin = args.get("stdin")
    options: dict[str, Any] = {
        "shell": shell,
        "cwd": args.get("workdir"),
        "env": args.get("env"),
        "time_limit": args.get("timeout"),
        "stdin": None if stdin is None else str(stdin).encode("utf-8"),
    }
    async with agent_rpc(ctx, agent, "execute_command") as client:
        if args.get("background", False):
            ident = await client.start_background(argv, **options)
            await ctx.log(
                "info", {"agent": agent, "process_id": ident, "started": shown}, "execute_command"
            )
            return ToolResult.text(
                f"Started in the background on {agent} as process {ident}: {shown}\n"
                f"Read its output with process_output(process_id={ident!r}); "
                "stop it with signal_process.",
                structured={"background": True, "process_id": ident},
            )
        return await _foreground(ctx, client, agent, argv, options, settings)


async def _foreground(
    ctx: ToolContext,
    client: AgentClient,
    agent: str,
    argv: Sequence[str] | None,
    options: dict[str, Any],
    settings: Settings,
) -> ToolResult:
    out = BoundedOutput(settings.max_output)
    err = BoundedOutput(settings.max_output)
    live = _Live(ctx, agent, options["time_limit"])
    next_report = live.started + settings.progress_interval
    async with client.exec(argv, **options) as run:
        while run.exit is None:
            # A deadline on the receive instead of a reporter task: receiving is
            # cancel-safe (no bytes lost), and agent errors then need no unwrapping
            # from an exception group.
            with trio.move_on_at(next_report):
                event = await run.__anext__()
                if isinstance(event, Stdout):
                    out.append(event.data)
                    live.add("stdout", event.data)
                elif isinstance(event, Stderr):
                    err.append(event.data)
                    live.add("stderr", event.data)
            if trio.current_time() >= next_report:
                await live.report()
                next_report = trio.current_time() + settings.progress_interval
    await live.flush()
    exit_: Exit = run.exit
    duration = trio.current_time() - live.started
    status = _status(exit_.code, exit_.signal, exit_.timed_out)
    parts = [f"{status} after {duration:.1f} s"]
    for name, output in (("stdout", out), ("stderr", err)):
        if output.total:
            note = f", middle {output.omitted} bytes omitted" if output.truncated else ""
            parts.append(f"--- {name} ({output.total} bytes{note}) ---\n{output.text()}")
    if not out.total and not err.total:
        parts.append("(no output)")
    structured = {
        "background": False,
        "exit_code": exit_.code,
        "signal": exit_.signal,
        "timed_out": exit_.timed_out,
        "stdout": out.text(),
        "stderr": err.text(),
        "stdout_bytes": out.total,
        "stderr_bytes": err.total,
        "truncated": out.truncated or err.truncated,
        "duration_s": round(duration, 3),
    }
    return ToolResult.text("\n".join(parts), structured=structured)


def _describe(process: Mapping[str, Any]) -> dict[str, Any]:
    argv = process.get("argv") or []
    command = argv[2] if argv[:2] == ["/bin/sh", "-c"] and len(argv) == 3 else shlex.join(argv)
    return {
        "process_id": str(process.get("id")),
        "pid": int(process.get("pid") or 0),
        "command": command,
        "running": bool(process.get("running")),
        "exit_code": process.get("exit_code"),
        "signal": process.get("signal"),
        "timed_out": bool(process.get("timed_out")),
        "output_bytes": int(process.get("output_size") or 0),
    }


async def list_processes(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    """The agent's background processes, running and recently finished."""
    agent = str(args["agent"])
    async with agent_rpc(ctx, agent, "list_processes") as client:
        processes = [_describe(p) for p in await client.process_list()]
    if not processes:
        text = f"No background processes on {agent}."
    else:
        lines = []
        for p in processes:
            state = (
                "running" if p["running"] else _status(p["exit_code"], p["signal"], p["timed_out"])
            )
            lines.append(
                f"{p['process_id']}  pid {p['pid']}  {state}  "
                f"{p['output_bytes']} bytes of output  {p['command']}"
            )
        text = "\n".join(lines)
    return ToolResult.text(text, structured={"processes": processes})


async def process_output(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    """A background process's combined output from ``offset``, waiting up to ``wait`` s."""
    agent = str(args["agent"])
    ident = str(args["process_id"])
    offset = int(args.get("offset", 0))
    limit = int(args.get("limit", _PROCESS_OUTPUT_DEFAULT))
    deadline = trio.current_time() + min(float(args.get("wait", 0)), _WAIT_MAX)
    async with agent_rpc(ctx, agent, "process_output") as client:
        while True:
            answer = await client.process_output(ident, offset, limit)
            if answer["data"] or not answer["running"] or trio.current_time() >= deadline:
                break
            await trio.sleep(_POLL_INTERVAL)
    data: bytes = answer["data"]
    start = int(answer["offset"])
    keep = complete_utf8_prefix(data) if answer["running"] else len(data)
    text = decode_text(data[:keep])
    next_offset = start + keep
    running = bool(answer["running"])
    structured = {
        "process_id": ident,
        "offset": start,
        "next_offset": next_offset,
        "dropped": int(answer.get("dropped") or 0),
        "output": text,
        "running": running,
        "exit_code": answer.get("exit_code"),
        "signal": answer.get("signal"),
        "timed_out": bool(answer.get("timed_out")),
    }
    notes = []
    if structured["dropped"]:
        notes.append(
            f"{structured['dropped']} earlier bytes were dropped from the agent's output buffer"
        )
    if running:
        notes.append(f"process {ident} is running; read on with offset={next_offset}")
    else:
        ended = (answer.get("exit_code"), answer.get("signal"), bool(answer.get("timed_out")))
        state = _status(*ended)
        more = f"; read on with offset={next_offset}" if len(data) >= limit else ""
        notes.append(f"process {ident} ended: {state}{more}")
    body = text or "(no new output)"
    separator = "" if body.endswith("\n") else "\n"
    footer = "\n".join(f"[{n}]" for n in notes)
    return ToolResult.text(f"{body}{separator}{footer}", structured=structured)


async def signal_process(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    """Send a signal to a background process's whole process group."""
    agent = str(args["agent"])
    ident = str(args["process_id"])
    name = str(args.get("signal", "TERM"))
    if name not in SIGNALS:
        raise ToolError(f"signal_process: signal must be one of {', '.join(SIGNALS)}")
    async with agent_rpc(ctx, agent, "signal_process") as client:
        await client.process_signal(ident, name)
    return ToolResult.text(f"Sent SIG{name} to process {ident} on {agent} (its process group).")
