"""The workspace plugin's tools, called through a real ToolContext.

The context's AgentAccess leases tunnels from a real TunnelTable and opens real mux
streams over loopback UDP to real AgentServices (real processes, real files under
tmp_path). Arguments are validated against each tool's input schema first, as the MCP
server does, and structured results against its output schema.
"""

from __future__ import annotations

import base64
import importlib.metadata
import os
import re
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pluggy
import pytest
import trio
from _agent_support import make_config, poll_pause
from hypothesis import given, settings
from hypothesis import strategies as st
from tunneld_workspace import Settings, build_tools, parse_settings
from tunneld_workspace._errors import describe_agent_error
from tunneld_workspace._output import BoundedOutput, complete_utf8_prefix

import tunneld.hookspecs
from tunneld.agent import AgentServices
from tunneld.agent.client import AgentError
from tunneld.config import AgentConfig
from tunneld.daemon import TunnelTable, UnknownAgentError
from tunneld.mcp import (
    DESTRUCTIVE,
    MUTATING,
    READ_ONLY,
    Caller,
    Registry,
    Tool,
    ToolAnnotations,
    ToolContext,
    ToolError,
    ToolResult,
    open_world,
)
from tunneld.net.mux import MuxConnection, MuxStream, UdpDatagramTransport

README = Path(__file__).parent.parent / "plugins" / "tunneld-workspace" / "README.md"
Validator = jsonschema.Draft202012Validator


# --------------------------------------------------------------------------- the rig


