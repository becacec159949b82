"""Path MTU discovery between real processes in network namespaces (needs root).

Topology of tests/test_overlay_netns.py: the control plane on a bridge, the agent
(``tunneld agent`` with a hashing TCP sink) and a client node (tests/_pmtu_driver.py)
each on a veth into it. Link MTUs are set with ``ip link set ... mtu``; a datagram
bigger than the receiving veth's MTU is dropped there without a word (no ICMP), and
one bigger than the sender's own link is refused by its kernel (EMSGSIZE), since the
overlay's socket never fragments.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.test_overlay_netns import (
    _REASON,
    Namespaces,
    namespaces,
    read_record,
    start_client,
    start_world,
)
from tunneld.net.overlay._pmtu import ip_packet_bytes, mux_size_for

pytestmark = [pytest.mark.netns, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

DRIVER = Path(__file__).resolve().parent / "_pmtu_driver.py"
SIZE = 4 * 1024 * 1024
# A veth drops a frame bigger than its MTU on the way in, but counts 4 bytes of
# VLAN tag as slack: through a 1,400-byte veth, IP packets of up to 1,404 bytes pass.
NARROW = 1400
THROUGH_NARROW = NARROW + 4


def set_mtu(spaces: Namespaces, ns: str, device: str, mtu: int) -> None:
    subprocess.run(
        ["ip", "-n", ns, "link", "set", device, "mtu", str(mtu)], check=True, capture_output=True
    )


def all_links(spaces: Namespaces, mtu: int) -> None:
    """Every link between client and agent (veths, bridge ports, bridge) at ``mtu``."""
    for ns, device in (
        (spaces.client, "eth0"),
        (spaces.agent, "eth0"),
        (spaces.control, "vl"),
        (spaces.control, "va"),
        (spaces.control, "br0"),
    ):
        set_mtu(spaces, ns, device, mtu)


def finish(client: subprocess.Popen[str]) -> dict[str, Any]:
    assert client.stdout is not None
    done = read_record(client.stdout, "done")
    assert client.wait(timeout=30) == 0
    assert done["answer"] == f"{done['bytes']} {done['sha256']}", done
    assert done["path"] == "direct", done
    return done


def agent_sizes(tmp: Path) -> list[int]:
    """The datagram sizes the agent's log says it moved to (``overlay.path_mtu``)."""
    sizes = []
    for line in (tmp / "agent.log").read_text().splitlines():
        if "overlay.path_mtu" in line:
            field = line.split("datagram=", 1)[1].split()[0]
            sizes.append(int(field))
    return sizes


def test_discovery_settles_on_the_real_path_mtu(tmp_path: Path) -> None:
    with namespaces() as spaces:
        # The agent's link is the narrow one: the client's bigger datagrams vanish on
        # the way in (silently), the agent's own are refused by its kernel.
        set_mtu(spaces, spaces.agent, "eth0", NARROW)
        info, token = start_world(spaces, tmp_path)
        client = start_client(spaces, tmp_path, info, token, pause=False, driver=DRIVER, size=SIZE)
        assert client.stdout is not None
        settled = read_record(client.stdout, "settled")
        assert settled["path"] == "direct", settled
        # The largest datagram that gets through (on the 16-byte padding grid).
        assert settled["datagram_size"] == mux_size_for(THROUGH_NARROW) == 1327, settled
        assert THROUGH_NARROW - 16 < settled["path_mtu"] <= THROUGH_NARROW, settled
        done = finish(client)
        assert done["datagram_size"] == 1327, done
        # The agent's own link is the 1,400-byte one: its kernel refuses anything
        # bigger (EMSGSIZE), and its search settles just under it.
        assert agent_sizes(tmp_path)[-1] == mux_size_for(NARROW) == 1311


def test_a_black_hole_mid_stream_falls_back_and_the_transfer_completes(tmp_path: Path) -> None:
    with namespaces() as spaces:
        all_links(spaces, 9000)
        info, token = start_world(spaces, tmp_path)
        client = start_client(spaces, tmp_path, info, token, pause=True, driver=DRIVER, size=SIZE)
        assert client.stdout is not None
        assert client.stdin is not None
        settled = read_record(client.stdout, "settled")
        assert settled["datagram_size"] == mux_size_for(9000) == 8911, settled
        assert settled["path_mtu"] == ip_packet_bytes(8911) == 8988, settled
        # The agent's link shrinks under the stream, telling no one: the client's
        # 8,911-byte datagrams now vanish (a black hole) until it notices.
        set_mtu(spaces, spaces.agent, "eth0", NARROW)
        client.stdin.write("go\n")
        client.stdin.flush()
        again = read_record(client.stdout, "resettled")
        assert again["datagram_size"] == mux_size_for(THROUGH_NARROW), again
        assert again["path"] == "direct", again
        done = finish(client)
        assert done["datagram_size"] == mux_size_for(THROUGH_NARROW), done
        # The agent's own sends hit EMSGSIZE after the change: it went down too.
        sizes = agent_sizes(tmp_path)
        assert 8911 in sizes
        assert sizes[-1] == mux_size_for(NARROW), sizes
