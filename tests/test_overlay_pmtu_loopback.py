"""Path MTU discovery end to end on loopback (a real control server and two nodes).

Loopback's MTU is 65,536 bytes, so a direct path there grows to the largest UDP
datagram's worth of mux packet; a node with discovery off stays at the base size and
still answers the other side's probes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import trio

from tests._control_support import running_server
from tests.test_overlay_e2e import WAIT, make_overlay, peer_status, running, wait_registered
from tunneld.net.mux import MuxStream
from tunneld.net.overlay._pmtu import ip_packet_bytes, mux_size_for

LARGEST = mux_size_for(65535)  # 65,455


async def transfer(stream: MuxStream, size: int) -> tuple[bytes, bytes]:
    """Send ``size`` bytes through a sha256 stream; (answer, expected answer)."""
    payload = bytes(range(256)) * (size // 256)
    await stream.send_all(payload)
    await stream.send_eof()
    answer = b""
    while data := await stream.receive_some():
        answer += data
    await stream.aclose()
    return answer, f"{len(payload)} {hashlib.sha256(payload).hexdigest()}".encode()


async def test_a_loopback_direct_path_grows_to_the_largest_datagram(
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
                stream = await laptop.open_stream("web1", "sha256")
                await laptop.wait_path_mtu("web1")
            status = peer_status(laptop)
            assert status.path == "direct", status
            assert status.pmtu_state == "done", status
            assert status.datagram_size == LARGEST, status
            assert status.path_mtu == ip_packet_bytes(LARGEST) == 65532, status
            with trio.fail_after(WAIT * 2):
                answer, expected = await transfer(stream, 6 * 1024 * 1024)
                # The agent answered through its own search's result.
                await agent.wait_path_mtu("laptop")
            assert answer == expected
            assert peer_status(laptop).datagram_size == LARGEST
            assert peer_status(agent).datagram_size == LARGEST
            # Every datagram of the transfer was far bigger than the old 1,200.
            assert peer_status(laptop).bytes_sent < 2 * 6 * 1024 * 1024


async def test_a_node_without_discovery_stays_at_the_base_and_still_answers(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_server(nursery, tmp_path, relay=True) as h:
        await h.user("alice")
        agent = make_overlay(h, "web1", await h.token("alice", agent="web1"))
        laptop = make_overlay(h, "laptop", await h.token("alice"), pmtu_discovery=False)
        async with running(nursery, agent), running(nursery, laptop):
            await wait_registered(h, "web1")
            await laptop.add_tunnel("web1")
            with trio.fail_after(WAIT):
                stream = await laptop.open_stream("web1", "sha256")
                await laptop.wait_path_mtu("web1")
            status = peer_status(laptop)
            assert status.path == "direct", status
            assert (status.datagram_size, status.pmtu_state) == (1200, "off"), status
            with trio.fail_after(WAIT * 2):
                answer, expected = await transfer(stream, 2 * 1024 * 1024)
                await agent.wait_path_mtu("laptop")
            assert answer == expected
            # The agent's probes were answered by the laptop, which probes nothing.
            assert peer_status(agent).datagram_size == LARGEST
            assert peer_status(laptop).datagram_size == 1200