@dataclass
class RecordingChannel:
    """A RequestChannel that keeps every progress and log notification."""

    progress_calls: list[tuple[float, float | None, str | None]] = field(default_factory=list)
    logs: list[tuple[str, Any, str | None]] = field(default_factory=list)

    async def progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        self.progress_calls.append((progress, total, message))

    async def log(self, level: str, data: object, logger: str | None = None) -> None:
        self.logs.append((level, data, logger))

    async def request(self, method: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
        raise ToolError(f"the client does not support {method}")

    def logged_text(self) -> str:
        return "".join(d["text"] for _, d, _ in self.logs if isinstance(d, dict) and "text" in d)


class Backend:
    """TunnelBackend over the agents this test started (the peer id is the agent name)."""

    def __init__(self, connections: dict[str, MuxConnection]) -> None:
        self.connections = connections

    async def add_tunnel(self, agent: str) -> str:
        await trio.lowlevel.checkpoint()
        if agent not in self.connections:
            raise UnknownAgentError(f"no agent named {agent!r} is known", agent=agent)
        return agent

    async def wait_reachable(self, peer: str, deadline: float) -> None:
        await trio.lowlevel.checkpoint()

    async def remove_tunnel(self, peer: str) -> None:
        await trio.lowlevel.checkpoint()


class Agents:
    """AgentAccess: every stream holds a lease on the table, as the daemon's does."""

    def __init__(self, table: TunnelTable, connections: dict[str, MuxConnection]) -> None:
        self.table = table
        self.connections = connections

    @asynccontextmanager
    async def open_stream(self, agent: str, service: str) -> AsyncIterator[MuxStream]:
        async with self.table.acquire(agent) as lease:
            stream = await self.connections[lease.peer].open_stream(service)
            try:
                yield stream
            finally:
                await stream.aclose()

    async def list_agents(self) -> list[Mapping[str, object]]:
        return [{"name": n, "online": True, "path": "direct"} for n in sorted(self.connections)]


@dataclass
class Rig:
    ctx: ToolContext
    channel: RecordingChannel
    table: TunnelTable
    services: dict[str, AgentServices]
    connections: dict[str, MuxConnection]
    root: Path

    async def call(self, name: str, args: dict[str, Any], **settings: Any) -> ToolResult:
        return await call(self.ctx, name, args, Settings(progress_interval=0.2, **settings))

    async def fails(self, name: str, args: dict[str, Any]) -> str:
        with pytest.raises(ToolError) as info:
            await self.call(name, args)
        message = str(info.value)
        assert "Traceback" not in message
        return message


def tools(settings: Settings | None = None) -> dict[str, Tool]:
    return {t.name: t for t in build_tools(settings or Settings())}


async def call(ctx: ToolContext, name: str, args: dict[str, Any], settings: Settings) -> ToolResult:
    tool = tools(settings)[name]
    Validator(tool.input_schema).validate(args)  # what the server checks before the handler
    result = await tool.handler(ctx, args)
    assert isinstance(result, ToolResult)
    assert not result.is_error
    assert result.content
    assert result.content[0]["type"] == "text"
    if tool.output_schema is not None:
        assert result.structured is not None
        Validator(tool.output_schema).validate(result.structured)
    return result


async def _serve_agent(
    nursery: trio.Nursery, config: AgentConfig
) -> tuple[AgentServices, MuxConnection]:
    """An agent (AgentServices behind a mux connection) and the daemon's side of the link."""
    services = AgentServices(config, kill_grace=0.5)
    await nursery.start(services.serve)
    daemon_sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    agent_sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await daemon_sock.bind(("127.0.0.1", 0))
    await agent_sock.bind(("127.0.0.1", 0))
    daemon_side = UdpDatagramTransport(daemon_sock, agent_sock.getsockname())
    agent_side = UdpDatagramTransport(agent_sock, daemon_sock.getsockname())
    daemon_mux = MuxConnection(daemon_side, is_initiator=True, path=daemon_side.path)
    agent_mux = MuxConnection(agent_side, is_initiator=False, path=agent_side.path)
    await nursery.start(daemon_mux.run)
    await nursery.start(agent_mux.run)

    async def accept() -> None:
        async with trio.open_nursery() as streams:
            while True:
                try:
                    stream = await agent_mux.accept_stream()
                except trio.EndOfChannel:
                    return  # the link was closed (a test broke it on purpose)
                streams.start_soon(services.dispatch, stream.service, stream)

    nursery.start_soon(accept)
    return services, daemon_mux


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.txt").write_text("secret outside the roots\n")
    async with trio.open_nursery() as nursery:
        work, work_mux = await _serve_agent(nursery, make_config(root))
        locked, locked_mux = await _serve_agent(
            nursery, make_config(root, allow_exec=False, allow_write=False)
        )
        connections = {"work": work_mux, "locked": locked_mux}
        table = TunnelTable(Backend(connections), idle_timeout=60)
        await nursery.start(table.run)
        channel = RecordingChannel()
        ctx = ToolContext(
            caller=Caller(subject="tester"),
            agents=Agents(table, connections),
            channel=channel,
            plugin="workspace",
        )
        yield Rig(ctx, channel, table, {"work": work, "locked": locked}, connections, root)
        nursery.cancel_scope.cancel()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


# --------------------------------------------------------------------------- registration


_PRESETS = {"READ_ONLY": READ_ONLY, "MUTATING": MUTATING, "DESTRUCTIVE": DESTRUCTIVE}


def _readme_table() -> dict[str, ToolAnnotations]:
    rows = re.findall(r"^\| `([a-z_]+)` \| `([A-Za-z_()]+)` \| .+ \|$", README.read_text(), re.M)
    table = {}
    for name, written in rows:
        match = re.fullmatch(r"open_world\((\w+)\)|(\w+)", written)
        assert match, written
        if match.group(1):
            table[name] = open_world(_PRESETS[match.group(1)])
        else:
            table[name] = _PRESETS[match.group(2)]
    return table


def test_registered_tools_and_annotations_match_the_readme_table() -> None:
    table = _readme_table()
    registered = {t.name: t.annotations for t in build_tools(Settings())}
    assert registered == table
    assert len(table) == 10


def test_schemas_are_strict_and_valid() -> None:
    for tool in build_tools(Settings()):
        Validator.check_schema(tool.input_schema)
        assert tool.input_schema["additionalProperties"] is False, tool.name
        # Several model APIs refuse a top-level combinator in a tool's input schema.
        assert not {"oneOf", "anyOf", "allOf"} & set(tool.input_schema), tool.name
        if tool.output_schema is not None:
            Validator.check_schema(tool.output_schema)
        if tool.name != "list_agents":
            assert "agent" in tool.input_schema["required"], tool.name
        assert tool.title
        assert tool.description
        tool.to_json()  # what tools/list sends


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("execute_command", {"agent": "work", "command": "true", "shell": "bash"}),
        ("execute_command", {"agent": "work", "command": "true", "timeout": 0}),
        ("execute_command", {"agent": "work", "argv": []}),
        ("execute_command", {"agent": "work", "command": "x", "env": {"A=B": "c"}}),
        ("execute_command", {"command": "true"}),
        ("check_port", {"agent": "work", "port": 70000}),
        ("read_file", {"agent": "work", "path": "a", "offset": -1}),
        ("read_file", {"agent": "work", "path": "a", "encoding": "latin-1"}),
        ("write_file", {"agent": "work", "path": "a", "content": "x", "mode": "999"}),
        ("edit_files", {"agent": "work", "edits": []}),
        ("edit_files", {"agent": "work", "edits": [{"path": "a", "search": "", "replace": ""}]}),
        ("signal_process", {"agent": "work", "process_id": "p1", "signal": "BOOM"}),
        ("process_output", {"agent": "work", "process_id": "p1", "wait": 3600}),
        ("list_agents", {"agent": "work"}),
    ],
)
def test_input_schemas_refuse_bad_arguments(name: str, args: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        Validator(tools()[name].input_schema).validate(args)


def test_plugin_is_found_by_entry_point_and_registers_through_pluggy() -> None:
    [entry] = [e for e in importlib.metadata.entry_points(group="tunneld") if e.name == "workspace"]
    module = entry.load()
    assert module.ENABLED_BY_DEFAULT is True
    manager = pluggy.PluginManager(tunneld.hookspecs.PROJECT)
    manager.add_hookspecs(tunneld.hookspecs)
    manager.register(module, name="workspace")
    registry = Registry()
    manager.hook.register_tools(register=registry.add_tool, config={"max_output": "8KiB"})
    assert sorted(registry.tools) == sorted(_readme_table())


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"max_outptu": 1}, "unknown key 'max_outptu'"),
        ({"max_output": 10}, r"max_output: expected 1024\.\.16777216 bytes"),
        ({"max_output": "lots"}, "max_output: expected a size"),
        ({"max_output": True}, "max_output: expected a size"),
    ],
)
def test_bad_config_names_the_key(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_settings(config)
    assert parse_settings({"max_output": "1MiB"}).max_output == 2**20


# --------------------------------------------------------------------------- output helpers

CI = settings(derandomize=True, max_examples=200, deadline=None)


@CI
@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(2, 400))
def test_bounded_output_keeps_head_and_tail(chunks: list[bytes], limit: int) -> None:
    output = BoundedOutput(limit)
    for chunk in chunks:
        output.append(chunk)
    everything = b"".join(chunks)
    assert output.total == len(everything)
    text = output.text()
    if len(everything) <= limit:
        assert not output.truncated
        assert text == everything.decode("utf-8", errors="replace")
    else:
        head, tail = everything[: limit // 2], everything[len(everything) - (limit - limit // 2) :]
        assert output.omitted == len(everything) - limit
        assert text == (
            head.decode("utf-8", errors="replace")
            + f"\n[... {output.omitted} bytes omitted ...]\n"
            + tail.decode("utf-8", errors="replace")
        )


@CI
@given(st.text(max_size=50), st.data())
def test_utf8_pages_never_split_a_character(text: str, data: st.DataObject) -> None:
    raw = text.encode("utf-8")
    cut = data.draw(st.integers(0, len(raw)))
    keep = complete_utf8_prefix(raw[:cut])
    assert cut - 3 <= keep <= cut
    raw[:keep].decode("utf-8")  # strict: a whole number of characters
    raw[keep:].decode("utf-8")


# --------------------------------------------------------------------------- agents


async def test_list_agents(rig: Rig) -> None:
    result = await rig.call("list_agents", {})
    assert result.structured is not None
    assert [a["name"] for a in result.structured["agents"]] == ["locked", "work"]
    assert "work (online: True, path: direct)" in result.content[0]["text"]


async def test_unknown_agent_is_a_clear_error(rig: Rig) -> None:
    message = await rig.fails("read_file", {"agent": "nope", "path": "a"})
    assert message == (
        "read_file: cannot reach agent 'nope' (unknown_agent): no agent named 'nope' is known"
    )


# --------------------------------------------------------------------------- execute_command


async def test_execute_command_foreground(rig: Rig) -> None:
    (rig.root / "sub").mkdir()
    result = await rig.call(
        "execute_command",
        {
            "agent": "work",
            "command": 'echo "$GREETING from $(pwd)"; cat; echo oops >&2; exit 3',
            "workdir": "sub",
            "env": {"GREETING": "hello"},
            "stdin": "fed in\n",
        },
    )
    assert result.structured is not None
    assert result.structured["exit_code"] == 3
    assert result.structured["stdout"] == f"hello from {rig.root / 'sub'}\nfed in\n"
    assert result.structured["stderr"] == "oops\n"
    assert result.structured["truncated"] is False
    text = result.content[0]["text"]
    assert text.startswith("exit code 3 after ")
    assert "--- stdout (" in text
    assert "--- stderr (5 bytes) ---\noops" in text
    argv = await rig.call(
        "execute_command", {"agent": "work", "argv": ["printf", "%s|", "a b", "c"]}
    )
    assert argv.structured is not None
    assert argv.structured["stdout"] == "a b|c|"
    assert argv.structured["exit_code"] == 0
    assert rig.table.leases("work") == 0  # every call released its lease


async def test_execute_command_streams_progress_and_output_while_running(rig: Rig) -> None:
    script = "echo first; sleep 1.2; echo second >&2; sleep 0.4"
    result = await rig.call("execute_command", {"agent": "work", "command": script, "timeout": 20})
    assert result.structured is not None
    assert result.structured["exit_code"] == 0
    calls = rig.channel.progress_calls
    assert len(calls) >= 3
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)  # progress only increases
    assert all(c[1] == 20 for c in calls)
    logged = [(d["stream"], d["text"]) for _, d, logger in rig.channel.logs if "stream" in d]
    assert ("stdout", "first\n") in logged
    assert ("stderr", "second\n") in logged
    # "first" was sent while the command still ran: before some progress notification.
    assert all(logger == "execute_command" for _, _, logger in rig.channel.logs)


