"""200 concurrent MCP tool calls across 20 agents on one daemon: all succeed, 20 tunnels.

Agents are in-process overlay nodes serving the real agent services (to keep 20 of them
light); the control plane, the daemon, its MCP server, the example plugin and the HTTP
client are the real ones on loopback. Every call holds a lease while its stream is
open; concurrent calls to one agent share its tunnel, so exactly one tunnel per agent
is ever set up.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests._control_support import running_server
from tests._mcp_client import RawMcpClient
from tunneld.agent import AgentServices
from tunneld.config import AgentConfig, DaemonConfig, Duration, McpConfig, PluginsConfig
from tunneld.daemon import Daemon, DaemonAgents, Notifier, TunnelError, open_api_listener
from tunneld.demo import loopback_overlay
from tunneld.net.mux import MuxStream
from tunneld.net.overlay import Overlay
from tunneld.plugins import PluginManager

AGENTS = 20
CALLS = 200
DEADLINE = 240.0  # generous: two shared cores; the run usually takes a few seconds


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tunneld-conc-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_200_concurrent_calls_over_20_agents_make_20_tunnels(
    nursery: trio.Nursery, tmp_path: Path, short_dir: Path
) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    target = workspace / "data.bin"
    target.write_bytes(b"x" * 1234)
    services = AgentServices(AgentConfig(roots=(workspace,)))
    await nursery.start(services.serve)

    async def on_stream(peer: str, service: str, stream: MuxStream) -> None:
        await services.dispatch(service, stream)

    (tmp_path / "control").mkdir()
    with trio.fail_after(DEADLINE):
        async with running_server(nursery, tmp_path / "control", relay=True) as h:
            await h.user("alice")

            def overlay(name: str, token: str, *, serve: bool) -> Overlay:
                return loopback_overlay(h.info, name, token, on_stream=on_stream if serve else None)

            names = [f"agent{i:02d}" for i in range(AGENTS)]
            for name in names:
                agent = overlay(name, await h.token("alice", agent=name), serve=True)
                await nursery.start(agent.serve)
            # Calls start once the control plane has every agent online (not before:
            # an agent still connecting is "offline", which is not what we measure).
            for _ in range(int(DEADLINE * 10)):
                if set(names) <= {n.name for n in await h.store.list_nodes() if n.online}:
                    break
                await trio.sleep(0.1)
            laptop = overlay("laptop", await h.token("alice"), serve=False)
            plugins = PluginManager(PluginsConfig(enable=("example",)))
            daemon = Daemon(
                laptop,
                # A generous connect timeout: 21 nodes handshake at once on 2 shared cores.
                DaemonConfig(
                    socket_group="", idle_timeout=Duration(60.0), connect_timeout=Duration(60.0)
                ),
                notifier=Notifier({}),
                mcp=McpConfig(listen="127.0.0.1:0"),
                plugins=plugins,
            )
            listener = await open_api_listener(short_dir / "api.sock", mode=0o600)
            await nursery.start(daemon.run, [listener])
            assert daemon.mcp_url is not None
            host_port = daemon.mcp_url.removeprefix("http://").removesuffix("/mcp")

            events: list[dict[str, object]] = []

            async def collect() -> None:
                async for event in daemon.events.subscribe():
                    events.append(dict(event))

            nursery.start_soon(collect)
            await trio.lowlevel.checkpoint()

            client = RawMcpClient(host_port)
            await client.initialize()
            results: dict[int, dict[str, object]] = {}

            async def call(i: int) -> None:
                results[i] = await client.call_tool(
                    "example_stat", {"agent": names[i % AGENTS], "path": str(target)}
                )

            async with trio.open_nursery() as calls:
                for i in range(CALLS):
                    calls.start_soon(call, i)

            assert len(results) == CALLS
            failures = {i: r for i, r in results.items() if r.get("isError")}
            assert not failures, list(failures.items())[:3]
            assert all(r["structuredContent"]["size"] == 1234 for r in results.values())  # type: ignore[index]
            tunnels = daemon.tunnels.tunnels()
            assert sorted(t.agent for t in tunnels) == names
            assert all(t.leases == 0 for t in tunnels)  # every lease was released
            await trio.sleep(0.1)
            ups = [e for e in events if e["event"] == "tunnel.up"]
            assert sorted(str(e["agent"]) for e in ups) == names  # exactly one per agent
            assert daemon.mcp_tcp is not None
            assert daemon.mcp_tcp.calls == CALLS

            # What tool handlers get: each open stream holds one lease, released on exit.
            access = DaemonAgents(daemon.tunnels, laptop.open_stream, list)
            async with access.open_stream(names[0], "rpc") as one:
                async with access.open_stream(names[0], "rpc") as two:
                    assert one is not two
                    assert daemon.tunnels.leases(names[0]) == 2
                assert daemon.tunnels.leases(names[0]) == 1
            assert daemon.tunnels.leases(names[0]) == 0
            with pytest.raises(TunnelError) as unknown:
                async with access.open_stream("nobody-by-that-name", "rpc"):
                    pass
            assert unknown.value.code == "unknown_agent"
            assert len(daemon.tunnels.tunnels()) == AGENTS  # still one tunnel per agent
            daemon.stop()
