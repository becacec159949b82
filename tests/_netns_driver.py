"""Processes for tests/test_overlay_netns.py, run inside a network namespace.

``sink PORT``: a TCP server on 127.0.0.1:PORT that hashes one connection until EOF and
answers ``"<bytes> <sha256 hex>"`` (prints ``listening`` once bound).

``client JSON``: an overlay node that opens ``tcp:PORT`` to the agent and sends a
deterministic payload in three thirds, printing one JSON line after each:
``{"phase": "first", "path": ...}`` (then, with ``"pause": true``, waits for a line on
stdin), ``{"phase": "second", ...}`` once the second third is sent *and* the path is
direct, and ``{"phase": "done", "path", "bytes", "sha256", "answer"}``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import trio

from tunneld.keys import generate_private_key
from tunneld.net.overlay import Overlay, OverlayConfig, PeerStatus

WAIT = 20.0
CHUNK = 32 * 1024


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


async def sink(port: int) -> None:
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    emit({"phase": "listening"})
    async with listeners[0]:
        stream = await listeners[0].accept()
        digest = hashlib.sha256()
        total = 0
        async with stream:
            while data := await stream.receive_some(65536):
                digest.update(data)
                total += len(data)
            await stream.send_all(f"{total} {digest.hexdigest()}".encode())


def only_peer(overlay: Overlay) -> PeerStatus:
    """The status of ``overlay``'s one peer."""
    peers = overlay.status()["peers"]
    assert isinstance(peers, list)
    assert len(peers) == 1, peers
    status = peers[0]
    assert isinstance(status, PeerStatus)
    return status


async def finish(
    overlay: Overlay, stream: trio.abc.HalfCloseableStream, payload: bytes, offset: int
) -> None:
    """Send ``payload[offset:]``, end the stream, read the sink's answer and print
    ``{"phase": "done", "path", "bytes", "sha256", "answer"}``."""
    with trio.fail_after(WAIT * 2):
        await stream.send_all(payload[offset:])
        answer = await end_and_answer(stream)
    emit(
        {
            "phase": "done",
            "path": only_peer(overlay).path,
            "bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "answer": answer,
        }
    )
    await stream.aclose()


async def end_and_answer(stream: trio.abc.HalfCloseableStream) -> str:
    """End our side of ``stream`` and read the sink's answer until its EOF."""
    await stream.send_eof()
    answer = b""
    while data := await stream.receive_some():
        answer += data
    return answer.decode()


def client_overlay(options: dict[str, Any]) -> Overlay:
    """The client's overlay node ("laptop"), from the test's JSON options."""
    token = str(options["token"])

    async def provide() -> str:
        return token

    return Overlay(
        OverlayConfig(
            name="laptop",
            private_key=generate_private_key(),
            coordinate_url=options["coordinate_url"],
            derp_url=options["derp_url"],
            udp_host=options["host"],
            probe_interval=0.5,
            reprobe_interval=float(options.get("reprobe_interval", 2.0)),
        ),
        provide,
    )


async def client(options: dict[str, Any]) -> None:
    overlay = client_overlay(options)
    payload = bytes(range(256)) * (int(options["size"]) // 256)
    third = len(payload) // 3
    async with trio.open_nursery() as nursery:
        await nursery.start(overlay.serve)
        await overlay.add_tunnel("web1")
        with trio.fail_after(WAIT):
            stream = await overlay.open_stream("web1", f"tcp:{options['port']}")
        with trio.fail_after(WAIT * 2):
            await stream.send_all(payload[:third])
            emit({"phase": "first", "path": only_peer(overlay).path})
        if options.get("pause"):
            await trio.to_thread.run_sync(sys.stdin.readline)
        with trio.fail_after(WAIT * 2):
            # The second third goes out while the path may be changing under it.
            async with trio.open_nursery() as inner:
                inner.start_soon(overlay.wait_direct, "web1")
                offset = third
                while offset < 2 * third:
                    await stream.send_all(payload[offset : min(offset + CHUNK, 2 * third)])
                    offset += CHUNK
            emit({"phase": "second", "path": only_peer(overlay).path})
        await finish(overlay, stream, payload, 2 * third)
        nursery.cancel_scope.cancel()


def main() -> None:
    if sys.argv[1] == "sink":
        trio.run(sink, int(sys.argv[2]))
    else:
        trio.run(client, json.loads(sys.argv[2]))


if __name__ == "__main__":
    main()