async def test_execute_command_bounds_its_output(rig: Rig) -> None:
    script = "printf 'HEAD'; head -c 100000 /dev/zero | tr '\\0' x; printf 'TAIL'"
    result = await rig.call(
        "execute_command", {"agent": "work", "command": script}, max_output=1024
    )
    assert result.structured is not None
    assert result.structured["stdout_bytes"] == 100008
    assert result.structured["truncated"] is True
    stdout = result.structured["stdout"]
    assert stdout.startswith("HEADxxx")
    assert stdout.endswith("xxxTAIL")
    assert "[... 98984 bytes omitted ...]" in stdout
    assert "middle 98984 bytes omitted" in result.content[0]["text"]
    assert len(rig.channel.logged_text()) < 20000  # live output is bounded too


async def test_execute_command_timeout_and_errors(rig: Rig) -> None:
    result = await rig.call(
        "execute_command", {"agent": "work", "command": "sleep 30", "timeout": 0.5}
    )
    assert result.structured is not None
    assert result.structured["timed_out"] is True
    assert result.structured["exit_code"] is None
    assert result.content[0]["text"].startswith("timed out; its process group was killed")
    message = await rig.fails("execute_command", {"agent": "work", "command": "x", "argv": ["y"]})
    assert "exactly one of 'command'" in message
    message = await rig.fails("execute_command", {"agent": "work"})
    assert "exactly one of 'command'" in message
    message = await rig.fails("execute_command", {"agent": "work", "argv": ["/no/such/program"]})
    assert message.startswith("execute_command on agent 'work' failed (not_found): exec /no/such")
    message = await rig.fails(
        "execute_command", {"agent": "work", "command": "pwd", "workdir": "/"}
    )
    assert "(path_outside_roots)" in message
    assert "[agent].roots" in message
    message = await rig.fails("execute_command", {"agent": "locked", "command": "true"})
    assert message.startswith("execute_command on agent 'locked' failed (denied)")
    assert "allow_exec" in message


