"""``tunneld demo``: the system working on loopback, with nothing to configure.

It starts a real control plane (coordinator, DERP relay, STUN; SQLite in a temporary
directory), creates a user with a laptop token and an agent token, runs an agent node
(exec and files confined to a temporary workspace) and a laptop node, and drives the
agent from the laptop through the overlay: first over the relay, then over the direct
UDP path the nodes validate, with every stream sharing one tunnel. Everything is torn
down at the end.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from tunneld.agent import AgentServices
from tunneld.agent.client import AgentClient
from tunneld.config import AgentConfig, HostPort
from tunneld.config._sections import ControlConfig
from tunneld.control import (
    ControlServer,
    ServerInfo,
    SqliteStore,
    default_relay_factory,
    default_stun_serve,
    new_token,
)
from tunneld.keys import generate_private_key
from tunneld.net.mux import MuxStream
from tunneld.net.overlay import Overlay, OverlayConfig, PeerStatus, StreamHandler

__all__ = ["DemoError", "DemoResult", "run_demo"]

USER = "demo"
AGENT = "demo-agent"
LAPTOP = "demo-laptop"
STEP_TIMEOUT = 15.0


class DemoError(Exception):
    """A step of the demo failed; the message says which and why."""


@dataclass
class DemoResult:
    """What the demo did, for the summary and ``--json``."""

    control_url: str = ""
    stun: str = ""
    first_call_ms: float = 0.0
    first_path: str = ""
    direct_after_ms: float | None = None
    direct_endpoint: str | None = None
    exec_output: str = ""
    calls: int = 0
    warm_stream_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "control_url": self.control_url,
            "stun": self.stun,
            "first_call_ms": round(self.first_call_ms, 3),
            "first_path": self.first_path,
            "direct_after_ms": None
            if self.direct_after_ms is None
            else round(self.direct_after_ms, 3),
            "direct_endpoint": self.direct_endpoint,
            "exec_output": self.exec_output,
            "calls": self.calls,
            "warm_stream_p50_ms": round(statistics.median(self.warm_stream_ms), 3)
            if self.warm_stream_ms
            else None,
        }


async def run_demo(
    *,
    calls: int = 20,
    progress: Callable[[str], None] = print,
    plugins: Sequence[str] = (),
) -> DemoResult:
    """Run the demo end to end; returns what it measured.

    ``plugins``: installed plugins to enable for the run (``tunneld demo --plugin``),
    for the daemon the demo runs its MCP calls through.

    Raises:
        DemoError: a step failed (the message names it).
    """
    result = DemoResult()
    with tempfile.TemporaryDirectory(prefix="tunneld-demo-") as tmp:
        root = Path(tmp)
        (root / "control").mkdir()
        store = await SqliteStore.open(root / "control" / "control.db")
        try:
            await _run(store, root, result, calls, progress)
        finally:
            await store.aclose()
    return result


async def _run(
    store: SqliteStore,
    root: Path,
    result: DemoResult,
    calls: int,
    progress: Callable[[str], None],
) -> None:
    now = time.time()
    await store.add_user(USER, None, now)
    tokens = {}
    for name, agent in ((LAPTOP, None), (AGENT, AGENT)):
        token = new_token()
        await store.add_token(token.id, USER, agent, token.secret_hash, now, None)
        tokens[name] = token.value
    config = ControlConfig(
        listen=HostPort("127.0.0.1", 0),
        stun_listen=HostPort("127.0.0.1", 0),
        data_dir=root / "control",
    )
    server = ControlServer(
        config, store, relay_factory=default_relay_factory(), stun_serve=default_stun_serve()
    )
    async with trio.open_nursery() as nursery:
        info: ServerInfo = await nursery.start(server.serve)
        result.control_url, result.stun = info.url, info.stun or ""
        progress(f"control plane   {info.url} (coordinator, DERP relay, STUN {info.stun})")
        progress(f"user            {USER}: a token for {LAPTOP}, an agent token for {AGENT}")
        try:
            await _nodes(info, tokens, root, result, calls, progress)
        finally:
            server.shutdown()


def _overlay(info: ServerInfo, name: str, token: str, on_stream: StreamHandler | None) -> Overlay:
    async def provide() -> str:
        return token

    config = OverlayConfig(
        name=name,
        private_key=generate_private_key(),
        coordinate_url=info.coordinate_url,
        derp_url=info.derp_url,
        udp_host="127.0.0.1",
    )
    return Overlay(config, provide, on_stream=on_stream)


async def _nodes(
    info: ServerInfo,
    tokens: dict[str, str],
    root: Path,
    result: DemoResult,
    calls: int,
    progress: Callable[[str], None],
) -> None:
    workspace = root / "workspace"
    workspace.mkdir()
    (workspace / "README.txt").write_text("This file lives on the demo agent's host.\n")
    services = AgentServices(AgentConfig(roots=(workspace,), allow_exec=True, allow_write=True))

    async def serve_agent(peer_id: str, service: str, stream: MuxStream) -> None:
        await services.dispatch(service, stream)

    agent = _overlay(info, AGENT, tokens[AGENT], serve_agent)
    laptop = _overlay(info, LAPTOP, tokens[LAPTOP], None)
    async with trio.open_nursery() as nursery:
        await nursery.start(services.serve)
        await nursery.start(agent.serve)
        await nursery.start(laptop.serve)
        progress(f"agent           {AGENT} serves exec and files in {workspace}")
        started = trio.current_time()
        await laptop.add_tunnel(AGENT)
        with trio.move_on_after(STEP_TIMEOUT) as scope:
            stream = await laptop.open_stream(AGENT, "rpc")
        if scope.cancelled_caught:
            raise DemoError(f"{LAPTOP} could not open a stream to {AGENT}: {laptop.status()}")
        async with AgentClient(stream) as client:
            output = await client.run(["uname", "-sr"])
            result.first_call_ms = (trio.current_time() - started) * 1000
            result.first_path = _peer(laptop).path
            result.exec_output = output.stdout.decode(errors="replace").strip()
            read = await client.read_file(str(workspace / "README.txt"))
        progress(
            f"tunnel          {LAPTOP} -> {AGENT}: coordinator, handshake, stream and first "
            f"call in {result.first_call_ms:.0f} ms (over the {result.first_path})"
        )
        progress(f"exec            uname -sr on {AGENT}: {result.exec_output}")
        progress(f"read_file       README.txt: {read.data.decode().strip()!r}")
        with trio.move_on_after(STEP_TIMEOUT):
            await laptop.wait_direct(AGENT)
            result.direct_after_ms = (trio.current_time() - started) * 1000
        peer = _peer(laptop)
        result.direct_endpoint = peer.direct_endpoint
        if result.direct_after_ms is None:
            progress("path            still on the relay (no direct UDP path validated)")
        else:
            progress(
                f"path            direct UDP {peer.direct_endpoint} validated after "
                f"{result.direct_after_ms:.0f} ms; streams moved off the relay"
            )
        for _ in range(calls):
            opened = trio.current_time()
            async with AgentClient(await laptop.open_stream(AGENT, "rpc")) as client:
                await client.stat(str(workspace / "README.txt"))
            result.warm_stream_ms.append((trio.current_time() - opened) * 1000)
            result.calls += 1
        p50 = statistics.median(result.warm_stream_ms)
        progress(
            f"shared tunnel   {calls} more calls, each its own stream on the one tunnel: "
            f"p50 {p50:.2f} ms per open + call + close"
        )
        nursery.cancel_scope.cancel()


def _peer(overlay: Overlay) -> PeerStatus:
    peers = overlay.status()["peers"]
    assert isinstance(peers, list)
    for peer in peers:
        if isinstance(peer, PeerStatus) and peer.name == AGENT:
            return peer
    raise DemoError(f"{overlay.config.name} does not know {AGENT}")
