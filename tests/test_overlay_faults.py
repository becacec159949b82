"""Faults mid-transfer, each with the transfer completing intact (hashed at the far end).

* The relay killed and restarted on the same port, on a relay-only path (no UDP
  endpoints): abruptly (the process dies), and after a RESTARTING frame (a relay
  shutting down in order tells its clients when to come back).
* The whole control plane (coordinator and relay) restarted on a relay-only path.
* UDP dropped for 10 s on a direct path: the stream falls back to the relay and goes
  direct again afterwards.

The clock-jump fault is tests/test_overlay_wake.py.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests._control_support import Harness, running_server
from tests._overlay_support import StandaloneRelay
from tests.test_overlay_e2e import (
    CHUNK,
    WAIT,
    UdpMiddlebox,
    make_overlay,
    peer_status,
    running,
    sha256_service,
    wait_until,
)
from tunneld.config import HostPort
from tunneld.keys import generate_private_key
from tunneld.net.mux import MuxStream
from tunneld.net.overlay import LinkState, Overlay, OverlayConfig

PAYLOAD = bytes(range(251)) * (3 * 1024 * 1024 // 251)


def relay_node(h: Harness, derp_url: str, name: str, token: str) -> Overlay:
    """A node of the control server ``h`` on the relay at ``derp_url``, with no UDP
    endpoints (relay only) and the hashing ``sha256`` service."""
    config = OverlayConfig(
        name=name,
        private_key=generate_private_key(),
        coordinate_url=h.info.coordinate_url,
        derp_url=derp_url,
        udp_host="127.0.0.1",
        endpoints=(),
    )

    async def token_provider() -> str:
        return token

    return Overlay(config, token_provider, on_stream=sha256_service)


@asynccontextmanager
async def relay_only_pair(
    nursery: trio.Nursery, tmp_path: Path, relay: StandaloneRelay
) -> AsyncIterator[tuple[Overlay, Overlay, MuxStream]]:
    """A coordinator-only control server, the agent ``web1`` and the client ``laptop``
    on ``relay`` (relay only), and one ``sha256`` stream from the laptop to the agent;
    yields (agent, laptop, stream)."""
    async with running_server(nursery, tmp_path) as h:  # the coordinator only
        await h.user("alice")
        agent = relay_node(h, relay.url, "web1", await h.token("alice", agent="web1"))
        laptop = relay_node(h, relay.url, "laptop", await h.token("alice"))
        async with running(nursery, agent), running(nursery, laptop):
            await laptop.add_tunnel("web1")
            with trio.fail_after(WAIT):
                stream = await laptop.open_stream("web1", "sha256")
            yield agent, laptop, stream


def expected(payload: bytes) -> bytes:
    return f"{len(payload)} {hashlib.sha256(payload).hexdigest()}".encode()


async def transfer_across(
    stream: MuxStream,
    payload: bytes,
    fault: Callable[[], Awaitable[None]],
    *,
    pace: float = 0.03,
) -> bytes:
    """Send ``payload`` (one CHUNK per ``pace`` seconds, so the transfer outlasts the
    fault), running ``fault`` once a third is out while the rest keeps being written;
    returns the far end's answer. Fails if the fault began after the last write."""
    third = len(payload) // 3
    with trio.fail_after(WAIT * 3):
        await stream.send_all(payload[:third])
        finished = trio.Event()
        async with trio.open_nursery() as inner:

            async def send_rest() -> None:
                offset = third
                while offset < len(payload):
                    await stream.send_all(payload[offset : offset + CHUNK])
                    offset += CHUNK
                    await trio.sleep(pace)
                await stream.send_eof()
                finished.set()

            inner.start_soon(send_rest)
            await trio.sleep(0.2)
            assert not finished.is_set(), "the transfer ended before the fault"
            await fault()
        answer = b""
        while data := await stream.receive_some():
            answer += data
    return answer