async def test_cancelling_the_call_kills_the_remote_process_group(rig: Rig) -> None:
    script = "echo leader $$; sleep 300 & echo child $!; wait"
    done = trio.Event()
    with trio.CancelScope() as scope:

        async def watch() -> None:
            with trio.fail_after(20):
                while "child" not in rig.channel.logged_text():
                    await poll_pause()
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await rig.call("execute_command", {"agent": "work", "command": script})
            done.set()
    assert scope.cancelled_caught
    assert not done.is_set()
    words = rig.channel.logged_text().split()
    pids = [int(words[words.index("leader") + 1]), int(words[words.index("child") + 1])]
    with trio.fail_after(10):
        while any(_alive(p) for p in pids):
            await poll_pause()
    assert rig.table.leases("work") == 0
    # The agent is fine afterwards.
    result = await rig.call("execute_command", {"agent": "work", "command": "echo still here"})
    assert result.structured is not None
    assert result.structured["stdout"] == "still here\n"


async def test_a_broken_connection_mid_command_is_a_tool_error(rig: Rig) -> None:
    async def break_link() -> None:
        with trio.fail_after(20):
            while "running" not in rig.channel.logged_text():
                await poll_pause()
        await rig.connections["work"].aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(break_link)
        message = await rig.fails(
            "execute_command", {"agent": "work", "command": "echo running $$; exec sleep 300"}
        )
    assert message == (
        "execute_command: the connection to agent 'work' broke during the call; "
        "the agent may have restarted: try again"
    )
    assert rig.table.leases("work") == 0
    # The agent lost the stream, so it killed the command.
    pid = int(rig.channel.logged_text().split()[1])
    with trio.fail_after(10):
        while _alive(pid):
            await poll_pause()


