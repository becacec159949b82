"""Reused agent rpc streams (``RpcStreamPool``) end to end on a real overlay.

A real control plane, a real agent node serving the real agent services and a real
daemon-side node with its tunnel table on loopback; the agent counts the rpc streams it
is given. Tool calls through ``DaemonAgents.agent_rpc`` (what ``ToolContext.agent_rpc``
uses) reuse an idle stream; a call cut short, a stream the agent or the tunnel dropped,
one idle too long, or the pool's surplus is closed, never reused; leases are held only
while a call runs.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from tests._agent_support import make_config, open_client, poll_pause, running_services
from tunneld.agent import AgentServices
from tunneld.agent._framed import FramedStream
from tunneld.agent.client import AgentClient, AgentError
from tunneld.bench._control import embedded_control
from tunneld.daemon import DaemonAgents, RpcStreamPool, TunnelTable
from tunneld.daemon._overlay_backend import OverlayTunnels
from tunneld.demo import loopback_overlay, wait_joined
from tunneld.mcp import Caller, ToolContext
from tunneld.net.mux import MuxStream
from tunneld.net.overlay import Overlay
from tunneld.proto.agentrpc import Exit, RemoteProtocolError, Result, Stdout

AGENT = "pool-agent"
DEADLINE = 120.0  # generous: two shared cores


@dataclass
class World:
    agents: DaemonAgents
    pool: RpcStreamPool
    tunnels: TunnelTable
    laptop: Overlay
    opened: list[MuxStream]
    file: Path

    @property
    def streams(self) -> int:
        """rpc streams the agent was given so far."""
        return len(self.opened)

    async def read(self) -> bytes:
        async with self.agents.agent_rpc(AGENT) as client:
            return (await client.read_file(str(self.file))).data


def reusable(client: AgentClient) -> bool:
    """What the pool asks before it keeps or reuses ``client``'s stream."""
    stream = client.stream
    assert isinstance(stream, MuxStream)
    return stream.reusable()


@asynccontextmanager
async def world(
    tmp_path: Path, pool: RpcStreamPool, idle_timeout: float = 60.0
) -> AsyncIterator[World]:
    async with embedded_control("tunneld-pool-", AGENT, stop_timeout=10.0) as (info, tokens, _):
        (tmp_path / "file.txt").write_text("hello\n")
        services = AgentServices(make_config(tmp_path))
        opened: list[MuxStream] = []

        async def on_stream(peer: str, service: str, stream: MuxStream) -> None:
            if service == "rpc":
                opened.append(stream)
            await services.dispatch(service, stream)

        agent = loopback_overlay(info, AGENT, tokens["agent"], on_stream)
        laptop = loopback_overlay(info, "pool-laptop", tokens["user"])
        tunnels = TunnelTable(OverlayTunnels(laptop), idle_timeout=idle_timeout)
        async with trio.open_nursery() as nursery:
            await nursery.start(services.serve)
            await nursery.start(agent.serve)
            await nursery.start(laptop.serve)
            await nursery.start(tunnels.run)
            await nursery.start(pool.run)
            await wait_joined(agent, laptop)
            access = DaemonAgents(tunnels, laptop.open_stream, list, rpc_pool=pool)
            yield World(access, pool, tunnels, laptop, opened, tmp_path / "file.txt")
            await pool.aclose()
            nursery.cancel_scope.cancel()


async def test_sequential_and_concurrent_calls_reuse_idle_streams(tmp_path: Path) -> None:
    pool = RpcStreamPool(max_idle=2)
    with trio.fail_after(DEADLINE):
        async with world(tmp_path, pool) as w:
            for _ in range(5):
                assert await w.read() == b"hello\n"
                assert w.tunnels.leases(AGENT) == 0  # no lease while only idle
            assert w.streams == 1
            assert pool.idle_count() == 1

            # Through ToolContext.agent_rpc, as a tool handler gets it.
            ctx = ToolContext(Caller(), w.agents, channel=None)  # type: ignore[arg-type]
            async with ctx.agent_rpc(AGENT) as client:
                assert isinstance(client, AgentClient)
                assert w.tunnels.leases(AGENT) == 1  # a running call holds its lease
                await client.stat(str(w.file))
            assert w.streams == 1

            # An error answer leaves the stream between requests: it is reused.
            with pytest.raises(AgentError):
                async with w.agents.agent_rpc(AGENT) as client:
                    await client.read_file(str(tmp_path / "missing"))
            assert await w.read() == b"hello\n"
            assert w.streams == 1

            # Four at once: the idle one plus three new; two (max_idle) kept after.
            async with trio.open_nursery() as calls:
                for _ in range(4):
                    calls.start_soon(w.read)
            assert w.streams == 4
            assert pool.idle_count() == 2
            await w.read()
            assert w.streams == 4


