"""Measure one stream's throughput over the DERP relay path, all in one process.

Not a test (speed is never asserted): ``python -m tests.measure_relay_throughput [MiB]``
starts a control server with its relay and two overlays that announce no endpoints
(so the relay is the only path), sends MiB (default 8) over one stream to the
``sha256`` service, checks the digest and prints MiB/s with the relay's counters.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from pathlib import Path

import trio

from tests._control_support import running_server
from tests.test_overlay_e2e import make_overlay, peer_status, running


async def measure(size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            trio.open_nursery() as nursery,
            running_server(nursery, Path(tmp), relay=True) as h,
        ):
            await h.user("alice")
            agent = make_overlay(h, "web1", await h.token("alice", "web1"), endpoints=())
            laptop = make_overlay(h, "laptop", await h.token("alice"), endpoints=())
            async with running(nursery, agent), running(nursery, laptop):
                await laptop.add_tunnel("web1")
                with trio.fail_after(20):
                    stream = await laptop.open_stream("web1", "sha256")
                payload = bytes(range(256)) * (size // 256)
                start = time.perf_counter()
                for offset in range(0, len(payload), 65536):
                    await stream.send_all(payload[offset : offset + 65536])
                await stream.send_eof()
                answer = b""
                while data := await stream.receive_some():
                    answer += data
                elapsed = time.perf_counter() - start
                digest = hashlib.sha256(payload).hexdigest()
                assert answer == f"{len(payload)} {digest}".encode(), answer
                path = peer_status(laptop).path
                print(f"{size / elapsed / 2**20:.2f} MiB/s in {elapsed:.2f} s over {path}")
                relay = h.server.relay
                if relay is not None:
                    stats = relay.stats
                    print(f"relay packets={stats.packets_relayed} drops={stats.drops}")
                await stream.aclose()


if __name__ == "__main__":
    trio.run(measure, int(float(sys.argv[1]) * 2**20) if len(sys.argv) > 1 else 8 * 2**20)