def test_an_old_agent_is_told_apart_from_a_bad_request() -> None:
    old = AgentError("invalid_request", "request: unknown op 'check_port'")
    assert describe_agent_error("check_port", "web1", old) == (
        "check_port on agent 'web1' failed (invalid_request): request: unknown op "
        "'check_port'; the agent is too old for check_port: upgrade tunneld on it"
    )


# --------------------------------------------------------------------------- background


async def test_background_process_lifecycle(rig: Rig) -> None:
    started = await rig.call(
        "execute_command",
        {"agent": "work", "command": "echo started; sleep 300", "background": True},
    )
    assert started.structured is not None
    ident = started.structured["process_id"]
    assert started.structured == {"background": True, "process_id": ident}
    assert f"process_output(process_id={ident!r})" in started.content[0]["text"]

    listed = await rig.call("list_processes", {"agent": "work"})
    assert listed.structured is not None
    [entry] = listed.structured["processes"]
    assert entry["process_id"] == ident
    assert entry["running"] is True
    assert entry["command"] == "echo started; sleep 300"
    pid = entry["pid"]
    assert _alive(pid)

    output = await rig.call("process_output", {"agent": "work", "process_id": ident, "wait": 10})
    assert output.structured is not None
    assert output.structured["output"] == "started\n"
    assert output.structured["running"] is True
    assert output.structured["next_offset"] == 8
    assert "read on with offset=8" in output.content[0]["text"]

    # Nothing new: waits a little, then answers.
    again = await rig.call(
        "process_output", {"agent": "work", "process_id": ident, "offset": 8, "wait": 0.3}
    )
    assert again.structured is not None
    assert again.structured["output"] == ""
    assert "(no new output)" in again.content[0]["text"]

    signalled = await rig.call("signal_process", {"agent": "work", "process_id": ident})
    assert "SIGTERM" in signalled.content[0]["text"]
    ended = await rig.call(
        "process_output", {"agent": "work", "process_id": ident, "offset": 8, "wait": 10}
    )
    assert ended.structured is not None
    assert ended.structured["running"] is False
    assert ended.structured["signal"] == 15
    assert "ended: killed by signal SIGTERM (15)" in ended.content[0]["text"]
    assert not _alive(pid)

    message = await rig.fails("signal_process", {"agent": "work", "process_id": ident})
    assert "(no_such_process)" in message
    assert "has exited" in message
    message = await rig.fails("process_output", {"agent": "work", "process_id": "p999"})
    assert "(no_such_process)" in message
    assert "list_processes" in message
    listed = await rig.call("list_processes", {"agent": "work"})
    assert "killed by signal SIGTERM" in listed.content[0]["text"]
    message = await rig.fails("list_processes", {"agent": "locked"})
    assert "(denied)" in message