@pytest.mark.parametrize("announced", [False, True], ids=["killed", "restarting-frame"])
async def test_relay_killed_and_restarted_mid_transfer_on_a_relay_only_path(
    nursery: trio.Nursery,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    announced: bool,
) -> None:
    caplog.set_level(logging.INFO, logger="tunneld.net.overlay")
    relay = StandaloneRelay()
    await relay.start(nursery)
    async with relay_only_pair(nursery, tmp_path, relay) as (agent, laptop, stream):

        async def fault() -> None:
            if announced:
                assert relay.relay is not None
                # Come back in half a second, keep trying for ten.
                await relay.relay.announce_restart(0.5, 10.0)
            relay.kill()
            for node in (agent, laptop):
                await wait_until(node, lambda n=node: n.relay_state is not LinkState.CONNECTED)
            await trio.sleep(1.0)  # the relay is down for a while
            await relay.start(nursery)
            for node in (agent, laptop):
                await wait_until(node, lambda n=node: n.relay_state is LinkState.CONNECTED)

        answer = await transfer_across(stream, PAYLOAD, fault)
        assert answer == expected(PAYLOAD)
        assert relay.starts == 2
        assert peer_status(laptop).path == "relay"
        restarting = [r for r in caplog.records if r.getMessage() == "overlay.relay_restarting"]
        assert bool(restarting) == announced


async def test_control_plane_restarted_mid_transfer_on_a_relay_only_path(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with trio.open_nursery() as nodes:
        async with running_server(nursery, tmp_path, relay=True) as h:
            await h.user("alice")
            agent = make_overlay(h, "web1", await h.token("alice", agent="web1"), endpoints=())
            laptop = make_overlay(h, "laptop", await h.token("alice"), endpoints=())
            await nodes.start(agent.serve)
            await nodes.start(laptop.serve)
            await laptop.add_tunnel("web1")
            with trio.fail_after(WAIT):
                stream = await laptop.open_stream("web1", "sha256")
            port = int(h.info.url.rsplit(":", 1)[1].split("/")[0])
            stopped = trio.Event()
            restart = trio.Event()
            done = trio.Event()

            async def fault() -> None:
                stopped.set()  # the server context below ends: coordinator and relay stop
                await restart.wait()
                for node in (agent, laptop):
                    await wait_until(node, lambda n=node: n.relay_state is LinkState.CONNECTED)
                    await wait_until(
                        node, lambda n=node: n.coordinator_state is LinkState.CONNECTED
                    )

            async def run_transfer() -> None:
                nonlocal answer
                answer = await transfer_across(stream, PAYLOAD, fault)
                done.set()

            answer = b""
            nodes.start_soon(run_transfer)
            await stopped.wait()
        # Same port, same database: a restarted control plane.
        await wait_until(laptop, lambda: laptop.coordinator_state is not LinkState.CONNECTED)
        async with running_server(
            nursery, tmp_path, relay=True, listen=HostPort("127.0.0.1", port)
        ):
            restart.set()
            with trio.fail_after(WAIT * 3):
                await done.wait()
            assert answer == expected(PAYLOAD)
            assert peer_status(laptop).path == "relay"
            nodes.cancel_scope.cancel()


async def test_udp_dropped_for_ten_seconds_mid_transfer_on_a_direct_path(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    timings = {
        "probe_interval": 0.5,
        "unsure_after": 1.0,
        "direct_timeout": 2.0,
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
            await laptop.add_tunnel("web1")
            with trio.fail_after(WAIT):
                stream = await laptop.open_stream("web1", "sha256")
                await laptop.wait_direct("web1")
            seen_relay = False

            async def fault() -> None:
                nonlocal seen_relay
                box.blackhole = True  # every UDP datagram between the two is lost
                with trio.move_on_after(10.0):
                    while True:
                        seen_relay = seen_relay or peer_status(laptop).path == "relay"
                        await trio.sleep(0.1)
                box.blackhole = False
                with trio.fail_after(WAIT):
                    await laptop.wait_direct("web1")

            # Paced so that the transfer spans the whole outage and beyond.
            answer = await transfer_across(stream, PAYLOAD, fault, pace=0.25)
        assert answer == expected(PAYLOAD)
        assert seen_relay
        assert peer_status(laptop).path == "direct"
