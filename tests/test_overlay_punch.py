"""Hole punching with CALL_ME_MAYBE between network namespaces behind "NAT-like" filters.

Topology as in tests/test_overlay_netns.py (control plane, client and agent on one
bridge). Each of client and agent gets a stateful nftables filter standing in for a
NAT: inbound UDP from the other is dropped unless this side sent to that address
first (``ct state established,related accept``, then drop). A direct path therefore
comes up only if both sides send at about the same time.

The story: UDP between the two is first blocked outright (on the output hook, so no
connection-tracking entry survives), so the stream starts on the relay and both
nodes' first hole-punching bursts fail and end. Then the block becomes the NAT-like
filter, and the client "wakes from sleep" (its wall clock jumps): it starts a burst of
its own while the agent, knowing nothing of it, would stay quiet. With CALL_ME_MAYBE
the agent probes back at once and the path goes direct; without it, the client's
probes are dropped and the path stays on the relay. Either way the stream's hash is
intact.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_overlay_netns import (
    _REASON,
    AGENT,
    CLIENT,
    CONTROL,
    Namespaces,
    namespaces,
    read_record,
    wait_for_file,
)

pytestmark = [pytest.mark.netns, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

DRIVER = Path(__file__).resolve().parent / "_punch_driver.py"


def nft(spaces: Namespaces, ns: str, *rule: str) -> None:
    spaces.run(ns, ["nft", *rule])


def block_udp_outright(spaces: Namespaces) -> None:
    """Client and agent drop UDP to each other on output (and from each other on input).

    An output drop happens before connection tracking confirms the flow, so no
    "we sent to them" state is left behind for the NAT-like filter to find later.
    """
    for ns, peer in ((spaces.client, AGENT), (spaces.agent, CLIENT)):
        nft(spaces, ns, "add", "table", "inet", "t")
        for chain, hook in (("out", "output"), ("inp", "input")):
            nft(spaces, ns, "add", "chain", "inet", "t", chain,
                f"{{ type filter hook {hook} priority 0; }}")  # fmt: skip
        nft(spaces, ns, "add", "rule", "inet", "t", "out",
            "meta", "l4proto", "udp", "ip", "daddr", peer, "drop")  # fmt: skip
        nft(spaces, ns, "add", "rule", "inet", "t", "inp",
            "meta", "l4proto", "udp", "ip", "saddr", peer, "drop")  # fmt: skip


def nat_like_filter(spaces: Namespaces) -> None:
    """Replace the block: inbound UDP from the peer only as a reply to what we sent."""
    for ns, peer in ((spaces.client, AGENT), (spaces.agent, CLIENT)):
        nft(spaces, ns, "delete", "table", "inet", "t")
        nft(spaces, ns, "add", "table", "inet", "t")
        nft(spaces, ns, "add", "chain", "inet", "t", "inp",
            "{ type filter hook input priority 0; }")  # fmt: skip
        nft(spaces, ns, "add", "rule", "inet", "t", "inp",
            "ct", "state", "established,related", "accept")  # fmt: skip
        nft(spaces, ns, "add", "rule", "inet", "t", "inp",
            "meta", "l4proto", "udp", "ip", "saddr", peer, "drop")  # fmt: skip


def start_control(spaces: Namespaces, tmp: Path) -> tuple[dict[str, Any], str, str]:
    """``tunneld control`` in its namespace; returns (info, agent token, client token)."""
    python = sys.executable
    control = ["-m", "tunneld", "control", "--data-dir", str(tmp / "control")]
    subprocess.run([python, *control, "user", "add", "alice"], check=True, capture_output=True)

    def token(*extra: str) -> str:
        result = subprocess.run(
            [python, *control, "token", "create", "--user", "alice", *extra],
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout.strip()

    ready = tmp / "control.ready"
    server = spaces.exec(
        spaces.control,
        [python, *control, "--listen", f"{CONTROL}:0", "--ready-file", str(ready)],
        stderr=(tmp / "control.log").open("w"),
    )
    return wait_for_file(ready, server), token("--agent", "web1"), token()


def driver(
    spaces: Namespaces, ns: str, role: str, tmp: Path, options: dict[str, Any]
) -> subprocess.Popen[str]:
    return spaces.exec(
        ns,
        [sys.executable, str(DRIVER), role, json.dumps(options)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=(tmp / f"{role}.log").open("w"),
    )


@pytest.mark.parametrize("call_me_maybe", [True, False], ids=["call-me-maybe", "probes-only"])
def test_call_me_maybe_punches_through_nat_like_filters(
    tmp_path: Path, call_me_maybe: bool
) -> None:
    with namespaces() as spaces:
        block_udp_outright(spaces)
        info, agent_token, client_token = start_control(spaces, tmp_path)
        common = {
            "coordinate_url": info["coordinate_url"],
            "derp_url": info["derp_url"],
            "call_me_maybe": call_me_maybe,
        }
        agent = driver(
            spaces,
            spaces.agent,
            "agent",
            tmp_path,
            # Two tries right after the handshake, then quiet (no timer re-probes).
            {**common, "name": "web1", "token": agent_token, "host": AGENT, "punch_tries": 2},
        )
        assert agent.stdout is not None
        read_record(agent.stdout, "ready", tmp_path / "agent.log")
        client = driver(
            spaces,
            spaces.client,
            "client",
            tmp_path,
            {
                **common,
                "name": "laptop",
                "token": client_token,
                "host": CLIENT,
                "punch_tries": 3,
                "size": 3 * 1024 * 1024,
                "window": 6.0,
            },
        )
        assert client.stdout is not None
        assert client.stdin is not None
        first = read_record(client.stdout, "relay", tmp_path / "client.log")
        assert first["path"] == "relay", first
        # Both first bursts (tries 0.5 s then 1 s apart) are over by now.
        time.sleep(2.5)
        nat_like_filter(spaces)
        client.stdin.write("wake\n")
        client.stdin.flush()
        after = read_record(client.stdout, "after", tmp_path / "client.log")
        done = read_record(client.stdout, "done", tmp_path / "client.log")
        assert client.wait(timeout=20) == 0
        assert done["answer"] == f"{done['bytes']} {done['sha256']}", done
        if call_me_maybe:
            assert after["call_me_maybe_sent"] > 0, after
            assert after["path"] == "direct", after
            assert done["path"] == "direct", done
        else:
            assert after["call_me_maybe_sent"] == 0, after
            assert after["path"] == "relay", after
            assert done["path"] == "relay", done
        agent.stdin.close()  # type: ignore[union-attr]