# --------------------------------------------------------------------------- files


async def test_read_file_text_paging_and_binary(rig: Rig) -> None:
    (rig.root / "notes.txt").write_text("héllo wörld\n")
    whole = await rig.call("read_file", {"agent": "work", "path": "notes.txt"})
    assert whole.content[0]["text"] == "héllo wörld\n"
    assert whole.structured is not None
    assert whole.structured["eof"] is True
    assert whole.structured["encoding"] == "text"

    # A page ending inside "é" stops before it; the next page starts with it.
    first = await rig.call("read_file", {"agent": "work", "path": "notes.txt", "limit": 2})
    assert first.structured is not None
    assert first.structured["content"] == "h"
    assert first.structured["next_offset"] == 1
    assert "read on with offset=1" in first.content[0]["text"]
    second = await rig.call(
        "read_file", {"agent": "work", "path": "notes.txt", "offset": 1, "limit": 3}
    )
    assert second.structured is not None
    assert second.structured["content"] == "él"

    blob = bytes(range(256))
    (rig.root / "data.bin").write_bytes(blob)
    binary = await rig.call("read_file", {"agent": "work", "path": "data.bin"})
    assert binary.structured is not None
    assert binary.structured["encoding"] == "base64"
    assert base64.b64decode(binary.structured["content"]) == blob
    assert binary.content[0]["text"].startswith("data.bin is binary (256 bytes)")
    forced = await rig.call("read_file", {"agent": "work", "path": "data.bin", "encoding": "text"})
    assert forced.structured is not None
    assert forced.structured["encoding"] == "text"

    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
    (rig.root / "pic.png").write_bytes(png)
    image = await rig.call("read_file", {"agent": "work", "path": "pic.png"})
    assert image.content[1] == {
        "type": "image",
        "data": base64.b64encode(png).decode(),
        "mimeType": "image/png",
    }
    (rig.root / "empty").write_bytes(b"")
    empty = await rig.call("read_file", {"agent": "work", "path": "empty"})
    assert empty.content[0]["text"] == "(empty is empty)"
    past = await rig.call("read_file", {"agent": "work", "path": "notes.txt", "offset": 100})
    assert "past the end" in past.content[0]["text"]


