"""Several DERP relays: home relay by measured latency with hysteresis, peers' relays.

The selector is stepped by hand (sans-IO); end to end, two real relays on loopback,
one of them behind a proxy that delays every chunk, a real control server whose
coordinator offers both in its relay map, and two overlay nodes with no UDP endpoints
(relay only): the client moves home to the fast relay, its peer learns that through
the coordinator, each side sends through the other's home relay, and a hashed stream
arrives intact.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import trio
import trio_websocket

from tests._control_support import running_server
from tests._overlay_support import DelayProxy, StandaloneRelay, relay_url
from tests.test_overlay_e2e import (
    WAIT,
    hash_through,
    peer_status,
    running,
    sha256_service,
    wait_until,
)
from tests.test_overlay_faults import relay_only_pair
from tunneld.control import RelayLimits
from tunneld.keys import generate_private_key
from tunneld.net.overlay import LinkState, Overlay, OverlayConfig
from tunneld.net.overlay._relays import RelaySelector, relay_window
from tunneld.proto.coord import HomeRelay, RelayMap, decode_response
from tunneld.proto.derp import ServerInfo

A = HomeRelay(1, "ws://a.example/derp")
B = HomeRelay(2, "ws://b.example/derp")
C = HomeRelay(3, "ws://c.example/derp")


def test_small_or_relative_gains_never_move_home() -> None:
    selector = RelaySelector(A, [B], hold=0.0)
    selector.note(A.url, 0.050)
    selector.note(B.url, 0.045)  # 5 ms better: under the 10 ms floor
    assert selector.decide(0.0) is None
    selector.note(B.url, 0.035)  # 15 ms better, but not below 2/3 of 50 ms
    assert selector.decide(1.0) is None
    selector.note(A.url, 0.005)
    selector.note(B.url, 0.001)  # 80% faster, but only 4 ms
    assert selector.decide(2.0) is None
    assert selector.home == A


def test_a_clearly_faster_relay_wins_only_after_holding_its_lead() -> None:
    selector = RelaySelector(A, [B], hold=60.0)
    selector.note(A.url, 0.100)
    selector.note(B.url, 0.020)
    assert selector.decide(0.0) is None
    assert selector.decide(30.0) is None
    selector.note(B.url, 0.095)  # the lead is broken: the clock starts again
    assert selector.decide(40.0) is None
    selector.note(B.url, 0.020)
    assert selector.decide(50.0) is None
    assert selector.decide(109.0) is None
    assert selector.decide(110.0) == B
    assert selector.home == B
    # And back only by the same rules.
    selector.note(A.url, 0.015)
    assert selector.decide(111.0) is None


def test_an_unreachable_home_is_left_for_any_reachable_relay() -> None:
    selector = RelaySelector(A, hold=5.0)
    selector.offer([B, C])
    selector.note(A.url, None)
    selector.note(B.url, 0.200)
    selector.note(C.url, None)
    assert selector.decide(0.0) is None
    assert selector.decide(5.0) == B


def test_offered_relays_replace_each_other_and_aliases_are_never_candidates() -> None:
    selector = RelaySelector(A, hold=0.0)
    selector.offer([B, C])
    assert list(selector.candidates) == [A.url, B.url, C.url]
    selector.note(C.url, 0.001)
    selector.offer([B])
    assert list(selector.candidates) == [A.url, B.url]
    assert C.url not in selector.latency
    selector.aliases.add(B.url)
    selector.note(A.url, 0.100)
    selector.note(B.url, 0.001)
    assert list(selector.candidates) == [A.url]
    assert selector.decide(0.0) is None


def make_node(
    coordinate_url: str, derp_url: str, name: str, token: str, **changes: object
) -> Overlay:
    config = OverlayConfig(
        name=name,
        private_key=generate_private_key(),
        coordinate_url=coordinate_url,
        derp_url=derp_url,
        udp_host="127.0.0.1",
        endpoints=(),  # relay only
        **changes,  # type: ignore[arg-type]
    )

    async def token_provider() -> str:
        return token

    return Overlay(config, token_provider, on_stream=sha256_service)


async def test_the_coordinator_sends_its_relay_map_only_to_clients_that_ask(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    extra = ("ws://relay2.example:8443/derp", "wss://relay3.example/derp")
    async with running_server(nursery, tmp_path, relay=True, relays=extra) as h:
        await h.user("alice")
        token = await h.token("alice")
        headers = [(b"Authorization", f"Bearer {token}".encode())]
        async with trio_websocket.open_websocket_url(
            h.info.coordinate_url + "?relay_map=1", extra_headers=headers
        ) as ws:
            with trio.fail_after(WAIT):
                message = decode_response(await ws.get_message())  # type: ignore[arg-type]
        assert message == RelayMap(
            (HomeRelay(1, h.info.derp_url), HomeRelay(2, extra[0]), HomeRelay(3, extra[1]))
        )
        # An older client (no query) hears nothing it would not understand.
        async with trio_websocket.open_websocket_url(
            h.info.coordinate_url, extra_headers=headers
        ) as ws:
            with trio.move_on_after(0.5) as scope:
                await ws.get_message()
            assert scope.cancelled_caught


async def test_home_moves_to_the_faster_relay_and_each_side_sends_through_the_others(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # The far relay queues 40 per client: a window of 30 through it.
    fast, far = StandaloneRelay(), StandaloneRelay(RelayLimits(send_queue_packets=40))
    await fast.start(nursery)
    await far.start(nursery)
    proxy = DelayProxy(far.port, delay=0.05)  # ~100 ms round trip to the far relay
    slow_url = relay_url(await nursery.start(proxy.serve))
    # The control plane runs no relay of its own here; it offers both in its map.
    async with running_server(nursery, tmp_path, relays=(fast.url, slow_url)) as h:
        await h.user("alice")
        laptop = make_node(
            h.info.coordinate_url,
            slow_url,
            "laptop",
            await h.token("alice"),
            relay_measure_interval=0.3,
            relay_switch_after=1.0,
        )
        # The agent measures too, but would need an hour of a better relay to move.
        agent = make_node(
            h.info.coordinate_url,
            slow_url,
            "web1",
            await h.token("alice", agent="web1"),
            relay_measure_interval=3600.0,
            relay_switch_after=3600.0,
            relay_idle_timeout=1.0,
        )
        async with running(nursery, agent), running(nursery, laptop):
            await laptop.add_tunnel("web1")
            with trio.fail_after(WAIT):
                stream = await laptop.open_stream("web1", "sha256")
            await wait_until(laptop, lambda: laptop.status()["home_relay"] == fast.url)
            latency = laptop.status()["relay_latency_ms"]
            assert isinstance(latency, dict)
            assert latency[slow_url] > latency[fast.url] + 10, latency

            def agent_knows_the_move() -> bool:
                node = agent.peer_node("laptop")
                relay = None if node is None else node.home_relay
                # Region 2: the map numbers [control].relays after derp_region (1).
                return relay == HomeRelay(2, fast.url)

            await wait_until(agent, agent_knows_the_move)
            await hash_through(stream, bytes(range(251)) * (1024 * 1024 // 251))
            assert agent.status()["home_relay"] == slow_url
            # Each sends through the other's home relay, over a link of its own.
            assert peer_status(laptop).relay == slow_url
            assert peer_status(agent).relay == fast.url
            # Through a link, the window that relay's SERVER_INFO gives, never more than
            # home's: the laptop (home: fast, 64) sends through far's link (30); the
            # agent (home: far, 30) through fast's (64).
            assert peer_status(laptop).relay_window == 30
            assert peer_status(agent).relay_window == 30
            assert slow_url in laptop.status()["relay_links"]  # type: ignore[operator]
            assert laptop.status()["relay"] == "connected"
            # Hysteresis: one move, no flapping while the measurements go on.
            assert laptop.home_switches == 1
            assert agent.home_switches == 0
            await stream.aclose()
            # Unused, the agent's link to the laptop's relay closes (and with it what
            # that relay said: derper's window until a link is open again); the next
            # packet for the laptop opens it again.
            await wait_until(agent, lambda: agent.status()["relay_links"] == [])
            assert peer_status(agent).relay_window == 24
            with trio.fail_after(WAIT):
                echo = await agent.open_stream("laptop", "sha256")
                await echo.send_all(b"again")
                await echo.send_eof()
                reply = b""
                while data := await echo.receive_some():
                    reply += data
            assert reply == b"5 " + hashlib.sha256(b"again").hexdigest().encode()


async def test_a_second_name_for_the_home_relay_becomes_an_alias_and_never_replaces_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_server(nursery, tmp_path, relay=True) as h:
        await h.user("alice")
        # The node reaches the control plane as "localhost"; the relay map names the
        # same relay by its address. Joining it twice would replace the home connection.
        alias_url = h.info.derp_url.replace("127.0.0.1", "localhost")
        node = make_node(
            h.info.coordinate_url,
            alias_url,
            "laptop",
            await h.token("alice"),
            relay_measure_interval=0.2,
            relay_switch_after=0.0,
        )
        async with running(nursery, node):
            await wait_until(node, lambda: node.status()["relay_aliases"] == [h.info.derp_url])
            await trio.sleep(1.0)  # several more measuring rounds
            status = node.status()
            assert status["home_relay"] == alias_url
            assert status["relay"] == "connected"
            assert status["relay_links"] == []
            assert node.home_switches == 0
            relay = h.server.relay
            assert relay is not None
            assert relay.stats.duplicates_replaced == 0


def test_a_full_relay_datagram_fits_one_derp_packet() -> None:
    """The biggest packet the relay path sends, encrypted as the overlay sends it (our
    header, padding to 16, WireGuard's header and tag), is one DERP packet."""
    from tunneld.net.overlay import HEADER_SIZE, RELAY_DATAGRAM_SIZE
    from tunneld.proto.derp import MAX_PACKET_SIZE, encode_send_packet
    from tunneld.proto.noise import DataReceived, WireGuardCore

    a, b = WireGuardCore(generate_private_key()), WireGuardCore(generate_private_key())
    a.add_peer(b.public_key)
    b.add_peer(a.public_key)
    wall = 1_700_000_010.0
    a.initiate(b.public_key, 10.0, wall)
    for _ in range(2):
        for out in a.datagrams_to_send(10.0):
            b.receive_datagram(out.data, b"a", 10.0, wall)
        for out in b.datagrams_to_send(10.0):
            a.receive_datagram(out.data, b"b", 10.0, wall)
    while a.next_event() is not None or b.next_event() is not None:
        pass
    payload = bytes(HEADER_SIZE + RELAY_DATAGRAM_SIZE)
    a.send(b.public_key, payload + bytes(-len(payload) % 16), 11.0, wall)
    [packet] = a.datagrams_to_send(11.0)
    assert len(packet.data) <= MAX_PACKET_SIZE
    encode_send_packet(b.public_key, packet.data)  # raises beyond DERP's limit
    b.receive_datagram(packet.data, b"a", 11.0, wall)
    events = []
    while (event := b.next_event()) is not None:
        events.append(event)
    assert [len(e.payload) for e in events if isinstance(e, DataReceived)] == [
        len(payload) + (-len(payload) % 16)
    ]


@pytest.mark.parametrize(
    ("announced", "window"),
    [(None, 24), (0, 24), (32, 24), (96, 64), (4096, 64), (2, 1), (1, 1)],
)
def test_the_relay_window_is_three_quarters_of_the_announced_queue_capped_at_64(
    announced: int | None, window: int
) -> None:
    # None: no SERVER_INFO yet; 0: a relay that does not announce (derper queues 32).
    info = None if announced is None else ServerInfo(2, send_queue_packets=announced)
    assert relay_window(info) == window


async def test_the_relay_window_follows_what_the_home_relay_announces_across_a_restart(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = StandaloneRelay()  # our relay's default depth, 96: a window of 64
    await relay.start(nursery)
    async with relay_only_pair(nursery, tmp_path, relay) as (_, laptop, stream):
        await wait_until(laptop, lambda: peer_status(laptop).relay_window == 64)
        relay.kill()
        # Away from home, the next relay may be a derper: its window until it says.
        await wait_until(laptop, lambda: peer_status(laptop).relay_window == 24)
        relay.limits = RelayLimits(send_queue_packets=40)
        await relay.start(nursery)
        await wait_until(laptop, lambda: laptop.relay_state is LinkState.CONNECTED)
        assert peer_status(laptop).relay_window == 30
        await hash_through(stream, bytes(range(251)) * (1024 * 1024 // 251))
        assert relay.relay is not None
        assert relay.relay.stats.drops.get("queue_full", 0) == 0
