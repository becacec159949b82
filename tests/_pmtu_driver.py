"""The client of tests/test_overlay_pmtu_netns.py, run inside a network namespace.

``client JSON``: an overlay node that opens ``tcp:PORT`` to the agent (the sink of
tests/_netns_driver.py) and sends a deterministic payload in two halves, printing one
JSON line after each step:

* ``{"phase": "settled", ...}`` once the first half is sent, the path is direct and
  path MTU discovery is done (then, with ``"pause": true``, it waits for a line on
  stdin: the test changes the network meanwhile);
* ``{"phase": "resettled", ...}`` once the second half is sent and discovery is done
  again *after* the size it settled on first changed (only with ``"pause": true``);
* ``{"phase": "done", "bytes", "sha256", "answer", ...}`` after EOF and the sink's
  answer.

Every record carries the peer's ``path``, ``datagram_size``, ``path_mtu`` and
``pmtu_state`` (PeerStatus).
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import trio
from _netns_driver import client_overlay, emit, end_and_answer, only_peer

from tunneld.net.overlay import Overlay

WAIT = 60.0
CHUNK = 32 * 1024


def record(overlay: Overlay, phase: str, **extra: object) -> None:
    peer = only_peer(overlay)
    emit(
        {
            "phase": phase,
            "path": peer.path,
            "datagram_size": peer.datagram_size,
            "path_mtu": peer.path_mtu,
            "pmtu_state": peer.pmtu_state,
            **extra,
        }
    )


async def settled(overlay: Overlay, other_than: int | None = None) -> None:
    """Until the direct path's discovery is done (at a size other than ``other_than``)."""
    while True:
        peer = only_peer(overlay)
        if peer.path == "direct" and peer.pmtu_state == "done" and peer.datagram_size != other_than:
            return
        await trio.sleep(0.1)


async def send(stream: trio.abc.HalfCloseableStream, data: bytes) -> None:
    for offset in range(0, len(data), CHUNK):
        await stream.send_all(data[offset : offset + CHUNK])


async def client(options: dict[str, Any]) -> None:
    overlay = client_overlay(options)
    payload = bytes(range(256)) * (int(options["size"]) // 256)
    half = len(payload) // 2
    async with trio.open_nursery() as nursery:
        await nursery.start(overlay.serve)
        await overlay.add_tunnel("web1")
        with trio.fail_after(WAIT):
            stream = await overlay.open_stream("web1", f"tcp:{options['port']}")
            await overlay.wait_direct("web1")
            await send(stream, payload[:half])
            await settled(overlay)
        first = only_peer(overlay).datagram_size
        record(overlay, "settled")
        if options.get("pause"):
            await trio.to_thread.run_sync(sys.stdin.readline)
        with trio.fail_after(WAIT):
            await send(stream, payload[half:])
            if options.get("pause"):
                await settled(overlay, other_than=first)
                record(overlay, "resettled")
            answer = await end_and_answer(stream)
        record(
            overlay,
            "done",
            bytes=len(payload),
            sha256=hashlib.sha256(payload).hexdigest(),
            answer=answer,
        )
        await stream.aclose()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(client, json.loads(sys.argv[2]))