async def test_file_paths_are_confined_to_the_roots(rig: Rig, tmp_path: Path) -> None:
    (rig.root / "escape").symlink_to(tmp_path / "outside.txt")
    for path in ("../outside.txt", str(tmp_path / "outside.txt"), "escape", "/etc/passwd"):
        message = await rig.fails("read_file", {"agent": "work", "path": path})
        assert message.startswith("read_file on agent 'work' failed (path_outside_roots)")
        assert "secret" not in message
        message = await rig.fails("write_file", {"agent": "work", "path": path, "content": "x"})
        assert "(path_outside_roots)" in message
        edit = {"path": path, "search": "secret", "replace": "public"}
        message = await rig.fails("edit_files", {"agent": "work", "edits": [edit]})
        assert "(path_outside_roots)" in message
        message = await rig.fails("list_directory", {"agent": "work", "path": path})
        assert "(path_outside_roots)" in message
    assert (tmp_path / "outside.txt").read_text() == "secret outside the roots\n"
    message = await rig.fails("read_file", {"agent": "work", "path": "missing.txt"})
    assert "(not_found)" in message
    (rig.root / "dir").mkdir()
    message = await rig.fails("read_file", {"agent": "work", "path": "dir"})
    assert "(is_a_directory)" in message


async def test_write_file(rig: Rig) -> None:
    result = await rig.call(
        "write_file", {"agent": "work", "path": "new.sh", "content": "#!/bin/sh\n", "mode": "0750"}
    )
    assert result.content[0]["text"] == "Wrote 10 bytes to new.sh (mode 0750)."
    target = rig.root / "new.sh"
    assert target.read_text() == "#!/bin/sh\n"
    assert target.stat().st_mode & 0o7777 == 0o750
    # Replacing keeps the mode unless given.
    await rig.call("write_file", {"agent": "work", "path": "new.sh", "content": "ünïcode"})
    assert target.read_text() == "ünïcode"
    assert target.stat().st_mode & 0o7777 == 0o750
    blob = os.urandom(300)
    await rig.call(
        "write_file",
        {
            "agent": "work",
            "path": "blob.bin",
            "content": base64.b64encode(blob).decode(),
            "encoding": "base64",
        },
    )
    assert (rig.root / "blob.bin").read_bytes() == blob
    assert (rig.root / "blob.bin").stat().st_mode & 0o777 == 0o644
    message = await rig.fails(
        "write_file", {"agent": "work", "path": "x", "content": "not base64!", "encoding": "base64"}
    )
    assert message == "write_file: content is not valid base64"
    message = await rig.fails("write_file", {"agent": "work", "path": "no/dir/f", "content": "x"})
    assert "(not_found)" in message
    assert "parent directory must exist" in message
    message = await rig.fails("write_file", {"agent": "locked", "path": "f", "content": "x"})
    assert "(denied)" in message
    assert "allow_write" in message
    assert not (rig.root / "f").exists()
    # No temporary files were left behind.
    assert sorted(p.name for p in rig.root.iterdir()) == ["blob.bin", "new.sh"]


