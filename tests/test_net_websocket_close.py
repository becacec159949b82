"""A relay that goes dark (no bytes either way, TCP still open) does not hang its client."""

from __future__ import annotations

import functools
import random

import pytest
import trio

from tunneld.control._derp_relay import DerpRelay
from tunneld.http import HttpServer, Router
from tunneld.keys import generate_private_key
from tunneld.net._websocket import CLOSE_TIMEOUT
from tunneld.net.derp import DerpClient, DerpConnectionClosed


async def _pump(src: trio.SocketStream, dst: trio.SocketStream, dark: trio.Event) -> None:
    try:
        while data := await src.receive_some(65536):
            if not dark.is_set():  # once dark, bytes vanish: a black hole, not a reset
                await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _dark_proxy(nursery: trio.Nursery, port: int, dark: trio.Event) -> int:
    async def handle(client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", port)
        async with upstream, trio.open_nursery() as pumps:
            pumps.start_soon(_pump, client, upstream, dark)
            pumps.start_soon(_pump, upstream, client, dark)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def _drain(client: DerpClient) -> None:
    while True:
        await client.receive()


async def test_derp_client_drops_a_relay_that_went_dark(nursery: trio.Nursery) -> None:
    async def allow(_key: bytes) -> bool:
        return True

    relay = DerpRelay(generate_private_key(), authorize=allow, rng=random.Random(7))
    router = Router()
    router.websocket("/derp", relay.handle_websocket, subprotocols=["derp"])
    _host, port = await nursery.start(HttpServer(router).serve_tcp, "127.0.0.1", 0)
    dark = trio.Event()
    proxy_port = await _dark_proxy(nursery, port, dark)
    url = f"ws://127.0.0.1:{proxy_port}/derp"
    async with DerpClient.connect(url, generate_private_key(), silence_timeout=0.2) as client:
        dark.set()
        # Before the bounded close, the client waited for a close frame that never came.
        with trio.fail_after(CLOSE_TIMEOUT + 5):
            with pytest.raises(DerpConnectionClosed, match=r"relay silent for 0\.2 s"):
                await _drain(client)