async def test_a_call_cut_short_closes_its_stream_and_kills_the_command(tmp_path: Path) -> None:
    pool = RpcStreamPool()
    with trio.fail_after(DEADLINE):
        async with world(tmp_path, pool) as w:
            await w.read()
            assert w.streams == 1
            pid: int | None = None
            with trio.move_on_after(30) as scope:
                async with w.agents.agent_rpc(AGENT) as client:
                    run = client.exec(shell="echo $$; exec sleep 60")
                    async with run:
                        async for event in run:
                            if isinstance(event, Stdout):
                                pid = int(event.data.split()[0])
                                scope.cancel()
            assert pid is not None
            assert pool.idle_count() == 0  # not given back
            while True:  # the agent kills the command when its stream closes
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                await poll_pause()
            assert await w.read() == b"hello\n"
            assert w.streams == 2  # a new stream; the cut one was never reused

            # A command run to its end leaves the stream reusable.
            async with w.agents.agent_rpc(AGENT) as client:
                output = await client.run(shell="echo done")
            assert output.stdout == b"done\n"
            await w.read()
            assert w.streams == 2


async def test_a_stream_the_agent_closed_is_not_reused(tmp_path: Path) -> None:
    pool = RpcStreamPool()
    with trio.fail_after(DEADLINE):
        async with world(tmp_path, pool) as w:
            async with w.agents.agent_rpc(AGENT) as first:
                await first.stat(str(w.file))
            assert reusable(first)
            await w.opened[0].aclose()  # the agent's end goes away while it is idle
            while reusable(first):
                await poll_pause()
            assert await w.read() == b"hello\n"
            assert w.streams == 2
            assert pool.idle_count() == 1


async def test_streams_idle_too_long_are_closed(tmp_path: Path) -> None:
    pool = RpcStreamPool(max_idle_seconds=0.3)
    with trio.fail_after(DEADLINE):
        async with world(tmp_path, pool) as w:
            async with w.agents.agent_rpc(AGENT) as first:
                await first.stat(str(w.file))
            await w.read()
            assert w.streams == 1
            assert pool.idle_count() == 1
            while pool.idle_count():  # closed by pool.run, with no call to notice
                await poll_pause()
            assert not reusable(first)
            await w.read()
            assert w.streams == 2


async def test_the_tunnel_still_idles_out_and_a_new_one_serves(tmp_path: Path) -> None:
    pool = RpcStreamPool()
    with trio.fail_after(DEADLINE):
        async with world(tmp_path, pool, idle_timeout=0.3) as w:
            await w.read()
            assert pool.idle_count() == 1
            # The idle stream holds no lease: the tunnel times out as before.
            while w.tunnels.tunnels():
                await poll_pause()
            assert await w.read() == b"hello\n"
            assert w.streams == 2
            assert [t.agent for t in w.tunnels.tunnels()] == [AGENT]


async def test_a_closed_pool_keeps_nothing(tmp_path: Path) -> None:
    pool = RpcStreamPool()
    with trio.fail_after(DEADLINE):
        async with world(tmp_path, pool) as w:
            await w.read()
            await pool.aclose()
            assert pool.idle_count() == 0
            await w.read()
            assert pool.idle_count() == 0
            assert w.streams == 2


async def test_agent_client_idle_follows_requests(tmp_path: Path) -> None:
    async with running_services(make_config(tmp_path)) as (services, nursery):
        (tmp_path / "f").write_text("x")
        client = await open_client(services, nursery)
        assert client.idle
        await client.read_file(str(tmp_path / "f"))
        assert client.idle
        with pytest.raises(AgentError):
            await client.read_file(str(tmp_path / "missing"))
        assert client.idle
        with trio.move_on_after(0.5):
            async with client.exec(shell="sleep 30") as run:
                async for _ in run:
                    pass
        assert not client.idle  # cut short: its exit frame was never read
        await client.aclose()

        other = await open_client(services, nursery)
        async with other.exec(shell="echo hi") as run:
            assert not other.idle  # the request is out
            async for _ in run:
                pass
        assert other.idle
        await other.aclose()


async def test_an_answer_out_of_place_leaves_the_request_pending() -> None:
    # An agent (hand-driven here) that answers a call with an exec's exit, or an exec
    # with a call's result: the client raises and the stream is never reused.
    ours, theirs = trio.testing.memory_stream_pair()
    client = AgentClient(ours)
    agent = FramedStream(theirs)
    with trio.fail_after(DEADLINE):
        await agent.send(Result({"data": b"x", "offset": 0, "size": 1, "eof": True}))
        assert (await client.read_file("f")).data == b"x"
        assert client.idle
        await agent.send(Exit(0, None, False))
        with pytest.raises(RemoteProtocolError, match="expected a result, got Exit"):
            await client.read_file("f")
        assert not client.idle

        ours, theirs = trio.testing.memory_stream_pair()
        client = AgentClient(ours)
        agent = FramedStream(theirs)
        await agent.send(Result({}))
        with pytest.raises(RemoteProtocolError, match="exec: unexpected Result frame"):
            await client.run(shell="true")
        assert not client.idle
