"""Overlay nodes for tests/test_overlay_punch.py, run inside a network namespace.

``agent JSON``: an overlay node with a ``sha256`` service (hashes a stream until EOF and
answers ``"<bytes> <sha256 hex>"``); prints ``{"phase": "ready"}`` and serves until
stdin closes.

``client JSON``: an overlay node that opens ``sha256`` on ``web1``, sends the first
third of a deterministic payload and prints ``{"phase": "relay", ...}``; on a line on
stdin it makes its wall clock jump an hour (the host "slept": the node re-validates its
paths and starts a hole-punching burst), waits ``window`` seconds for a direct path and
prints ``{"phase": "after", "path", ...}``; then sends the rest and prints
``{"phase": "done", "path", "bytes", "sha256", "answer"}``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from typing import Any

import trio
from _netns_driver import WAIT, emit, finish, only_peer

from tunneld.keys import generate_private_key
from tunneld.net.mux import MuxStream
from tunneld.net.overlay import Overlay, OverlayConfig


def node(options: dict[str, Any], wall: Any = time.time) -> Overlay:
    token = str(options["token"])

    async def provide() -> str:
        return token

    async def sha256(peer_id: str, service: str, stream: MuxStream) -> None:
        digest = hashlib.sha256()
        total = 0
        while data := await stream.receive_some():
            digest.update(data)
            total += len(data)
        await stream.send_all(f"{total} {digest.hexdigest()}".encode())
        await stream.send_eof()

    return Overlay(
        OverlayConfig(
            name=str(options["name"]),
            private_key=generate_private_key(),
            coordinate_url=options["coordinate_url"],
            derp_url=options["derp_url"],
            udp_host=options["host"],
            probe_interval=0.5,
            punch_tries=int(options["punch_tries"]),
            reprobe_interval=300.0,  # only bursts: no try from a timer during the test
            call_me_maybe=bool(options["call_me_maybe"]),
            wake_poll=0.5,
        ),
        provide,
        on_stream=sha256,
        wall=wall,
    )


async def agent(options: dict[str, Any]) -> None:
    overlay = node(options)
    async with trio.open_nursery() as nursery:
        await nursery.start(overlay.serve)
        emit({"phase": "ready"})
        await trio.to_thread.run_sync(sys.stdin.read)
        nursery.cancel_scope.cancel()


async def client(options: dict[str, Any]) -> None:
    jump = [0.0]
    overlay = node(options, wall=lambda: time.time() + jump[0])
    payload = bytes(range(256)) * (int(options["size"]) // 256)
    third = len(payload) // 3
    async with trio.open_nursery() as nursery:
        await nursery.start(overlay.serve)
        await overlay.add_tunnel("web1")
        with trio.fail_after(WAIT):
            stream = await overlay.open_stream("web1", "sha256")
        with trio.fail_after(WAIT * 2):
            await stream.send_all(payload[:third])
        status = only_peer(overlay)
        emit({"phase": "relay", "path": status.path, "bursts": status.punch_bursts})
        await trio.to_thread.run_sync(sys.stdin.readline)
        wakes = overlay.wakes
        jump[0] += 3600.0
        with trio.fail_after(WAIT):
            while overlay.wakes == wakes:  # noqa: ASYNC110 - polling a counter
                await trio.sleep(0.05)
        with trio.move_on_after(float(options["window"])):
            await overlay.wait_direct("web1")
        status = only_peer(overlay)
        emit(
            {
                "phase": "after",
                "path": status.path,
                "call_me_maybe_sent": status.call_me_maybe_sent,
                "bursts": status.punch_bursts,
            }
        )
        await finish(overlay, stream, payload, third)
        nursery.cancel_scope.cancel()


def main() -> None:
    run = agent if sys.argv[1] == "agent" else client
    trio.run(run, json.loads(sys.argv[2]))


if __name__ == "__main__":
    main()
