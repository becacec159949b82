"""End to end on loopback: a real control server (coordinator + DERP relay) and overlay nodes.

Two nodes of one user (a client and an agent) reach each other first over the relay,
then over direct UDP, with a multi-megabyte stream hashed on both ends across the
switch; the control server is stopped mid-transfer and the stream still completes.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests._control_support import Harness, running_server
from tunneld.config import HostPort
from tunneld.control import RelayLimits
from tunneld.keys import generate_private_key
from tunneld.net.mux import MuxStream
from tunneld.net.overlay import LinkState, Overlay, OverlayConfig, PeerStatus, backoff_delay
from tunneld.proto.noise import WireGuardCore

WAIT = 20.0
CHUNK = 32 * 1024


async def sha256_service(peer: str, service: str, stream: MuxStream) -> None:
    """Agent-side test service: ``sha256`` hashes everything until EOF and answers."""
    if service == "sha256":
        digest = hashlib.sha256()
        total = 0
        while data := await stream.receive_some():
            digest.update(data)
            total += len(data)
        await stream.send_all(f"{total} {digest.hexdigest()}".encode())
        await stream.send_eof()
    elif service == "echo":
        while data := await stream.receive_some():
            await stream.send_all(data)
        await stream.send_eof()


def make_overlay(h: Harness, name: str, token: str, **changes: object) -> Overlay:
    changes.setdefault("private_key", generate_private_key())
    config = OverlayConfig(
        name=name,
        coordinate_url=h.info.coordinate_url,
        derp_url=h.info.derp_url,
        udp_host="127.0.0.1",
        **changes,  # type: ignore[arg-type]
    )

    async def token_provider() -> str:
        return token

    return Overlay(config, token_provider, on_stream=sha256_service)


@asynccontextmanager
async def running(nursery: trio.Nursery, overlay: Overlay) -> AsyncIterator[Overlay]:
    async with trio.open_nursery() as own:
        await own.start(overlay.serve)
        try:
            yield overlay
        finally:
            own.cancel_scope.cancel()


async def wait_registered(h: Harness, name: str) -> None:
    """Until the coordinator has registered agent ``name``: an ``add_tunnel`` for a name
    it has never seen is answered ``not_found``, and a busy machine may let the
    laptop's request overtake the agent's first ``update_self``."""
    with trio.fail_after(WAIT):
        while not await h.store.find_agents(name, None):  # noqa: ASYNC110 (store state)
            await trio.sleep(0.02)


async def wait_until(overlay: Overlay, predicate: object) -> None:
    with trio.fail_after(WAIT):
        # Polling a status snapshot, as a user of Overlay.status() would.
        while not predicate():  # type: ignore[operator]  # noqa: ASYNC110
            await trio.sleep(0.02)


async def hash_through(stream: MuxStream, payload: bytes) -> None:
    """Send ``payload`` and EOF to a ``sha256`` stream; its answer must be the length
    and SHA-256 of exactly those bytes (nothing lost, duplicated or reordered)."""
    with trio.fail_after(WAIT * 2):
        await stream.send_all(payload)
        await stream.send_eof()
        answer = b""
        while data := await stream.receive_some():
            answer += data
    assert answer == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}".encode()


def peer_status(overlay: Overlay) -> PeerStatus:
    peers = overlay.status()["peers"]
    assert isinstance(peers, list)
    assert len(peers) == 1, peers
    status = peers[0]
    assert isinstance(status, PeerStatus)
    return status


def test_backoff_is_capped_and_jittered() -> None:
    assert backoff_delay(0, lambda: 0.5) == 0.0
    assert backoff_delay(3, lambda: 0.0) == pytest.approx(0.045)
    assert backoff_delay(1000, lambda: 0.999, cap=30.0) == pytest.approx(30.0 * 1.499)


async def test_stream_moves_from_relay_to_direct_without_losing_a_byte(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_server(nursery, tmp_path, relay=True) as h:
        await h.user("alice")
        laptop_token = await h.token("alice")
        agent_token = await h.token("alice", agent="web1")
        # Neither announces endpoints at first: the only way is the relay.
        agent = make_overlay(h, "web1", agent_token, endpoints=())
        laptop = make_overlay(h, "laptop", laptop_token, endpoints=())
        async with running(nursery, agent), running(nursery, laptop):
            await wait_registered(h, "web1")
            await laptop.add_tunnel("web1")
            with trio.fail_after(WAIT):
                stream = await laptop.open_stream("web1", "sha256")
            payload = bytes(range(256)) * (6 * 1024 * 1024 // 256)  # 6 MiB
            third = len(payload) // 3

            with trio.fail_after(WAIT * 2):
                await stream.send_all(payload[:third])
                # The send buffer may hold all of it: wait until it went (relay only).
                await wait_until(laptop, lambda: peer_status(laptop).bytes_sent >= third)
                status = peer_status(laptop)
                assert status.path == "relay", status
                assert status.handshake, status
                assert laptop.status()["relay"] == LinkState.CONNECTED.value

                # Now both announce their real UDP endpoints: the peers probe and
                # move the stream's traffic to the direct path mid-stream.
                await agent.set_endpoints(None)
                await laptop.set_endpoints(None)
                async with trio.open_nursery() as inner:
                    inner.start_soon(laptop.wait_direct, "web1")
                    offset = third
                    while offset < 2 * third:
                        await stream.send_all(payload[offset : offset + CHUNK])
                        offset += CHUNK
                status = peer_status(laptop)
                assert status.path == "direct", status
                assert status.direct_endpoint == f"127.0.0.1:{agent.local_address[1]}"  # type: ignore[index]

                # The control server (coordinator and relay) goes away; the direct
                # path carries the rest.
                h.server.shutdown()
                await wait_until(
                    laptop, lambda: laptop.coordinator_state is not LinkState.CONNECTED
                )
                await stream.send_all(payload[offset:])
                await stream.send_eof()
                answer = b""
                while data := await stream.receive_some():
                    answer += data
            expected = f"{len(payload)} {hashlib.sha256(payload).hexdigest()}".encode()
            assert answer == expected
            assert peer_status(laptop).path == "direct"
            await stream.aclose()


async def test_overlay_reconnects_after_the_control_server_restarts(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with trio.open_nursery() as nodes:
        async with running_server(nursery, tmp_path, relay=True) as h:
            await h.user("alice")
            laptop_token = await h.token("alice")
            agent_token = await h.token("alice", agent="web1")
            agent = make_overlay(h, "web1", agent_token, endpoints=())
            laptop = make_overlay(h, "laptop", laptop_token, endpoints=())
            await nodes.start(agent.serve)
            await nodes.start(laptop.serve)
            await wait_registered(h, "web1")
            await laptop.add_tunnel("web1")
            with trio.fail_after(WAIT):
                stream = await laptop.open_stream("web1", "echo")
                await stream.send_all(b"before")
                assert await stream.receive_some() == b"before"
            port = int(h.info.url.rsplit(":", 1)[1].split("/")[0])
        await wait_until(laptop, lambda: laptop.coordinator_state is not LinkState.CONNECTED)
        await wait_until(agent, lambda: agent.relay_state is not LinkState.CONNECTED)
        # A new server on the same port and database: both reconnect (with backoff),
        # re-announce themselves, the laptop replays its tunnel, and the stream that
        # was open across the outage carries on over the relay.
        async with running_server(
            nursery, tmp_path, relay=True, listen=HostPort("127.0.0.1", port)
        ):
            for node in (agent, laptop):
                await wait_until(node, lambda n=node: n.relay_state is LinkState.CONNECTED)
                await wait_until(node, lambda n=node: n.coordinator_state is LinkState.CONNECTED)
            with trio.fail_after(WAIT):
                await stream.send_all(b"after")
                assert await stream.receive_some() == b"after"
                second = await laptop.open_stream("web1", "echo")
                await second.send_all(b"new stream")
                assert await second.receive_some() == b"new stream"
            assert peer_status(laptop).path == "relay"
            nodes.cancel_scope.cancel()


async def test_a_node_of_another_user_cannot_reach_the_agent(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_server(nursery, tmp_path, relay=True) as h:
        await h.user("alice")
        await h.user("mallory")
        agent = make_overlay(h, "web1", await h.token("alice", agent="web1"))
        intruder = make_overlay(h, "evil", await h.token("mallory"))
        async with running(nursery, agent), running(nursery, intruder):
            for reference in ("web1", "alice/web1"):
                await intruder.add_tunnel(reference)
                await wait_until(intruder, lambda: intruder.last_coordinator_error is not None)
                error = intruder.last_coordinator_error
                assert error is not None
                assert error.code == "not_found", error
                assert error.peer == reference
                intruder.last_coordinator_error = None
            with trio.move_on_after(1.0) as scope:
                await intruder.open_stream("web1", "echo")
            assert scope.cancelled_caught
            assert intruder.status()["peers"] == []
            assert agent.status()["peers"] == []


class UdpMiddlebox:
    """A UDP forwarder standing in for a NAT's mapping: the agent announces it as its
    endpoint; ``blackhole`` makes it drop everything (the direct path goes silent)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.blackhole = False
        self.forwarded = 0
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client: tuple[str, int] | None = None

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with self.sock:
            await self.sock.bind(("127.0.0.1", 0))
            task_status.started(self.sock.getsockname()[1])
            while True:
                data, address = await self.sock.recvfrom(65535)
                if self.blackhole:
                    continue
                if address == self.target:
                    if self.client is not None:
                        await self.sock.sendto(data, self.client)
                else:
                    self.client = address
                    await self.sock.sendto(data, self.target)
                self.forwarded += 1