async def test_edit_files_applies_all_or_nothing(rig: Rig) -> None:
    a, b = rig.root / "a.py", rig.root / "b.py"
    a.write_text("def f():\n    return 1\n")
    b.write_text("x = 1\ny = 1\n")
    result = await rig.call(
        "edit_files",
        {
            "agent": "work",
            "edits": [
                {"path": "a.py", "search": "return 1", "replace": "return 2"},
                {"path": "b.py", "search": "x = 1", "replace": "x = 10"},
                {"path": "a.py", "search": "return 2", "replace": "return 3"},
            ],
        },
    )
    assert a.read_text() == "def f():\n    return 3\n"
    assert b.read_text() == "x = 10\ny = 1\n"
    assert result.structured == {
        "files": [
            {"path": "a.py", "edits": 2, "size": len(a.read_bytes())},
            {"path": "b.py", "edits": 1, "size": len(b.read_bytes())},
        ]
    }

    # One missing and one ambiguous search string: nothing anywhere changes, and the
    # error names each file, edit and search string.
    message = await rig.fails(
        "edit_files",
        {
            "agent": "work",
            "edits": [
                {"path": "a.py", "search": "return 3", "replace": "return 4"},
                {"path": "b.py", "search": "= 1", "replace": "= 2"},
                {"path": "a.py", "search": "def g", "replace": "def h"},
            ],
        },
    )
    assert message == (
        "edit_files: no file was changed:\n"
        "a.py: edits[2]: search string not found: 'def g'\n"
        "b.py: edits[1]: search string occurs 2 times, it must be unique "
        "(include more surrounding text): '= 1'"
    )
    assert a.read_text() == "def f():\n    return 3\n"
    assert b.read_text() == "x = 10\ny = 1\n"

    (rig.root / "bin").write_bytes(b"\xff\xfe")
    message = await rig.fails(
        "edit_files",
        {"agent": "work", "edits": [{"path": "bin", "search": "a", "replace": "b"}]},
    )
    assert "bin: not UTF-8 text" in message
    message = await rig.fails(
        "edit_files",
        {"agent": "work", "edits": [{"path": "gone.py", "search": "a", "replace": "b"}]},
    )
    assert "gone.py: cannot read it (not_found)" in message
    message = await rig.fails(
        "edit_files",
        {"agent": "locked", "edits": [{"path": "a.py", "search": "return 3", "replace": "x"}]},
    )
    assert "(denied)" in message
    assert a.read_text() == "def f():\n    return 3\n"


async def test_list_directory(rig: Rig) -> None:
    (rig.root / "src").mkdir()
    (rig.root / "README.md").write_text("hi\n")
    (rig.root / "link").symlink_to("README.md")
    result = await rig.call("list_directory", {"agent": "work"})
    assert result.structured is not None
    assert result.structured["path"] == str(rig.root)
    entries = {e["name"]: e for e in result.structured["entries"]}
    assert entries["src"]["type"] == "dir"
    assert entries["README.md"]["type"] == "file"
    assert entries["README.md"]["size"] == 3
    assert entries["link"]["type"] == "symlink"
    lines = result.content[0]["text"].splitlines()
    assert lines[0] == f"{rig.root} (3 entries)"
    assert lines[1].startswith("file    0644            3 ")
    assert lines[1].endswith("  README.md")
    assert lines[2].endswith("  link@")
    assert lines[3].endswith("  src/")
    many = rig.root / "many"
    many.mkdir()
    for i in range(1005):
        (many / f"f{i:04d}").touch()
    big = await rig.call("list_directory", {"agent": "work", "path": "many"})
    assert big.structured is not None
    assert big.structured["total"] == 1005
    assert big.structured["truncated"] is True
    assert len(big.structured["entries"]) == 1000
    assert big.content[0]["text"].endswith("[... 5 more entries not shown]")
    message = await rig.fails("list_directory", {"agent": "work", "path": "README.md"})
    assert "(not_a_directory)" in message


# --------------------------------------------------------------------------- ports


async def test_check_port(rig: Rig) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    with listener:
        port = listener.getsockname()[1]
        result = await rig.call("check_port", {"agent": "work", "port": port})
        assert result.structured == {"port": port, "listening": True, "addresses": ["127.0.0.1"]}
        assert result.content[0]["text"] == (f"TCP port {port} on work is listening on 127.0.0.1.")
        message = await rig.fails("check_port", {"agent": "locked", "port": port})
        assert message.startswith("check_port on agent 'locked' failed (denied)")
    closed = await rig.call("check_port", {"agent": "work", "port": port})
    assert closed.structured is not None
    assert closed.structured["listening"] is False
    assert closed.content[0]["text"] == f"Nothing is listening on TCP port {port} on work."
