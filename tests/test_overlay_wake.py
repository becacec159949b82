"""Sleep and wake: a wall clock that jumps ahead makes a node re-validate everything.

A fake wall clock stands in for the host suspending (trio's monotonic clock stops
during suspend, the wall clock does not); everything else is real: a control server,
two overlay nodes on loopback and a stream hashed at the far end.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import pytest
import trio

from tests._control_support import running_server
from tunneld.keys import generate_private_key
from tunneld.net.mux import MuxStream
from tunneld.net.overlay import LinkState, Overlay, OverlayConfig, PeerStatus

WAIT = 20.0
CHUNK = 32 * 1024


async def sha256_service(peer: str, service: str, stream: MuxStream) -> None:
    digest = hashlib.sha256()
    total = 0
    while data := await stream.receive_some():
        digest.update(data)
        total += len(data)
    await stream.send_all(f"{total} {digest.hexdigest()}".encode())
    await stream.send_eof()


def peer_status(overlay: Overlay) -> PeerStatus:
    peers = overlay.status()["peers"]
    assert isinstance(peers, list)
    assert len(peers) == 1
    status = peers[0]
    assert isinstance(status, PeerStatus)
    return status


def events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


async def test_a_wall_clock_jump_rebinds_reprobes_and_the_stream_survives(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tunneld.net.overlay")
    jump = 0.0

    def wall() -> float:
        return time.time() + jump

    async with running_server(nursery, tmp_path, relay=True) as h:
        await h.user("alice")
        tokens = {"web1": await h.token("alice", agent="web1"), "laptop": await h.token("alice")}

        def node(name: str, **kwargs: object) -> Overlay:
            async def provide() -> str:
                return tokens[name]

            config = OverlayConfig(
                name=name,
                private_key=generate_private_key(),
                coordinate_url=h.info.coordinate_url,
                derp_url=h.info.derp_url,
                udp_host="127.0.0.1",
                probe_interval=0.2,
                wake_poll=0.1,
            )
            return Overlay(config, provide, **kwargs)  # type: ignore[arg-type]

        agent = node("web1", on_stream=sha256_service)
        laptop = node("laptop", wall=wall)
        async with trio.open_nursery() as nodes:
            await nodes.start(agent.serve)
            await nodes.start(laptop.serve)
            await laptop.add_tunnel("web1")
            payload = bytes(range(256)) * (2 * 1024 * 1024 // 256)
            half = len(payload) // 2
            with trio.fail_after(WAIT):
                stream = await laptop.open_stream("web1", "sha256")
                await laptop.wait_direct("web1")
                await stream.send_all(payload[:half])
            address = laptop.local_address
            # A starved process (every task late, on both clocks alike) did not sleep.
            time.sleep(10 * 0.1)  # noqa: ASYNC251 - freezes the event loop on purpose
            await trio.sleep(0.5)
            assert agent.wakes == laptop.wakes == 0

            jump = 3600.0  # the laptop "slept" an hour
            with trio.fail_after(WAIT):
                while laptop.wakes == 0:  # noqa: ASYNC110 - polling a counter, as status() users do
                    await trio.sleep(0.01)
                log = events(caplog)
                woke = log.index(next(e for e in log if "overlay.woke" in e))
                assert any("overlay.rebound" in e for e in log[woke:]), log[woke:]
                # The direct path was dropped and is validated again by new probes.
                while not any("overlay.path_direct" in e for e in events(caplog)[woke:]):  # noqa: ASYNC110
                    await trio.sleep(0.01)
                await laptop.wait_direct("web1")
                await stream.send_all(payload[half:])
                await stream.send_eof()
                answer = b""
                while data := await stream.receive_some():
                    answer += data
            assert answer == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}".encode()
            assert laptop.wakes == 1  # one jump, one wake-up
            assert agent.wakes == 0
            assert laptop.local_address == address  # rebound on the same port
            assert peer_status(laptop).path == "direct"
            assert laptop.relay_state is LinkState.CONNECTED
            await stream.aclose()
            nodes.cancel_scope.cancel()