async def test_direct_path_falls_back_to_the_relay_when_it_goes_silent(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # reprobe_interval: once the burst after the fallback is spent, a try every second.
    timings = {
        "probe_interval": 0.2,
        "unsure_after": 0.4,
        "direct_timeout": 1.0,
        "reprobe_interval": 1.0,
    }
    async with running_server(nursery, tmp_path, relay=True) as h:
        await h.user("alice")
        agent = make_overlay(h, "web1", await h.token("alice", agent="web1"), **timings)
        laptop = make_overlay(h, "laptop", await h.token("alice"), endpoints=(), **timings)
        async with running(nursery, agent), running(nursery, laptop):
            assert agent.local_address is not None
            box = UdpMiddlebox(agent.local_address)
            box_port = await nursery.start(box.serve)
            await agent.set_endpoints((f"127.0.0.1:{box_port}",))
            await wait_registered(h, "web1")
            await laptop.add_tunnel("web1")
            payload = bytes(range(251)) * (2 * 1024 * 1024 // 251)
            with trio.fail_after(WAIT * 2):
                stream = await laptop.open_stream("web1", "sha256")
                await laptop.wait_direct("web1")
                assert peer_status(laptop).direct_endpoint == f"127.0.0.1:{box_port}"
                half = len(payload) * 3 // 4
                await stream.send_all(payload[:half])
                box.blackhole = True
                async with trio.open_nursery() as inner:

                    async def send_rest() -> None:
                        offset = half
                        while offset < len(payload):
                            await stream.send_all(payload[offset : offset + CHUNK])
                            offset += CHUNK
                        await stream.send_eof()

                    inner.start_soon(send_rest)
                    await wait_until(laptop, lambda: peer_status(laptop).path == "relay")
                answer = b""
                while data := await stream.receive_some():
                    answer += data
            assert answer == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}".encode()
            assert peer_status(laptop).path == "relay"
            assert peer_status(laptop).relay_window == 64  # our relay's, as announced
            # The mapping comes back: the next probe finds it and traffic goes direct.
            box.blackhole = False
            with trio.fail_after(WAIT):
                await laptop.wait_direct("web1")
            await stream.aclose()


async def test_a_restarted_agent_is_reached_on_a_fresh_connection(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_server(nursery, tmp_path, relay=True) as h:
        await h.user("alice")
        agent_token = await h.token("alice", agent="web1")
        agent_key = generate_private_key()
        laptop = make_overlay(h, "laptop", await h.token("alice"))
        async with running(nursery, laptop):
            async with running(
                nursery, make_overlay(h, "web1", agent_token, private_key=agent_key)
            ):
                await wait_registered(h, "web1")
                await laptop.add_tunnel("web1")
                with trio.fail_after(WAIT):
                    stream = await laptop.open_stream("web1", "echo")
                    await stream.send_all(b"first life")
                    assert await stream.receive_some() == b"first life"
                before = peer_status(laptop).connection
            # The agent process is gone; a new one with the same key starts (its
            # mux connection is new): the laptop notices the new connection id and
            # replaces its own, so new streams work and the old one is broken.
            async with running(
                nursery, make_overlay(h, "web1", agent_token, private_key=agent_key)
            ):
                await wait_until(laptop, lambda: peer_status(laptop).connection != before)
                with trio.fail_after(WAIT):
                    second = await laptop.open_stream("web1", "echo")
                    await second.send_all(b"second life")
                    assert await second.receive_some() == b"second life"
                    with pytest.raises(trio.BrokenResourceError):
                        await stream.send_all(b"to the old agent")


async def test_the_agent_ignores_handshakes_from_keys_the_coordinator_never_announced(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_server(nursery, tmp_path, relay=True) as h:
        await h.user("alice")
        agent = make_overlay(h, "web1", await h.token("alice", agent="web1"))
        async with running(nursery, agent):
            assert agent.local_address is not None
            # Someone who knows the agent's key and UDP endpoint, but whom the
            # coordinator never introduced: the initiation gets no answer at all.
            stranger = WireGuardCore(generate_private_key())
            stranger.add_peer(agent.public_key)
            stranger.initiate(agent.public_key, trio.current_time(), time.time())
            [initiation] = stranger.datagrams_to_send(trio.current_time())
            with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                await sock.bind(("127.0.0.1", 0))
                await sock.sendto(initiation.data, agent.local_address)
                with trio.move_on_after(1.0) as scope:
                    await sock.recvfrom(65535)
                assert scope.cancelled_caught
            assert agent.status()["peers"] == []


async def test_stun_reflexive_addresses_make_a_direct_path(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_server(nursery, tmp_path, relay=True) as h:
        assert h.info.stun is not None
        host, _, port = h.info.stun.rpartition(":")
        stun = (host, int(port))
        await h.user("alice")
        # No local endpoints announced: only what the STUN server saw.
        agent = make_overlay(
            h, "web1", await h.token("alice", agent="web1"), endpoints=(), stun=stun
        )
        laptop = make_overlay(h, "laptop", await h.token("alice"), endpoints=(), stun=stun)
        async with running(nursery, agent), running(nursery, laptop):
            await wait_registered(h, "web1")
            await laptop.add_tunnel("web1")
            with trio.fail_after(WAIT):
                await laptop.wait_direct("web1")
                await agent.wait_direct("laptop")
            assert agent.local_address is not None
            mapped = f"127.0.0.1:{agent.local_address[1]}"
            assert agent.status()["reflexive"] == mapped
            assert agent.status()["endpoints"] == [mapped]
            assert peer_status(laptop).direct_endpoint == mapped
            with trio.fail_after(WAIT):
                stream = await laptop.open_stream("web1", "echo")
                await stream.send_all(b"via the mapped address")
                assert await stream.receive_some() == b"via the mapped address"
                await stream.aclose()


async def test_remove_tunnel_forgets_the_peer_and_breaks_its_streams(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_server(nursery, tmp_path, relay=True) as h:
        await h.user("alice")
        agent = make_overlay(h, "web1", await h.token("alice", agent="web1"))
        laptop = make_overlay(h, "laptop", await h.token("alice"))
        async with running(nursery, agent), running(nursery, laptop):
            await wait_registered(h, "web1")
            await laptop.add_tunnel("web1")
            with trio.fail_after(WAIT):
                stream = await laptop.open_stream("web1", "echo")
                await stream.send_all(b"hello")
                assert await stream.receive_some() == b"hello"
            node = laptop.peer_node("web1")
            assert node is not None
            assert (node.name, node.owner) == ("web1", "alice")
            assert laptop.peer_node(node.id) == node
            await laptop.remove_tunnel("web1")
            await wait_until(laptop, lambda: laptop.status()["peers"] == [])
            await wait_until(agent, lambda: agent.status()["peers"] == [])
            with trio.fail_after(WAIT), pytest.raises(trio.BrokenResourceError):
                await stream.send_all(b"anyone?")


@pytest.mark.parametrize(
    ("limits", "size", "window"),
    [
        (RelayLimits(), 8 * 1024 * 1024, 64),
        (RelayLimits(send_queue_packets=32), 4 * 1024 * 1024, 24),
        (RelayLimits(bytes_per_second=1024 * 1024, burst=128 * 1024), 1024 * 1024, 64),
    ],
    ids=["default-limits", "derper-queue-depth", "tight-rate-limit"],
)
async def test_relay_only_transfer_never_overruns_the_relay(
    nursery: trio.Nursery, tmp_path: Path, limits: RelayLimits, size: int, window: int
) -> None:
    # Relay only (no endpoints, no STUN): the mux keeps its datagrams in flight below
    # the queue depth the relay announces per client (three quarters, at most 64), and
    # the overlay's writer keeps under the rate the relay advertises, so the relay
    # drops nothing and the stream is intact.
    async with running_server(nursery, tmp_path, relay=True, relay_limits=limits) as h:
        await h.user("alice")
        agent = make_overlay(h, "web1", await h.token("alice", agent="web1"), endpoints=())
        laptop = make_overlay(h, "laptop", await h.token("alice"), endpoints=())
        async with running(nursery, agent), running(nursery, laptop):
            await wait_registered(h, "web1")
            await laptop.add_tunnel("web1")
            with trio.fail_after(WAIT):
                stream = await laptop.open_stream("web1", "sha256")
            await hash_through(stream, bytes(range(251)) * (size // 251))
            assert peer_status(laptop).path == "relay"
            assert peer_status(laptop).relay_window == window
            relay = h.server.relay
            assert relay is not None
            assert relay.stats.drops.get("queue_full", 0) == 0, relay.stats.drops
            assert relay.stats.drops.get("rate_limited", 0) == 0, relay.stats.drops
            assert laptop.status()["relay_dropped"] == 0
            await stream.aclose()
