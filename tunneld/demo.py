"""``tunneld demo``: the pieces built so far, working together on loopback.

It starts a real control plane (coordinator, DERP relay, STUN; SQLite in a temporary
directory), creates a user with a laptop token and an agent token, and has two nodes
find each other through the coordinator, connect to the relay, complete a WireGuard
handshake over it and ping through the tunnel. Everything is torn down at the end.
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

import trio

from tunneld.config import HostPort
from tunneld.config._sections import ControlConfig
from tunneld.control import (
    ControlServer,
    SqliteStore,
    default_relay_factory,
    default_stun_serve,
    new_token,
)
from tunneld.keys import generate_private_key, public_key
from tunneld.log import Secret
from tunneld.net.coord import CoordinatorConnection, connect_coordinator
from tunneld.net.derp import DerpClient
from tunneld.net.stun import stun_binding
from tunneld.proto.coord import CoordinatorClient
from tunneld.proto.derp import RecvPacket
from tunneld.proto.ipv4 import (
    IcmpEchoKind,
    RemoteProtocolError,
    build_icmp_echo,
    build_ipv4,
    echo_reply_for,
    parse_icmp_echo,
    parse_ipv4,
)
from tunneld.proto.noise import DataReceived, HandshakeCompleted, WireGuardCore

__all__ = ["DemoError", "DemoResult", "run_demo"]

USER = "demo"
AGENT = "demo-agent"
LAPTOP = "demo-laptop"
LAPTOP_ADDRESS = IPv4Address("100.64.0.2")
AGENT_ADDRESS = IPv4Address("100.64.0.1")
STEP_TIMEOUT = 10.0
ICMP_PROTOCOL = 1


class DemoError(Exception):
    """A step of the demo failed; the message says which and why."""


@dataclass
class DemoResult:
    """What the demo did, for the summary and ``--json``."""

    control_url: str = ""
    stun: str = ""
    reflexive_address: str = ""
    discovery_ms: float = 0.0
    handshake_ms: float = 0.0
    pings_sent: int = 0
    ping_rtts_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "control_url": self.control_url,
            "stun": self.stun,
            "reflexive_address": self.reflexive_address,
            "discovery_ms": round(self.discovery_ms, 3),
            "handshake_ms": round(self.handshake_ms, 3),
            "pings_sent": self.pings_sent,
            "ping_replies": len(self.ping_rtts_ms),
            "ping_p50_ms": round(statistics.median(self.ping_rtts_ms), 3)
            if self.ping_rtts_ms
            else None,
        }


class _Node:
    """One demo node: its WireGuard core, coordinator session and relay connection."""

    def __init__(self, name: str, private_key: bytes) -> None:
        self.name = name
        self.core = WireGuardCore(private_key)
        self.coordinator = CoordinatorClient()
        self.coordinator.update_self(name=name, node_key=public_key(private_key))
        self.relay: DerpClient | None = None
        self.events: list[object] = []
        self.changed = trio.Event()

    async def flush(self) -> None:
        assert self.relay is not None
        for packet in self.core.datagrams_to_send(trio.current_time()):
            if packet.peer is not None:
                await self.relay.send_packet(packet.peer, packet.data)

    async def pump(self, on_data: Callable[[bytes, bytes], bytes | None]) -> None:
        """Feed relayed packets to the core; answer data with ``on_data`` (reply or None)."""
        assert self.relay is not None
        while True:
            event = await self.relay.receive()
            if not isinstance(event, RecvPacket):
                continue
            self.core.receive_datagram(event.data, event.src, trio.current_time(), time.time())
            while (core_event := self.core.next_event()) is not None:
                if isinstance(core_event, DataReceived):
                    reply = on_data(core_event.peer, core_event.payload)
                    if reply is not None:
                        self.core.send(core_event.peer, reply, trio.current_time(), time.time())
                self.events.append(core_event)
            await self.flush()
            self.changed.set()
            self.changed = trio.Event()

    async def wait_for(self, predicate: Callable[[object], bool], what: str) -> object:
        with trio.move_on_after(STEP_TIMEOUT):
            while True:
                for event in self.events:
                    if predicate(event):
                        self.events.remove(event)
                        return event
                await self.changed.wait()
        raise DemoError(f"{self.name}: timed out waiting for {what}")


async def _learn_peer(session: CoordinatorConnection, name: str) -> str:
    """Read coordinator responses until ``name`` is known; returns its node id."""
    with trio.move_on_after(STEP_TIMEOUT):
        while True:
            for peer_id, state in session.client.peers.items():
                if state.node.name == name:
                    return peer_id
            await session.receive()
    raise DemoError(f"coordinator never told us about {name}")


async def _wait_ready(session: CoordinatorConnection, peer_id: str) -> None:
    with trio.move_on_after(STEP_TIMEOUT):
        while not session.client.peers[peer_id].ready_for_handshake:
            await session.receive()
        return
    raise DemoError("the agent never said it was ready for our handshake")


def _answer_pings(_: bytes, payload: bytes) -> bytes | None:
    return echo_reply_for(payload)


async def run_demo(*, pings: int = 5, progress: Callable[[str], None] = print) -> DemoResult:
    """Run the demo end to end; returns what it measured.

    Raises:
        DemoError: a step failed (the message names it).
    """
    result = DemoResult()
    with tempfile.TemporaryDirectory(prefix="tunneld-demo-") as tmp:
        store = await SqliteStore.open(Path(tmp) / "control.db")
        try:
            await _run(store, Path(tmp), result, pings, progress)
        finally:
            await store.aclose()
    return result


async def _run(
    store: SqliteStore,
    data_dir: Path,
    result: DemoResult,
    pings: int,
    progress: Callable[[str], None],
) -> None:
    now = time.time()
    await store.add_user(USER, None, now)
    tokens = {}
    for name, agent in ((LAPTOP, None), (AGENT, AGENT)):
        token = new_token()
        await store.add_token(token.id, USER, agent, token.secret_hash, now, None)
        tokens[name] = Secret(token.value)
    config = ControlConfig(
        listen=HostPort("127.0.0.1", 0), stun_listen=HostPort("127.0.0.1", 0), data_dir=data_dir
    )
    server = ControlServer(
        config, store, relay_factory=default_relay_factory(), stun_serve=default_stun_serve()
    )
    async with trio.open_nursery() as nursery:
        info = await nursery.start(server.serve)
        result.control_url, result.stun = info.url, info.stun or ""
        progress(f"control plane   {info.url} (coordinator, DERP relay, STUN {info.stun})")
        progress(f"user            {USER}: a token for {LAPTOP} and an agent token for {AGENT}")
        if info.stun:
            host, port = info.stun.rsplit(":", 1)
            address = await stun_binding((host, int(port)), timeout=STEP_TIMEOUT)
            result.reflexive_address = f"{address[0]}:{address[1]}"
            progress(f"STUN            our reflexive address is {result.reflexive_address}")
        try:
            await _two_nodes(info.coordinate_url, info.derp_url, tokens, result, pings, progress)
        finally:
            server.shutdown()


async def _two_nodes(
    coordinate_url: str,
    derp_url: str,
    tokens: dict[str, Secret],
    result: DemoResult,
    pings: int,
    progress: Callable[[str], None],
) -> None:
    laptop_key, agent_key = generate_private_key(), generate_private_key()
    laptop, agent = _Node(LAPTOP, laptop_key), _Node(AGENT, agent_key)
    laptop.coordinator.add_tunnel(AGENT)
    started = trio.current_time()
    async with (
        connect_coordinator(coordinate_url, tokens[AGENT], agent.coordinator) as agent_session,
        connect_coordinator(coordinate_url, tokens[LAPTOP], laptop.coordinator) as laptop_session,
    ):
        agent_id = await _learn_peer(laptop_session, AGENT)
        laptop_id = await _learn_peer(agent_session, LAPTOP)
        await agent_session.send(agent.coordinator.ready_for_handshake(laptop_id))
        await _wait_ready(laptop_session, agent_id)
        result.discovery_ms = (trio.current_time() - started) * 1000
        progress(
            f"coordinator     {LAPTOP} may reach {AGENT}; both learned each other "
            f"in {result.discovery_ms:.1f} ms"
        )
        laptop.core.add_peer(laptop_session.client.peers[agent_id].node.node_key)
        agent.core.add_peer(agent_session.client.peers[laptop_id].node.node_key)
        async with (
            DerpClient.connect(derp_url, agent_key) as agent.relay,
            DerpClient.connect(derp_url, laptop_key) as laptop.relay,
            trio.open_nursery() as nursery,
        ):
            progress("relay           both nodes are connected to the DERP relay")
            nursery.start_soon(agent.pump, _answer_pings)
            nursery.start_soon(laptop.pump, lambda _peer, _data: None)
            agent_key_public = public_key(agent_key)
            await _handshake_and_ping(laptop, agent_key_public, result, pings, progress)
            nursery.cancel_scope.cancel()


async def _handshake_and_ping(
    laptop: _Node,
    agent_key: bytes,
    result: DemoResult,
    pings: int,
    progress: Callable[[str], None],
) -> None:
    started = trio.current_time()
    laptop.core.initiate(agent_key, started, time.time())
    await laptop.flush()
    await laptop.wait_for(lambda e: isinstance(e, HandshakeCompleted), "the handshake")
    result.handshake_ms = (trio.current_time() - started) * 1000
    progress(f"handshake       WireGuard over the relay in {result.handshake_ms:.1f} ms")
    for sequence in range(pings):
        icmp = build_icmp_echo(IcmpEchoKind.REQUEST, 0x7D, sequence, b"tunneld-demo")
        packet = build_ipv4(LAPTOP_ADDRESS, AGENT_ADDRESS, ICMP_PROTOCOL, icmp)
        sent = trio.current_time()
        laptop.core.send(agent_key, packet, sent, time.time())
        await laptop.flush()
        result.pings_sent += 1
        await laptop.wait_for(functools.partial(_is_echo_reply, sequence=sequence), "echo reply")
        result.ping_rtts_ms.append((trio.current_time() - sent) * 1000)
    p50 = statistics.median(result.ping_rtts_ms)
    progress(
        f"ping            {len(result.ping_rtts_ms)}/{pings} ICMP echo replies through "
        f"the tunnel, p50 {p50:.2f} ms"
    )


def _is_echo_reply(event: object, *, sequence: int) -> bool:
    if not isinstance(event, DataReceived):
        return False
    try:
        echo = parse_icmp_echo(parse_ipv4(event.payload).payload)
    except RemoteProtocolError:
        return False
    return echo.kind is IcmpEchoKind.REPLY and echo.sequence == sequence
