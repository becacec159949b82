"""Shared helpers for the agent tests: an AgentServices and clients over real streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import trio
import trio.testing

from tunneld.agent import AgentServices
from tunneld.agent.client import AgentClient
from tunneld.config import AgentConfig, Duration


def make_config(root: Path, **overrides: object) -> AgentConfig:
    base = AgentConfig(
        roots=(root,),
        allow_exec=True,
        allow_write=True,
        exec_timeout=Duration(30),
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


@asynccontextmanager
async def running_services(
    config: AgentConfig, *, kill_grace: float = 0.5, output_limit: int = 1 << 20
) -> AsyncIterator[tuple[AgentServices, trio.Nursery]]:
    services = AgentServices(config, kill_grace=kill_grace, output_limit=output_limit)
    async with trio.open_nursery() as nursery:
        await nursery.start(services.serve)
        yield services, nursery
        nursery.cancel_scope.cancel()


async def tcp_stream_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Two ends of a real loopback TCP connection."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        client_box: list[trio.SocketStream] = []

        async def connect() -> None:
            client_box.append(await trio.open_tcp_stream("127.0.0.1", port))

        nursery.start_soon(connect)
        server = await listener.accept()
    await listener.aclose()
    return client_box[0], server


async def open_client(
    services: AgentServices, nursery: trio.Nursery, *, tcp: bool = False
) -> AgentClient:
    """A client whose stream is served by ``services.serve_rpc`` in ``nursery``."""
    if tcp:
        client_end, server_end = await tcp_stream_pair()
        nursery.start_soon(services.serve_rpc, server_end)
        return AgentClient(client_end)
    a, b = trio.testing.memory_stream_pair()
    nursery.start_soon(services.serve_rpc, b)
    return AgentClient(a)


async def poll_pause() -> None:
    """Between polls of state outside this process (child processes, the agent's tables),
    where there is no event to wait on."""
    await trio.sleep(0.02)
